//! The persisted event log: every decision with its reason, and the other
//! events of note, kept in `data/relaygate.log.db` so the history survives
//! a restart and the console can browse it. Bounded by age and by rows.
//!
//! Its own SQLite file, so that its writes never look like configuration
//! changes to the engine, and never wait on the spool's fsyncs. Commands
//! and their replies are not kept (they are in each session's dialogue).

use crate::events::{Stamped, describe};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::mpsc;

/// One logged event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `decision`, `auth`, `delivery`, `session`, `config`, `error`.
    pub kind: String,
    /// `allowed`/`denied` for decisions, the outcome for deliveries.
    pub verdict: Option<String>,
    pub text: String,
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

/// Read access to the log (the console), and the writer's connection.
pub struct DecisionLog {
    conn: Connection,
}

impl DecisionLog {
    pub fn open(path: &Path) -> rusqlite::Result<DecisionLog> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A log line lost to a power cut is acceptable; a slow engine is not.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(DecisionLog { conn })
    }

    /// The newest `limit` records, oldest first.
    pub fn recent(&self, limit: usize) -> rusqlite::Result<Vec<LogRecord>> {
        let mut stmt = self.conn.prepare(
            "SELECT at_ms, kind, verdict, text FROM
               (SELECT id, at_ms, kind, verdict, text FROM events ORDER BY id DESC LIMIT ?1)
             ORDER BY id",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(LogRecord {
                at_ms: r.get(0)?,
                kind: r.get(1)?,
                verdict: r.get(2)?,
                text: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Appends records in one transaction.
    pub fn append(&mut self, records: &[LogRecord]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (at_ms, kind, verdict, text) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for r in records {
                stmt.execute(rusqlite::params![r.at_ms, r.kind, r.verdict, r.text])?;
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
        Ok(by_age + by_rows)
    }
}

/// Turns a bus event into a record; `None` for command lines.
pub fn record_for(stamped: &Stamped) -> Option<LogRecord> {
    // Before formatting: command lines are most of the events.
    if matches!(*stamped.event, crate::events::Event::Command { .. }) {
        return None;
    }
    let d = describe(&stamped.event);
    Some(LogRecord {
        at_ms: stamped
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.as_millis() as i64),
        kind: d.kind.to_string(),
        verdict: d.verdict.map(str::to_string),
        text: d.text,
    })
}

/// The writer, on its own thread: takes whatever events are waiting,
/// writes them in one transaction, and prunes once a minute. Ends when the
/// bus is dropped.
pub fn spawn_writer(
    path: &Path,
    mut events: mpsc::Receiver<Stamped>,
    retention: impl Fn() -> Retention + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("decision-log".into())
        .spawn(move || {
            let Ok(mut log) = DecisionLog::open(&path) else {
                // Without a log file the engine still runs; drain and drop.
                while events.blocking_recv().is_some() {}
                return;
            };
            let mut last_prune = Instant::now() - Duration::from_secs(3600);
            while let Some(first) = events.blocking_recv() {
                let mut batch: Vec<LogRecord> = record_for(&first).into_iter().collect();
                while batch.len() < 5000 {
                    match events.try_recv() {
                        Ok(e) => batch.extend(record_for(&e)),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let _ = log.append(&batch);
                }
                if last_prune.elapsed() >= Duration::from_secs(60) {
                    let now = std::time::SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as i64);
                    let _ = log.prune(retention(), now);
                    last_prune = Instant::now();
                }
                // Let a burst gather into one transaction.
                std::thread::sleep(Duration::from_millis(50));
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at_ms: i64, text: &str) -> LogRecord {
        LogRecord {
            at_ms,
            kind: "decision".into(),
            verdict: Some("denied".into()),
            text: text.into(),
        }
    }

    #[test]
    fn append_recent_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DecisionLog::open(&dir.path().join("log.db")).unwrap();
        log.append(
            &(0..10)
                .map(|i| rec(1000 * i, &format!("line {i}")))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let last3 = log.recent(3).unwrap();
        assert_eq!(
            last3.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["line 7", "line 8", "line 9"]
        );
        // Older than 5.5 s at t=10 s: lines 0-4 go; then at most 3 rows stay.
        let retention = Retention {
            max_age: Duration::from_millis(5500),
            max_rows: 3,
        };
        log.prune(retention, 10_000).unwrap();
        let left = log.recent(100).unwrap();
        assert_eq!(
            left.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
            ["line 7", "line 8", "line 9"]
        );
    }
}
