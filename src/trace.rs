//! Message trace: a message's whole story from the persisted event log.
//!
//! Each logged event is indexed by what it can be found by ([`TraceKeys`]).
//! Its session and its message (queue id) grow with time, so they are
//! plain columns with B-tree indexes (each insert lands at the right edge,
//! on a page already in memory). The client's address, the login, the
//! sender and the recipient are random: a B-tree index each would dirty a
//! random page per event and key, several microseconds each in a log of a
//! million events. They go into an FTS5 table instead, one token per key
//! (a hash of the field and the value), which appends in segments; what it
//! finds is checked against the event itself. A search finds the events that match, widens to their sessions
//! and messages (a message's session is the one that accepted it; its
//! deliveries and bounce are found by its queue id), and gives one story
//! per session, in order: connection, decisions with their reasons,
//! acceptance, every delivery attempt with the remote reply, the bounce.
//!
//! Session numbers start again at every engine start, so the log keeps
//! them with the engine run they belong to: `run << 40 | session`, in the
//! `session` column.

use crate::events::{Event, Stamped};
use rusqlite::Connection;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::UNIX_EPOCH;

/// Bits of a stored session key that hold the session number.
pub const SESSION_BITS: u32 = 40;
/// Stories given at most (the newest).
pub const MAX_STORIES: usize = 200;
/// Matching events looked at at most.
const MAX_MATCHES: usize = 20_000;

/// What an event is found by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceKeys {
    pub session: Option<u64>,
    pub message: Option<String>,
    pub ip: Option<String>,
    pub login: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
}

fn lower(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_lowercase())
}

/// FNV-1a over the field, a zero byte and the value.
fn key_hash(field: &str, value: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in field.bytes().chain([0u8]).chain(value) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// [`key_hash`] of the value in lower case, as `to_lowercase` writes it
/// (without a copy when it is ASCII).
fn lower_key_hash(field: &str, value: &str) -> u64 {
    if value.is_ascii() {
        key_hash(field, value.bytes().map(|b| b.to_ascii_lowercase()))
    } else {
        key_hash(field, value.to_lowercase().bytes())
    }
}

/// Writes the token of a key's hash: `k` and 16 hex digits (letters and
/// digits only, so the FTS5 tokenizer keeps it whole).
pub fn push_token(out: &mut String, hash: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('k');
    for shift in (0..16).rev() {
        out.push(char::from(HEX[((hash >> (shift * 4)) & 0xf) as usize]));
    }
}

/// The index token of one key: `k` and 16 hex digits of a 64-bit FNV-1a
/// hash of the field and the value.
fn token(field: &str, value: &str) -> String {
    let mut out = String::with_capacity(17);
    push_token(&mut out, key_hash(field, value.bytes()));
    out
}

/// An event's keys as borrowed from it: what the event log files each
/// event under, with nothing copied (the writer does this for every
/// event). [`TraceKeys`] is the owned form.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeysOf<'a> {
    pub session: Option<u64>,
    pub message: Option<&'a str>,
    ip: Option<IpAddr>,
    login: Option<&'a str>,
    sender: Option<&'a str>,
    recipient: Option<&'a str>,
}

impl<'a> KeysOf<'a> {
    pub fn of(event: &'a Event) -> KeysOf<'a> {
        let mut k = KeysOf::default();
        let text = |s: &'a str| (!s.is_empty()).then_some(s);
        match event {
            Event::SessionOpened { session, peer, .. } => {
                k.session = Some(*session);
                k.ip = Some(peer.ip());
            }
            Event::SessionClosed { session, .. } | Event::TlsEstablished { session } => {
                k.session = Some(*session)
            }
            Event::Authenticated { session, login } => {
                k.session = Some(*session);
                k.login = text(login);
            }
            Event::AuthFailed {
                session,
                peer,
                login,
            } => {
                k.session = Some(*session);
                k.ip = Some(*peer);
                k.login = login.as_deref().and_then(text);
            }
            Event::AuthRefused { session, peer, .. } => {
                k.session = Some(*session);
                k.ip = Some(*peer);
            }
            Event::Decision {
                session,
                peer,
                login,
                sender,
                recipient,
                ..
            } => {
                k.session = Some(*session);
                k.ip = Some(*peer);
                k.login = login.as_deref().and_then(text);
                k.sender = text(sender);
                k.recipient = text(recipient);
            }
            Event::MessageAccepted { session, id, .. } => {
                k.session = Some(*session);
                k.message = Some(id);
            }
            Event::Delivery {
                message_id,
                recipient,
                ..
            } => {
                k.message = Some(message_id);
                k.recipient = text(recipient);
            }
            Event::NotNotified {
                message_id,
                recipient,
                ..
            } => {
                k.message = Some(message_id);
                k.recipient = text(recipient);
            }
            Event::Bounced { message_id, .. } | Event::NoticeSent { message_id, .. } => {
                k.message = Some(message_id)
            }
            Event::SessionRefused { peer, .. } | Event::ProxyRefused { peer, .. } => {
                k.ip = Some(peer.ip())
            }
            Event::ClientBanned { peer, .. } => k.ip = Some(*peer),
            Event::Error {
                session: Some(s), ..
            }
            | Event::BlocklistUnusable {
                session: Some(s), ..
            } => k.session = Some(*s),
            _ => {}
        }
        k
    }

    /// The hash of each FTS5 token of the random keys (address, login,
    /// sender, recipient), in [`TraceKeys::token_list`]'s order.
    pub fn token_hashes(&self, mut each: impl FnMut(u64)) {
        if let Some(ip) = self.ip {
            let text = crate::net_text::AddrText::ip(ip);
            each(key_hash("i", text.as_str().bytes()));
        }
        for (field, value) in [("l", self.login), ("f", self.sender), ("t", self.recipient)] {
            if let Some(v) = value {
                each(lower_key_hash(field, v));
            }
        }
    }
}

impl TraceKeys {
    pub fn of(event: &Event) -> TraceKeys {
        let k = KeysOf::of(event);
        TraceKeys {
            session: k.session,
            message: k.message.map(str::to_string),
            ip: k.ip.map(|ip| ip.to_string()),
            login: k.login.and_then(lower),
            sender: k.sender.and_then(lower),
            recipient: k.recipient.and_then(lower),
        }
    }

    /// The FTS5 tokens of the random keys (address, login, sender,
    /// recipient); empty if the event has none.
    pub fn tokens(&self) -> String {
        self.token_list().join(" ")
    }

    /// The same tokens, one each.
    pub fn token_list(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (field, value) in [
            ("i", &self.ip),
            ("l", &self.login),
            ("f", &self.sender),
            ("t", &self.recipient),
        ] {
            if let Some(v) = value {
                out.push(token(field, v));
            }
        }
        out
    }

    /// The stored session key of `session` in engine run `run`.
    pub fn session_key(run: u64, session: u64) -> i64 {
        ((run << SESSION_BITS) | (session & ((1 << SESSION_BITS) - 1))) as i64
    }
}

/// Adds the trace index to an event log, filling it for the rows already
/// there (once, when a log from before it is first opened for writing).
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let has: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'session'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if has {
        return Ok(());
    }
    let tx = conn.transaction()?;
    tx.execute_batch(
        "ALTER TABLE events ADD COLUMN session INTEGER;
         ALTER TABLE events ADD COLUMN message TEXT;
         CREATE INDEX IF NOT EXISTS events_session ON events (session) WHERE session IS NOT NULL;
         CREATE INDEX IF NOT EXISTS events_message ON events (message) WHERE message IS NOT NULL;
         CREATE VIRTUAL TABLE IF NOT EXISTS event_keys USING fts5(
             keys, content='', contentless_delete=1, detail='none');",
    )?;
    // The rows already there, as run 0 (the runs before this version
    // cannot be told apart).
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT id, event FROM events WHERE event IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    {
        let mut columns =
            tx.prepare("UPDATE events SET session = ?2, message = ?3 WHERE id = ?1")?;
        for (id, json) in rows {
            if let Ok(event) = serde_json::from_str::<Event>(&json) {
                let k = TraceKeys::of(&event);
                columns.execute(rusqlite::params![
                    id,
                    k.session.map(|s| TraceKeys::session_key(0, s)),
                    k.message
                ])?;
                index(&tx, id, &k.tokens())?;
            }
        }
    }
    tx.commit()
}

/// Indexes the random keys (`tokens`, see [`TraceKeys::tokens`]) of one
/// appended row (its id in `events`); its session and message are columns
/// of the row.
pub fn index(conn: &Connection, id: i64, tokens: &str) -> rusqlite::Result<()> {
    if tokens.is_empty() {
        return Ok(());
    }
    conn.prepare_cached("INSERT INTO event_keys (rowid, keys) VALUES (?1, ?2)")?
        .execute(rusqlite::params![id, tokens])?;
    Ok(())
}

/// Drops the index entries of events pruned from the log.
pub fn prune(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM event_keys WHERE rowid < coalesce((SELECT min(id) FROM events), 1 << 62)",
        [],
    )
}

/// The engine run a writer opening `conn` now starts: one more than the
/// last one logged.
/// The number of the newest run's highest session (0: none): the engine
/// numbers its sessions on from there, so that no two sessions in the
/// history have the same number.
pub fn last_session(conn: &Connection) -> rusqlite::Result<u64> {
    let last: Option<i64> = conn.query_row("SELECT max(session) FROM events", [], |r| r.get(0))?;
    Ok(last.map_or(0, |k| (k.max(0) as u64) & ((1 << SESSION_BITS) - 1)))
}

pub fn next_run(conn: &Connection) -> rusqlite::Result<u64> {
    let last: Option<i64> = conn.query_row(
        &format!("SELECT max(session) >> {SESSION_BITS} FROM events"),
        [],
        |r| r.get(0),
    )?;
    Ok(last.map_or(1, |l| l.max(0) as u64 + 1))
}

/// What to look for. `any` matches a queue id, a client address, a login,
/// a sender or a recipient; the others match only their own field. All
/// given must match the same event. Addresses and logins match whatever
/// their case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceQuery {
    pub any: Option<String>,
    pub id: Option<String>,
    pub ip: Option<String>,
    pub login: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Only events at or after this (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only events before this (ms since the epoch).
    pub until_ms: Option<i64>,
}

impl TraceQuery {
    /// The query that finds the story an event belongs to: its message if
    /// it has one, else its decision's client, sender and recipient, else
    /// its client; `None` for events of no session or message.
    pub fn for_event(event: &Event) -> Option<TraceQuery> {
        let k = TraceKeys::of(event);
        if let Some(id) = k.message {
            return Some(TraceQuery {
                id: Some(id),
                ..Default::default()
            });
        }
        if k.sender.is_some() || k.recipient.is_some() {
            return Some(TraceQuery {
                ip: k.ip,
                from: k.sender,
                to: k.recipient,
                ..Default::default()
            });
        }
        k.ip.map(|ip| TraceQuery {
            ip: Some(ip),
            ..Default::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.any.is_none()
            && self.id.is_none()
            && self.ip.is_none()
            && self.login.is_none()
            && self.from.is_none()
            && self.to.is_none()
    }

    fn address(v: &str) -> String {
        v.trim().trim_matches(['<', '>']).to_lowercase()
    }

    /// The FTS5 expression that finds candidates by their random keys;
    /// `None` if the query names none of them (a queue id alone).
    fn expression(&self) -> Option<String> {
        let mut all: Vec<String> = Vec::new();
        if let Some(a) = &self.any {
            let a = a.trim();
            let l = TraceQuery::address(a);
            all.push(format!(
                "({} OR {} OR {} OR {})",
                token("i", a),
                token("l", &l),
                token("f", &l),
                token("t", &l)
            ));
        }
        for (field, value) in self.fields() {
            if field != "m" {
                all.push(token(field, &value));
            }
        }
        (!all.is_empty()).then(|| all.join(" AND "))
    }

    /// The queue id a candidate may be found by.
    fn message(&self) -> Option<String> {
        self.id
            .as_deref()
            .or(self.any.as_deref())
            .map(|m| m.trim().to_string())
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(v) = &self.id {
            out.push(("m", v.trim().to_string()));
        }
        if let Some(v) = &self.ip {
            out.push(("i", v.trim().to_string()));
        }
        if let Some(v) = &self.login {
            out.push(("l", v.trim().to_lowercase()));
        }
        if let Some(v) = &self.from {
            out.push(("f", TraceQuery::address(v)));
        }
        if let Some(v) = &self.to {
            out.push(("t", TraceQuery::address(v)));
        }
        out
    }

    /// Whether an event the index found really matches (the index is a
    /// hash: this is the word that counts).
    fn matches(&self, at_ms: i64, k: &TraceKeys) -> bool {
        if self.since_ms.is_some_and(|s| at_ms < s) || self.until_ms.is_some_and(|u| at_ms >= u) {
            return false;
        }
        let field = |f: &str| match f {
            "m" => k.message.as_deref(),
            "i" => k.ip.as_deref(),
            "l" => k.login.as_deref(),
            "f" => k.sender.as_deref(),
            _ => k.recipient.as_deref(),
        };
        if let Some(a) = &self.any {
            let a = a.trim();
            let l = TraceQuery::address(a);
            let hit = field("m") == Some(a)
                || field("i") == Some(a)
                || field("l") == Some(&l)
                || field("f") == Some(&l)
                || field("t") == Some(&l);
            if !hit {
                return false;
            }
        }
        self.fields()
            .iter()
            .all(|(f, v)| field(f) == Some(v.as_str()))
    }
}

/// One session (or, if its session is no longer in the log, one message)
/// and everything that happened to it and to the messages it brought.
#[derive(Debug, Clone, PartialEq)]
pub struct Story {
    /// The session's number in its engine run.
    pub session: Option<u64>,
    /// The queue ids of the messages in it.
    pub messages: Vec<String>,
    pub events: Vec<Stamped>,
}

/// One event row as a trace reads it.
struct Row {
    session: Option<i64>,
    keys: TraceKeys,
    stamped: Stamped,
}

/// Where an event is in the log: its row's id, and its place in the row
/// (a row can hold several events of one session, see
/// [`crate::decision_log::LogRow`]).
type Place = (i64, usize);

/// Reads event rows: `from_where` is the rest of the statement after the
/// table, `key` its one parameter; newest rows first, at most `limit`.
fn read(
    conn: &Connection,
    from_where: &str,
    key: rusqlite::types::Value,
    limit: usize,
) -> rusqlite::Result<Vec<(Place, Row)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT e.id, e.at_ms, e.event, e.session FROM {from_where} ORDER BY e.id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(rusqlite::params![key, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, at_ms, json, session) = row?;
        let Some(events) = json.and_then(|j| crate::decision_log::parse_row(at_ms, &j)) else {
            continue;
        };
        for (i, stamped) in events.into_iter().enumerate() {
            out.push((
                (id, i),
                Row {
                    session,
                    keys: TraceKeys::of(&stamped.event),
                    stamped,
                },
            ));
        }
    }
    Ok(out)
}

const BY_KEYS: &str = "event_keys k JOIN events e ON e.id = k.rowid WHERE event_keys MATCH ?1";
const BY_SESSION: &str = "events e WHERE e.session = ?1";
const BY_MESSAGE: &str = "events e WHERE e.message = ?1";

/// Searches the log; the newest [`MAX_STORIES`] stories, oldest first.
pub fn trace(conn: &Connection, q: &TraceQuery) -> rusqlite::Result<Vec<Story>> {
    if q.is_empty() {
        return Ok(Vec::new());
    }
    // 1. The matching events.
    let mut sessions: BTreeSet<i64> = BTreeSet::new();
    let mut messages: BTreeSet<String> = BTreeSet::new();
    let mut candidates = Vec::new();
    // Events of no session and no message (a client refused at connect,
    // a ban): each a story of its own.
    let mut alone: Vec<(Place, Row)> = Vec::new();
    if let Some(e) = q.expression() {
        candidates.extend(read(conn, BY_KEYS, e.into(), MAX_MATCHES)?);
    }
    if let Some(m) = q.message() {
        candidates.extend(read(conn, BY_MESSAGE, m.into(), MAX_MATCHES)?);
    }
    for (place, row) in candidates {
        if !q.matches(crate::live::epoch_ms(row.stamped.at), &row.keys) {
            continue;
        }
        if row.session.is_none() && row.keys.message.is_none() {
            if alone.len() < MAX_STORIES && !alone.iter().any(|(p, _)| *p == place) {
                alone.push((place, row));
            }
            continue;
        }
        sessions.extend(row.session);
        messages.extend(row.keys.message.clone());
        if sessions.len() + messages.len() > 4 * MAX_STORIES {
            break;
        }
    }
    // 2. Their whole sessions and messages: the messages of those
    // sessions, the sessions that accepted those messages, and every event
    // of each.
    let mut rows: BTreeMap<Place, Row> = BTreeMap::new();
    let mut seen_sessions: BTreeSet<i64> = BTreeSet::new();
    let mut seen_messages: BTreeSet<String> = BTreeSet::new();
    let mut budget = 4 * MAX_STORIES;
    loop {
        if budget == 0 {
            break;
        }
        if let Some(s) = sessions.pop_first() {
            if !seen_sessions.insert(s) {
                continue;
            }
            budget -= 1;
            for (id, row) in read(conn, BY_SESSION, s.into(), MAX_MATCHES)? {
                if let Some(m) = &row.keys.message
                    && !seen_messages.contains(m)
                {
                    messages.insert(m.clone());
                }
                rows.insert(id, row);
            }
            continue;
        }
        let Some(m) = messages.pop_first() else {
            break;
        };
        if !seen_messages.insert(m.clone()) {
            continue;
        }
        budget -= 1;
        for (id, row) in read(conn, BY_MESSAGE, m.clone().into(), MAX_MATCHES)? {
            if let Some(s) = row.session
                && !seen_sessions.contains(&s)
            {
                sessions.insert(s);
            }
            rows.insert(id, row);
        }
    }
    // 3. One story per session; a message's events go to the session that
    // accepted it.
    let mut accepted_in: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows.values() {
        if let (Some(s), Some(m)) = (row.session, &row.keys.message) {
            accepted_in.entry(m.clone()).or_insert(s);
        }
    }
    #[derive(PartialEq, Eq, PartialOrd, Ord, Clone)]
    enum Owner {
        Session(i64),
        Message(String),
        Alone(Place),
    }
    let mut rows: Vec<(Place, Row)> = rows.into_iter().collect();
    rows.extend(alone);
    let mut stories: BTreeMap<Owner, Story> = BTreeMap::new();
    let mut first_seen: BTreeMap<Owner, Place> = BTreeMap::new();
    for (id, row) in rows {
        let owner = match (row.session, &row.keys.message) {
            (Some(s), _) => Owner::Session(s),
            (None, Some(m)) => match accepted_in.get(m) {
                Some(s) => Owner::Session(*s),
                None => Owner::Message(m.clone()),
            },
            (None, None) => Owner::Alone(id),
        };
        first_seen.entry(owner.clone()).or_insert(id);
        let story = stories.entry(owner.clone()).or_insert_with(|| Story {
            session: match owner {
                Owner::Session(s) => Some((s as u64) & ((1 << SESSION_BITS) - 1)),
                Owner::Message(_) | Owner::Alone(_) => None,
            },
            messages: Vec::new(),
            events: Vec::new(),
        });
        if let Some(m) = &row.keys.message
            && !story.messages.contains(m)
        {
            story.messages.push(m.clone());
        }
        story.events.push(row.stamped);
    }
    let mut ordered: Vec<(Place, Story)> = stories
        .into_iter()
        .map(|(owner, story)| (first_seen.get(&owner).copied().unwrap_or((0, 0)), story))
        .collect();
    ordered.sort_by_key(|(first, _)| *first);
    // In time: rows hold a batch's events of one session or message, so
    // row order alone can put a delivery before its session's close.
    for (_, story) in &mut ordered {
        story.events.sort_by_key(|e| e.at);
    }
    let skip = ordered.len().saturating_sub(MAX_STORIES);
    Ok(ordered.into_iter().skip(skip).map(|(_, s)| s).collect())
}

/// A story as lines of text (the CLI prints them, the console shows
/// them): a heading, each event with its UTC time, then where its messages
/// stand in the queue now (`queue`, one line each).
pub fn render(story: &Story, queue: &[String]) -> Vec<String> {
    let messages = if story.messages.is_empty() {
        "no message accepted".to_string()
    } else {
        format!("message {}", story.messages.join(", "))
    };
    let heading = match story.session {
        Some(s) => format!("== session {s} · {messages}"),
        // Refused at connect, or a ban: there was no session.
        None if story.messages.is_empty() => {
            "== no session (refused before the greeting, or a ban)".to_string()
        }
        None => format!("== messages whose session is no longer in the log · {messages}"),
    };
    let mut lines = vec![heading];
    for e in &story.events {
        lines.push(format!(
            "  {}  {}",
            timestamp(e.at),
            crate::events::describe(&e.event).text
        ));
    }
    for q in queue {
        lines.push(format!("  now: {q}"));
    }
    lines
}

/// Where each of a story's messages stands in the queue now (those still
/// in it), read through `spool` if it could be opened.
pub fn queue_states(
    story: &Story,
    spool: Option<&crate::spool::SpoolReader>,
    now: i64,
) -> Vec<String> {
    story
        .messages
        .iter()
        .filter_map(|id| spool?.entry(id).ok().flatten())
        .map(|e| queue_state(&e, now))
        .collect()
}

/// Where a queued message stands: held or not, each recipient's state,
/// next attempt (`now`: seconds since the epoch) and last error.
pub fn queue_state(e: &crate::spool::QueueEntry, now: i64) -> String {
    let rcpts: Vec<String> = e
        .recipients
        .iter()
        .map(|r| {
            let when = if e.held || r.state != "queued" {
                String::new()
            } else if r.next_attempt <= now {
                ", next attempt now".into()
            } else {
                format!(", next attempt in {} s", r.next_attempt - now)
            };
            let error = r
                .last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default();
            format!("<{}> {}{when}{error}", r.address, r.state)
        })
        .collect();
    format!(
        "{} in the queue{}: {}",
        e.id,
        if e.held { ", held" } else { "" },
        rcpts.join("; ")
    )
}

/// `2026-11-26 14:05:01.123` (UTC).
pub fn timestamp(at: std::time::SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (y, m, day) = crate::smtp::trace_header::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_word_each_and_differ_by_field() {
        let k = TraceKeys {
            session: Some(7),
            sender: Some("a@b.c".into()),
            recipient: Some("a@b.c".into()),
            ..Default::default()
        };
        let tokens: Vec<String> = k.tokens().split(' ').map(str::to_string).collect();
        assert_eq!(tokens.len(), 2, "the session is a column, not a token");
        assert!(
            tokens
                .iter()
                .all(|t| t.len() == 17 && t.chars().all(|c| c.is_ascii_alphanumeric()))
        );
        assert_ne!(
            tokens[0], tokens[1],
            "sender and recipient are different keys"
        );
        assert_eq!(TraceKeys::session_key(3, 7) >> SESSION_BITS, 3);
    }

    /// A session's problems are filed under it, so that its trace shows
    /// them (a blocklist that could not be asked, an error).
    #[test]
    fn a_sessions_problems_are_found_by_its_session() {
        let blocklist = Event::BlocklistUnusable {
            session: Some(3),
            zone: Some("zen.test".into()),
            trouble: crate::events::BlocklistTrouble::NoAnswer { within_secs: 5 },
        };
        let error = Event::Error {
            session: Some(3),
            message: "x".into(),
        };
        for event in [&blocklist, &error] {
            assert_eq!(KeysOf::of(event).session, Some(3), "{event:?}");
        }
    }

    /// The writer's borrowed keys give exactly the owned keys' tokens, so
    /// what it files is what a search looks for.
    #[test]
    fn borrowed_keys_make_the_same_tokens() {
        use crate::policy::decision::{Decision, Reason, RelayClass, Reply, Verdict};
        let allowed = || Decision {
            verdict: Verdict::Allow,
            class: RelayClass::Outbound,
            reply: Reply {
                code: 250,
                status: "2.1.5".into(),
                text: "Ok".into(),
            },
            reason: Reason::Authenticated {
                login: "bob".into(),
            },
            routing_trick: None,
            accepted_by_rule: None,
            verification: None,
        };
        let decision = |login: Option<&str>, sender: &str, recipient: &str| Event::Decision {
            session: 4,
            peer: "2001:db8::7".parse().unwrap(),
            login: login.map(str::to_string),
            sender: sender.into(),
            recipient: recipient.into(),
            decision: Box::new(allowed()),
        };
        let events = [
            decision(Some("Bob"), "Bob@Example.COM", "x@Y.test"),
            // Not ASCII: lower case as `to_lowercase` has it (final sigma).
            decision(None, "ΟΔΟΣ@παράδειγμα.ελ", "ΣΊΣΥΦΟΣ@x"),
            decision(Some(""), "", "t@x"),
            Event::SessionOpened {
                session: 1,
                peer: "192.0.2.1:25".parse().unwrap(),
                local: "127.0.0.1:25".parse().unwrap(),
                kind: crate::bindings::BindKind::Smtp,
                tls: false,
                via: None,
            },
            Event::AuthFailed {
                session: 2,
                peer: "198.51.100.9".parse().unwrap(),
                login: Some("ÄLICE".into()),
            },
            Event::Delivery {
                message_id: "Q1".into(),
                recipient: "Rcpt@X".into(),
                host: "h".into(),
                outcome: crate::events::DeliveryOutcome::Delivered,
                reply: "250".into(),
            },
        ];
        for event in &events {
            let mut written = Vec::new();
            KeysOf::of(event).token_hashes(|h| {
                let mut t = String::new();
                push_token(&mut t, h);
                written.push(t);
            });
            assert_eq!(written, TraceKeys::of(event).token_list(), "{event:?}");
        }
    }
}
