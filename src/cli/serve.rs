//! `relaygate serve --headless`: the engine with no console, logging every
//! event to stderr (journald, under systemd), until SIGINT or SIGTERM.
//! Readiness is told to systemd (`Type=notify`) once the listeners are up;
//! SIGHUP reads the TLS certificate files again.

use crate::engine::Engine;
use crate::events::{Event, EventBus, Level, Stamped};
use anyhow::Context;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use tokio::sync::mpsc;

/// Runs the engine headless until a signal, then shuts down gracefully.
pub fn run(db: &Path) -> anyhow::Result<ExitCode> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let bus = std::sync::Arc::new(EventBus::default());
        // Command lines are logged at debug level only.
        let events = if tracing::enabled!(tracing::Level::DEBUG) {
            bus.subscribe(65_536)
        } else {
            bus.subscribe_without_commands(65_536)
        };
        let engine = Engine::start(db, bus).await?;
        let logger = tokio::spawn(log_events(events, std::sync::Arc::clone(engine.shared())));
        tracing::info!(
            "relaygate engine running on {} (spool {}, control socket {})",
            db.display(),
            engine.shared().spool.path().display(),
            engine.data_dir().socket.display()
        );
        // Ready when the listeners are up (or have failed and are being
        // retried: the service runs, and says which did not open).
        let mut status = systemd_status(&engine.listeners());
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        let reload_tls = std::sync::Arc::clone(&engine.nudges().reload_tls);
        let hangups = tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reading the TLS certificate files again");
                reload_tls.notify_one();
            }
        });
        // `systemctl status` follows the listeners (a binding retried
        // until it opens, one added or removed).
        let signalled = wait_for_signal();
        tokio::pin!(signalled);
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = &mut signalled => break,
                _ = every.tick() => {
                    let now = systemd_status(&engine.listeners());
                    if now != status {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&now)]);
                        status = now;
                    }
                }
            }
        }
        hangups.abort();
        // The drain may take shutdown-grace (up to an hour), 5 s more for
        // the sessions to close, and some margin: 15 s in all beyond it.
        // systemd is told, so its TimeoutStopSec never cuts it short.
        let grace = engine.shared().snapshot().settings.shutdown_grace_secs;
        let extend = u32::try_from((grace + 15).saturating_mul(1_000_000)).unwrap_or(u32::MAX);
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::ExtendTimeoutUsec(extend),
        ]);
        engine.shutdown().await;
        // Let the logger print what the shutdown emitted.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        logger.abort();
        tracing::info!("stopped");
        flush_log();
        Ok::<_, anyhow::Error>(())
    });
    flush_log();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `relaygate` with no command: on a terminal, attach to the engine
/// running on this database, or run engine and console in one process.
pub fn run_default(db: &Path) -> anyhow::Result<ExitCode> {
    let on_terminal = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if on_terminal
        && crate::data_dir::DataDir::for_db(db)
            .running_engine()
            .is_some()
    {
        crate::console::attach(db)?;
        return Ok(ExitCode::SUCCESS);
    }
    run_console(db)
}

/// The engine with the console in the foreground; headless (with a
/// one-line note) when standard input or output is not a terminal.
pub fn run_console(db: &Path) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!("relaygate: not a terminal, so no console: running headless, logging to stderr");
        return run(db);
    }
    crate::console::run(db)?;
    Ok(ExitCode::SUCCESS)
}

/// The one line `systemctl status` shows: how many bindings listen, or
/// which are being retried and why.
fn systemd_status(listeners: &[crate::engine::ListenerStatus]) -> String {
    let failed: Vec<String> = listeners
        .iter()
        .filter_map(|l| {
            l.bound
                .as_ref()
                .err()
                .map(|e| format!("{} ({e})", l.binding.addr))
        })
        .collect();
    if failed.is_empty() {
        format!("listening on {} binding(s)", listeners.len())
    } else {
        format!("retrying {}", failed.join(", "))
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| BatchedStderr)
        .with_target(false)
        .with_ansi(*LOG_IN_COLOUR.get_or_init(|| std::io::stderr().is_terminal()))
        .try_init();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Log lines waiting to be written to stderr.
static LOG_BUFFER: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
/// Past this, lines are written at once.
const LOG_BUFFER_MAX: usize = 64 * 1024;
/// How often the log takes the events waiting, and writes its lines.
const LOG_DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

/// The headless log's writer: lines gather in memory and go to stderr in
/// one write every 20 ms (or at 64 KiB): under load one system call per
/// batch instead of one per line.
struct BatchedStderr;

impl std::io::Write for BatchedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut b = LOG_BUFFER.lock().unwrap_or_else(|e| e.into_inner());
            b.extend_from_slice(buf);
            b.len() >= LOG_BUFFER_MAX
        };
        if full {
            flush_log();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes the gathered log lines to stderr.
pub fn flush_log() {
    let lines = std::mem::take(&mut *LOG_BUFFER.lock().unwrap_or_else(|e| e.into_inner()));
    write_log(&lines);
}

/// For the panic hook, so nothing logged before a panic is lost; never
/// waits (the panic may have happened with the buffer held).
pub fn flush_log_on_panic() {
    use std::sync::TryLockError;
    let lines = match LOG_BUFFER.try_lock() {
        Ok(mut b) => std::mem::take(&mut *b),
        Err(TryLockError::Poisoned(e)) => std::mem::take(&mut *e.into_inner()),
        Err(TryLockError::WouldBlock) => return,
    };
    write_log(&lines);
}

fn write_log(lines: &[u8]) {
    if !lines.is_empty() {
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(lines);
    }
}

/// One log line per event; decisions with their full reason. Events are
/// taken in batches every 20 ms (not a wake-up each), and each batch is
/// one write.
async fn log_events(
    mut events: mpsc::Receiver<Stamped>,
    shared: std::sync::Arc<crate::engine::Shared>,
) {
    let mut reported_drops = 0;
    let mut scratch = LineScratch::default();
    let mut every = tokio::time::interval(LOG_DRAIN_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let dropped = shared.events.dropped();
        if dropped > reported_drops {
            tracing::warn!(
                "{} events dropped: the log could not keep up",
                dropped - reported_drops
            );
            reported_drops = dropped;
        }
        let gone = loop {
            match events.try_recv() {
                Ok(stamped) => log_event(&stamped, &mut scratch),
                Err(mpsc::error::TryRecvError::Empty) => break false,
                Err(mpsc::error::TryRecvError::Disconnected) => break true,
            }
        };
        flush_log();
        if gone {
            return;
        }
    }
}

/// What the log keeps from one line to the next: the text's buffer, and
/// the time layout of the last second seen.
#[derive(Default)]
struct LineScratch {
    text: String,
    second: Option<(u64, [u8; 20])>,
}

/// One event's line, stamped with the time the event happened.
fn log_event(stamped: &Stamped, scratch: &mut LineScratch) {
    let event = stamped.event.as_ref();
    // Command lines are logged at debug level only: do not even format them
    // unless that level is on.
    if matches!(event, Event::Command { .. }) && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    scratch.text.clear();
    let level = crate::events::describe_into(event, &mut scratch.text);
    let enabled = match level {
        Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(tracing::Level::INFO),
        Level::Warn => tracing::enabled!(tracing::Level::WARN),
        Level::Error => tracing::enabled!(tracing::Level::ERROR),
    };
    if !enabled {
        return;
    }
    let text = &scratch.text;
    if *LOG_IN_COLOUR.get_or_init(|| std::io::stderr().is_terminal()) {
        match level {
            Level::Debug => tracing::debug!("{}", text),
            Level::Info => tracing::info!("{}", text),
            Level::Warn => tracing::warn!("{}", text),
            Level::Error => tracing::error!("{}", text),
        }
        return;
    }
    // Every event passes here: the line is laid out as tracing's are (UTC
    // time to the microsecond, level, text) but written straight into the
    // batch, without tracing's formatting machinery.
    let level: &[u8] = match level {
        Level::Debug => b"DEBUG ",
        Level::Info => b" INFO ",
        Level::Warn => b" WARN ",
        Level::Error => b"ERROR ",
    };
    let mut buf = LOG_BUFFER.lock().unwrap_or_else(|e| e.into_inner());
    log_time(&mut buf, stamped.at, &mut scratch.second);
    buf.push(b' ');
    buf.extend_from_slice(level);
    // `describe_into` has escaped every control character already.
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'\n');
    let full = buf.len() >= LOG_BUFFER_MAX;
    drop(buf);
    if full {
        flush_log();
    }
}

/// Whether stderr is a terminal (then tracing writes every line, in colour).
static LOG_IN_COLOUR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `2026-11-26T13:57:23.660087Z`, as tracing writes it. The part up to
/// the second is laid out once a second (`second` keeps it).
fn log_time(out: &mut Vec<u8>, at: std::time::SystemTime, second: &mut Option<(u64, [u8; 20])>) {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let prefix = match second {
        Some((s, text)) if *s == secs => text,
        _ => {
            use std::io::Write;
            let mut text = [0u8; 20];
            let days = (secs / 86_400) as i64;
            let (y, m, d) = crate::smtp::trace_header::civil_from_days(days);
            let rem = secs % 86_400;
            let _ = write!(
                &mut text[..],
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            &mut second.insert((secs, text)).1
        }
    };
    out.extend_from_slice(prefix);
    let micros = since.subsec_micros();
    let mut digits = [0u8; 7];
    let mut n = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits[6] = b'Z';
    out.extend_from_slice(&digits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn log_lines_have_tracing_s_time_layout() {
        let mut second = None;
        let mut line = |at| {
            let mut out = Vec::new();
            log_time(&mut out, at, &mut second);
            String::from_utf8(out).unwrap()
        };
        let at = UNIX_EPOCH + Duration::from_micros(1_795_700_854_353_915);
        assert_eq!(line(at), "2026-11-26T13:47:34.353915Z");
        // The same second again (its layout kept), then the next ones.
        assert_eq!(
            line(at + Duration::from_micros(7)),
            "2026-11-26T13:47:34.353922Z"
        );
        assert_eq!(
            line(at + Duration::from_micros(646_085)),
            "2026-11-26T13:47:35.000000Z"
        );
        assert_eq!(
            line(at + Duration::from_secs(86_400)),
            "2026-11-27T13:47:34.353915Z"
        );
        assert_eq!(line(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
    }
}
