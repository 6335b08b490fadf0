//! What the Live and Log panels show, built from engine events alone: the
//! connection table, the counters, the per-second rates and the event log.
//! Pure state: no I/O, bounded everywhere so a flood cannot grow it.

use crate::bindings::BindKind;
use crate::events::{Event, Stamped, describe};
use crate::policy::decision::{Decision, Reason};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines kept per connection dialogue.
pub const DIALOGUE_LINES: usize = 200;
/// Closed connections kept in the table (their dialogue stays readable).
pub const CLOSED_KEPT: usize = 50;
/// Lines kept in the event log.
pub const LOG_LINES: usize = 20_000;
/// Seconds of rate history.
pub const RATE_SECONDS: usize = 600;

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub at_ms: i64,
    /// `decision`, `auth`, `delivery`, `session`, `config`, `error`.
    pub kind: String,
    pub verdict: Option<String>,
    /// One line, as the Log panel shows it.
    pub text: String,
    /// The full wording when it differs from `text` (shown on Enter).
    pub detail: Option<String>,
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
        let verdict = line.verdict.as_deref();
        match self {
            LogFilter::All => true,
            LogFilter::Allowed => line.kind == "decision" && verdict == Some("allowed"),
            LogFilter::Denied => {
                matches!(verdict, Some("denied" | "refused"))
            }
            LogFilter::Errors => line.kind == "error",
            LogFilter::Auth => line.kind == "auth",
            LogFilter::Delivery => line.kind == "delivery",
        }
    }
}

/// One client connection, as the Live table shows it.
#[derive(Debug, Clone)]
pub struct Connection {
    pub session: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub kind: BindKind,
    pub tls: bool,
    pub login: Option<String>,
    /// The last command verb, `accepted` after a message, `closed`.
    pub state: String,
    pub helo: Option<String>,
    pub mail_from: Option<String>,
    pub rcpt_allowed: u32,
    pub rcpt_denied: u32,
    /// Bytes received: command lines and accepted messages.
    pub bytes: u64,
    pub opened_at: SystemTime,
    pub closed: Option<String>,
    /// The dialogue so far, the oldest lines dropped past [`DIALOGUE_LINES`].
    pub dialogue: VecDeque<String>,
}

impl Connection {
    fn say(&mut self, line: String) {
        if self.dialogue.len() >= DIALOGUE_LINES {
            self.dialogue.pop_front();
        }
        self.dialogue.push_back(line);
    }
}

/// The counters of the Live panel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub sessions: u64,
    pub refused_sessions: u64,
    pub messages: u64,
    pub allowed_by_class: BTreeMap<&'static str, u64>,
    pub denied_by_class: BTreeMap<&'static str, u64>,
    pub denied_by_reason: BTreeMap<&'static str, u64>,
    pub auth_failures: u64,
}

/// Allowed and denied recipients in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateBucket {
    /// Seconds since the epoch.
    pub second: i64,
    pub allowed: u64,
    pub denied: u64,
}

/// A short name for what denied a recipient, for the "by reason" counter.
pub fn reason_key(reason: &Reason) -> &'static str {
    match reason {
        Reason::IpDenied { .. } => "deny entry",
        Reason::IpUnlisted { .. } => "unlisted IP",
        Reason::AuthRequired { .. } => "auth required",
        Reason::DomainRestrictSend { .. } => "domain-restrict-send",
        Reason::UserRestrictSend { .. } => "user-restrict-send",
        Reason::SenderLoginMismatch { .. } => "sender-login-match",
        Reason::RuleRejected { .. } => "rule",
        Reason::InboundToLocal { .. }
        | Reason::Unrestricted { .. }
        | Reason::Authenticated { .. }
        | Reason::IpAllowed { .. } => "other",
    }
}

/// The one-line form of a decision: the recipient, the reply code and
/// what decided (the peer is named unless the reason already names it).
pub fn decision_line(peer: &str, login: Option<&str>, recipient: &str, d: &Decision) -> String {
    let full = d.to_string();
    let reason = full
        .strip_prefix("allowed: ")
        .or_else(|| full.strip_prefix("denied: "))
        .unwrap_or(&full);
    let who = match login {
        Some(l) => format!(" from {peer} as {l}"),
        None if reason.contains(peer) => String::new(),
        None => format!(" from {peer}"),
    };
    format!("<{recipient}>{who} {} {reason}", d.reply.code)
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

/// Everything the Live and Log panels know.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// Open connections and the last few closed ones, by session number.
    pub connections: BTreeMap<u64, Connection>,
    closed: VecDeque<u64>,
    pub open: usize,
    pub counters: Counters,
    pub rates: VecDeque<RateBucket>,
    pub log: EventLog,
}

impl Traffic {
    /// Takes one engine event into account.
    pub fn apply(&mut self, stamped: &Stamped) {
        let at = stamped.at;
        let event = stamped.event.as_ref();
        match event {
            Event::SessionOpened {
                session,
                peer,
                local,
                kind,
                tls,
            } => {
                self.counters.sessions += 1;
                self.open += 1;
                self.connections.insert(
                    *session,
                    Connection {
                        session: *session,
                        peer: *peer,
                        local: *local,
                        kind: *kind,
                        tls: *tls,
                        login: None,
                        state: "greeting".into(),
                        helo: None,
                        mail_from: None,
                        rcpt_allowed: 0,
                        rcpt_denied: 0,
                        bytes: 0,
                        opened_at: at,
                        closed: None,
                        dialogue: VecDeque::new(),
                    },
                );
            }
            Event::SessionRefused { .. } => self.counters.refused_sessions += 1,
            Event::SessionClosed { session, why } => {
                if let Some(c) = self.connections.get_mut(session)
                    && c.closed.is_none()
                {
                    c.closed = Some(why.clone());
                    c.state = "closed".into();
                    c.say(format!("-- closed: {why}"));
                    self.open = self.open.saturating_sub(1);
                    self.closed.push_back(*session);
                    while self.closed.len() > CLOSED_KEPT {
                        if let Some(old) = self.closed.pop_front() {
                            self.connections.remove(&old);
                        }
                    }
                }
            }
            Event::TlsEstablished { session } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.tls = true;
                    c.say("-- TLS established".into());
                }
            }
            Event::Command {
                session,
                line,
                reply,
            } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.bytes += line.len() as u64 + 2;
                    let mut words = line.split_whitespace();
                    let verb = words.next().unwrap_or_default().to_ascii_uppercase();
                    match verb.as_str() {
                        "EHLO" | "HELO" => c.helo = words.next().map(str::to_string),
                        "MAIL" => c.mail_from = Some(mail_from(line)),
                        _ => {}
                    }
                    if !verb.is_empty() && !verb.starts_with('*') {
                        c.state = verb.to_ascii_lowercase();
                    }
                    c.say(format!("C: {line}"));
                    if !reply.is_empty() {
                        c.say(format!("S: {reply}"));
                    }
                }
            }
            Event::Authenticated { session, login } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.login = Some(login.clone());
                    c.say(format!("-- authenticated as {login}"));
                }
            }
            Event::AuthFailed { session, .. } => {
                self.counters.auth_failures += 1;
                if let Some(c) = self.connections.get_mut(session) {
                    c.say("-- AUTH failed".into());
                }
            }
            Event::Decision {
                session,
                recipient,
                decision,
                ..
            } => {
                let class = decision.class.as_str();
                let allowed = decision.is_allowed();
                if allowed {
                    *self.counters.allowed_by_class.entry(class).or_default() += 1;
                } else {
                    *self.counters.denied_by_class.entry(class).or_default() += 1;
                    *self
                        .counters
                        .denied_by_reason
                        .entry(reason_key(&decision.reason))
                        .or_default() += 1;
                }
                self.count_rate(at, allowed);
                if let Some(c) = self.connections.get_mut(session) {
                    if allowed {
                        c.rcpt_allowed += 1;
                    } else {
                        c.rcpt_denied += 1;
                    }
                    c.say(format!("-- <{recipient}> {decision}"));
                }
            }
            Event::MessageAccepted {
                session, id, size, ..
            } => {
                self.counters.messages += 1;
                if let Some(c) = self.connections.get_mut(session) {
                    c.bytes += *size as u64;
                    c.state = "accepted".into();
                    c.say(format!("-- message {id} accepted ({size} bytes)"));
                }
            }
            _ => {}
        }
        if let Some(line) = log_line(stamped) {
            self.log.push(line);
        }
    }

    fn count_rate(&mut self, at: SystemTime, allowed: bool) {
        let second = epoch_ms(at) / 1000;
        let bucket = match self.rates.back_mut() {
            Some(b) if b.second == second => b,
            Some(b) if b.second > second => {
                // A late event from an earlier second: count it there if kept.
                match self.rates.iter_mut().rev().find(|b| b.second == second) {
                    Some(b) => b,
                    None => return,
                }
            }
            _ => {
                self.rates.push_back(RateBucket {
                    second,
                    ..RateBucket::default()
                });
                while self.rates.len() > RATE_SECONDS {
                    self.rates.pop_front();
                }
                match self.rates.back_mut() {
                    Some(b) => b,
                    None => return,
                }
            }
        };
        if allowed {
            bucket.allowed += 1;
        } else {
            bucket.denied += 1;
        }
    }

    /// Allowed and denied per second for the `seconds` up to `now`, oldest
    /// first, zeros where nothing happened.
    pub fn rate_series(&self, now: SystemTime, seconds: usize) -> (Vec<u64>, Vec<u64>) {
        let end = epoch_ms(now) / 1000;
        let start = end - seconds as i64 + 1;
        let mut allowed = vec![0; seconds];
        let mut denied = vec![0; seconds];
        for b in self.rates.iter().rev() {
            if b.second < start {
                break;
            }
            if b.second <= end {
                let i = (b.second - start) as usize;
                allowed[i] = b.allowed;
                denied[i] = b.denied;
            }
        }
        (allowed, denied)
    }
}

/// The address of a `MAIL FROM:<a@b> SIZE=1` line.
fn mail_from(line: &str) -> String {
    let rest = line.split_once(':').map_or("", |(_, r)| r).trim_start();
    match rest.strip_prefix('<').and_then(|r| r.split_once('>')) {
        Some((addr, _)) => addr.to_string(),
        None => rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// How an event reads in the log; command lines are left to the dialogues.
pub fn log_line(stamped: &Stamped) -> Option<LogLine> {
    let described = describe(&stamped.event);
    if described.kind == "command" {
        return None;
    }
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
        kind: described.kind.to_string(),
        verdict: described.verdict.map(str::to_string),
        text,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_from_is_the_address() {
        assert_eq!(mail_from("MAIL FROM:<a@b.c> SIZE=10"), "a@b.c");
        assert_eq!(mail_from("MAIL FROM: <> "), "");
        assert_eq!(mail_from("mail from:x@y"), "x@y");
    }
}
