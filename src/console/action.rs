//! What changes the console: commands (from the keymap), text typed into an
//! editor, and what the engine and the store report. Everything the app
//! does starts as one [`Action`]; everything it asks of the outside world
//! is one [`Effect`].

use super::io::ConfigView;
use super::traffic::LogLine;
use crate::bindings::Binding;
use crate::control::client::EngineHello;
use crate::control::protocol::{ClientMessage, EngineSnapshot, EngineStatus};
use crate::engine::ListenerStatus;
use crate::events::Stamped;
use crate::policy::ip_lists::ListKind;
use crate::policy::rules::Rule;
use crate::policy::settings::AuthMode;
use crate::spool::QueueEntry;
use ratatui::crossterm::event::KeyEvent;
use std::net::SocketAddr;
use std::time::SystemTime;

/// The seven panels, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Panel {
    Live,
    Log,
    Bindings,
    Lists,
    Policy,
    Users,
    Queue,
    /// Quotas, bans and suspended logins.
    Limits,
}

impl Panel {
    pub const ALL: [Panel; 8] = [
        Panel::Live,
        Panel::Log,
        Panel::Bindings,
        Panel::Lists,
        Panel::Policy,
        Panel::Users,
        Panel::Queue,
        Panel::Limits,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Panel::Live => "Live",
            Panel::Log => "Log",
            Panel::Bindings => "Bindings",
            Panel::Lists => "Relay lists",
            Panel::Policy => "Auth & rules",
            Panel::Users => "Users",
            Panel::Queue => "Queue",
            Panel::Limits => "Quotas & bans",
        }
    }

    /// The title on a narrow (80-column) screen.
    pub fn short_title(self) -> &'static str {
        match self {
            Panel::Lists => "Lists",
            Panel::Policy => "Auth",
            Panel::Limits => "Limits",
            other => other.title(),
        }
    }

    /// The title on a very narrow (60-column) screen.
    pub fn tiny_title(self) -> &'static str {
        match self {
            Panel::Bindings => "Bind",
            Panel::Lists => "List",
            Panel::Users => "User",
            Panel::Limits => "Limit",
            other => other.short_title(),
        }
    }

    pub fn index(self) -> usize {
        Panel::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }

    pub fn next(self) -> Panel {
        Panel::ALL[(self.index() + 1) % Panel::ALL.len()]
    }

    pub fn prev(self) -> Panel {
        Panel::ALL[(self.index() + Panel::ALL.len() - 1) % Panel::ALL.len()]
    }
}

/// What a key asks for. Data-free, so the keymap can be a static table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Quit,
    Help,
    NextPanel,
    PrevPanel,
    GoTo(Panel),
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    ScrollUp,
    ScrollDown,
    /// Enter: open the selected thing (a dialogue, an editor, a toggle).
    Open,
    /// Esc: close or cancel, never losing anything saved.
    Cancel,
    /// Ctrl-S: save the edit in progress.
    Save,
    Add,
    AddRule,
    Edit,
    Remove,
    Toggle,
    ResetPassword,
    SenderAddresses,
    NextField,
    PrevField,
    Import,
    Retry,
    Hold,
    Release,
    Delete,
    Follow,
    CycleFilter,
    /// Live: the next column to sort by; `S` turns the order round.
    CycleSort,
    ReverseSort,
    Search,
    /// Queue: Space marks or unmarks the selected message.
    Mark,
    /// Queue: `*` marks every message shown (again: unmarks them).
    MarkAll,
    /// Log: `n`/`N`, the next (older) or previous (newer) match.
    NextMatch,
    PrevMatch,
    /// `t`: the whole story of the selected connection, message or line.
    Trace,
    /// Quotas & bans: `b` bans an address or a range.
    AddBan,
    Yes,
    No,
    Bounce,
    Silent,
    /// Picking the auth mode: AUTH not offered, any user, one login.
    AuthNone,
    AuthAnyUser,
    AuthSpecified,
}

/// Everything that changes the app.
#[derive(Debug, Clone)]
pub enum Action {
    Command(Command),
    /// A key with no command in this context: text for the focused editor.
    Input(KeyEvent),
    Resize,
    /// Time passes (about twice a second); ages and the rate chart move.
    Tick(SystemTime),
    Engine(Stamped),
    /// How many events the bus dropped so far.
    Dropped(u64),
    /// The engine's listeners and drop count, once a second.
    Status(EngineStatus),
    ConfigLoaded(Box<ConfigView>),
    Listeners(Vec<ListenerStatus>),
    QueueLoaded(Result<Vec<QueueEntry>, String>),
    /// Lines from the persisted decision log, oldest first.
    History(Vec<LogLine>),
    /// What a search of the whole event log found for `search`.
    HistoryFound {
        search: String,
        found: Result<Vec<LogLine>, String>,
    },
    /// A save or other operation finished; the message says what happened.
    Done(Result<String, String>),
    /// A trace's stories as lines (or why there is none).
    Traced(Result<Vec<String>, String>),
    /// An import file was read (or could not be).
    ImportRead {
        list: ListKind,
        path: String,
        text: Result<String, String>,
    },
    /// Connected to the engine (again): who it is and what we may do.
    Attached(EngineHello),
    /// The engine's state: replaces the live picture.
    Snapshot(Box<EngineSnapshot>),
    /// The console fell behind by this many events; a snapshot follows.
    Lagged(u64),
    /// The engine's live picture: what changed since the last one.
    LiveTick(Box<crate::live::LiveTick>),
    /// Events the engine did not send (more than the console is sent per
    /// second); they are in the event log.
    Skipped(u64),
    Dialogue {
        session: u64,
        events: Vec<Stamped>,
    },
    /// The engine went away; the console reconnects when it is back.
    Detached {
        reason: String,
        refused: bool,
    },
    BindingsRetried(Vec<ListenerStatus>),
    /// The engine refused a request.
    RemoteError(String),
    /// A password was hashed (or could not be) for `write`.
    PasswordHashed {
        ticket: u64,
        write: PasswordWrite,
        hash: Result<String, String>,
    },
    /// Before stopping a one-process engine: how many messages it holds.
    QuitQuestion {
        queued: Result<usize, String>,
    },
}

impl From<Command> for Action {
    fn from(c: Command) -> Action {
        Action::Command(c)
    }
}

/// What a hashed password is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordWrite {
    AddUser {
        name: String,
    },
    SetPassword {
        name: String,
    },
    /// Auth mode `specified`, with this one login.
    SpecifiedLogin {
        name: String,
    },
}

/// A queue action on some messages (see [`crate::queue_admin::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueOp {
    pub action: crate::queue_admin::QueueAction,
    pub ids: Vec<String>,
    /// One message the user picked (not marks): the reply names it.
    pub named: bool,
    /// The messages whose delivery is under way (a delete with a bounce
    /// leaves them alone: `queue_admin::apply`).
    pub busy: std::collections::HashSet<String>,
}

/// What the app asks of the outside world (the store, the spool, files).
/// Each runs whole or not at all and answers with [`Action::Done`].
#[derive(Debug, Clone)]
pub enum Effect {
    /// Save the edits of the lists that changed, keeping what others
    /// changed meanwhile.
    SaveLists(Vec<crate::store::ListEdit>),
    AddDomain(String),
    RemoveDomain(String),
    /// Hash a password (argon2: a good part of a second, so off the
    /// screen's thread when the console runs), then answer with
    /// [`Action::PasswordHashed`].
    HashPassword {
        /// Which request this is, so that a cancelled one is dropped.
        ticket: u64,
        write: PasswordWrite,
        password: String,
    },
    /// Store what needed the hash, through the same store functions as
    /// the CLI.
    SavePassword {
        write: PasswordWrite,
        hash: String,
    },
    RemoveUser(String),
    /// A login's sender addresses, edited from `base`.
    SetSenderAddresses {
        name: String,
        base: Vec<String>,
        addresses: Vec<String>,
    },
    /// A new auth mode; `specified` keeps the stored login (a new one
    /// goes through [`Effect::HashPassword`]).
    SetAuthMode {
        mode: AuthMode,
    },
    SetSwitch {
        key: String,
        on: bool,
    },
    SetServerSetting {
        key: String,
        value: String,
    },
    AddRule {
        rule: Rule,
        at: Option<usize>,
    },
    RemoveRule(usize),
    /// Adds a binding, or replaces `old` with it.
    PutBinding {
        old: Option<SocketAddr>,
        new: Binding,
    },
    RemoveBinding(SocketAddr),
    AddQuota {
        scope: crate::abuse::quota::QuotaScope,
        unit: crate::abuse::quota::QuotaUnit,
        rate: crate::abuse::rate::Rate,
        suspend: bool,
    },
    RemoveQuota(i64),
    /// A ban by hand: the address or range, how long, why.
    AddBan {
        net: String,
        time: String,
        note: String,
    },
    LiftBan(ipnet::IpNet),
    Unsuspend(String),
    Queue(QueueOp),
    ReadImportFile {
        list: ListKind,
        path: String,
    },
    /// Re-read the configuration if another process changed it.
    PollStore,
    LoadQueue,
    /// Search the event log (and the queue) for a message's story.
    Trace(TraceAsk),
    /// A request to the engine (a dialogue, a retry of the bindings).
    Control(ClientMessage),
    /// The persisted event log from before `before`.
    /// Search the whole event log for lines containing this (lowercase).
    SearchHistory(String),
    LoadHistory {
        before: SystemTime,
    },
    /// Count the queued messages (for the question before quitting).
    CountQueue,
}

/// A story to look up, and the time of the newest of its events the
/// screen has shown: the event log is written a moment after the screen
/// shows an event (longer on a busy machine), so the lookup waits for the
/// log to catch up rather than tell the story without its latest part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceAsk {
    pub query: crate::trace::TraceQuery,
    /// Milliseconds since the epoch; `None` when the screen showed no
    /// event of it (a client or a queued message).
    pub shown_ms: Option<i64>,
}

impl From<crate::trace::TraceQuery> for TraceAsk {
    fn from(query: crate::trace::TraceQuery) -> Self {
        TraceAsk {
            query,
            shown_ms: None,
        }
    }
}
