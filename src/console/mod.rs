//! The console: a ratatui front end over the engine, either running in
//! the same process ([`run`]) or attached to a running service over its
//! control socket ([`attach`]). Both get the same messages: a snapshot,
//! then the engine's typed events. One loop waits for one kind of event ([`event::ConsoleEvent`]),
//! turns it into an [`action::Action`], lets [`app::App::update`] change the
//! state, runs the effects through [`io::ConsoleIo`], and redraws at most
//! about 30 times a second, only when something changed.
//!
//! The terminal is always restored: a guard restores it when the loop
//! ends (quit, error, SIGTERM), and a panic hook restores it before the
//! panic message is printed. A panic in an engine task (a session, a
//! listener) does not tear the screen down: tokio contains it to that task,
//! and the hook hands its message to the console's log as an error instead
//! of printing over the screen.

pub mod action;
pub mod app;
pub mod event;
pub mod form;
pub mod io;
pub mod keymap;
pub mod list_editor;
pub mod panels;
pub mod render;
pub mod theme;
pub mod traffic;

use crate::control::client::{self, ClientEvent};
use crate::control::feed::Feed;
use crate::control::protocol::{Access, ClientMessage, ServerMessage};
use crate::engine::Engine;
use crate::events::{Event, EventBus, Stamped};
use action::Action;
use anyhow::Context;
use app::App;
use app::Link;
use event::ConsoleEvent;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{DisableMouseCapture, EnableMouseCapture};
use ratatui::crossterm::terminal::{
    BeginSynchronizedUpdate, Clear, ClearType, EndSynchronizedUpdate, EnterAlternateScreen,
    LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::crossterm::{cursor, execute, queue};
use std::io::Stdout;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant, SystemTime};

/// Room for engine events between the engine and the console.
pub const EVENT_CAPACITY: usize = 65_536;
/// How often ages move and the store is polled for changes by others.
const TICK: Duration = Duration::from_millis(500);
/// What the engine sends is drawn at most 5 times a second (its live
/// picture changes 4 times a second): live enough for a person, cheap for
/// the engine's machine (the console usually runs on it, over SSH). What
/// the admin types is drawn at once.
const FRAME: Duration = Duration::from_millis(200);
/// The longest a key waits to be handled while events are gathered.
const KEY_LATENCY: Duration = Duration::from_millis(50);
/// Events handled before a frame is drawn, so a flood cannot starve the screen.
const DRAIN_LIMIT: usize = 20_000;
/// Log lines loaded from the persisted decision log at start.
pub(crate) const HISTORY_LINES: usize = 5_000;

/// Whether the terminal is in raw mode on the alternate screen now.
static TERMINAL_ACTIVE: AtomicBool = AtomicBool::new(false);
static CONSOLE_THREAD: OnceLock<ThreadId> = OnceLock::new();
/// Panics of engine tasks while the console owns the screen.
static ENGINE_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Leaves raw mode and the alternate screen, shows the cursor. Safe to call
/// twice: only the first call after [`enter_terminal`] does anything.
pub fn restore_terminal() {
    if TERMINAL_ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(
            std::io::stdout(),
            DisableMouseCapture,
            LeaveAlternateScreen,
            cursor::Show
        );
    }
}

fn enter_terminal() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "the console needs a terminal (run it in an SSH session with a tty: ssh -t); without one, run the engine with `serve --headless`"
        );
    }
    enable_raw_mode().context("switching the terminal to raw mode")?;
    TERMINAL_ACTIVE.store(true, Ordering::SeqCst);
    // Cleared with an escape, not `Terminal::clear`, which asks the
    // terminal for the cursor position and waits for the answer.
    execute!(
        std::io::stdout(),
        EnterAlternateScreen,
        EnableMouseCapture,
        Clear(ClearType::All)
    )
    .context("entering the alternate screen")?;
    Ok(())
}

/// Restores the terminal when dropped, however the console ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores the terminal before a console panic is reported; collects
/// engine-task panics for the log instead of printing over the screen.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_console = CONSOLE_THREAD
            .get()
            .is_none_or(|t| *t == std::thread::current().id());
        if TERMINAL_ACTIVE.load(Ordering::SeqCst) && !on_console {
            let message = match (
                info.payload().downcast_ref::<&str>(),
                info.payload().downcast_ref::<String>(),
            ) {
                (Some(s), _) => (*s).to_string(),
                (_, Some(s)) => s.clone(),
                _ => "(no message)".to_string(),
            };
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            if let Ok(mut panics) = ENGINE_PANICS.lock() {
                panics.push(format!("an engine task panicked{at}: {message}"));
            }
            return;
        }
        restore_terminal();
        previous(info);
    }));
}

/// Runs the engine on `db` with the console in the foreground until the
/// user quits (and confirms) or a signal comes; then stops the engine
/// gracefully.
pub fn run(db: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bus = Arc::new(EventBus::default());
    let engine = runtime.block_on(Engine::start(db, Arc::clone(&bus)))?;
    let mut io = io::ConsoleIo::open(db, Some(engine.shared().spool.clone()))?;
    let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    io.set_control(requests_tx);
    let (tx, rx) = sync_channel::<ConsoleEvent>(EVENT_CAPACITY);
    let lost = Arc::new(AtomicU64::new(0));
    runtime.spawn(in_process_link(
        engine.feed().clone(),
        Arc::clone(engine.nudges()),
        tx.clone(),
        requests,
        Arc::clone(&lost),
    ));
    let app = App::new(SystemTime::now());
    let result = run_console(&runtime, app, io, tx, rx, &lost);
    restore_terminal();
    eprintln!("relaygate: stopping the engine (messages in DATA may finish)...");
    runtime.block_on(engine.shutdown());
    result
}

/// Attaches to the engine running on `db` and runs the console until the
/// user quits; the engine keeps running. Exits 2 (an error) if no engine
/// runs there.
pub fn attach(db: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = crate::data_dir::DataDir::for_db(db);
    let first = runtime.block_on(client::connect(db, &dir.socket))?;
    let hello = first.hello.clone();
    let mut io = match hello.access {
        Access::Admin => io::ConsoleIo::open(db, None)?,
        Access::Watch => io::ConsoleIo::watching(db),
    };
    let (requests_tx, requests) = tokio::sync::mpsc::unbounded_channel();
    io.set_control(requests_tx);
    let (tx, rx) = sync_channel::<ConsoleEvent>(EVENT_CAPACITY);
    let lost = Arc::new(AtomicU64::new(0));
    {
        let tx = tx.clone();
        let lost = Arc::clone(&lost);
        runtime.spawn(client::follow(
            db.to_path_buf(),
            dir.socket.clone(),
            first,
            requests,
            move |event| deliver(&tx, &lost, event),
        ));
    }
    let mut app = App::new(SystemTime::now());
    app.link = Link::Attached {
        pid: hello.pid,
        access: hello.access,
    };
    let result = run_console(&runtime, app, io, tx, rx, &lost);
    restore_terminal();
    result
}

/// Hands a message from the engine to the console loop. Events may be
/// dropped (and counted) when the loop is behind; everything else waits.
fn deliver(tx: &SyncSender<ConsoleEvent>, lost: &AtomicU64, event: ClientEvent) -> bool {
    let event = match event {
        ClientEvent::Message(ServerMessage::Event { event }) => {
            return match tx.try_send(ConsoleEvent::Engine(event)) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            };
        }
        other => other,
    };
    // This may wait for the console: tell the runtime, so that the
    // engine's other tasks move to another worker meanwhile.
    tokio::task::block_in_place(|| tx.send(ConsoleEvent::Link(event)).is_ok())
}

/// The one-process console's link to its engine: the same messages an
/// attached console gets over the socket, without the socket.
async fn in_process_link(
    feed: Feed,
    nudges: Arc<crate::engine::Nudges>,
    tx: SyncSender<ConsoleEvent>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ClientMessage>,
    lost: Arc<AtomicU64>,
) {
    let send = |m: ServerMessage| deliver(&tx, &lost, ClientEvent::Message(m));
    let Some(attachment) = feed.attach().await else {
        return;
    };
    let mut events = attachment.events;
    let skipped_at = attachment.skipped_at;
    let mut generation = attachment.snapshot.live.generation;
    if !send(ServerMessage::Snapshot {
        snapshot: attachment.snapshot,
    }) {
        return;
    }
    let mut status = tokio::time::interval(TICK);
    let mut live_tick = tokio::time::interval(crate::control::feed::TICK);
    // The same share of the stream as an attached console gets.
    let mut outbox = crate::control::feed::Outbox::new(&feed, skipped_at);
    loop {
        let open = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => !outbox.admit(&event) || send(ServerMessage::Event { event }),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    let Some(again) = feed.attach().await else { return };
                    events = again.events;
                    outbox.restart_at(again.skipped_at);
                    generation = again.snapshot.live.generation;
                    send(ServerMessage::Lagged { missed })
                        && send(ServerMessage::Snapshot { snapshot: again.snapshot })
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => false,
            },
            _ = live_tick.tick() => {
                let skipped = outbox.take_skipped();
                let ok = skipped == 0 || send(ServerMessage::Skipped { events: skipped });
                match feed.tick(generation).await {
                    Some(tick) if tick.generation == generation => ok,
                    // The events the tick counts go first, as the
                    // socket's server sends them (`take_waiting`).
                    Some(tick) => match crate::control::feed::take_waiting(&mut events, &outbox) {
                        Ok(waiting) => {
                            let ok = waiting
                                .into_iter()
                                .all(|event| send(ServerMessage::Event { event }));
                            generation = tick.generation;
                            ok && send(ServerMessage::Tick { tick })
                        }
                        Err(missed) => {
                            let Some(again) = feed.attach().await else { return };
                            events = again.events;
                            outbox.restart_at(again.skipped_at);
                            generation = again.snapshot.live.generation;
                            ok && send(ServerMessage::Lagged { missed })
                                && send(ServerMessage::Snapshot { snapshot: again.snapshot })
                        }
                    },
                    None => {
                        let Some(again) = feed.attach().await else { return };
                        events = again.events;
                        outbox.restart_at(again.skipped_at);
                        generation = again.snapshot.live.generation;
                        ok && send(ServerMessage::Snapshot { snapshot: again.snapshot })
                    }
                }
            }
            request = requests.recv() => match request {
                Some(ClientMessage::Dialogue { session }) => {
                    outbox.follow(Some(session));
                    send(ServerMessage::Dialogue {
                        session,
                        events: feed.dialogue(session).await,
                    })
                }
                Some(ClientMessage::Unfollow) => {
                    outbox.follow(None);
                    true
                }
                Some(ClientMessage::RetryBindings) => {
                    nudges.retry_bindings.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    send(ServerMessage::BindingsRetried { listeners: feed.listeners() })
                }
                Some(ClientMessage::Hello { .. } | ClientMessage::AskStatus { .. }) => true,
                None => false,
            },
            _ = status.tick() => send(ServerMessage::Status {
                status: feed.status(lost.load(Ordering::Relaxed)),
            }),
        };
        if !open {
            return;
        }
    }
}

/// The console over either link, until the user quits or a signal comes.
fn run_console(
    runtime: &tokio::runtime::Runtime,
    mut app: App,
    mut io: io::ConsoleIo,
    tx: SyncSender<ConsoleEvent>,
    rx: Receiver<ConsoleEvent>,
    lost: &AtomicU64,
) -> anyhow::Result<()> {
    match io.load_config() {
        Ok(config) => io::dispatch(&mut app, &mut io, Action::ConfigLoaded(Box::new(config))),
        Err(e) if app.watch_only() => {
            let _ = e;
        }
        Err(e) => return Err(e.into()),
    }
    runtime.spawn(forward_signals(tx.clone()));
    io.read_in_background(tx.clone());

    let _ = CONSOLE_THREAD.set(std::thread::current().id());
    install_panic_hook();
    let _guard = TerminalGuard;
    enter_terminal()?;
    let stop_input = Arc::new(AtomicBool::new(false));
    spawn_input_reader(tx, Arc::clone(&stop_input));
    let mut terminal =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).context("opening the terminal")?;
    let theme = theme::Theme::from_env();
    let result = event_loop(&mut terminal, &mut app, &mut io, &rx, lost, &theme);
    stop_input.store(true, Ordering::SeqCst);
    result
}

async fn forward_signals(tx: SyncSender<ConsoleEvent>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = tx.send(ConsoleEvent::Terminate);
}

/// Reads the terminal on its own thread (crossterm's read blocks).
fn spawn_input_reader(tx: SyncSender<ConsoleEvent>, stop: Arc<AtomicBool>) {
    use ratatui::crossterm::event::{self, Event as TermEvent};
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let ready = match event::poll(Duration::from_millis(200)) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(ConsoleEvent::InputFailed(e.to_string()));
                    return;
                }
            };
            if !ready {
                continue;
            }
            let event = match event::read() {
                Ok(TermEvent::Key(k)) => ConsoleEvent::Key(k),
                Ok(TermEvent::Mouse(m)) => ConsoleEvent::Mouse(m),
                Ok(TermEvent::Resize(w, h)) => ConsoleEvent::Resize(w, h),
                Ok(_) => continue,
                Err(e) => ConsoleEvent::InputFailed(e.to_string()),
            };
            let failed = matches!(event, ConsoleEvent::InputFailed(_));
            if tx.send(event).is_err() || failed {
                return;
            }
        }
    });
}

fn event_loop(
    terminal: &mut Terminal<CrosstermBackend<Stdout>>,
    app: &mut App,
    io: &mut io::ConsoleIo,
    rx: &Receiver<ConsoleEvent>,
    lost: &AtomicU64,
    theme: &theme::Theme,
) -> anyhow::Result<()> {
    let mut next_tick = Instant::now() + TICK;
    let mut last_frame: Option<Instant> = None;
    let mut dirty = true;
    // A key, a click or a resize since the last frame: draw it now.
    let mut typed = false;
    loop {
        let now = Instant::now();
        let frame_due = if typed {
            now
        } else {
            last_frame.map_or(now, |t| t + FRAME)
        };
        let first = if dirty && frame_due > now {
            // A frame is pending: let events gather until it is due rather
            // than waking for each one (under load, thousands a second);
            // in short naps, so a key waits 50 ms at most.
            std::thread::sleep(
                frame_due
                    .min(next_tick)
                    .min(now + KEY_LATENCY)
                    .saturating_duration_since(now),
            );
            match rx.try_recv() {
                Ok(e) => Some(e),
                Err(std::sync::mpsc::TryRecvError::Empty) => None,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        } else {
            let mut wait = next_tick.saturating_duration_since(now);
            if dirty {
                wait = wait.min(frame_due.saturating_duration_since(now));
            }
            match rx.recv_timeout(wait) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        };
        let mut events: Vec<ConsoleEvent> = first.into_iter().collect();
        events.extend(std::iter::from_fn(|| rx.try_recv().ok()).take(DRAIN_LIMIT));
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            events.push(ConsoleEvent::Tick(SystemTime::now()));
            app.lost = lost.load(Ordering::Relaxed);
            let panics = ENGINE_PANICS
                .lock()
                .map(|mut p| std::mem::take(&mut *p))
                .unwrap_or_default();
            for message in panics {
                events.push(ConsoleEvent::Engine(Stamped {
                    at: SystemTime::now(),
                    event: Arc::new(Event::Error {
                        session: None,
                        message,
                    }),
                }));
            }
        }
        for event in events {
            dirty = true;
            typed |= matches!(
                event,
                ConsoleEvent::Key(_) | ConsoleEvent::Mouse(_) | ConsoleEvent::Resize(..)
            );
            match event {
                ConsoleEvent::Terminate => return Ok(()),
                ConsoleEvent::InputFailed(e) => anyhow::bail!("reading the terminal: {e}"),
                other => {
                    if let Some(action) = other.action(app) {
                        io::dispatch(app, io, action);
                    }
                }
            }
            if app.quit {
                return Ok(());
            }
        }
        if dirty && (typed || last_frame.is_none_or(|t| t.elapsed() >= FRAME)) {
            let size = terminal.size()?;
            app.page = size.height.saturating_sub(10).max(1) as usize;
            queue!(terminal.backend_mut(), BeginSynchronizedUpdate)?;
            terminal.draw(|frame| render::draw(frame, app, theme))?;
            execute!(terminal.backend_mut(), EndSynchronizedUpdate)?;
            last_frame = Some(Instant::now());
            dirty = false;
            typed = false;
        }
    }
}
