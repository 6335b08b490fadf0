//! The persisted event log: every decision with its reason, and the other
//! events of note, kept in `data/relaygate.log.db` so the history survives
//! a restart and the console can browse it. Bounded by age and by rows.
//!
//! Its own SQLite file, so that its writes never look like configuration
//! changes to the engine, and never wait on the spool's fsyncs. Commands
//! and their replies are not kept (they are in each session's dialogue).
//!
//! Events are stored as JSON (the `text` column is only filled in rows
//! from before typed events); a session's events that reach the writer in
//! one batch share a row ([`LogRow`]), which costs a refused client one
//! row instead of three.

use crate::events::{Event, EventKind, Outcome, Stamped};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Why a trace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(
        "the event log has no trace index yet: it is added when the engine (this version) starts"
    )]
    NotIndexed,
    #[error("reading the event log: {0}")]
    Log(rusqlite::Error),
}

/// One logged event.
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// The engine's own typed event, exactly as it was emitted.
    Event(Stamped),
    /// A line written by a relaygate from before events were stored typed.
    Legacy {
        at_ms: i64,
        kind: Option<EventKind>,
        verdict: Option<Outcome>,
        text: String,
    },
}

/// How much history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

/// The log file that goes with a configuration database:
/// `data/relaygate.db` -> `data/relaygate.log.db`.
pub fn log_path_for(db: &Path) -> PathBuf {
    db.with_extension("log.db")
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    verdict TEXT,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at_ms);
";

impl LogRecord {
    /// Its line, as the log shows it.
    pub fn words(&self) -> String {
        match self {
            LogRecord::Event(s) => crate::events::describe(&s.event).text,
            LogRecord::Legacy { text, .. } => text.clone(),
        }
    }

    /// When it happened, in milliseconds since the epoch.
    pub fn at_ms(&self) -> i64 {
        match self {
            LogRecord::Event(s) => crate::live::epoch_ms(s.at),
            LogRecord::Legacy { at_ms, .. } => *at_ms,
        }
    }
}

/// Read access to the log (the console), and the writer's connection.
pub struct DecisionLog {
    conn: Connection,
    /// The engine run this writer logs sessions of (see [`crate::trace`]).
    run: u64,
}

impl DecisionLog {
    /// Opens (creating, owner-only) the log for writing.
    pub fn open(path: &Path) -> rusqlite::Result<DecisionLog> {
        crate::data_dir::ensure_private_file(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // A new log's pages are 16 KiB: each page written costs a WAL
        // frame and a checkpoint copy (four system calls), whatever its
        // size, and the log only ever appends. Ignored for an existing log.
        conn.pragma_update(None, "page_size", 16384)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A log line lost to a power cut is acceptable; a slow engine is not.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        let typed: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'event'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !typed {
            // Version 2: the typed event as JSON; `text` stays for old rows.
            conn.execute_batch("ALTER TABLE events ADD COLUMN event TEXT")?;
        }
        // Version 3: what each event is found by, for message trace.
        let mut conn = conn;
        crate::trace::migrate(&mut conn)?;
        let run = crate::trace::next_run(&conn)?;
        Ok(DecisionLog { conn, run })
    }

    /// Opens an existing log without writing to it (the CLI, a console).
    pub fn open_read_only(path: &Path) -> rusqlite::Result<DecisionLog> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(DecisionLog { conn, run: 0 })
    }

    /// The highest session number of the newest engine run in the log
    /// (0: none, or a log from before the trace index).
    pub fn last_session(&self) -> u64 {
        crate::trace::last_session(&self.conn).unwrap_or(0)
    }

    /// Searches the history (see [`crate::trace`]).
    pub fn trace(
        &self,
        query: &crate::trace::TraceQuery,
    ) -> Result<Vec<crate::trace::Story>, TraceError> {
        let indexed: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'session'",
                [],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )
            .map_err(TraceError::Log)?;
        if !indexed {
            return Err(TraceError::NotIndexed);
        }
        crate::trace::trace(&self.conn, query).map_err(TraceError::Log)
    }

    fn has_event_column(&self) -> bool {
        self.conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'event'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .is_ok_and(|n| n > 0)
    }

    fn read_rows(&self, sql: &str, limit: usize) -> rusqlite::Result<Vec<LogRecord>> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([limit as i64], |r| {
            let at_ms: i64 = r.get(0)?;
            let kind: String = r.get(1)?;
            let verdict: Option<String> = r.get(2)?;
            let text: String = r.get(3)?;
            let event: Option<String> = r.get(4)?;
            Ok((at_ms, kind, verdict, text, event))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at_ms, kind, verdict, text, event) = row?;
            match event.and_then(|json| parse_row(at_ms, &json)) {
                Some(events) => out.extend(events.into_iter().map(LogRecord::Event)),
                None => out.push(LogRecord::Legacy {
                    at_ms,
                    kind: EventKind::parse(&kind),
                    verdict: verdict.as_deref().and_then(Outcome::parse),
                    text,
                }),
            }
        }
        Ok(out)
    }

    /// The newest `limit` records, oldest first (in time: a shared row's
    /// events are put back among the others').
    pub fn recent(&self, limit: usize) -> rusqlite::Result<Vec<LogRecord>> {
        let event = if self.has_event_column() {
            "event"
        } else {
            "NULL"
        };
        let mut records = self.read_rows(
            &format!(
                "SELECT at_ms, kind, verdict, text, {event} FROM
                   (SELECT * FROM events ORDER BY id DESC LIMIT ?1)
                 ORDER BY id"
            ),
            limit,
        )?;
        records.sort_by_key(LogRecord::at_ms);
        let extra = records.len().saturating_sub(limit);
        records.drain(..extra);
        Ok(records)
    }

    /// The newest `limit` events of the whole history whose line (as
    /// [`crate::events::describe`] words it) contains `needle`, in any
    /// case; oldest first. Rows are matched on their JSON first (a scan, so
    /// it belongs off the screen's thread), then each event on its words.
    pub fn search(&self, needle: &str, limit: usize) -> rusqlite::Result<Vec<LogRecord>> {
        let needle = needle.trim().to_lowercase();
        if needle.is_empty() {
            return Ok(Vec::new());
        }
        let event = if self.has_event_column() {
            "event"
        } else {
            "NULL"
        };
        // LIKE is ASCII-case-blind; `\` escapes its wildcards in the needle.
        let pattern = format!(
            "%{}%",
            needle
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut stmt = self.conn.prepare(&format!(
            "SELECT at_ms, kind, verdict, text, {event} FROM events
             WHERE coalesce({event}, text) LIKE ?1 ESCAPE '\\'
                OR text LIKE ?1 ESCAPE '\\'
             ORDER BY id DESC"
        ))?;
        let mut rows = stmt.query([pattern])?;
        let mut found: Vec<LogRecord> = Vec::new();
        while let Some(r) = rows.next()? {
            let at_ms: i64 = r.get(0)?;
            let kind: String = r.get(1)?;
            let verdict: Option<String> = r.get(2)?;
            let text: String = r.get(3)?;
            let json: Option<String> = r.get(4)?;
            let records = match json.and_then(|j| parse_row(at_ms, &j)) {
                Some(events) => events.into_iter().map(LogRecord::Event).collect(),
                None => vec![LogRecord::Legacy {
                    at_ms,
                    kind: EventKind::parse(&kind),
                    verdict: verdict.as_deref().and_then(Outcome::parse),
                    text,
                }],
            };
            for record in records.into_iter().rev() {
                if record.words().to_lowercase().contains(&needle) {
                    found.push(record);
                }
            }
            if found.len() >= limit {
                break;
            }
        }
        found.truncate(limit);
        found.sort_by_key(LogRecord::at_ms);
        Ok(found)
    }

    /// The newest configuration outcome: the last rejection if nothing was
    /// accepted after it (what `policy show` reports), else `None`.
    pub fn standing_rejection(&self) -> rusqlite::Result<Option<(SystemTime, Event)>> {
        if !self.has_event_column() {
            return Ok(None);
        }
        let records = self.read_rows(
            "SELECT at_ms, kind, verdict, text, event FROM events
             WHERE kind IN ('config', 'error') AND event IS NOT NULL
             ORDER BY id DESC LIMIT ?1",
            200,
        )?;
        for record in records {
            if let LogRecord::Event(stamped) = record {
                match stamped.event.as_ref() {
                    Event::ConfigRejected { .. } => {
                        return Ok(Some((stamped.at, (*stamped.event).clone())));
                    }
                    Event::PolicyReloaded { .. } | Event::EngineStarted { .. } => return Ok(None),
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Appends events in one transaction, a row per [`LogRow`].
    pub fn append(&mut self, events: &[&Stamped]) -> rusqlite::Result<()> {
        self.append_in_place(events, false)
    }

    /// [`DecisionLog::append`]; with `in_place` (a disk short of room) the
    /// log does not grow: unless the file has free pages, as many of the
    /// oldest rows as are written go, in the same transaction.
    pub fn append_in_place(&mut self, events: &[&Stamped], in_place: bool) -> rusqlite::Result<()> {
        let rows = LogRow::group(events);
        let tx = self.conn.transaction()?;
        if in_place {
            let free_pages: i64 = tx.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            if free_pages == 0 {
                let n = tx.execute(
                    "DELETE FROM events WHERE id < (SELECT min(id) FROM events) + ?1",
                    [rows.len() as i64],
                )?;
                if n > 0 {
                    crate::trace::prune(&tx)?;
                }
            }
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (at_ms, kind, verdict, text, event, session, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for row in rows {
                let (kind, verdict) = row.classify();
                let json = row
                    .json()
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                stmt.execute(rusqlite::params![
                    crate::live::epoch_ms(row.events[0].at),
                    kind.as_str(),
                    verdict.map(Outcome::as_str),
                    // The JSON says it all; the text is for rows without it.
                    "",
                    json,
                    row.session
                        .map(|s| crate::trace::TraceKeys::session_key(self.run, s)),
                    row.message,
                ])?;
                crate::trace::index(&tx, tx.last_insert_rowid(), &row.tokens)?;
            }
        }
        tx.commit()
    }

    /// Drops what is older than the retention or beyond its row count.
    pub fn prune(&mut self, retention: Retention, now_ms: i64) -> rusqlite::Result<usize> {
        let oldest = now_ms - retention.max_age.as_millis() as i64;
        let by_age = self
            .conn
            .execute("DELETE FROM events WHERE at_ms < ?1", [oldest])?;
        let by_rows = self.conn.execute(
            "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ?1",
            [retention.max_rows as i64],
        )?;
        if by_age + by_rows > 0 {
            crate::trace::prune(&self.conn)?;
        }
        Ok(by_age + by_rows)
    }
}

/// Events of one session (or of one message) that reach the writer in
/// the same batch share a row: a refused client's connection, decision
/// and close are one row, not three, and one entry in each index. Each
/// event keeps its own time.
#[derive(Debug)]
pub struct LogRow<'a> {
    pub events: Vec<&'a Stamped>,
    pub session: Option<u64>,
    pub message: Option<String>,
    /// The FTS5 tokens of all its events' random keys, each once.
    pub tokens: String,
}

/// Events in one row at most (a long session's batch goes on in the next).
const ROW_EVENTS: usize = 64;

/// An event of a shared row, as stored: `[{"at_ms":..,"event":{..}},..]`.
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    at_ms: i64,
    event: &'a Event,
}

#[derive(serde::Deserialize)]
struct Stored {
    at_ms: i64,
    event: Event,
}

impl<'a> LogRow<'a> {
    /// The rows of a batch, in the order of each row's first event. Events
    /// with neither a session nor a message are a row each; a session's
    /// row holds at most one message (its next message starts a new row).
    pub fn group(events: &[&'a Stamped]) -> Vec<LogRow<'a>> {
        use std::collections::HashMap;
        let mut rows: Vec<LogRow<'a>> = Vec::new();
        // Per row, the hashes of its tokens (each once).
        let mut tokens: Vec<Vec<u64>> = Vec::new();
        // The open row of each session, and of each message of no session.
        let mut by_session: HashMap<u64, usize> = HashMap::new();
        let mut by_message: HashMap<&'a str, usize> = HashMap::new();
        for stamped in events {
            let keys = crate::trace::KeysOf::of(&stamped.event);
            let open = match (keys.session, keys.message) {
                (Some(s), _) => by_session.get(&s),
                (None, Some(m)) => by_message.get(m),
                (None, None) => None,
            };
            let joins = open.copied().filter(|&i| {
                let row = &rows[i];
                row.events.len() < ROW_EVENTS
                    && (keys.message.is_none()
                        || row.message.is_none()
                        || row.message.as_deref() == keys.message)
            });
            let i = match joins {
                Some(i) => i,
                None => {
                    let i = rows.len();
                    rows.push(LogRow {
                        events: Vec::new(),
                        session: keys.session,
                        message: None,
                        tokens: String::new(),
                    });
                    tokens.push(Vec::new());
                    match (keys.session, keys.message) {
                        (Some(s), _) => {
                            by_session.insert(s, i);
                        }
                        (None, Some(m)) => {
                            by_message.insert(m, i);
                        }
                        (None, None) => {}
                    }
                    i
                }
            };
            let row = &mut rows[i];
            row.events.push(stamped);
            if row.message.is_none() {
                row.message = keys.message.map(str::to_string);
            }
            let row_tokens = &mut tokens[i];
            keys.token_hashes(|h| {
                if !row_tokens.contains(&h) {
                    row_tokens.push(h);
                }
            });
        }
        for (row, hashes) in rows.iter_mut().zip(tokens) {
            row.tokens.reserve(hashes.len() * 18);
            for (n, h) in hashes.into_iter().enumerate() {
                if n > 0 {
                    row.tokens.push(' ');
                }
                crate::trace::push_token(&mut row.tokens, h);
            }
        }
        rows
    }

    /// The row's kind and outcome: those of its first event that has an
    /// outcome (a session's decision), else of its first event.
    fn classify(&self) -> (EventKind, Option<Outcome>) {
        self.events
            .iter()
            .map(|e| e.event.classify())
            .find(|(_, v)| v.is_some())
            .unwrap_or_else(|| self.events[0].event.classify())
    }

    /// One event as its JSON object; several as an array of them, each
    /// with its time.
    fn json(&self) -> serde_json::Result<String> {
        match self.events.as_slice() {
            [one] => serde_json::to_string(one.event.as_ref()),
            many => serde_json::to_string(
                &many
                    .iter()
                    .map(|e| StoredRef {
                        at_ms: crate::live::epoch_ms(e.at),
                        event: e.event.as_ref(),
                    })
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

/// The events of a stored row (`at_ms` its time, `json` its event
/// column); `None` if the JSON is not this version's.
pub fn parse_row(at_ms: i64, json: &str) -> Option<Vec<Stamped>> {
    let stamp = |at_ms: i64, event: Event| Stamped {
        at: UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64),
        event: Arc::new(event),
    };
    if json.starts_with('[') {
        let stored: Vec<Stored> = serde_json::from_str(json).ok()?;
        Some(
            stored
                .into_iter()
                .map(|s| stamp(s.at_ms, s.event))
                .collect(),
        )
    } else {
        serde_json::from_str::<Event>(json)
            .ok()
            .map(|e| vec![stamp(at_ms, e)])
    }
}

/// Whether an event is kept in the log: everything but command lines
/// (they are in each session's dialogue).
pub fn is_logged(stamped: &Stamped) -> bool {
    !matches!(*stamped.event, Event::Command { .. })
}

/// How long the writer lets events gather after a transaction: the
/// longer, the fewer commits and WAL frames per event (and a session's
/// events share a row), the later `trace` and the console's history see
/// them. At a quarter of a second a refused session costs 122,700
/// instructions instead of 131,200 (`benches/denied-instructions.sh`).
pub const GATHER: Duration = Duration::from_millis(250);

/// Events taken into one transaction at most.
const BATCH_EVENTS: usize = 20_000;

/// Events kept in memory while the log cannot be written.
const UNWRITTEN_KEPT: usize = 100_000;

/// The event log's writer thread, and the way to stop it.
pub struct LogWriter {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl LogWriter {
    /// Writes what is waiting and ends the writer, waiting `within` at
    /// most: at the engine's stop, so that the last events (the sessions
    /// cut off, the listeners closed) are in the log. The bus outlives
    /// the engine, so its end cannot tell the writer.
    pub fn finish(self, within: Duration) {
        let _ = self.stop.send(());
        let deadline = Instant::now() + within;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

/// The writer, on its own thread: every [`GATHER`] (at once while it is
/// behind) takes whatever events are waiting, writes them in one
/// transaction, and prunes once a minute. Ends when told to
/// ([`LogWriter::finish`]) or when the bus is dropped, after writing
/// what is left.
pub fn spawn_writer(
    path: &Path,
    mut events: mpsc::Receiver<Stamped>,
    retention: impl Fn() -> Retention + Send + 'static,
    disk_short: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<LogWriter> {
    let path = path.to_path_buf();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("decision-log".into())
        .spawn(move || {
            let Ok(mut log) = DecisionLog::open(&path) else {
                // Without a log file the engine still runs; drain and drop
                // until told to stop (or the engine is gone).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(GATHER)
                {
                    while let Ok(_dropped) = events.try_recv() {}
                }
                return;
            };
            let mut last_prune = Instant::now() - Duration::from_secs(3600);
            // Events a failed write left over (a full disk): written with
            // the next batch, oldest first, up to UNWRITTEN_KEPT of them.
            let mut unwritten: Vec<Stamped> = Vec::new();
            let mut failing = false;
            // Let a burst gather into one transaction; a writer that is
            // behind (its last batch full) takes the next one at once, and
            // one that cannot write tries again every second.
            let mut wait = GATHER;
            let mut stopping = false;
            loop {
                if !wait.is_zero() {
                    match stopped.recv_timeout(wait) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => stopping = true,
                    }
                }
                let mut batch: Vec<Stamped> = std::mem::take(&mut unwritten);
                // Stopping: everything still waiting, however much.
                let most = if stopping {
                    usize::MAX
                } else {
                    batch.len() + BATCH_EVENTS
                };
                let mut full = true;
                while batch.len() < most {
                    match events.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(mpsc::error::TryRecvError::Empty) => {
                            full = false;
                            break;
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            full = false;
                            stopping = true;
                            break;
                        }
                    }
                }
                let logged: Vec<&Stamped> = batch.iter().filter(|s| is_logged(s)).collect();
                // While the disk is short of room the log stops growing:
                // the newest rows take the place of as many of the oldest.
                if !logged.is_empty()
                    && let Err(e) = log.append_in_place(&logged, disk_short())
                {
                    let kept: Vec<Stamped> = logged.into_iter().cloned().collect();
                    let dropped = kept.len().saturating_sub(UNWRITTEN_KEPT);
                    // Said on the engine's log (stderr), once a spell, not
                    // as an event: it would only join the ones waiting.
                    if !failing || dropped > 0 {
                        tracing::error!(
                            "event log {}: cannot write {} events ({e}); kept to write later{}",
                            path.display(),
                            kept.len(),
                            if dropped > 0 {
                                format!(", the oldest {dropped} dropped")
                            } else {
                                String::new()
                            }
                        );
                    }
                    failing = true;
                    if stopping {
                        break;
                    }
                    unwritten = kept.into_iter().skip(dropped).collect();
                    wait = Duration::from_secs(1);
                    continue;
                }
                if std::mem::take(&mut failing) {
                    tracing::warn!("event log {}: written again", path.display());
                }
                if stopping {
                    break;
                }
                if last_prune.elapsed() >= Duration::from_secs(60) {
                    let now = std::time::SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as i64);
                    let _ = log.prune(retention(), now);
                    last_prune = Instant::now();
                }
                wait = if full { Duration::ZERO } else { GATHER };
            }
        })?;
    Ok(LogWriter { stop, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: i64, session: u64) -> Stamped {
        Stamped {
            at: UNIX_EPOCH + Duration::from_millis(at_ms as u64),
            event: Arc::new(Event::SessionClosed {
                session,
                why: format!("line {session}"),
            }),
        }
    }

    fn sessions(records: &[LogRecord]) -> Vec<u64> {
        records
            .iter()
            .map(|r| match r {
                LogRecord::Event(s) => match s.event.as_ref() {
                    Event::SessionClosed { session, .. } => *session,
                    other => panic!("unexpected {other:?}"),
                },
                LogRecord::Legacy { .. } => panic!("legacy"),
            })
            .collect()
    }

    #[test]
    fn append_recent_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(&dir.path().join("log.db")).unwrap();
        let records: Vec<Stamped> = (0..10).map(|i| rec(1000 * i, i as u64)).collect();
        log.append(&records.iter().collect::<Vec<_>>()).unwrap();
        let last3 = log.recent(3).unwrap();
        assert_eq!(sessions(&last3), [7, 8, 9]);
        // The event comes back exactly as it was emitted.
        assert_eq!(last3[2], LogRecord::Event(records[9].clone()));
        // Older than 5.5 s at t=10 s: lines 0-4 go; then at most 3 rows stay.
        let retention = Retention {
            max_age: Duration::from_millis(5500),
            max_rows: 3,
        };
        log.prune(retention, 10_000).unwrap();
        let left = log.recent(100).unwrap();
        assert_eq!(sessions(&left), [7, 8, 9]);
    }

    #[test]
    fn a_new_log_has_large_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |log: &DecisionLog| -> i64 {
            log.conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let fresh = DecisionLog::open(&dir.path().join("new.db")).unwrap();
        assert_eq!(page_size(&fresh), 16384);
        // A log from before: 4 KiB pages, in WAL mode already.
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let mut log = DecisionLog::open(&old).unwrap();
        assert_eq!(page_size(&log), 4096);
        let records: Vec<Stamped> = (0..3).map(|i| rec(1000 * i, i as u64)).collect();
        log.append(&records.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(sessions(&log.recent(10).unwrap()), [0, 1, 2]);
    }

    #[test]
    fn written_in_place_the_log_does_not_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(&dir.path().join("log.db")).unwrap();
        let records: Vec<Stamped> = (0..10).map(|i| rec(1000 * i, i as u64)).collect();
        log.append(&records.iter().collect::<Vec<_>>()).unwrap();
        // Three rows in place of the three oldest: as many rows as before.
        let more: Vec<Stamped> = (10..13).map(|i| rec(1000 * i, i as u64)).collect();
        log.append_in_place(&more.iter().collect::<Vec<_>>(), true)
            .unwrap();
        assert_eq!(
            sessions(&log.recent(100).unwrap()),
            (3..13).collect::<Vec<_>>()
        );
        // With free pages in the file (big rows pruned), nothing more goes.
        let big = |i: u64| Stamped {
            at: UNIX_EPOCH + Duration::from_millis(1000 * i),
            event: Arc::new(Event::SessionClosed {
                session: i,
                why: "x".repeat(20_000),
            }),
        };
        let bigs: Vec<Stamped> = (13..20).map(big).collect();
        log.append(&bigs.iter().collect::<Vec<_>>()).unwrap();
        let retention = Retention {
            max_age: Duration::from_secs(3600),
            max_rows: 3,
        };
        log.prune(retention, 20_000).unwrap();
        assert_eq!(sessions(&log.recent(100).unwrap()), [17, 18, 19]);
        let last = [rec(20_000, 20)];
        log.append_in_place(&last.iter().collect::<Vec<_>>(), true)
            .unwrap();
        assert_eq!(sessions(&log.recent(100).unwrap()), [17, 18, 19, 20]);
    }

    fn stamped(at_ms: u64, event: Event) -> Stamped {
        Stamped {
            at: UNIX_EPOCH + Duration::from_millis(at_ms),
            event: Arc::new(event),
        }
    }

    fn accepted(at_ms: u64, session: u64, id: &str) -> Stamped {
        stamped(
            at_ms,
            Event::MessageAccepted {
                session,
                id: id.into(),
                size: 10,
                recipients: 1,
            },
        )
    }

    #[test]
    fn a_sessions_events_in_one_batch_share_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let mut log = DecisionLog::open(&path).unwrap();
        let peer: std::net::SocketAddr = "127.0.0.9:4000".parse().unwrap();
        let opened = |at, session| {
            stamped(
                at,
                Event::SessionOpened {
                    session,
                    peer,
                    local: "127.0.0.1:25".parse().unwrap(),
                    kind: crate::bindings::BindKind::Smtp,
                    tls: false,
                    via: None,
                },
            )
        };
        // Two sessions interleaved; session 1 accepts two messages.
        let batch = [
            opened(1, 1),
            opened(2, 2),
            accepted(3, 1, "M1"),
            rec(4, 2),
            accepted(5, 1, "M2"),
            rec(6, 1),
            stamped(
                7,
                Event::Bounced {
                    message_id: "M1".into(),
                    bounce_id: "B1".into(),
                    to: "a@b.test".into(),
                },
            ),
        ];
        let rows = LogRow::group(&batch.iter().collect::<Vec<_>>());
        let shape: Vec<(Option<u64>, Option<&str>, usize)> = rows
            .iter()
            .map(|r| (r.session, r.message.as_deref(), r.events.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (Some(1), Some("M1"), 2),
                (Some(2), None, 2),
                (Some(1), Some("M2"), 2),
                (None, Some("M1"), 1),
            ]
        );
        // The client's address is a token of session 1's first row, once.
        assert_eq!(rows[0].tokens.split(' ').count(), 1);
        log.append(&batch.iter().collect::<Vec<_>>()).unwrap();
        let stored: i64 = log
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 4);
        // Read back: every event, exactly as emitted, in time order.
        let back: Vec<LogRecord> = log.recent(100).unwrap();
        let want: Vec<LogRecord> = batch.iter().cloned().map(LogRecord::Event).collect();
        assert_eq!(back, want);
        // The newest few are the newest events, not the newest rows.
        assert_eq!(log.recent(2).unwrap(), want[5..]);
    }

    #[test]
    fn a_search_finds_events_in_shared_rows_by_their_words() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(&dir.path().join("log.db")).unwrap();
        let batch: Vec<Stamped> = (0..300)
            .map(|i| accepted(i, i / 3, &format!("Q{i:04}")))
            .collect();
        // Sessions of three messages each; a row per message.
        log.append(&batch.iter().collect::<Vec<_>>()).unwrap();
        let found = log.search("q012", 100).unwrap();
        let ids: Vec<String> = found
            .iter()
            .map(|r| match r {
                LogRecord::Event(s) => match s.event.as_ref() {
                    Event::MessageAccepted { id, .. } => id.clone(),
                    other => panic!("{other:?}"),
                },
                LogRecord::Legacy { .. } => panic!("legacy"),
            })
            .collect();
        let want: Vec<String> = (120..130).map(|i| format!("Q{i:04}")).collect();
        assert_eq!(ids, want, "oldest first, each once");
        // The newest few; the JSON's own words ("message_accepted") do not
        // count, only the line's; LIKE's wildcards are plain text.
        assert_eq!(log.search("Q0", 5).unwrap().len(), 5);
        assert!(log.search("message_accepted", 10).unwrap().is_empty());
        assert!(log.search("%", 10).unwrap().is_empty());
        assert!(log.search("  ", 10).unwrap().is_empty());
    }

    #[test]
    fn a_row_holds_at_most_its_share_of_events() {
        let batch: Vec<Stamped> = (0..(ROW_EVENTS as u64 + 5))
            .map(|i| stamped(i, Event::TlsEstablished { session: 3 }))
            .collect();
        let rows = LogRow::group(&batch.iter().collect::<Vec<_>>());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].events.len(), ROW_EVENTS);
        assert_eq!(rows[1].events.len(), 5);
    }

    #[test]
    fn old_text_rows_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO events (at_ms, kind, verdict, text) VALUES (5, 'decision', 'denied', 'old line')",
                [],
            )
            .unwrap();
        }
        let mut log = DecisionLog::open(&path).unwrap();
        log.append(&[&rec(6, 1)]).unwrap();
        let all = log.recent(10).unwrap();
        assert_eq!(
            all[0],
            LogRecord::Legacy {
                at_ms: 5,
                kind: Some(EventKind::Decision),
                verdict: Some(Outcome::Denied),
                text: "old line".into()
            }
        );
        assert_eq!(sessions(&all[1..]), [1]);
    }

    #[test]
    fn a_rejection_stands_until_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(&dir.path().join("log.db")).unwrap();
        let at = |ms: u64, event: Event| Stamped {
            at: UNIX_EPOCH + Duration::from_millis(ms),
            event: Arc::new(event),
        };
        let rejected = Event::ConfigRejected {
            error: crate::events::ConfigError::Tls {
                cert: "/c.pem".into(),
                key: "/k.pem".into(),
                detail: "no such file".into(),
            },
        };
        log.append(&[&at(1, rejected.clone())]).unwrap();
        assert_eq!(
            log.standing_rejection().unwrap().map(|r| r.1),
            Some(rejected)
        );
        log.append(&[&at(2, Event::PolicyReloaded { allow: 1, deny: 0 })])
            .unwrap();
        assert_eq!(log.standing_rejection().unwrap(), None);
    }
}
