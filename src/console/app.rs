//! The console's state and the one function that changes it:
//! [`App::update`] takes an [`Action`] and returns the [`Effect`]s it needs
//! (saves, queue operations, reads). No I/O happens here, so the app can be
//! driven headless in tests exactly as the terminal drives it.

use super::action::{Action, Command, Effect, Panel, PasswordWrite, QueueOp, TraceAsk};
use super::form::{Field, Form, FormPurpose};
use super::io::ConfigView;
use super::keymap::{Context, command_for};
use super::list_editor::{ListEditor, ListFocus};
use super::panels::Request;
use super::panels::bindings::BindingsView;
use super::panels::live::LiveView;
use super::panels::log::LogView;
pub use super::panels::policy::PolicyRow;
use super::panels::policy::PolicyView;
pub use super::panels::row_matches;
use super::panels::users::UsersView;
use super::traffic::{LogLine, Traffic};
use crate::bindings::{BindKind, Binding, parse_listen_addr};
use crate::control::protocol::{Access, ClientMessage};
use crate::engine::ListenerStatus;
use crate::events::Event;
use crate::policy::rules::Rule;
use crate::policy::settings::AuthMode;
use crate::queue_admin::QueueAction;
use crate::store::check_login_name;
use ratatui::crossterm::event::KeyEvent;
use std::net::SocketAddr;
use std::time::SystemTime;

/// An operation waiting for a yes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    RemoveBinding(SocketAddr),
    RemoveDomain(String),
    RemoveRule(usize),
    RemoveUser(String),
    /// Delete these messages (asks: bounce or silently).
    DeleteMessages {
        ids: Vec<String>,
        named: bool,
    },
    /// Retry, hold or release these marked messages.
    QueueAction(super::action::QueueOp),
    DiscardListEdits,
    Quit,
    /// The auth mode, picked from its three.
    AuthMode,
    RemoveQuota(i64),
    LiftBan(ipnet::IpNet),
    Unsuspend(String),
    /// A switch change that opens the gateway to anyone (asked first).
    SetSwitch {
        key: String,
        on: bool,
    },
}

/// A question before something that cannot be undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub question: String,
    pub pending: Pending,
}

/// What a reading popup shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewerSource {
    /// A connection's dialogue, live.
    Connection(u64),
    Text {
        title: String,
        lines: Vec<String>,
    },
}

/// What has the keyboard besides the panel itself.
#[derive(Debug, Clone)]
pub enum Mode {
    Normal,
    Help { scroll: usize },
    Viewer { source: ViewerSource, scroll: usize },
    Form(Form),
    Confirm(Confirm),
}

/// The message line under the panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub ok: bool,
    /// When it was said: it is shown for [`STATUS_OK_FOR`] (an error for
    /// [`STATUS_ERROR_FOR`]), then goes.
    pub at: SystemTime,
}

/// How long an outcome stays in the header.
pub const STATUS_OK_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// How long an error stays in the header.
pub const STATUS_ERROR_FOR: std::time::Duration = std::time::Duration::from_secs(12);

impl Status {
    /// Whether it is still shown at `now`.
    pub fn shown_at(&self, now: SystemTime) -> bool {
        let age = now.duration_since(self.at).unwrap_or_default();
        age < if self.ok {
            STATUS_OK_FOR
        } else {
            STATUS_ERROR_FOR
        }
    }
}

/// How the console reaches the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Engine and console in this process: quitting stops the engine.
    OneProcess,
    /// Attached to a running engine over its control socket.
    Attached { pid: u32, access: Access },
    /// The engine went away, or refused us (`refused`); reconnecting.
    Detached {
        reason: String,
        pid: Option<u32>,
        refused: bool,
    },
}

/// What to tell a watcher who presses an edit key.
pub const WATCH_ONLY: &str = "watching only: editing needs the service user (sudo -u relaygate relaygate --db DB console) or root";

/// The whole console state.
#[derive(Debug, Clone)]
pub struct App {
    pub link: Link,
    /// The persisted history was asked for (once, at the first snapshot).
    history_asked: bool,
    pub panel: Panel,
    pub mode: Mode,
    pub traffic: Traffic,
    pub config: ConfigView,
    pub listeners: Vec<ListenerStatus>,
    pub queue: super::panels::queue::QueueView,
    /// Delivery attempts under way, by message id (from the engine).
    pub in_flight: std::collections::HashMap<String, crate::delivery::InFlightAttempt>,
    pub lists: ListEditor,
    pub log: LogView,
    pub live: LiveView,
    pub bindings: BindingsView,
    pub policy: PolicyView,
    pub users: UsersView,
    pub limits: super::panels::limits::LimitsView,
    pub status: Option<Status>,
    /// Events the engine could not hand to the console.
    pub dropped: u64,
    /// Room on the engine's spool disk, from its last status.
    pub spool: Option<crate::spool_space::SpoolRoom>,
    /// Events skipped because the console fell behind the engine.
    pub lagged: u64,
    /// Events the console's own queue could not take.
    pub lost: u64,
    /// Events the engine did not send to keep the console's share small
    /// (they are in the event log; the counters include them).
    pub skipped: u64,
    pub now: SystemTime,
    /// Rows a page-up/down moves (set from the terminal size).
    pub page: usize,
    pub quit: bool,
    saving_lists: bool,
    /// The title of the trace asked for, until it comes.
    trace_title: Option<String>,
    awaiting_reload: bool,
    ticks: u64,
    /// The password hash awaited (its ticket), while a form waits for it.
    hashing: Option<u64>,
    /// The last ticket given to a password hash.
    hash_tickets: u64,
}

impl App {
    pub fn new(now: SystemTime) -> App {
        App {
            link: Link::OneProcess,
            history_asked: false,
            panel: Panel::Live,
            mode: Mode::Normal,
            traffic: Traffic::default(),
            config: ConfigView::default(),
            listeners: Vec::new(),
            queue: Default::default(),
            in_flight: Default::default(),
            lists: ListEditor::default(),
            log: LogView::default(),
            live: LiveView::default(),
            bindings: BindingsView::default(),
            policy: PolicyView::default(),
            users: UsersView::default(),
            limits: Default::default(),
            status: None,
            dropped: 0,
            spool: None,
            lagged: 0,
            lost: 0,
            skipped: 0,
            now,
            page: 10,
            quit: false,
            saving_lists: false,
            trace_title: None,
            awaiting_reload: false,
            ticks: 0,
            hashing: None,
            hash_tickets: 0,
        }
    }

    /// The keymap contexts in force, most specific first.
    pub fn contexts(&self) -> Vec<Context> {
        match &self.mode {
            Mode::Help { .. } => vec![Context::Help],
            Mode::Viewer { .. } => vec![Context::Viewer],
            Mode::Form(_) => vec![Context::Form],
            Mode::Confirm(c) if matches!(c.pending, Pending::DeleteMessages { .. }) => {
                vec![Context::ConfirmDelete]
            }
            Mode::Confirm(c) if c.pending == Pending::AuthMode => vec![Context::PickAuthMode],
            Mode::Confirm(_) => vec![Context::Confirm],
            Mode::Normal if self.editing_lists() => vec![Context::ListEdit],
            Mode::Normal => vec![Context::Panel(self.panel), Context::Global],
        }
    }

    pub fn editing_lists(&self) -> bool {
        self.panel == Panel::Lists && self.lists.editing
    }

    /// Whether unbound keys are text for an editor.
    fn takes_text(&self) -> bool {
        matches!(self.mode, Mode::Form(_))
            || (matches!(self.mode, Mode::Normal) && self.editing_lists())
    }

    /// What a key press means here: a command from the keymap, text for an
    /// editor, or nothing.
    pub fn key_action(&self, key: KeyEvent) -> Option<Action> {
        if key.kind == ratatui::crossterm::event::KeyEventKind::Release {
            return None;
        }
        match command_for(&self.contexts(), &key) {
            Some(c) => Some(Action::Command(c)),
            None if self.takes_text() => Some(Action::Input(key)),
            None => None,
        }
    }

    /// Takes the engine's listeners; a binding that has just failed to
    /// open is said so, with the system's error (it is retried, and `r` on
    /// Bindings retries it now).
    fn listeners_now(&mut self, listeners: Vec<ListenerStatus>) {
        let newly_failed: Vec<String> = listeners
            .iter()
            .filter_map(|l| {
                let err = l.bound.as_ref().err()?;
                let was_failing = self
                    .listeners
                    .iter()
                    .any(|o| o.binding.addr == l.binding.addr && o.bound.is_err());
                (!was_failing).then(|| format!("cannot listen on {}: {err}", l.binding.addr))
            })
            .collect();
        let first = self.listeners.is_empty();
        self.listeners = listeners;
        if !first && !newly_failed.is_empty() {
            self.say(
                false,
                format!(
                    "{} (retried; r on Bindings retries now)",
                    newly_failed.join("; ")
                ),
            );
        }
    }

    fn say(&mut self, ok: bool, text: impl Into<String>) {
        self.status = Some(Status {
            text: text.into(),
            ok,
            at: self.now,
        });
    }

    /// The one place the state changes.
    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Command(c) => self.command(c),
            Action::Input(key) => self.input(key),
            Action::Resize => Vec::new(),
            Action::Tick(now) => {
                self.now = now;
                self.ticks += 1;
                let mut effects = vec![Effect::PollStore];
                if self.panel == Panel::Queue && self.ticks.is_multiple_of(2) {
                    effects.push(Effect::LoadQueue);
                }
                effects
            }
            Action::Engine(stamped) => {
                let before = self.traffic.log.lines.len();
                let full = before >= super::traffic::LOG_LINES;
                self.traffic.apply(&stamped);
                let added = full || self.traffic.log.lines.len() > before;
                self.log.line_added(&self.traffic.log, added);
                match stamped.event.as_ref() {
                    Event::LoginSuspended { login, why } => {
                        self.say(
                            false,
                            format!(
                                "LOGIN SUSPENDED: {login}: {why} (8: Quotas & bans, x lifts it)"
                            ),
                        );
                    }
                    Event::ClientBanned { net, reason, .. } => {
                        self.say(false, format!("banned {net}: {reason} (8: Quotas & bans)"));
                    }
                    _ => {}
                }
                if let Event::PolicyReloaded { allow, deny } = stamped.event.as_ref()
                    && self.awaiting_reload
                {
                    self.awaiting_reload = false;
                    self.say(
                        true,
                        format!(
                            "in force: the engine reloaded ({allow} allow, {deny} deny entries)"
                        ),
                    );
                }
                Vec::new()
            }
            Action::Dropped(n) => {
                self.dropped = n;
                Vec::new()
            }
            Action::Status(status) => {
                self.in_flight = status
                    .in_flight
                    .into_iter()
                    .map(|a| (a.message_id.clone(), a))
                    .collect();
                self.listeners_now(status.listeners);
                self.dropped = status.dropped + self.lagged + self.lost;
                self.spool = status.spool;
                Vec::new()
            }
            Action::ConfigLoaded(view) => {
                self.lists.load(&view.allow, &view.deny);
                self.config = *view;
                self.lists
                    .evaluate_test(&self.config.policy, &self.config.policy_config);
                self.clamp_selections();
                Vec::new()
            }
            Action::Listeners(l) => {
                self.listeners_now(l);
                Vec::new()
            }
            Action::QueueLoaded(result) => {
                self.queue.load(result, self.now);
                Vec::new()
            }
            Action::HistoryFound { search, found } => {
                if let Err(e) = self.log.history_found(&search, found, &self.traffic.log) {
                    self.say(false, e);
                }
                Vec::new()
            }
            Action::History(lines) => {
                self.traffic.log.prepend_history(lines);
                Vec::new()
            }
            Action::Attached(hello) => {
                let again = matches!(self.link, Link::Detached { .. });
                self.link = match self.link {
                    Link::OneProcess => Link::OneProcess,
                    _ => Link::Attached {
                        pid: hello.pid,
                        access: hello.access,
                    },
                };
                if again {
                    self.say(
                        true,
                        format!("reattached to the engine (pid {})", hello.pid),
                    );
                }
                Vec::new()
            }
            Action::Snapshot(snapshot) => {
                let snapshot = *snapshot;
                let last_ms = self.traffic.log.lines.back().map(|l| l.at_ms);
                self.traffic.live = snapshot.live;
                self.listeners = snapshot.listeners;
                self.dropped = self.dropped.max(snapshot.dropped);
                for stamped in &snapshot.recent {
                    if let Some(line) = super::traffic::log_line(stamped)
                        && last_ms.is_none_or(|t| line.at_ms > t)
                    {
                        self.traffic.log.push(line);
                    }
                }
                self.clamp_selections();
                let mut effects = Vec::new();
                if !self.history_asked {
                    self.history_asked = true;
                    let before = snapshot
                        .recent
                        .first()
                        .map_or(snapshot.started, |e| e.at.min(snapshot.started));
                    effects.push(Effect::LoadHistory { before });
                }
                if let Mode::Viewer {
                    source: ViewerSource::Connection(id),
                    ..
                } = self.mode
                {
                    effects.push(Effect::Control(ClientMessage::Dialogue { session: id }));
                }
                effects
            }
            Action::LiveTick(tick) => {
                self.traffic.live.merge(*tick);
                self.clamp_selections();
                Vec::new()
            }
            Action::Skipped(n) => {
                self.skipped += n;
                Vec::new()
            }
            Action::Lagged(missed) => {
                self.lagged += missed;
                self.dropped += missed;
                Vec::new()
            }
            Action::Dialogue { session, events } => {
                if let Some(c) = self.traffic.live.connections.get_mut(&session) {
                    c.replace_dialogue(events);
                }
                Vec::new()
            }
            Action::Traced(result) => {
                let title = self.trace_title.take().unwrap_or_else(|| "Trace".into());
                match result {
                    Ok(lines) => {
                        self.mode = Mode::Viewer {
                            source: ViewerSource::Text { title, lines },
                            scroll: 0,
                        }
                    }
                    Err(e) => self.say(false, format!("{title}: {e}")),
                }
                Vec::new()
            }
            Action::Detached { reason, refused } => {
                let pid = match &self.link {
                    Link::Attached { pid, .. } => Some(*pid),
                    Link::Detached { pid, .. } => *pid,
                    Link::OneProcess => None,
                };
                self.link = Link::Detached {
                    reason,
                    pid,
                    refused,
                };
                Vec::new()
            }
            Action::BindingsRetried(listeners) => {
                let failed = listeners.iter().filter(|l| l.bound.is_err()).count();
                self.listeners = listeners;
                if failed == 0 {
                    self.say(true, "every binding is listening");
                } else {
                    self.say(
                        false,
                        format!(
                            "{failed} binding(s) still cannot listen; the engine keeps retrying"
                        ),
                    );
                }
                Vec::new()
            }
            Action::RemoteError(message) => {
                self.say(false, format!("the engine refused: {message}"));
                Vec::new()
            }
            Action::QuitQuestion { queued } => {
                let queued = match queued {
                    Ok(n) => format!("{n} queued message(s)"),
                    Err(e) => format!("the queue could not be read: {e}"),
                };
                let dirty = if self.lists.is_dirty() {
                    " The relay lists' unsaved edits are dropped."
                } else {
                    ""
                };
                self.ask(
                    format!(
                        "Stop the engine? Mail stops until relaygate runs again. It has {} open session(s) and {queued}.{dirty}",
                        self.traffic.open
                    ),
                    Pending::Quit,
                );
                Vec::new()
            }
            Action::Done(result) => {
                self.done(result);
                Vec::new()
            }
            Action::PasswordHashed {
                ticket,
                write,
                hash,
            } => {
                // A form cancelled meanwhile: nothing is saved.
                if self.hashing != Some(ticket) {
                    return Vec::new();
                }
                self.hashing = None;
                match hash {
                    Ok(hash) => vec![Effect::SavePassword { write, hash }],
                    Err(e) => {
                        self.done(Err(format!("not saved: {e}")));
                        Vec::new()
                    }
                }
            }
            Action::ImportRead { list, path, text } => {
                match text {
                    Ok(text) => {
                        self.lists.import(list, &path, &text);
                        self.mode = Mode::Normal;
                        self.panel = Panel::Lists;
                        if !self.lists.editing {
                            self.lists.begin(match list {
                                crate::policy::ip_lists::ListKind::Allow => ListFocus::Allow,
                                crate::policy::ip_lists::ListKind::Deny => ListFocus::Deny,
                            });
                        }
                        let first = self.lists.report.first().cloned().unwrap_or_default();
                        self.say(true, first);
                    }
                    Err(e) => {
                        if let Mode::Form(f) = &mut self.mode {
                            f.error = Some(e.clone());
                        }
                        self.say(false, e);
                    }
                }
                Vec::new()
            }
        }
    }

    fn done(&mut self, result: Result<String, String>) {
        if self.saving_lists {
            self.saving_lists = false;
            match &result {
                Ok(_) => {
                    self.lists.mark_saved();
                    self.lists.end();
                    self.lists.report.clear();
                    self.awaiting_reload = true;
                }
                Err(e) => self.lists.report = vec![e.clone()],
            }
        }
        if let Mode::Form(form) = &mut self.mode {
            match &result {
                Ok(_) => self.mode = Mode::Normal,
                Err(e) => form.error = Some(e.clone()),
            }
        }
        match result {
            Ok(text) => self.say(true, text),
            Err(text) => self.say(false, text),
        }
    }

    fn command(&mut self, c: Command) -> Vec<Effect> {
        match &mut self.mode {
            Mode::Help { scroll } => {
                match c {
                    Command::Cancel => self.mode = Mode::Normal,
                    other => *scroll = scrolled(*scroll, other, self.page),
                }
                return Vec::new();
            }
            Mode::Viewer { scroll, source } => {
                let following = matches!(source, ViewerSource::Connection(_));
                match c {
                    Command::Cancel => {
                        self.mode = Mode::Normal;
                        if following {
                            return vec![Effect::Control(ClientMessage::Unfollow)];
                        }
                    }
                    other => *scroll = scrolled(*scroll, other, self.page),
                }
                return Vec::new();
            }
            Mode::Form(form) => {
                return match c {
                    Command::Cancel => {
                        self.mode = Mode::Normal;
                        self.hashing = None;
                        self.say(true, "cancelled: nothing was saved");
                        Vec::new()
                    }
                    Command::NextField => {
                        form.next_field();
                        Vec::new()
                    }
                    Command::PrevField => {
                        form.prev_field();
                        Vec::new()
                    }
                    Command::Open if !form.on_last_field() => {
                        form.next_field();
                        Vec::new()
                    }
                    Command::Open | Command::Save => self.submit_form(),
                    _ => Vec::new(),
                };
            }
            Mode::Confirm(confirm) => {
                let pending = confirm.pending.clone();
                return match c {
                    Command::No | Command::Cancel => {
                        self.mode = Mode::Normal;
                        self.say(true, "nothing was changed");
                        Vec::new()
                    }
                    Command::Yes => {
                        self.mode = Mode::Normal;
                        self.confirmed(pending, false)
                    }
                    Command::Bounce | Command::Silent => {
                        self.mode = Mode::Normal;
                        self.confirmed(pending, c == Command::Bounce)
                    }
                    Command::AuthNone | Command::AuthAnyUser | Command::AuthSpecified
                        if pending == Pending::AuthMode =>
                    {
                        self.mode = Mode::Normal;
                        self.set_auth_mode(match c {
                            Command::AuthNone => AuthMode::None,
                            Command::AuthAnyUser => AuthMode::AnyUser,
                            _ => AuthMode::Specified,
                        })
                    }
                    _ => Vec::new(),
                };
            }
            Mode::Normal => {}
        }
        if self.editing_lists() {
            return self.list_edit_command(c);
        }
        if self.watch_only() && self.edits(c) {
            self.say(false, WATCH_ONLY);
            return Vec::new();
        }
        match c {
            Command::Quit if self.link == Link::OneProcess => vec![Effect::CountQueue],
            Command::Quit => {
                if self.lists.is_dirty() {
                    self.ask(
                        "The relay lists have unsaved edits. Quit and drop them?",
                        Pending::Quit,
                    );
                } else {
                    self.quit = true;
                }
                Vec::new()
            }
            Command::Help => {
                self.mode = Mode::Help { scroll: 0 };
                Vec::new()
            }
            Command::NextPanel => self.go(self.panel.next()),
            Command::PrevPanel => self.go(self.panel.prev()),
            Command::GoTo(p) => self.go(p),
            Command::Up
            | Command::Down
            | Command::PageUp
            | Command::PageDown
            | Command::Top
            | Command::Bottom
            | Command::ScrollUp
            | Command::ScrollDown => {
                self.move_selection(c);
                Vec::new()
            }
            other => self.panel_command(other),
        }
    }

    /// Attached through the console group: the console watches only.
    pub fn watch_only(&self) -> bool {
        matches!(
            self.link,
            Link::Attached {
                access: Access::Watch,
                ..
            }
        )
    }

    /// Whether a command would change the configuration or the queue.
    fn edits(&self, c: Command) -> bool {
        let config_panel = !matches!(self.panel, Panel::Live | Panel::Log);
        matches!(
            c,
            Command::Add
                | Command::AddRule
                | Command::Edit
                | Command::Remove
                | Command::Toggle
                | Command::ResetPassword
                | Command::SenderAddresses
                | Command::Import
                | Command::Save
                | Command::Hold
                | Command::Release
                | Command::Delete
        ) || (config_panel && matches!(c, Command::Open | Command::Retry))
    }

    fn go(&mut self, panel: Panel) -> Vec<Effect> {
        self.panel = panel;
        if panel == Panel::Queue {
            vec![Effect::LoadQueue]
        } else {
            Vec::new()
        }
    }

    /// Asks for a trace; the story opens in a reader when it comes.
    fn trace(&mut self, ask: Option<TraceAsk>) -> Vec<Effect> {
        match ask {
            Some(ask) => {
                self.trace_title = Some(trace_title(&ask.query));
                vec![Effect::Trace(ask)]
            }
            None => Vec::new(),
        }
    }

    fn ask(&mut self, question: impl Into<String>, pending: Pending) {
        self.mode = Mode::Confirm(Confirm {
            question: question.into(),
            pending,
        });
    }

    /// Does what a panel's key asked for.
    fn request(&mut self, request: Request) -> Vec<Effect> {
        match request {
            Request::Nothing => Vec::new(),
            Request::Form(form) => {
                self.mode = Mode::Form(form);
                Vec::new()
            }
            Request::Ask { question, pending } => {
                self.ask(question, pending);
                Vec::new()
            }
            Request::Say { ok, text } => {
                self.say(ok, text);
                Vec::new()
            }
            Request::Effects(effects) => effects,
            Request::View(source) => {
                let follow = match &source {
                    ViewerSource::Connection(id) => {
                        vec![Effect::Control(ClientMessage::Dialogue { session: *id })]
                    }
                    ViewerSource::Text { .. } => Vec::new(),
                };
                self.mode = Mode::Viewer { source, scroll: 0 };
                follow
            }
            Request::Trace(query) => self.trace(Some(query)),
        }
    }

    fn open_form(&mut self, purpose: FormPurpose, title: impl Into<String>, fields: Vec<Field>) {
        self.mode = Mode::Form(Form::new(purpose, title, fields));
    }

    fn panel_command(&mut self, c: Command) -> Vec<Effect> {
        match (self.panel, c) {
            (Panel::Live, _) => {
                let request = self.live.command(c, &self.traffic);
                return self.request(request);
            }
            (Panel::Log, _) => {
                let request = self.log.command(c, &self.traffic.log);
                return self.request(request);
            }
            (Panel::Bindings, Command::Retry) => {
                self.say(
                    true,
                    "asking the engine to try the failed bindings again...",
                );
                return vec![Effect::Control(ClientMessage::RetryBindings)];
            }
            (Panel::Bindings, _) => {
                let request = self.bindings.command(c, &self.config.bindings);
                return self.request(request);
            }
            (Panel::Lists, Command::Edit) => self.lists.begin(ListFocus::Allow),
            (Panel::Lists, Command::Toggle) => {
                self.lists.begin(ListFocus::Test);
            }
            (Panel::Lists, Command::Import) => self.open_import(),
            (Panel::Policy, _) => {
                let request = self.policy.command(c, &self.config);
                return self.request(request);
            }
            (Panel::Users, _) => {
                let request = self.users.command(c, &self.config.users);
                return self.request(request);
            }
            (Panel::Queue, _) => {
                let request = self.queue.command(c);
                return self.request(request);
            }
            (Panel::Limits, _) => {
                let request = self.limits.command(c, &self.config);
                return self.request(request);
            }
            _ => {}
        }
        Vec::new()
    }

    fn open_import(&mut self) {
        let list = self.lists.focused_list();
        self.open_form(
            FormPurpose::Import(list),
            format!("Import into the {list} list"),
            vec![Field::new(
                "file",
                "path of a CSV, TSV or one-per-line file; entries are added to the editor, Ctrl-S saves",
            )],
        );
    }

    fn list_edit_command(&mut self, c: Command) -> Vec<Effect> {
        match c {
            Command::Save => match self.lists.to_save() {
                Err(problems) => {
                    self.say(
                        false,
                        format!(
                            "not saved: {} invalid line(s); nothing was written. {}",
                            problems.len(),
                            problems.first().cloned().unwrap_or_default()
                        ),
                    );
                    // The invalid lines are listed under the editors already.
                    self.lists.report.clear();
                    Vec::new()
                }
                Ok(edits) if edits.is_empty() => {
                    self.lists.end();
                    self.say(true, "nothing to save: the lists are as stored");
                    Vec::new()
                }
                Ok(edits) => {
                    self.saving_lists = true;
                    vec![Effect::SaveLists(edits)]
                }
            },
            Command::Cancel => {
                if self.lists.is_dirty() {
                    self.ask(
                        "Drop the unsaved edits of the relay lists?",
                        Pending::DiscardListEdits,
                    );
                } else {
                    self.lists.revert();
                    self.say(true, "edit closed; nothing was changed");
                }
                Vec::new()
            }
            Command::NextField | Command::PrevField => {
                let order = [ListFocus::Allow, ListFocus::Deny, ListFocus::Test];
                let i = order
                    .iter()
                    .position(|f| *f == self.lists.focus)
                    .unwrap_or(0);
                let step = if c == Command::NextField { 1 } else { 2 };
                self.lists.set_focus(order[(i + step) % 3]);
                Vec::new()
            }
            Command::Import => {
                self.open_import();
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn input(&mut self, key: KeyEvent) -> Vec<Effect> {
        let editing_lists = self.editing_lists();
        match &mut self.mode {
            Mode::Form(form) => form.input(&key),
            Mode::Normal if editing_lists => {
                self.lists.input(key);
                self.lists
                    .evaluate_test(&self.config.policy, &self.config.policy_config);
            }
            _ => {}
        }
        Vec::new()
    }

    fn confirmed(&mut self, pending: Pending, bounce: bool) -> Vec<Effect> {
        match pending {
            Pending::RemoveBinding(a) => vec![Effect::RemoveBinding(a)],
            Pending::RemoveDomain(d) => vec![Effect::RemoveDomain(d)],
            Pending::RemoveRule(n) => vec![Effect::RemoveRule(n)],
            Pending::RemoveUser(u) => vec![Effect::RemoveUser(u)],
            Pending::RemoveQuota(id) => vec![Effect::RemoveQuota(id)],
            Pending::LiftBan(net) => vec![Effect::LiftBan(net)],
            Pending::Unsuspend(name) => vec![Effect::Unsuspend(name)],
            Pending::SetSwitch { key, on } => vec![Effect::SetSwitch { key, on }],
            Pending::DeleteMessages { ids, named } => {
                self.queue.marked.clear();
                vec![
                    Effect::Queue(QueueOp {
                        action: QueueAction::Delete { bounce },
                        ids,
                        named,
                        busy: self.in_flight.keys().cloned().collect(),
                    }),
                    Effect::LoadQueue,
                ]
            }
            Pending::QueueAction(op) => {
                self.queue.marked.clear();
                vec![Effect::Queue(op), Effect::LoadQueue]
            }
            Pending::DiscardListEdits => {
                self.lists.revert();
                self.say(true, "edits dropped; the lists are as stored");
                Vec::new()
            }
            // Picked by its own keys, never by a yes.
            Pending::AuthMode => Vec::new(),
            Pending::Quit => {
                self.quit = true;
                Vec::new()
            }
        }
    }

    /// Validates a form and turns it into an effect; a refusal stays in the
    /// form with its reason.
    fn submit_form(&mut self) -> Vec<Effect> {
        let Mode::Form(form) = &mut self.mode else {
            return Vec::new();
        };
        if self.hashing.is_some() {
            // Submitted already: the password is being hashed.
            return Vec::new();
        }
        let result: Result<Option<Effect>, String> = match &form.purpose {
            FormPurpose::PanelFilter(panel) => {
                let text = form.value(0).trim().to_lowercase();
                match panel {
                    Panel::Live => self.live.set_filter(&text),
                    Panel::Bindings => self.bindings.set_filter(&text),
                    _ => self.users.set_filter(&text),
                }
                self.mode = Mode::Normal;
                return Vec::new();
            }
            FormPurpose::QueueFilter => {
                let text = form.value(0).to_string();
                self.queue.set_filter(&text, self.now);
                self.mode = Mode::Normal;
                return Vec::new();
            }
            FormPurpose::LogSearch => {
                let text = form.value(0).to_string();
                self.mode = Mode::Normal;
                return match self.log.set_search(&text) {
                    Some(text) => vec![Effect::SearchHistory(text)],
                    None => Vec::new(),
                };
            }
            FormPurpose::AddBinding | FormPurpose::EditBinding(_) => {
                let old = match &form.purpose {
                    FormPurpose::EditBinding(a) => Some(*a),
                    _ => None,
                };
                parse_listen_addr(form.value(0)).and_then(|addr| {
                    let kind = BindKind::parse(form.value(1)).ok_or_else(|| {
                        format!(
                            "kind {:?}: must be smtp, submission or smtps",
                            form.value(1)
                        )
                    })?;
                    Ok(Some(Effect::PutBinding {
                        old,
                        new: Binding { addr, kind },
                    }))
                })
            }
            FormPurpose::AddQuota => (|| {
                let scope = crate::abuse::quota::QuotaScope::parse(form.value(0))?;
                let rate = crate::abuse::rate::Rate::parse(form.value(1))?;
                let unit = match form.value(2).trim() {
                    "messages" | "" => crate::abuse::quota::QuotaUnit::Messages,
                    "recipients" => crate::abuse::quota::QuotaUnit::Recipients,
                    other => return Err(format!("counting {other:?}: messages or recipients")),
                };
                let suspend = match form.value(3).trim() {
                    "yes" | "y" => true,
                    "no" | "n" | "" => false,
                    other => return Err(format!("suspend {other:?}: yes or no")),
                };
                if suspend && scope != crate::abuse::quota::QuotaScope::Login {
                    return Err("suspend needs a login quota (per: login)".into());
                }
                Ok(Some(Effect::AddQuota {
                    scope,
                    unit,
                    rate,
                    suspend,
                }))
            })(),
            FormPurpose::AddBan => crate::abuse::bans::parse_ban_net(form.value(0)).map(|_| {
                Some(Effect::AddBan {
                    net: form.value(0).to_string(),
                    time: form.value(1).to_string(),
                    note: form.value(2).to_string(),
                })
            }),
            FormPurpose::AddDomain => match form.value(0) {
                "" => Err("type a domain name".into()),
                d => Ok(Some(Effect::AddDomain(d.to_string()))),
            },
            FormPurpose::AddRule => {
                let reject = Some(form.value(3)).filter(|t| !t.is_empty());
                let at = match form.value(4) {
                    "" => Ok(None),
                    n => n
                        .parse::<usize>()
                        .map(Some)
                        .map_err(|_| format!("position {n:?} is not a number")),
                };
                at.and_then(|at| {
                    Rule::new(form.value(0), form.value(1), form.value(2), reject)
                        .map(|rule| Some(Effect::AddRule { rule, at }))
                        .map_err(|e| e.to_string())
                })
            }
            FormPurpose::AddUser => check_login_name(form.value(0))
                .map_err(|e| e.to_string())
                .and_then(|()| matching_passwords(form.raw(1), form.raw(2)))
                .map(|password| {
                    Some(Effect::HashPassword {
                        ticket: 0,
                        write: PasswordWrite::AddUser {
                            name: form.value(0).to_string(),
                        },
                        password,
                    })
                }),
            FormPurpose::ResetPassword(name) => {
                let name = name.clone();
                matching_passwords(form.raw(0), form.raw(1)).map(|password| {
                    Some(Effect::HashPassword {
                        ticket: 0,
                        write: PasswordWrite::SetPassword { name },
                        password,
                    })
                })
            }
            FormPurpose::SenderAddresses(name, base) => Ok(Some(Effect::SetSenderAddresses {
                name: name.clone(),
                base: base.clone(),
                addresses: form
                    .value(0)
                    .split([' ', ',', ';'])
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect(),
            })),
            FormPurpose::SpecifiedLogin => check_login_name(form.value(0))
                .map_err(|e| e.to_string())
                .and_then(|()| matching_passwords(form.raw(1), form.raw(2)))
                .map(|password| {
                    Some(Effect::HashPassword {
                        ticket: 0,
                        write: PasswordWrite::SpecifiedLogin {
                            name: form.value(0).to_string(),
                        },
                        password,
                    })
                }),
            FormPurpose::Import(list) => match form.value(0) {
                "" => Err("type the path of the file to import".into()),
                path => Ok(Some(Effect::ReadImportFile {
                    list: *list,
                    path: path.to_string(),
                })),
            },
        };
        match result {
            Ok(Some(Effect::HashPassword {
                write, password, ..
            })) => {
                self.hash_tickets += 1;
                self.hashing = Some(self.hash_tickets);
                self.say(true, "hashing the password (argon2)...");
                vec![Effect::HashPassword {
                    ticket: self.hash_tickets,
                    write,
                    password,
                }]
            }
            Ok(effect) => effect.into_iter().collect(),
            Err(e) => {
                if let Mode::Form(form) = &mut self.mode {
                    form.error = Some(format!("not saved: {e}"));
                }
                Vec::new()
            }
        }
    }

    /// Sets the auth mode picked; `specified` with no login stored asks
    /// for the one login first.
    fn set_auth_mode(&mut self, mode: AuthMode) -> Vec<Effect> {
        if mode == self.config.auth_mode {
            self.say(true, format!("the auth mode stays {}", mode.as_str()));
            return Vec::new();
        }
        if mode == AuthMode::Specified && self.config.specified_user.is_none() {
            self.open_form(
                FormPurpose::SpecifiedLogin,
                "Auth mode specified: the one login",
                vec![
                    Field::new("login", "the only name that may authenticate"),
                    Field::new("password", "stored only as an argon2id hash").masked(),
                    Field::new("again", "the same password once more").masked(),
                ],
            );
            return Vec::new();
        }
        vec![Effect::SetAuthMode { mode }]
    }

    /// The rows of the Auth & restrictions panel, top to bottom.
    pub fn policy_rows(&self) -> Vec<PolicyRow> {
        PolicyView::rows(&self.config)
    }

    /// How many matching lines the Log panel has.
    pub fn log_matching(&self) -> usize {
        self.log.matching(&self.traffic.log)
    }

    /// The Log panel's lines, newest first.
    pub fn log_shown(&self) -> impl Iterator<Item = &LogLine> {
        self.log.shown(&self.traffic.log)
    }

    /// The bindings the Bindings panel shows.
    pub fn binding_rows(&self) -> Vec<&crate::bindings::Binding> {
        self.bindings.rows(&self.config.bindings)
    }

    /// The users the Users panel shows.
    pub fn user_rows(&self) -> Vec<&crate::store::UserInfo> {
        self.users.rows(&self.config.users)
    }

    /// The Live panel's rows, in its order.
    pub fn live_rows(&self) -> Vec<&crate::live::Connection> {
        self.live.rows(&self.traffic)
    }

    pub fn selected_log_line(&self) -> Option<&LogLine> {
        self.log.selected_line(&self.traffic.log)
    }

    fn move_selection(&mut self, c: Command) {
        let page = self.page.max(1);
        if self.panel == Panel::Log {
            self.log.move_cursor(c, page, &self.traffic.log);
            return;
        }
        if self.panel == Panel::Lists {
            let rows = match c {
                Command::Up => -1,
                Command::Down => 1,
                Command::ScrollUp => -3,
                Command::ScrollDown => 3,
                Command::PageUp => -(page as i32),
                Command::PageDown => page as i32,
                Command::Top => i32::MIN / 2,
                _ => i32::MAX / 2,
            };
            self.lists.scroll(rows);
            return;
        }
        let count = match self.panel {
            Panel::Live => self.live_rows().len(),
            Panel::Bindings => self.binding_rows().len(),
            Panel::Policy => self.policy_rows().len(),
            Panel::Users => self.user_rows().len(),
            Panel::Queue => self.queue.shown_len(),
            Panel::Limits => super::panels::limits::LimitsView::rows(&self.config).len(),
            Panel::Log | Panel::Lists => 0,
        };
        let selected = match self.panel {
            Panel::Live => &mut self.live.selected,
            Panel::Bindings => &mut self.bindings.selected,
            Panel::Policy => &mut self.policy.selected,
            Panel::Users => &mut self.users.selected,
            Panel::Queue => &mut self.queue.selected,
            Panel::Limits => &mut self.limits.selected,
            Panel::Log | Panel::Lists => return,
        };
        *selected = scrolled(*selected, c, page).min(count.saturating_sub(1));
    }

    fn clamp_selections(&mut self) {
        self.bindings.clamp(&self.config.bindings);
        self.policy.clamp(&self.config);
        self.users.clamp(&self.config.users);
        self.limits.clamp(&self.config);
        self.live.clamp(&self.traffic);
    }
}

/// A position moved by a navigation command (unbounded above: callers clamp).
fn scrolled(at: usize, c: Command, page: usize) -> usize {
    match c {
        Command::Up => at.saturating_sub(1),
        Command::Down => at + 1,
        Command::ScrollUp => at.saturating_sub(3),
        Command::ScrollDown => at + 3,
        Command::PageUp => at.saturating_sub(page),
        Command::PageDown => at + page,
        Command::Top => 0,
        Command::Bottom => usize::MAX / 2,
        _ => at,
    }
}

fn matching_passwords(a: &str, b: &str) -> Result<String, String> {
    if a.is_empty() {
        return Err("type a password".into());
    }
    if a != b {
        return Err("the two passwords differ".into());
    }
    Ok(a.to_string())
}

/// What a trace popup is titled: what was searched for.
fn trace_title(q: &crate::trace::TraceQuery) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("message", &q.id),
        ("client", &q.ip),
        ("from", &q.from),
        ("to", &q.to),
        ("login", &q.login),
        ("", &q.any),
    ] {
        if let Some(v) = value {
            parts.push(if name.is_empty() {
                v.clone()
            } else {
                format!("{name} {v}")
            });
        }
    }
    format!("Trace: {}", parts.join(", "))
}
