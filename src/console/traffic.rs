//! What the Live and Log panels show, built from engine events alone: the
//! connection table, the counters, the per-second rates and the event log.
//! Pure state: no I/O, bounded everywhere so a flood cannot grow it.

use crate::events::{Event, EventKind, Outcome, Stamped, Tone, describe};
use crate::policy::decision::Decision;
use std::collections::VecDeque;

pub use crate::live::{
    CLOSED_KEPT, Connection, Counters, DIALOGUE_LINES, LiveState, RATE_SECONDS, RateBucket,
    epoch_ms, reason_key,
};

/// Lines kept in the event log.
pub const LOG_LINES: usize = 20_000;

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `None` for a line of an old log whose kind is unknown.
    pub kind: Option<EventKind>,
    pub verdict: Option<Outcome>,
    /// One line, as the Log panel shows it.
    pub text: String,
    /// The full wording when it differs from `text` (shown on Enter).
    pub detail: Option<String>,
    /// What finds this line's story (`t`), if it belongs to one.
    pub trace: Option<crate::trace::TraceQuery>,
    /// The session the line is about, if any: a line that names nothing
    /// else to find it by (a close) is traced by its session's opening.
    pub session: Option<u64>,
}

/// The filters of the Log panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFilter {
    All,
    Allowed,
    Denied,
    Errors,
    Auth,
    Delivery,
}

impl LogFilter {
    pub fn next(self) -> LogFilter {
        match self {
            LogFilter::All => LogFilter::Allowed,
            LogFilter::Allowed => LogFilter::Denied,
            LogFilter::Denied => LogFilter::Errors,
            LogFilter::Errors => LogFilter::Auth,
            LogFilter::Auth => LogFilter::Delivery,
            LogFilter::Delivery => LogFilter::All,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogFilter::All => "all",
            LogFilter::Allowed => "allowed",
            LogFilter::Denied => "denied",
            LogFilter::Errors => "errors",
            LogFilter::Auth => "auth",
            LogFilter::Delivery => "delivery",
        }
    }

    pub fn admits(self, line: &LogLine) -> bool {
        match self {
            LogFilter::All => true,
            LogFilter::Allowed => {
                line.kind == Some(EventKind::Decision) && line.verdict == Some(Outcome::Allowed)
            }
            LogFilter::Denied => matches!(line.verdict, Some(Outcome::Denied | Outcome::Refused)),
            LogFilter::Errors => line.kind == Some(EventKind::Error),
            LogFilter::Auth => line.kind == Some(EventKind::Auth),
            LogFilter::Delivery => line.kind == Some(EventKind::Delivery),
        }
    }
}

/// The event log: the newest [`LOG_LINES`] lines.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    pub lines: VecDeque<LogLine>,
}

impl EventLog {
    pub fn push(&mut self, line: LogLine) {
        if self.lines.len() >= LOG_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// Puts older history in front of what is already there.
    pub fn prepend_history(&mut self, history: Vec<LogLine>) {
        let room = LOG_LINES.saturating_sub(self.lines.len());
        let skip = history.len().saturating_sub(room);
        for line in history.into_iter().skip(skip).rev() {
            self.lines.push_front(line);
        }
    }
}

/// The one-line form of a decision: the recipient, the reply code and
/// what decided (the peer is named unless the reason already names it).
pub fn decision_line(peer: &str, login: Option<&str>, recipient: &str, d: &Decision) -> String {
    let reason = d.explanation();
    let who = match login {
        Some(l) => format!(" from {peer} as {l}"),
        None if reason.contains(peer) => String::new(),
        None => format!(" from {peer}"),
    };
    format!("<{recipient}>{who} {} {reason}", d.reply.code)
}

/// Everything the Live and Log panels know: the engine's live picture,
/// kept up to date from its events, and the event log.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    pub live: LiveState,
    pub log: EventLog,
}

impl std::ops::Deref for Traffic {
    type Target = LiveState;
    fn deref(&self) -> &LiveState {
        &self.live
    }
}

impl std::ops::DerefMut for Traffic {
    fn deref_mut(&mut self) -> &mut LiveState {
        &mut self.live
    }
}

impl Traffic {
    /// Takes one engine event into account.
    pub fn apply(&mut self, stamped: &Stamped) {
        self.live.apply(stamped);
        if let Some(line) = log_line(stamped) {
            self.log.push(line);
        }
    }
}

/// How an event reads in the log; command lines are left to the dialogues.
pub fn log_line(stamped: &Stamped) -> Option<LogLine> {
    if matches!(*stamped.event, Event::Command { .. }) {
        return None;
    }
    let described = describe(&stamped.event);
    let text = match stamped.event.as_ref() {
        Event::Decision {
            peer,
            login,
            recipient,
            decision,
            ..
        } => decision_line(&peer.to_string(), login.as_deref(), recipient, decision),
        _ => described.text.clone(),
    };
    let detail = (text != described.text).then_some(described.text);
    Some(LogLine {
        at_ms: epoch_ms(stamped.at),
        kind: Some(described.kind),
        verdict: described.verdict,
        text,
        detail,
        trace: crate::trace::TraceQuery::for_event(&stamped.event),
        session: match stamped.event.as_ref() {
            Event::SessionOpened { session, .. }
            | Event::SessionClosed { session, .. }
            | Event::TlsEstablished { session } => Some(*session),
            _ => None,
        },
    })
}

/// A log line from the persisted event log: the same rendering as a live
/// event; an old text row as it was written.
pub fn history_line(record: crate::decision_log::LogRecord) -> Option<LogLine> {
    match record {
        crate::decision_log::LogRecord::Event(stamped) => log_line(&stamped),
        crate::decision_log::LogRecord::Legacy {
            at_ms,
            kind,
            verdict,
            text,
        } => Some(LogLine {
            at_ms,
            kind,
            verdict,
            text,
            detail: None,
            trace: None,
            session: None,
        }),
    }
}

/// How a line of a session's dialogue reads, and its tone: what the client
/// said and what we answered, and the engine's notes (`--`).
pub fn dialogue_line(stamped: &Stamped) -> (String, Option<Tone>) {
    match stamped.event.as_ref() {
        Event::Command { line, reply, .. } if reply.is_empty() => (format!("C: {line}"), None),
        Event::Command { line, reply, .. } => (format!("C: {line}\nS: {reply}"), None),
        Event::Decision {
            recipient,
            decision,
            ..
        } => (
            format!("-- <{recipient}> {decision}"),
            Some(if decision.is_allowed() {
                Tone::Good
            } else {
                Tone::Bad
            }),
        ),
        Event::TlsEstablished { .. } => ("-- TLS established".into(), None),
        Event::Authenticated { login, .. } => (format!("-- authenticated as {login}"), None),
        Event::AuthFailed { .. } => ("-- AUTH failed".into(), Some(Tone::Bad)),
        Event::MessageAccepted { id, size, .. } => (
            format!("-- message {id} accepted ({size} bytes)"),
            Some(Tone::Good),
        ),
        Event::SessionClosed { why, .. } => (format!("-- closed: {why}"), None),
        other => (format!("-- {}", describe(other).text), None),
    }
}
