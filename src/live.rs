//! The engine's live picture: open sessions, counters by class and reason,
//! per-second rates, built from the engine's events alone. The engine
//! keeps one (so a console that attaches gets it whole), and every console
//! keeps its own copy up to date from the same events.
//! Pure state: no I/O, bounded everywhere so a flood cannot grow it.

use crate::bindings::BindKind;
use crate::events::{Event, Stamped};
use crate::policy::decision::Reason;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept per connection dialogue.
pub const DIALOGUE_LINES: usize = 200;
/// Closed connections kept in the table (their dialogue stays readable).
pub const CLOSED_KEPT: usize = 50;
/// Seconds of rate history.
pub const RATE_SECONDS: usize = 600;

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One client connection, as the Live table shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The session's events so far (commands, TLS, AUTH, decisions, the
    /// message, the close), the oldest dropped past [`DIALOGUE_LINES`].
    /// Not part of a snapshot sent over the socket: it is asked for.
    #[serde(skip)]
    pub dialogue: VecDeque<Stamped>,
    /// The generation of the live picture this row last changed at.
    #[serde(default)]
    pub updated: u64,
}

impl Connection {
    fn say(&mut self, event: &Stamped) {
        if self.dialogue.len() >= DIALOGUE_LINES {
            self.dialogue.pop_front();
        }
        self.dialogue.push_back(event.clone());
    }

    /// Takes a dialogue sent by the engine; events that arrived live in
    /// the meantime are kept once.
    pub fn replace_dialogue(&mut self, events: Vec<Stamped>) {
        let live: Vec<Stamped> = self.dialogue.drain(..).collect();
        self.dialogue = events.into();
        for e in live {
            if !self
                .dialogue
                .iter()
                .rev()
                .take(DIALOGUE_LINES)
                .any(|d| *d == e)
            {
                self.say(&e);
            }
        }
        while self.dialogue.len() > DIALOGUE_LINES {
            self.dialogue.pop_front();
        }
    }
}

/// The counters of the Live panel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub sessions: u64,
    pub refused_sessions: u64,
    pub messages: u64,
    pub allowed_by_class: BTreeMap<Cow<'static, str>, u64>,
    pub denied_by_class: BTreeMap<Cow<'static, str>, u64>,
    pub denied_by_reason: BTreeMap<Cow<'static, str>, u64>,
    pub auth_failures: u64,
}

/// Allowed and denied recipients in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
        Reason::QuotaReached { .. } => "quota",
        Reason::RecipientUnknown { .. } => "unknown recipient",
        Reason::Blocklisted { .. } => "dnsbl",
        Reason::RecipientUnverified { .. } => "unverified recipient",
        Reason::InboundToLocal { .. }
        | Reason::Unrestricted { .. }
        | Reason::Authenticated { .. }
        | Reason::IpAllowed { .. }
        | Reason::NullSenderRelayed { .. } => "other",
    }
}

/// The live picture of the engine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveState {
    /// As a list on the wire: JSON map keys are strings, and a tagged
    /// message cannot read them back as numbers.
    /// Open connections and the last few closed ones, by session number.
    #[serde(with = "connections_as_list")]
    pub connections: BTreeMap<u64, Connection>,
    pub closed: VecDeque<u64>,
    pub open: usize,
    pub counters: Counters,
    pub rates: VecDeque<RateBucket>,
    /// Counts every event applied: a console asks for what changed since
    /// the generation it has.
    #[serde(default)]
    pub generation: u64,
    /// Connections dropped from the table, with the generation they went
    /// at (the newest [`EVICTIONS_KEPT`]).
    #[serde(skip)]
    evicted: VecDeque<(u64, u64)>,
}

/// The most rows the table holds: if a close was lost (a subscriber's
/// queue was full), the oldest rows go rather than the table growing.
pub const MAX_ROWS: usize = 100_000;

/// Evictions remembered for consoles catching up.
const EVICTIONS_KEPT: usize = 4096;

/// What changed in the live picture since a generation: what a console
/// needs to mirror the engine's, a few times a second, however many events
/// there were.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveTick {
    pub generation: u64,
    pub open: usize,
    pub counters: Counters,
    /// The newest rate buckets (the last few seconds).
    pub rates: Vec<RateBucket>,
    /// Rows changed since, without their dialogues.
    pub changed: Vec<Connection>,
    pub removed: Vec<u64>,
}

impl LiveState {
    /// What changed since `since`; `None` if that is too far back to tell
    /// (the console then needs a whole snapshot).
    pub fn tick_since(&self, since: u64) -> Option<LiveTick> {
        if let Some((oldest, _)) = self.evicted.front()
            && since < *oldest
            && self.evicted.len() >= EVICTIONS_KEPT
        {
            return None;
        }
        Some(LiveTick {
            generation: self.generation,
            open: self.open,
            counters: self.counters.clone(),
            rates: self.rates.iter().rev().take(3).rev().copied().collect(),
            changed: self
                .connections
                .values()
                .filter(|c| c.updated > since)
                .map(|c| Connection {
                    dialogue: VecDeque::new(),
                    ..c.clone()
                })
                .collect(),
            removed: self
                .evicted
                .iter()
                .filter(|(g, _)| *g > since)
                .map(|(_, id)| *id)
                .collect(),
        })
    }

    /// Takes the engine's picture as it is: counters, rates and the rows
    /// that changed. Dialogues already held are kept.
    pub fn merge(&mut self, tick: LiveTick) {
        self.generation = tick.generation;
        self.open = tick.open;
        self.counters = tick.counters;
        for b in tick.rates {
            match self.rates.iter_mut().rev().find(|r| r.second == b.second) {
                Some(r) => *r = b,
                None => {
                    if self.rates.back().is_none_or(|r| r.second < b.second) {
                        self.rates.push_back(b);
                        while self.rates.len() > RATE_SECONDS {
                            self.rates.pop_front();
                        }
                    }
                }
            }
        }
        for id in tick.removed {
            self.connections.remove(&id);
            self.closed.retain(|c| *c != id);
        }
        for mut row in tick.changed {
            if let Some(old) = self.connections.get_mut(&row.session) {
                row.dialogue = std::mem::take(&mut old.dialogue);
            }
            if row.closed.is_some() && !self.closed.contains(&row.session) {
                self.closed.push_back(row.session);
            }
            self.connections.insert(row.session, row);
        }
        while self.closed.len() > CLOSED_KEPT {
            if let Some(old) = self.closed.pop_front() {
                self.connections.remove(&old);
            }
        }
    }

    /// Takes the columns a session keeps on its board
    /// ([`crate::session_board`]); one generation for a batch of them.
    pub fn set_columns(&mut self, session: u64, columns: crate::session_board::Columns) {
        let Some(c) = self.connections.get_mut(&session) else {
            return;
        };
        if c.closed.is_none() {
            c.state = columns.stage;
        }
        c.helo = columns.helo;
        c.mail_from = columns.mail_from;
        c.bytes = columns.bytes;
        c.updated = self.generation + 1;
    }

    /// Ends a batch of [`LiveState::set_columns`].
    pub fn columns_set(&mut self) {
        self.generation += 1;
    }

    /// Takes one engine event into account.
    pub fn apply(&mut self, stamped: &Stamped) {
        self.generation += 1;
        self.apply_event(stamped);
        let session = match stamped.event.as_ref() {
            Event::SessionOpened { session, .. }
            | Event::SessionClosed { session, .. }
            | Event::TlsEstablished { session }
            | Event::Command { session, .. }
            | Event::Authenticated { session, .. }
            | Event::AuthFailed { session, .. }
            | Event::AuthRefused { session, .. }
            | Event::Decision { session, .. }
            | Event::MessageAccepted { session, .. } => Some(*session),
            _ => None,
        };
        if let Some(c) = session.and_then(|s| self.connections.get_mut(&s)) {
            c.updated = self.generation;
        }
    }

    fn apply_event(&mut self, stamped: &Stamped) {
        let at = stamped.at;
        let event = stamped.event.as_ref();
        match event {
            Event::SessionOpened {
                session,
                peer,
                local,
                kind,
                tls,
                ..
            } => {
                self.counters.sessions += 1;
                // A console may get the row in a tick before the event
                // (they come by different ways): the row it has is newer.
                if self.connections.contains_key(session) {
                    return;
                }
                self.open += 1;
                while self.connections.len() >= MAX_ROWS {
                    // Closed rows go first; then the oldest open one.
                    let victim = self
                        .closed
                        .front()
                        .copied()
                        .or_else(|| self.connections.keys().next().copied());
                    let Some(oldest) = victim else {
                        break;
                    };
                    if let Some(c) = self.connections.remove(&oldest)
                        && c.closed.is_none()
                    {
                        self.open = self.open.saturating_sub(1);
                    }
                    self.closed.retain(|id| *id != oldest);
                    if self.evicted.len() >= EVICTIONS_KEPT {
                        self.evicted.pop_front();
                    }
                    self.evicted.push_back((self.generation, oldest));
                }
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
                        updated: 0,
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
                    c.say(stamped);
                    self.open = self.open.saturating_sub(1);
                    self.closed.push_back(*session);
                    while self.closed.len() > CLOSED_KEPT {
                        if let Some(old) = self.closed.pop_front() {
                            self.connections.remove(&old);
                            if self.evicted.len() >= EVICTIONS_KEPT {
                                self.evicted.pop_front();
                            }
                            self.evicted.push_back((self.generation, old));
                        }
                    }
                }
            }
            Event::TlsEstablished { session } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.tls = true;
                    c.say(stamped);
                }
            }
            Event::Command { session, line, .. } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.bytes += line.len() as u64 + 2;
                    // One per command line, the busiest path of the feed:
                    // no allocation unless a column changes.
                    let mut words = line.split_whitespace();
                    let verb = words.next().unwrap_or_default();
                    if verb.eq_ignore_ascii_case("EHLO") || verb.eq_ignore_ascii_case("HELO") {
                        c.helo = words.next().map(str::to_string);
                    } else if verb.eq_ignore_ascii_case("MAIL") {
                        c.mail_from = Some(mail_from(line));
                    }
                    if !verb.is_empty()
                        && !verb.starts_with('*')
                        && !c.state.eq_ignore_ascii_case(verb)
                    {
                        c.state.clear();
                        c.state
                            .extend(verb.chars().map(|ch| ch.to_ascii_lowercase()));
                    }
                    c.say(stamped);
                }
            }
            Event::Authenticated { session, login } => {
                if let Some(c) = self.connections.get_mut(session) {
                    c.login = Some(login.clone());
                    c.say(stamped);
                }
            }
            Event::AuthFailed { session, .. } => {
                self.counters.auth_failures += 1;
                if let Some(c) = self.connections.get_mut(session) {
                    c.say(stamped);
                }
            }
            Event::Decision {
                session, decision, ..
            } => {
                let class = Cow::Borrowed(decision.class.as_str());
                let allowed = decision.is_allowed();
                if allowed {
                    *self.counters.allowed_by_class.entry(class).or_default() += 1;
                } else {
                    *self.counters.denied_by_class.entry(class).or_default() += 1;
                    *self
                        .counters
                        .denied_by_reason
                        .entry(Cow::Borrowed(reason_key(&decision.reason)))
                        .or_default() += 1;
                }
                self.count_rate(at, allowed);
                if let Some(c) = self.connections.get_mut(session) {
                    if allowed {
                        c.rcpt_allowed += 1;
                    } else {
                        c.rcpt_denied += 1;
                    }
                    c.say(stamped);
                }
            }
            Event::MessageAccepted { session, size, .. } => {
                self.counters.messages += 1;
                if let Some(c) = self.connections.get_mut(session) {
                    c.bytes += *size as u64;
                    c.state = "accepted".into();
                    c.say(stamped);
                }
            }
            _ => {}
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

/// The connection table as a list of connections (each knows its number).
mod connections_as_list {
    use super::Connection;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<u64, Connection>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u64, Connection>, D::Error> {
        let list = Vec::<Connection>::deserialize(d)?;
        Ok(list.into_iter().map(|c| (c.session, c)).collect())
    }
}

/// The address of a `MAIL FROM:<a@b> SIZE=1` line.
/// The address of a MAIL FROM line.
pub fn mail_from(line: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A console gets rows in ticks and events on another way: a session
    /// whose row (HELO name and all) came first must not be reset by its
    /// opening event arriving after.
    #[test]
    fn an_opening_event_after_the_tick_keeps_the_newer_row() {
        let opened = Stamped {
            at: SystemTime::now(),
            event: std::sync::Arc::new(Event::SessionOpened {
                session: 8,
                peer: "127.0.0.18:4000".parse().unwrap(),
                local: "127.0.0.1:25".parse().unwrap(),
                kind: BindKind::Smtp,
                tls: false,
                via: None,
            }),
        };
        let mut engine = LiveState::default();
        engine.apply(&opened);
        engine.set_columns(
            8,
            crate::session_board::Columns {
                stage: "ehlo".into(),
                helo: Some("nas.example.com".into()),
                mail_from: None,
                bytes: 22,
            },
        );
        engine.columns_set();
        let tick = engine.tick_since(0).unwrap();
        let mut console = LiveState::default();
        console.merge(tick);
        console.apply(&opened);
        let row = &console.connections[&8];
        assert_eq!(row.helo.as_deref(), Some("nas.example.com"));
        assert_eq!(row.state, "ehlo");
    }

    #[test]
    fn mail_from_is_the_address() {
        assert_eq!(mail_from("MAIL FROM:<a@b.c> SIZE=10"), "a@b.c");
        assert_eq!(mail_from("MAIL FROM: <> "), "");
        assert_eq!(mail_from("mail from:x@y"), "x@y");
    }
}
