//! The spool: every accepted message, durable on disk before the client
//! sees 250.
//!
//! Messages live in their own SQLite file beside the configuration (WAL,
//! `synchronous = FULL`, so a commit is fsynced). One writer thread owns
//! the connection and commits whatever has queued up while the previous
//! commit was syncing in one transaction: under load many messages share
//! one fsync (group commit), and an idle server still commits at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// One recipient of an accepted message, with the decision that let it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecipient {
    pub address: String,
    pub class: String,
    pub reason: String,
}

/// An accepted message as the SMTP engine hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Queue id, from [`Spool::next_id`] (it is in the Received: header).
    pub id: String,
    /// Reverse path without brackets; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<SpoolRecipient>,
    pub login: Option<String>,
    pub peer: String,
    pub helo: String,
    /// The message with the Received: header prepended, CRLF line endings.
    pub body: Vec<u8>,
}

/// A message as read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub received_at: i64,
    pub message: NewMessage,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("spool write failed: {0}")]
    Write(String),
    #[error("the spool writer has stopped")]
    Stopped,
}

struct Job {
    message: NewMessage,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the spool; cheap to clone and share between sessions.
#[derive(Clone)]
pub struct Spool {
    jobs: std_mpsc::Sender<Job>,
    path: PathBuf,
    seq: std::sync::Arc<AtomicU64>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    sender TEXT NOT NULL,
    login TEXT,
    peer TEXT NOT NULL,
    helo TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    PRIMARY KEY (message_id, address)
);
";

/// The spool file that goes with a configuration database:
/// `data/relaygate.db` -> `data/relaygate.spool.db`.
pub fn spool_path_for(db: &Path) -> PathBuf {
    db.with_extension("spool.db")
}

fn open_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

impl Spool {
    /// Opens (or creates) the spool and starts its writer thread.
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let err = |source| SpoolError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = open_connection(path).map_err(err)?;
        let (tx, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| SpoolError::Write(e.to_string()))?;
        Ok(Spool {
            jobs: tx,
            path: path.to_path_buf(),
            seq: std::sync::Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new queue id: milliseconds since the epoch and a sequence number,
    /// unique within this process and sortable by arrival.
    pub fn next_id(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{ms:011X}{:05X}", seq & 0xF_FFFF)
    }

    /// Stores a message durably. Returns once it is fsynced, never before.
    pub async fn store(&self, message: NewMessage) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { message, done })
            .map_err(|_| SpoolError::Stopped)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SpoolError::Write(e)),
            Err(_) => Err(SpoolError::Stopped),
        }
    }
}

/// The writer loop: take one job, then everything else already waiting,
/// and commit them all in one transaction.
fn writer(mut conn: rusqlite::Connection, jobs: std_mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = commit(&mut conn, &batch).map_err(|e| e.to_string());
        for job in batch {
            let _ = job.done.send(result.clone());
        }
    }
}

fn commit(conn: &mut rusqlite::Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let tx = conn.transaction()?;
    {
        let mut msg = tx.prepare_cached(
            "INSERT INTO messages (id, received_at, sender, login, peer, helo, size, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut rcpt = tx.prepare_cached(
            "INSERT OR IGNORE INTO recipients (message_id, address, class, reason) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for job in batch {
            let m = &job.message;
            msg.execute(rusqlite::params![
                m.id,
                now,
                m.sender,
                m.login,
                m.peer,
                m.helo,
                m.body.len() as i64,
                m.body
            ])?;
            for r in &m.recipients {
                rcpt.execute(rusqlite::params![m.id, r.address, r.class, r.reason])?;
            }
        }
    }
    tx.commit()
}

/// Reads every message in a spool file (tests, and the queue view).
pub fn read_spool(path: &Path) -> rusqlite::Result<Vec<StoredMessage>> {
    let conn = open_connection(path)?;
    let mut stmt = conn.prepare(
        "SELECT id, received_at, sender, login, peer, helo, body FROM messages ORDER BY id",
    )?;
    let mut rcpts = conn.prepare(
        "SELECT address, class, reason FROM recipients WHERE message_id = ?1 ORDER BY rowid",
    )?;
    let mut messages: Vec<StoredMessage> = stmt
        .query_map([], |r| {
            let id: String = r.get(0)?;
            Ok(StoredMessage {
                id: id.clone(),
                received_at: r.get(1)?,
                message: NewMessage {
                    id,
                    sender: r.get(2)?,
                    recipients: Vec::new(),
                    login: r.get(3)?,
                    peer: r.get(4)?,
                    helo: r.get(5)?,
                    body: r.get(6)?,
                },
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    for m in &mut messages {
        m.message.recipients = rcpts
            .query_map([&m.id], |r| {
                Ok(SpoolRecipient {
                    address: r.get(0)?,
                    class: r.get(1)?,
                    reason: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(spool: &Spool, n: usize) -> NewMessage {
        NewMessage {
            id: spool.next_id(),
            sender: format!("s{n}@example.com"),
            recipients: vec![SpoolRecipient {
                address: "r@far.test".into(),
                class: "outbound".into(),
                reason: "test".into(),
            }],
            login: None,
            peer: "127.0.0.1".into(),
            helo: "client".into(),
            body: format!("Subject: {n}\r\n\r\nbody\r\n").into_bytes(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_stores_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let mut tasks = Vec::new();
        for n in 0..200 {
            let s = spool.clone();
            let m = message(&s, n);
            tasks.push(tokio::spawn(async move { s.store(m).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let stored = read_spool(&path).unwrap();
        assert_eq!(stored.len(), 200);
        let ids: std::collections::HashSet<_> = stored.iter().map(|m| &m.id).collect();
        assert_eq!(ids.len(), 200);
        assert!(stored.iter().all(|m| m.message.recipients.len() == 1));
    }
}
