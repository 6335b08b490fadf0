//! The spool: every accepted message, durable on disk before the client
//! sees 250.
//!
//! Messages live in their own SQLite file beside the configuration (WAL,
//! `synchronous = FULL`, so a commit is fsynced). One writer thread owns
//! the connection and commits whatever has queued up while the previous
//! commit was syncing in one transaction: under load many messages share
//! one fsync (group commit), and an idle server still commits at once.
//! Under load (many SMTP transactions under way) it first waits a moment
//! for more to join, as PostgreSQL's `commit_delay` does: fewer, fuller
//! commits for the same messages.
//!
//! A commit that holds nothing but delivery outcomes is not fsynced
//! (`synchronous = NORMAL` for that transaction): the next synced commit
//! takes it to the disk with its own, within a second at most (an idle
//! writer syncs the WAL itself). A crash of the process
//! loses none of it (the WAL is written before the commit returns); a
//! power cut may lose the last second's outcomes, and a message delivered
//! just before it is then delivered again, as with Postfix, which does not
//! sync the removal of a delivered queue file either. What a client or an
//! administrator is told is stored (a message, a hold, a deletion), and a
//! notice to a sender, is always synced first.

use crate::smtp::dsn_params::{MessageDsn, Notify, OriginalRecipient, RecipientDsn, Ret};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// One recipient of an accepted message, with the decision that let it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecipient {
    pub address: String,
    pub class: String,
    pub reason: String,
    /// NOTIFY and ORCPT as the client gave them (RFC 3461).
    pub dsn: RecipientDsn,
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
    /// Whether the client was on the allow list when the message was
    /// accepted (what DKIM signing goes by, with `login`): decided then,
    /// not when it goes out, so that a list edit while it waits in the
    /// queue changes nothing. `None` for a message a relaygate before
    /// spool schema 5 accepted: the list of the moment decides.
    pub client_listed: Option<bool>,
    pub helo: String,
    /// The message with the Received: header prepended, CRLF line endings.
    /// With `spilled`, only its start: the rest is in that file.
    pub body: Vec<u8>,
    /// A large message's body, written to a file while it arrived so that
    /// it never sat in memory; the spool copies it in.
    pub spilled: Option<Spilled>,
    /// Accepted with SMTPUTF8 (RFC 6531): only a next hop that offers it
    /// may take the message.
    pub smtputf8: bool,
    /// RET and ENVID as the client gave them (RFC 3461).
    pub dsn: MessageDsn,
}

/// The rest of a message body, in a file of the spill directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spilled {
    pub path: PathBuf,
    pub len: u64,
}

impl NewMessage {
    /// The recipients that asked for anything with NOTIFY or ORCPT, by
    /// address (empty for most messages, so nothing is allocated).
    /// A recipient given twice keeps its first request, as the spool does.
    pub fn dsn_asked(&self) -> std::collections::HashMap<String, RecipientDsn> {
        let mut asked = std::collections::HashMap::new();
        if self
            .recipients
            .iter()
            .all(|r| r.dsn == RecipientDsn::default())
        {
            return asked;
        }
        for r in &self.recipients {
            asked
                .entry(r.address.clone())
                .or_insert_with(|| r.dsn.clone());
        }
        asked.retain(|_, dsn| *dsn != RecipientDsn::default());
        asked
    }

    /// The body's whole size, spilled part included.
    pub fn size(&self) -> u64 {
        self.body.len() as u64 + self.spilled.as_ref().map_or(0, |s| s.len)
    }
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
    /// The disk (or the file system's quota) is full.
    #[error("spool write failed, no space left: {0}")]
    Full(String),
    #[error("the spool writer has stopped")]
    Stopped,
}

/// What one delivery attempt did to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientUpdate {
    Delivered,
    /// Temporary failure: try again at `next_attempt` (Unix seconds).
    Retry {
        next_attempt: i64,
        error: String,
    },
    /// Permanent failure (a bounce was or will be made).
    Failed {
        error: String,
    },
    /// Not attempted: wait until `next_attempt` (a route's send rate);
    /// the attempt count is unchanged.
    Wait {
        next_attempt: i64,
        note: String,
    },
}

/// Marks a message's sender as warned of its delay; 1 row if it was not.
const WARNED: &str = "UPDATE messages SET delay_warned = 1 WHERE id = ?1 AND delay_warned = 0";

/// A change to the spool, applied in the writer's next group commit. Each
/// op is atomic: a failure's report goes in with the failure, and the
/// notice with the clearing of the reports it sends, so a crash can
/// neither lose a report nor send it twice.
#[derive(Debug, Clone)]
pub enum SpoolOp {
    Insert(NewMessage),
    /// The outcome of a delivery attempt for some recipients of a message,
    /// with the reports its sender is to get about them (recipient,
    /// `delivery::dsn::StoredReport` text): kept in their rows until
    /// [`SpoolOp::Report`] sends them, so that one notice reports every
    /// next hop of an attempt and a crash in between loses none. A
    /// message with no queued recipient and no report left is removed.
    Attempt {
        message_id: String,
        updates: Vec<(String, RecipientUpdate)>,
        reports: Vec<(String, String)>,
    },
    /// Sends the reports recorded for these recipients: clears them and,
    /// if any was still there, stores the notice (if there is one to
    /// send: none to the null sender) in the same commit. The number of
    /// reports cleared; 0 when another fold sent them already.
    Report {
        message_id: String,
        recipients: Vec<String>,
        notice: Option<NewMessage>,
    },
    /// Warns the sender of the message's delay, unless it was warned
    /// already (a message's sender hears of its delay once; decided in
    /// the commit that stores the warning). 1 if stored.
    DelayWarning {
        message_id: String,
        notice: NewMessage,
    },
    Hold {
        message_id: String,
        held: bool,
    },
    /// Every queued recipient of the message (of all messages: `None`) is
    /// due now.
    RetryNow {
        message_id: Option<String>,
    },
    /// Removes a message, storing the bounce (if any) in the same commit.
    Delete {
        message_id: String,
        bounce: Option<NewMessage>,
    },
    /// Several operations in one transaction: all of them or none.
    All(Vec<SpoolOp>),
}

impl SpoolOp {
    /// Whether its commit must reach the disk before anyone is answered:
    /// all but a delivery's outcome (see the module's doc). What stores a
    /// notice (a bounce, a delay warning) is synced: the notice goes out,
    /// and a failure that does not happen again would otherwise be
    /// delivered after the sender was told it failed.
    fn must_sync(&self) -> bool {
        match self {
            // Its reports go out in a `Report`, which is synced, and with
            // it (the log is in order) every outcome before it.
            SpoolOp::Attempt { .. } => false,
            SpoolOp::All(ops) => ops.iter().any(SpoolOp::must_sync),
            SpoolOp::Insert(_)
            | SpoolOp::DelayWarning { .. }
            | SpoolOp::Report { .. }
            | SpoolOp::Hold { .. }
            | SpoolOp::RetryNow { .. }
            | SpoolOp::Delete { .. } => true,
        }
    }
}

struct Job {
    op: SpoolOp,
    done: oneshot::Sender<Result<usize, WriteFailure>>,
}

/// Why the writer could not apply a job, and whether for want of space.
#[derive(Debug, Clone)]
struct WriteFailure {
    text: String,
    full: bool,
}

impl From<&rusqlite::Error> for WriteFailure {
    fn from(e: &rusqlite::Error) -> Self {
        WriteFailure {
            text: e.to_string(),
            full: e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
        }
    }
}

impl From<WriteFailure> for SpoolError {
    fn from(f: WriteFailure) -> Self {
        if f.full {
            SpoolError::Full(f.text)
        } else {
            SpoolError::Write(f.text)
        }
    }
}

/// Handle to the spool; cheap to clone and share between sessions.
#[derive(Clone)]
pub struct Spool {
    jobs: std_mpsc::Sender<Job>,
    path: PathBuf,
    /// SMTP transactions under way (see [`Spool::transaction_opened`]).
    open: Arc<AtomicUsize>,
}

/// An SMTP transaction under way: a message that may soon be stored.
/// Counted while it lives; the writer gathers jobs before a commit only
/// while enough are open (see [`busy`]).
pub struct OpenTransaction(Arc<AtomicUsize>);

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many recipients of a message are still queued. `+state`: by the
/// message's key, never by the state index (that walks the whole queue).
const QUEUED_LEFT: &str = "SELECT count(*) FROM recipients
     WHERE message_id = ?1 AND (+state = 'queued' OR report IS NOT NULL)";
/// A message's recipients still queued, unless it is held (same care: a
/// delivery that waited asks this before it sends, and with the state
/// index this walked every queued recipient, 2 ms a message with 20,000
/// queued).
const QUEUED_NOW: &str = "SELECT r.address FROM recipients r JOIN messages m ON m.id = r.message_id
     WHERE r.message_id = ?1 AND +r.state = 'queued' AND m.held = 0";
/// Queued recipients due at ?1, at most ?2 (see [`SpoolReader::due`]).
const DUE: &str = "SELECT r.message_id, r.address, r.attempts, m.delay_warned FROM recipients r
     JOIN messages m ON m.id = r.message_id
     WHERE r.state = 'queued' AND r.held = 0 AND r.next_attempt <= ?1 AND m.held = 0
     ORDER BY r.next_attempt, r.rowid LIMIT ?2";
/// Makes a message's queued recipients due now (same care).
const RETRY_MESSAGE: &str =
    "UPDATE recipients SET next_attempt = 0 WHERE message_id = ?1 AND +state = 'queued'";

/// Schema version of the spool file (`PRAGMA user_version`); 2 added
/// `messages.smtputf8`, 3 the DSN parameters (`messages.dsn_ret`,
/// `dsn_envid`, `recipients.dsn_notify`, `dsn_orcpt`) and
/// `messages.delay_warned`, 4 `recipients.held` (a copy of its message's
/// flag) and the due index over it, 5 `messages.client_listed`, 6
/// `recipients.report` (a notice's line not yet sent) and its index.
const SPOOL_VERSION: i32 = 6;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    received_at INTEGER NOT NULL,
    sender TEXT NOT NULL,
    login TEXT,
    peer TEXT NOT NULL,
    helo TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    dsn_ret TEXT,
    dsn_envid TEXT,
    delay_warned INTEGER NOT NULL DEFAULT 0,
    client_listed INTEGER
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    class TEXT NOT NULL,
    reason TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dsn_notify TEXT,
    dsn_orcpt TEXT,
    held INTEGER NOT NULL DEFAULT 0,
    report TEXT,
    PRIMARY KEY (message_id, address)
);
";

/// The recipients whose report to the sender is recorded and not yet
/// sent: few at any time, found at start without walking the queue.
const REPORTS_INDEX: &str = "CREATE INDEX IF NOT EXISTS recipients_reports
     ON recipients (message_id) WHERE report IS NOT NULL;";

/// The index the scan for due work walks. A held message's recipients
/// stay due while it is held, so with the message's flag only in
/// `messages` the scan read past every one of them at every scan (40,000
/// held took a drain from ~4,500 to 1,725 msg/s); with the flag copied
/// into `recipients` and in the index, it never meets them. Made after
/// the column migrations, replacing version 3's `(state, next_attempt)`.
const DUE_INDEX: &str = "DROP INDEX IF EXISTS recipients_due;
     CREATE INDEX IF NOT EXISTS recipients_ready ON recipients (state, held, next_attempt);";

/// A new queue id: milliseconds since the epoch, a per-process random
/// salt and a sequence number: sortable by arrival, and unique even when
/// the CLI (another process) adds a bounce in the same millisecond.
pub fn new_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    static SALT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let salt = *SALT.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (u64::from(std::process::id()) ^ u64::from(nanos)) & 0xFFF
    });
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{ms:011X}{salt:03X}{:05X}", seq & 0xF_FFFF)
}

/// The spool file that goes with a configuration database:
/// `data/relaygate.db` -> `data/relaygate.spool.db`.
pub fn spool_path_for(db: &Path) -> PathBuf {
    db.with_extension("spool.db")
}

fn open_connection(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    // Owner-only before SQLite creates it: its -wal and -shm files take
    // the database file's mode, and message bodies are private.
    if !path.exists() {
        crate::data_dir::ensure_private_file(path)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SPOOL_VERSION {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some(format!(
                "spool schema {version} was written by a newer relaygate (this one knows {SPOOL_VERSION})"
            )),
        ));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The write-ahead log is cut back after a checkpoint instead of
    // keeping its largest size on disk (a full disk wants that room).
    conn.pragma_update(None, "journal_size_limit", 4 << 20)?;
    conn.execute_batch(SCHEMA)?;
    // Columns later versions added, to a spool an earlier one made.
    let has = |table: &str, column: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )
    };
    if !has("messages", "smtputf8")? {
        conn.execute_batch("ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0")?;
    }
    if !has("recipients", "dsn_notify")? {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE messages ADD COLUMN dsn_ret TEXT;
             ALTER TABLE messages ADD COLUMN dsn_envid TEXT;
             ALTER TABLE recipients ADD COLUMN dsn_notify TEXT;
             ALTER TABLE recipients ADD COLUMN dsn_orcpt TEXT;
             COMMIT;",
        )?;
    }
    if !has("messages", "delay_warned")? {
        conn.execute_batch(
            "ALTER TABLE messages ADD COLUMN delay_warned INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    if !has("recipients", "held")? {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE recipients ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
             UPDATE recipients SET held = 1
                 WHERE message_id IN (SELECT id FROM messages WHERE held = 1);
             COMMIT;",
        )?;
    }
    if !has("messages", "client_listed")? {
        // NULL for the messages queued already: not known.
        conn.execute_batch("ALTER TABLE messages ADD COLUMN client_listed INTEGER")?;
    }
    if !has("recipients", "report")? {
        conn.execute_batch("ALTER TABLE recipients ADD COLUMN report TEXT")?;
    }
    conn.execute_batch(DUE_INDEX)?;
    conn.execute_batch(REPORTS_INDEX)?;
    // An index one build of 27 November made, and took out again: of no
    // use to any query, only a cost to every write.
    conn.execute_batch("DROP INDEX IF EXISTS messages_flags")?;
    if version < SPOOL_VERSION {
        conn.pragma_update(None, "user_version", SPOOL_VERSION)?;
    }
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
        let open = Arc::new(AtomicUsize::new(0));
        let open_seen = Arc::clone(&open);
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer(conn, rx, &open_seen))
            .map_err(|e| SpoolError::Write(e.to_string()))?;
        Ok(Spool {
            jobs: tx,
            path: path.to_path_buf(),
            open,
        })
    }

    /// Counts a transaction under way until the returned value is dropped.
    pub fn transaction_opened(&self) -> OpenTransaction {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenTransaction(Arc::clone(&self.open))
    }

    /// How many SMTP transactions are under way now.
    pub fn open_transactions(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new queue id (see [`new_id`]).
    pub fn next_id(&self) -> String {
        new_id()
    }

    /// Stores a message durably. Returns once it is fsynced, never before.
    pub async fn store(&self, message: NewMessage) -> Result<(), SpoolError> {
        self.apply(SpoolOp::Insert(message)).await.map(drop)
    }

    /// Applies a change durably; returns how many rows it touched (0: no
    /// such message).
    pub async fn apply(&self, op: SpoolOp) -> Result<usize, SpoolError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { op, done })
            .map_err(|_| SpoolError::Stopped)?;
        match wait.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(SpoolError::Stopped),
        }
    }

    /// [`apply`](Self::apply) for callers outside a runtime (the CLI).
    pub fn apply_blocking(&self, op: SpoolOp) -> Result<usize, SpoolError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job { op, done })
            .map_err(|_| SpoolError::Stopped)?;
        match wait.blocking_recv() {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(SpoolError::Stopped),
        }
    }
}

/// The writer is busy when a job comes within this long of a commit that
/// stored at least two messages, while at least `SIBLINGS` SMTP
/// transactions are under way: PostgreSQL's commit_delay and
/// commit_siblings, by the same reasoning. A few clients, message after
/// message, never wait; nor does one client while others merely hold
/// transactions open (their messages are not coming).
const BUSY: Duration = Duration::from_millis(1);
const SIBLINGS: usize = 5;
/// How long a busy writer gathers jobs before it commits: about two
/// fsyncs, nothing against an SMTP round trip.
const GATHER: Duration = Duration::from_micros(400);

/// The writer's last commit: how long ago, and how many messages it
/// stored.
#[derive(Debug, Clone, Copy)]
struct LastCommit {
    ago: Duration,
    messages: usize,
}

/// Whether the writer should gather more jobs before committing, given
/// the transactions under way and its last commit.
fn busy(open_transactions: usize, last: Option<LastCommit>) -> bool {
    open_transactions >= SIBLINGS && last.is_some_and(|l| l.ago < BUSY && l.messages >= 2)
}

/// The writer loop: take one job, then everything else already waiting,
/// and commit them all in one transaction (each op in its own savepoint,
/// so one failing op does not fail the others).
fn writer(mut conn: rusqlite::Connection, jobs: std_mpsc::Receiver<Job>, open: &AtomicUsize) {
    // The connection opens with `synchronous = FULL`.
    let mut synced = true;
    // When the last commit ended, and how many messages it stored.
    let mut last_commit: Option<(Instant, usize)> = None;
    // Since when outcomes have been committed without reaching the disk.
    let mut unsynced_since: Option<Instant> = None;
    // A sync of the WAL failed: the next commit is synced.
    let mut owe_sync = false;
    let wal = conn.path().map(|p| PathBuf::from(format!("{p}-wal")));
    loop {
        let wait = unsynced_since.map(|t| OUTCOMES_SYNCED_WITHIN.saturating_sub(t.elapsed()));
        let first = match wait {
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            // Idle with outcomes not on disk: synced all the same.
            Some(wait) => match jobs.recv_timeout(wait) {
                Ok(job) => job,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    unsynced_since = None;
                    owe_sync = wal.as_deref().is_none_or(|wal| sync_file(wal).is_err());
                    continue;
                }
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            },
        };
        // Busy (the last commit ended moments ago): let the jobs on their
        // way join this commit, sharing its pages and its fsync. Sleeping,
        // not waiting on the channel, so that their senders do not wake
        // the writer one by one. Idle: commit at once.
        let last = last_commit.map(|(at, messages)| LastCommit {
            ago: at.elapsed(),
            messages,
        });
        if busy(open.load(Ordering::Relaxed), last) {
            std::thread::sleep(GATHER);
        }
        let mut batch = vec![first];
        while batch.len() < 512 {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let messages = batch
            .iter()
            .filter(|j| matches!(j.op, SpoolOp::Insert(_)))
            .count();
        let overdue = unsynced_since.is_some_and(|t| t.elapsed() >= OUTCOMES_SYNCED_WITHIN);
        let sync = owe_sync || overdue || batch.iter().any(|j| j.op.must_sync());
        let result = commit(&mut conn, &batch, sync, &mut synced);
        if result.is_ok() {
            if sync {
                (unsynced_since, owe_sync) = (None, false);
            } else {
                unsynced_since.get_or_insert_with(Instant::now);
            }
        }
        last_commit = Some((Instant::now(), messages));
        match result {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    let _ = job.done.send(result);
                }
            }
            Err(e) => {
                let e = WriteFailure::from(&e);
                for job in batch {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
    if unsynced_since.is_some() || owe_sync {
        let _ = wal.as_deref().map(sync_file);
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Outcomes committed without an fsync reach the disk within this long:
/// a later commit is synced, or an idle writer syncs the WAL itself.
const OUTCOMES_SYNCED_WITHIN: Duration = Duration::from_secs(1);

/// fsync of a file SQLite writes (the WAL): what a synced commit would
/// have done for the commits before it.
fn sync_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .sync_data()
}

/// Commits a batch, fsynced if `sync` (see [`SpoolOp::must_sync`]);
/// `synced` is the connection's `synchronous` setting (FULL: true), set
/// again only when it changes.
fn commit(
    conn: &mut rusqlite::Connection,
    batch: &[Job],
    sync: bool,
    synced: &mut bool,
) -> rusqlite::Result<Vec<Result<usize, WriteFailure>>> {
    if sync != *synced {
        conn.pragma_update(None, "synchronous", if sync { "FULL" } else { "NORMAL" })?;
        *synced = sync;
    }
    // Usually every job succeeds: all in one transaction, no savepoints
    // (two more statements each). If one fails, the batch is rolled back
    // and done again job by job, so one bad job never takes the others
    // with it.
    {
        let tx = conn.transaction()?;
        let mut results = Vec::with_capacity(batch.len());
        let mut failed = false;
        for job in batch {
            match apply(&tx, &job.op) {
                Ok(n) => results.push(Ok(n)),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            tx.commit()?;
            return Ok(results);
        }
        tx.rollback()?;
    }
    let mut tx = conn.transaction()?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.savepoint()?;
        match apply(&sp, &job.op) {
            Ok(n) => {
                sp.commit()?;
                results.push(Ok(n));
            }
            Err(e) => {
                sp.rollback()?;
                results.push(Err((&e).into()));
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn insert(conn: &rusqlite::Connection, m: &NewMessage, now: i64) -> rusqlite::Result<usize> {
    match &m.spilled {
        None => {
            conn.prepare_cached(
                "INSERT INTO messages (id, received_at, sender, login, peer, helo, size, body, smtputf8, dsn_ret, dsn_envid, client_listed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(rusqlite::params![
                m.id,
                now,
                m.sender,
                m.login,
                m.peer,
                m.helo,
                m.body.len() as i64,
                m.body,
                m.smtputf8,
                m.dsn.ret.map(Ret::as_str),
                m.dsn.envid,
                m.client_listed
            ])?;
        }
        Some(spilled) => {
            // Room for the whole body, then filled piece by piece: the
            // body never has to be in memory at once.
            let total = m.size();
            conn.prepare_cached(
                "INSERT INTO messages (id, received_at, sender, login, peer, helo, size, body, smtputf8, dsn_ret, dsn_envid, client_listed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, zeroblob(?7), ?8, ?9, ?10, ?11)",
            )?
            .execute(rusqlite::params![
                m.id,
                now,
                m.sender,
                m.login,
                m.peer,
                m.helo,
                total as i64,
                m.smtputf8,
                m.dsn.ret.map(Ret::as_str),
                m.dsn.envid,
                m.client_listed
            ])?;
            let row = conn.last_insert_rowid();
            let mut blob = conn.blob_open(rusqlite::MAIN_DB, "messages", "body", row, false)?;
            let io = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
            use std::io::{Read, Write};
            blob.write_all(&m.body).map_err(io)?;
            let mut file = std::fs::File::open(&spilled.path).map_err(io)?;
            let mut chunk = vec![0u8; 256 * 1024];
            let mut copied = 0u64;
            loop {
                let n = file.read(&mut chunk).map_err(io)?;
                if n == 0 {
                    break;
                }
                blob.write_all(chunk.get(..n).unwrap_or_default())
                    .map_err(io)?;
                copied += n as u64;
            }
            if copied != spilled.len {
                return Err(io(std::io::Error::other(format!(
                    "spilled body {}: {copied} bytes, expected {}",
                    spilled.path.display(),
                    spilled.len
                ))));
            }
        }
    }
    let mut rcpt = conn.prepare_cached(
        "INSERT OR IGNORE INTO recipients (message_id, address, class, reason, next_attempt, dsn_notify, dsn_orcpt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in &m.recipients {
        rcpt.execute(rusqlite::params![
            m.id,
            r.address,
            r.class,
            r.reason,
            now,
            r.dsn.notify.map(Notify::as_param),
            r.dsn.orcpt.as_ref().map(OriginalRecipient::as_param)
        ])?;
    }
    Ok(1)
}

/// Removes a message once no recipient of it is queued any more.
fn remove_if_done(conn: &rusqlite::Connection, id: &str) -> rusqlite::Result<()> {
    let queued: i64 = conn
        .prepare_cached(QUEUED_LEFT)?
        .query_row([id], |r| r.get(0))?;
    if queued == 0 {
        conn.prepare_cached("DELETE FROM recipients WHERE message_id = ?1")?
            .execute([id])?;
        conn.prepare_cached("DELETE FROM messages WHERE id = ?1")?
            .execute([id])?;
    }
    Ok(())
}

fn apply(conn: &rusqlite::Connection, op: &SpoolOp) -> rusqlite::Result<usize> {
    let now = now_secs();
    match op {
        SpoolOp::Insert(m) => insert(conn, m, now),
        SpoolOp::Attempt {
            message_id,
            updates,
            reports,
        } => {
            let mut touched = 0;
            {
                let mut stmt = conn.prepare_cached(
                    "UPDATE recipients SET state = ?3, attempts = attempts + 1, next_attempt = ?4, last_error = ?5
                     WHERE message_id = ?1 AND address = ?2 AND state = 'queued'",
                )?;
                let mut wait = conn.prepare_cached(
                    "UPDATE recipients SET next_attempt = ?3, last_error = ?4
                     WHERE message_id = ?1 AND address = ?2 AND state = 'queued'",
                )?;
                for (address, update) in updates {
                    let (state, next, error) = match update {
                        RecipientUpdate::Wait { next_attempt, note } => {
                            touched += wait.execute(rusqlite::params![
                                message_id,
                                address,
                                next_attempt,
                                note
                            ])?;
                            continue;
                        }
                        RecipientUpdate::Delivered => ("delivered", now, None),
                        RecipientUpdate::Retry {
                            next_attempt,
                            error,
                        } => ("queued", *next_attempt, Some(error.as_str())),
                        RecipientUpdate::Failed { error } => ("failed", now, Some(error.as_str())),
                    };
                    touched +=
                        stmt.execute(rusqlite::params![message_id, address, state, next, error])?;
                }
            }
            // A message deleted meanwhile (queue delete): nothing to report.
            if touched > 0 {
                let mut stmt = conn.prepare_cached(
                    "UPDATE recipients SET report = ?3 WHERE message_id = ?1 AND address = ?2",
                )?;
                for (address, report) in reports {
                    stmt.execute(rusqlite::params![message_id, address, report])?;
                }
                remove_if_done(conn, message_id)?;
            }
            Ok(touched)
        }
        SpoolOp::Report {
            message_id,
            recipients,
            notice,
        } => {
            let mut cleared = 0;
            let mut stmt = conn.prepare_cached(
                "UPDATE recipients SET report = NULL
                 WHERE message_id = ?1 AND address = ?2 AND report IS NOT NULL",
            )?;
            for address in recipients {
                cleared += stmt.execute([message_id, address])?;
            }
            if cleared > 0 {
                if let Some(n) = notice {
                    insert(conn, n, now)?;
                }
                remove_if_done(conn, message_id)?;
            }
            Ok(cleared)
        }
        SpoolOp::DelayWarning { message_id, notice } => {
            // No row if the message is gone or its sender was warned.
            let first = conn.prepare_cached(WARNED)?.execute([message_id])?;
            if first > 0 {
                insert(conn, notice, now)?;
            }
            Ok(first)
        }
        SpoolOp::Hold { message_id, held } => {
            let params = rusqlite::params![message_id, *held as i64];
            conn.prepare_cached("UPDATE recipients SET held = ?2 WHERE message_id = ?1")?
                .execute(params)?;
            // 1 if the message changed, 0 if it was so already.
            conn.prepare_cached("UPDATE messages SET held = ?2 WHERE id = ?1 AND held != ?2")?
                .execute(params)
        }
        SpoolOp::RetryNow { message_id } => match message_id {
            Some(id) => conn.execute(RETRY_MESSAGE, [id]),
            None => conn.execute(
                "UPDATE recipients SET next_attempt = 0 WHERE state = 'queued'",
                [],
            ),
        },
        SpoolOp::All(ops) => {
            let mut n = 0;
            for op in ops {
                n += apply(conn, op)?;
            }
            Ok(n)
        }
        SpoolOp::Delete { message_id, bounce } => {
            conn.execute("DELETE FROM recipients WHERE message_id = ?1", [message_id])?;
            let n = conn.execute("DELETE FROM messages WHERE id = ?1", [message_id])?;
            if n > 0
                && let Some(b) = bounce
            {
                insert(conn, b, now)?;
            }
            Ok(n)
        }
    }
}

/// A queued recipient whose next attempt is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRecipient {
    pub message_id: String,
    pub address: String,
    pub attempts: i64,
    /// Its message's sender was warned of its delay already.
    pub delay_warned: bool,
}

/// A recipient as the queue listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientState {
    pub address: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt: i64,
    pub last_error: Option<String>,
    /// Its DSN NOTIFY (`NEVER`, `SUCCESS,FAILURE`, ...), if it gave one:
    /// whether its sender will hear of a failure.
    pub notify: Option<String>,
}

/// A message as the queue listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: String,
    pub received_at: i64,
    pub sender: String,
    pub size: i64,
    pub held: bool,
    pub recipients: Vec<RecipientState>,
}

/// A [`SpoolReader`] on a thread of its own, for the async side: reads
/// run there one after another, and whatever has queued while one ran is
/// taken without sleeping, so a drain's reads do not each cost two
/// thread hand-offs (a blocking-pool thread woken, then the task), which
/// is most of a small message's delivery on a VM where a wake-up is dear.
/// The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct SpoolReaderThread {
    jobs: std_mpsc::Sender<ReadJob>,
}

type ReadJob = Box<dyn FnOnce(&SpoolReader) + Send>;

impl SpoolReaderThread {
    /// Opens the reader on its thread (`spool-reader`); the error said.
    pub fn open(path: &Path) -> Result<SpoolReaderThread, String> {
        let reader = SpoolReader::open(path).map_err(|e| format!("cannot read the spool: {e}"))?;
        let (jobs, queue) = std_mpsc::channel::<ReadJob>();
        std::thread::Builder::new()
            .name("spool-reader".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A read that panics fails alone (its caller is told
                    // the reader stopped); the thread goes on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&reader)));
                }
            })
            .map_err(|e| format!("cannot start the spool reader's thread: {e}"))?;
        Ok(SpoolReaderThread { jobs })
    }

    /// Runs `read` on the reader's thread and waits for its answer.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SpoolReader) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |reader| {
                let _ = done.send(read(reader).map_err(|e| e.to_string()));
            }))
            .map_err(|_| "the spool reader has stopped".to_string())?;
        answer
            .await
            .unwrap_or_else(|_| Err("the spool reader has stopped".to_string()))
    }
}

/// Read access to the spool, on its own connection (WAL: readers never
/// wait for the writer).
pub struct SpoolReader {
    conn: rusqlite::Connection,
}

impl SpoolReader {
    pub fn open(path: &Path) -> rusqlite::Result<SpoolReader> {
        Ok(SpoolReader {
            conn: open_connection(path)?,
        })
    }

    /// Queued recipients of messages not on hold, due at `now`: first
    /// due first, then in the order they came (by rowid, the due index's
    /// own order: a queue made due at once, by `queue retry all`, is not
    /// read and sorted whole at every scan, as it was by message id).
    pub fn due(&self, now: i64, limit: usize) -> rusqlite::Result<Vec<DueRecipient>> {
        let mut stmt = self.conn.prepare_cached(DUE)?;
        let rows = stmt.query_map(rusqlite::params![now, limit as i64], |r| {
            Ok(DueRecipient {
                message_id: r.get(0)?,
                address: r.get(1)?,
                attempts: r.get(2)?,
                delay_warned: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    /// Whether a message's sender was warned of its delay (`None`: no such
    /// message). Delivery has it from the due scan; the tests ask.
    #[cfg(test)]
    pub fn delay_warned(&self, id: &str) -> rusqlite::Result<Option<bool>> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached("SELECT delay_warned FROM messages WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()
    }

    /// Messages with reports to their sender recorded and not sent: an
    /// attempt's notice that a stop or a crash came between.
    pub fn messages_with_reports(&self) -> rusqlite::Result<Vec<String>> {
        self.conn
            .prepare_cached("SELECT DISTINCT message_id FROM recipients WHERE report IS NOT NULL")?
            .query_map([], |r| r.get(0))?
            .collect()
    }

    /// A message's recorded reports, (recipient, report text), in the
    /// order its recipients were given.
    pub fn reports(&self, id: &str) -> rusqlite::Result<Vec<(String, String)>> {
        self.conn
            .prepare_cached(
                "SELECT address, report FROM recipients
                 WHERE message_id = ?1 AND report IS NOT NULL ORDER BY rowid",
            )?
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect()
    }

    /// A message's recipients still to be sent to: queued, the message
    /// not on hold (none if it was deleted).
    pub fn queued_now(&self, id: &str) -> rusqlite::Result<Vec<String>> {
        self.conn
            .prepare_cached(QUEUED_NOW)?
            .query_map([id], |r| r.get(0))?
            .collect()
    }

    /// The earliest next attempt among queued recipients not on hold.
    pub fn next_due(&self) -> rusqlite::Result<Option<i64>> {
        self.conn
            .prepare_cached(
                "SELECT min(r.next_attempt) FROM recipients r JOIN messages m ON m.id = r.message_id
                 WHERE r.state = 'queued' AND m.held = 0",
            )?
            .query_row([], |r| r.get(0))
    }

    /// A message's size in bytes, without reading it; `None` if it is gone.
    pub fn message_size(&self, id: &str) -> rusqlite::Result<Option<u64>> {
        use rusqlite::OptionalExtension;
        self.conn
            .prepare_cached("SELECT size FROM messages WHERE id = ?1")?
            .query_row([id], |r| r.get::<_, i64>(0))
            .optional()
            .map(|s| s.map(|s| s.max(0) as u64))
    }

    /// One message, whole.
    pub fn message(&self, id: &str) -> rusqlite::Result<Option<StoredMessage>> {
        use rusqlite::OptionalExtension;
        let found = self
            .conn
            .prepare_cached(
                "SELECT id, received_at, sender, login, peer, helo, body, smtputf8, dsn_ret, dsn_envid, client_listed
                 FROM messages WHERE id = ?1",
            )?
            .query_row([id], |r| {
                    let id: String = r.get(0)?;
                    Ok(StoredMessage {
                        id: id.clone(),
                        received_at: r.get(1)?,
                        message: NewMessage {
                            spilled: None,
                            id,
                            sender: r.get(2)?,
                            recipients: Vec::new(),
                            login: r.get(3)?,
                            peer: r.get(4)?,
                            client_listed: r.get(10)?,
                            helo: r.get(5)?,
                            body: r.get(6)?,
                            smtputf8: r.get(7)?,
                            dsn: MessageDsn {
                                ret: r.get::<_, Option<String>>(8)?.as_deref().and_then(Ret::parse),
                                envid: r.get(9)?,
                            },
                        },
                    })
            })
            .optional()?;
        let Some(mut m) = found else { return Ok(None) };
        m.message.recipients = self.recipients(id)?;
        Ok(Some(m))
    }

    fn recipients(&self, id: &str) -> rusqlite::Result<Vec<SpoolRecipient>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT address, class, reason, dsn_notify, dsn_orcpt FROM recipients WHERE message_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok(SpoolRecipient {
                address: r.get(0)?,
                class: r.get(1)?,
                reason: r.get(2)?,
                dsn: RecipientDsn {
                    notify: r
                        .get::<_, Option<String>>(3)?
                        .as_deref()
                        .and_then(Notify::parse),
                    orcpt: r
                        .get::<_, Option<String>>(4)?
                        .as_deref()
                        .and_then(|o| OriginalRecipient::parse(o, true)),
                },
            })
        })?;
        rows.collect()
    }

    /// Every message in the queue with the state of each recipient.
    pub fn listing(&self) -> rusqlite::Result<Vec<QueueEntry>> {
        self.entries(
            "SELECT id, received_at, sender, size, held FROM messages ORDER BY id",
            [],
        )
    }

    /// Messages queued and the receipt time of the oldest (Unix seconds):
    /// the queue's depth and age for metrics, two index reads.
    pub fn depth(&self) -> rusqlite::Result<(u64, Option<i64>)> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM messages")?
            .query_row([], |r| r.get(0))?;
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT min(received_at) FROM messages")?
            .query_row([], |r| r.get(0))?;
        Ok((n.max(0) as u64, oldest))
    }

    /// Whether a message is queued.
    pub fn contains(&self, id: &str) -> rusqlite::Result<bool> {
        use rusqlite::OptionalExtension;
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// One message as the listing shows it, if it is queued.
    pub fn entry(&self, id: &str) -> rusqlite::Result<Option<QueueEntry>> {
        Ok(self
            .entries(
                "SELECT id, received_at, sender, size, held FROM messages WHERE id = ?1",
                [id],
            )?
            .pop())
    }

    fn entries(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> rusqlite::Result<Vec<QueueEntry>> {
        let mut stmt = self.conn.prepare(sql)?;
        let mut entries: Vec<QueueEntry> = stmt
            .query_map(params, |r| {
                Ok(QueueEntry {
                    id: r.get(0)?,
                    received_at: r.get(1)?,
                    sender: r.get(2)?,
                    size: r.get(3)?,
                    held: r.get::<_, i64>(4)? != 0,
                    recipients: Vec::new(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut rstmt = self.conn.prepare(
            "SELECT address, state, attempts, next_attempt, last_error, dsn_notify FROM recipients
             WHERE message_id = ?1 ORDER BY rowid",
        )?;
        for e in &mut entries {
            e.recipients = rstmt
                .query_map([&e.id], |r| {
                    Ok(RecipientState {
                        address: r.get(0)?,
                        state: r.get(1)?,
                        attempts: r.get(2)?,
                        next_attempt: r.get(3)?,
                        last_error: r.get(4)?,
                        notify: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
        }
        Ok(entries)
    }
}

/// Reads every message in a spool file (tests, and the queue view).
pub fn read_spool(path: &Path) -> rusqlite::Result<Vec<StoredMessage>> {
    let reader = SpoolReader::open(path)?;
    let ids: Vec<String> = reader
        .conn
        .prepare("SELECT id FROM messages ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut messages = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(m) = reader.message(&id)? {
            messages.push(m);
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {

    /// A few clients, message after message, are never made to wait;
    /// many transactions under way and a commit of several messages
    /// moments ago mean more are coming. Transactions merely held open
    /// (one client's commits store one message each) do not.
    #[test]
    fn the_writer_gathers_only_when_many_transactions_are_under_way() {
        let now = |messages| {
            Some(LastCommit {
                ago: Duration::from_micros(100),
                messages,
            })
        };
        assert!(!busy(SIBLINGS, None), "first job of a new writer");
        assert!(!busy(SIBLINGS - 1, now(3)), "a few clients");
        assert!(busy(SIBLINGS, now(2)));
        assert!(busy(200, now(40)));
        assert!(!busy(200, now(1)), "one client among held transactions");
        assert!(!busy(200, now(0)), "delivery outcomes only");
        let long_ago = |ago| Some(LastCommit { ago, messages: 40 });
        assert!(!busy(200, long_ago(BUSY)), "jobs come slower than commits");
        assert!(!busy(200, long_ago(Duration::from_secs(5))));
        assert!(GATHER < BUSY);
    }

    /// What a client or an administrator is told is stored is synced;
    /// a batch of nothing but delivery outcomes is not, and the next
    /// batch with a message in it is again.
    #[test]
    fn only_outcomes_are_committed_without_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut conn = open_connection(&path).unwrap();
        let spool = Spool::open(&dir.path().join("other.db")).unwrap();
        let job = |op| {
            let (done, _) = oneshot::channel();
            Job { op, done }
        };
        let outcome = || SpoolOp::Attempt {
            message_id: "m".into(),
            updates: vec![("r@far.test".into(), RecipientUpdate::Delivered)],
            reports: Vec::new(),
        };
        let synchronous = |conn: &rusqlite::Connection| -> i64 {
            conn.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        let (full, normal) = (2, 1);
        let mut synced = true;
        let commit = |conn: &mut rusqlite::Connection, jobs: &[Job], synced: &mut bool| {
            let sync = jobs.iter().any(|j| j.op.must_sync());
            super::commit(conn, jobs, sync, synced)
        };
        assert_eq!(synchronous(&conn), full);
        commit(&mut conn, &[job(outcome()), job(outcome())], &mut synced).unwrap();
        assert_eq!((synchronous(&conn), synced), (normal, false));
        commit(
            &mut conn,
            &[job(outcome()), job(SpoolOp::Insert(message(&spool, 1)))],
            &mut synced,
        )
        .unwrap();
        assert_eq!((synchronous(&conn), synced), (full, true));
        commit(
            &mut conn,
            &[job(SpoolOp::All(vec![outcome()]))],
            &mut synced,
        )
        .unwrap();
        assert_eq!(synchronous(&conn), normal);
        for op in [
            SpoolOp::Hold {
                message_id: "m".into(),
                held: true,
            },
            SpoolOp::RetryNow { message_id: None },
            SpoolOp::Delete {
                message_id: "m".into(),
                bounce: None,
            },
            SpoolOp::All(vec![outcome(), SpoolOp::RetryNow { message_id: None }]),
            // What stores a notice for the sender.
            SpoolOp::Report {
                message_id: "m".into(),
                recipients: vec!["r@far.test".into()],
                notice: Some(message(&spool, 2)),
            },
        ] {
            commit(&mut conn, &[job(outcome())], &mut synced).unwrap();
            assert_eq!(synchronous(&conn), normal);
            commit(&mut conn, &[job(op)], &mut synced).unwrap();
            assert_eq!(synchronous(&conn), full);
        }
    }

    /// Many deliveries' reads at once all get their own answer from the
    /// reader's one thread; a failed read is said, not fatal to the
    /// thread; a spool that cannot be opened is said.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reader_thread_answers_each_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let spool = Spool::open(&path).unwrap();
        let mut ids = Vec::new();
        for n in 0..20 {
            let m = message(&spool, n);
            ids.push(m.id.clone());
            spool.apply(SpoolOp::Insert(m)).await.unwrap();
        }
        let reads = SpoolReaderThread::open(&path).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for (n, id) in ids.iter().enumerate() {
            let (reads, id) = (reads.clone(), id.clone());
            tasks.spawn(async move {
                let m = reads.read(move |r| r.message(&id)).await.unwrap().unwrap();
                assert_eq!(m.message.sender, format!("s{n}@example.com"));
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let failed = reads
            .read(|r| {
                r.conn
                    .query_row("SELECT nothing FROM nowhere", [], |_| Ok(()))
            })
            .await;
        let failed = failed.unwrap_err();
        assert!(failed.contains("nowhere"), "{failed}");
        assert_eq!(reads.read(|r| r.message_size("none")).await, Ok(None));
        let panicked = reads
            .read(|_| -> rusqlite::Result<()> { panic!("a bug") })
            .await;
        assert_eq!(panicked, Err("the spool reader has stopped".to_string()));
        let first = ids[0].clone();
        assert_eq!(
            reads
                .read(move |r| r.message_size(&first))
                .await
                .map(|s| s.is_some()),
            Ok(true),
            "the reader goes on after a read that panicked"
        );
        // A directory where the file should be.
        let missing = SpoolReaderThread::open(dir.path());
        assert!(missing.err().unwrap().contains("cannot read the spool"));
    }

    #[test]
    fn open_transactions_are_counted_while_they_live() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.db")).unwrap();
        let a = spool.transaction_opened();
        let b = spool.clone().transaction_opened();
        assert_eq!(spool.open.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(spool.open.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(spool.open.load(Ordering::Relaxed), 0);
    }

    /// The statements that run per message or per outcome must find their
    /// rows through the message's key, never by walking every queued
    /// recipient: their cost must not grow with the queue.
    #[test]
    fn per_message_statements_do_not_walk_the_queue() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(DUE_INDEX).unwrap();
        for sql in [
            QUEUED_LEFT,
            QUEUED_NOW,
            RETRY_MESSAGE,
            "UPDATE recipients SET state = ?3, attempts = attempts + 1 WHERE message_id = ?1 AND address = ?2 AND state = 'queued'",
            "DELETE FROM recipients WHERE message_id = ?1",
            "SELECT address, class, reason, dsn_notify, dsn_orcpt FROM recipients WHERE message_id = ?1 ORDER BY rowid",
        ] {
            let sql = sql
                .replace("?1", "'a'")
                .replace("?2", "'b'")
                .replace("?3", "'x'");
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            let plan = plan.join("; ");
            assert!(
                plan.contains("sqlite_autoindex_recipients_1 (message_id=?"),
                "{sql}: {plan}"
            );
        }
        // And the scan for due work walks only what is due, in the index's
        // order: no sort of everything due (after `queue retry all`, the
        // whole queue) at every scan.
        let plan = |sql: &str| -> String {
            let sql = sql.replace("?1", "5").replace("?2", "10");
            conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let due = plan(DUE);
        assert!(
            due.contains("recipients_ready (state=? AND held=? AND next_attempt<?)")
                && !due.contains("TEMP B-TREE"),
            "{due}"
        );
    }
    use super::*;

    fn message(spool: &Spool, n: usize) -> NewMessage {
        NewMessage {
            dsn: Default::default(),
            spilled: None,
            smtputf8: false,
            id: spool.next_id(),
            sender: format!("s{n}@example.com"),
            recipients: vec![SpoolRecipient {
                dsn: Default::default(),
                address: "r@far.test".into(),
                class: "outbound".into(),
                reason: "test".into(),
            }],
            login: None,
            peer: "127.0.0.1".into(),
            client_listed: Some(false),
            helo: "client".into(),
            body: format!("Subject: {n}\r\n\r\nbody\r\n").into_bytes(),
        }
    }

    /// Stores message 1 with a second recipient in another domain; its id.
    fn stored_with_two_recipients(spool: &Spool) -> String {
        let mut m = message(spool, 1);
        m.recipients.push(SpoolRecipient {
            address: "s@other.test".into(),
            ..m.recipients[0].clone()
        });
        let id = m.id.clone();
        spool.apply_blocking(SpoolOp::Insert(m)).unwrap();
        id
    }

    /// A message's sender hears of its delay once: the first warning is
    /// stored and marks the message, a second is not stored; a warning
    /// for a message no longer queued is not stored either.
    #[test]
    fn a_delay_is_warned_of_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let id = stored_with_two_recipients(&spool);
        let notice = |n: usize| {
            let mut b = message(&spool, 100 + n);
            b.sender = String::new();
            b
        };
        let warn = |id: &str, notice: &NewMessage| {
            spool
                .apply_blocking(SpoolOp::DelayWarning {
                    message_id: id.to_string(),
                    notice: notice.clone(),
                })
                .unwrap()
        };
        let reader = SpoolReader::open(&path).unwrap();
        assert_eq!(reader.delay_warned(&id).unwrap(), Some(false));
        let (first, again) = (notice(1), notice(2));
        assert_eq!(warn(&id, &first), 1);
        assert_eq!(warn(&id, &again), 0);
        assert!(reader.contains(&first.id).unwrap());
        assert!(!reader.contains(&again.id).unwrap(), "a second warning");
        assert_eq!(reader.delay_warned(&id).unwrap(), Some(true));
        // Delivered or deleted meanwhile: nothing to warn of.
        let gone = notice(3);
        assert_eq!(warn("no-such-message", &gone), 0);
        assert!(!reader.contains(&gone.id).unwrap());
    }

    /// A failure's report stays in its row, and keeps the message, until
    /// the notice that folds the reports of every next hop is stored, in
    /// the commit that clears them: once, and after a reopen too.
    #[test]
    fn reports_keep_their_message_until_one_notice_sends_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let id = stored_with_two_recipients(&spool);
        let failed = |address: &str| SpoolOp::Attempt {
            message_id: id.clone(),
            updates: vec![(
                address.to_string(),
                RecipientUpdate::Failed {
                    error: "550 5.1.1 no".into(),
                },
            )],
            reports: vec![(address.to_string(), format!("report of {address}"))],
        };
        let reader = SpoolReader::open(&path).unwrap();
        let first = reader.message(&id).unwrap().unwrap().message.recipients[0]
            .address
            .clone();
        spool.apply_blocking(failed(&first)).unwrap();
        spool.apply_blocking(failed("s@other.test")).unwrap();
        // Every recipient is final, but the reports are not sent.
        assert!(reader.contains(&id).unwrap());
        drop(spool);
        let spool = Spool::open(&path).unwrap();
        let reader = SpoolReader::open(&path).unwrap();
        assert_eq!(reader.messages_with_reports().unwrap(), vec![id.clone()]);
        let reports = reader.reports(&id).unwrap();
        assert_eq!(
            reports,
            [
                (first.clone(), format!("report of {first}")),
                ("s@other.test".into(), "report of s@other.test".into())
            ]
        );
        let notice = |n: usize| {
            let mut b = message(&spool, 100 + n);
            b.sender = String::new();
            b
        };
        let report = |notice: &NewMessage| SpoolOp::Report {
            message_id: id.clone(),
            recipients: reports.iter().map(|(a, _)| a.clone()).collect(),
            notice: Some(notice.clone()),
        };
        let (one, two) = (notice(1), notice(2));
        assert_eq!(spool.apply_blocking(report(&one)).unwrap(), 2);
        assert_eq!(spool.apply_blocking(report(&two)).unwrap(), 0);
        assert!(reader.contains(&one.id).unwrap());
        assert!(!reader.contains(&two.id).unwrap(), "a second notice");
        assert!(!reader.contains(&id).unwrap(), "the message is done");
        assert!(reader.messages_with_reports().unwrap().is_empty());
    }

    /// A Report while another recipient is still queued keeps the
    /// message; one with no notice to send (the null sender) clears the
    /// reports and lets the message go; an outcome for a message deleted
    /// meanwhile records no report.
    #[test]
    fn a_report_keeps_a_message_with_recipients_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let reader = SpoolReader::open(&path).unwrap();
        let id = stored_with_two_recipients(&spool);
        let first = reader.message(&id).unwrap().unwrap().message.recipients[0]
            .address
            .clone();
        let failed = |id: &str, address: &str| SpoolOp::Attempt {
            message_id: id.to_string(),
            updates: vec![(
                address.to_string(),
                RecipientUpdate::Failed {
                    error: "550 5.1.1 no".into(),
                },
            )],
            reports: vec![(address.to_string(), "report".into())],
        };
        spool.apply_blocking(failed(&id, &first)).unwrap();
        let report = |recipient: &str| SpoolOp::Report {
            message_id: id.clone(),
            recipients: vec![recipient.to_string()],
            notice: None,
        };
        assert_eq!(spool.apply_blocking(report(&first)).unwrap(), 1);
        assert!(
            reader.contains(&id).unwrap(),
            "s@other.test is still queued"
        );
        assert!(reader.reports(&id).unwrap().is_empty());
        spool.apply_blocking(failed(&id, "s@other.test")).unwrap();
        assert!(reader.contains(&id).unwrap(), "kept for its report");
        assert_eq!(spool.apply_blocking(report("s@other.test")).unwrap(), 1);
        assert!(
            !reader.contains(&id).unwrap(),
            "done, with no notice to send"
        );
        // Deleted meanwhile: the outcome touches nothing, no report stays.
        assert_eq!(spool.apply_blocking(failed(&id, &first)).unwrap(), 0);
        assert!(reader.messages_with_reports().unwrap().is_empty());
    }

    /// A recipient given twice keeps its first DSN request for delivery,
    /// as the spool keeps its first row.
    #[test]
    fn a_recipient_given_twice_keeps_its_first_dsn_request() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db")).unwrap();
        let mut m = message(&spool, 1);
        assert!(m.dsn_asked().is_empty());
        let mut second = m.recipients[0].clone();
        m.recipients[0].dsn.notify = Notify::parse("NEVER");
        second.dsn.notify = Notify::parse("SUCCESS");
        m.recipients.push(second);
        let asked = m.dsn_asked();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked["r@far.test"].notify, Notify::parse("NEVER"));
        let id = m.id.clone();
        spool.apply_blocking(SpoolOp::Insert(m)).unwrap();
        let back = SpoolReader::open(&dir.path().join("spool.db"))
            .unwrap()
            .message(&id)
            .unwrap()
            .expect("stored");
        assert_eq!(back.message.recipients.len(), 1);
        assert_eq!(
            back.message.recipients[0].dsn.notify,
            Notify::parse("NEVER")
        );
    }

    /// A message's DSN requests (RFC 3461) and whether its client was
    /// listed are in the file: a reopened spool (a restart) reads them
    /// back, and a spool of a version before is given their columns, its
    /// messages asking for nothing.
    #[test]
    fn dsn_requests_survive_a_reopen_and_old_spools_gain_their_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        {
            // A version 2 spool, as the release before wrote it.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE messages (id TEXT PRIMARY KEY, received_at INTEGER NOT NULL,
                    sender TEXT NOT NULL, login TEXT, peer TEXT NOT NULL, helo TEXT NOT NULL,
                    size INTEGER NOT NULL, body BLOB NOT NULL, held INTEGER NOT NULL DEFAULT 0,
                    smtputf8 INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE recipients (message_id TEXT NOT NULL REFERENCES messages(id),
                    address TEXT NOT NULL, class TEXT NOT NULL, reason TEXT NOT NULL,
                    state TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt INTEGER NOT NULL DEFAULT 0, last_error TEXT,
                    PRIMARY KEY (message_id, address));
                 INSERT INTO messages VALUES ('OLD1', 1, 'a@b.test', NULL, '127.0.0.1', 'h', 4, x'41424344', 0, 0);
                 INSERT INTO recipients (message_id, address, class, reason) VALUES ('OLD1', 'r@far.test', 'outbound', 'test');
                 INSERT INTO messages VALUES ('OLD2', 1, 'a@b.test', NULL, '127.0.0.1', 'h', 4, x'41424344', 1, 0);
                 INSERT INTO recipients (message_id, address, class, reason) VALUES ('OLD2', 'r@far.test', 'outbound', 'test');
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let spool = Spool::open(&path).unwrap();
        let mut m = message(&spool, 1);
        m.dsn = MessageDsn {
            ret: Some(Ret::Full),
            envid: Some("QQ+20314".into()),
        };
        m.recipients[0].dsn = RecipientDsn {
            notify: Notify::parse("SUCCESS,DELAY"),
            orcpt: OriginalRecipient::parse("rfc822;R+2Bx@far.test", false),
        };
        m.client_listed = Some(true);
        let id = m.id.clone();
        let want = m.clone();
        spool.apply_blocking(SpoolOp::Insert(m)).unwrap();
        drop(spool);

        let spool = Spool::open(&path).unwrap();
        drop(spool);
        let reader = SpoolReader::open(&path).unwrap();
        let back = reader.message(&id).unwrap().expect("stored");
        assert_eq!(back.message.dsn, want.dsn);
        assert_eq!(back.message.recipients, want.recipients);
        assert_eq!(back.message.client_listed, Some(true));
        let old = reader.message("OLD1").unwrap().expect("kept");
        assert_eq!(old.message.dsn, MessageDsn::default());
        // Version 5: whether an old message's client was listed is not
        // known (delivery asks the list of the moment, as before).
        assert_eq!(old.message.client_listed, None);
        assert_eq!(old.message.recipients[0].dsn, RecipientDsn::default());
        let version: i32 = reader
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SPOOL_VERSION);
        // Version 6: an old message has no report waiting.
        assert!(reader.reports("OLD1").unwrap().is_empty());
        assert!(reader.messages_with_reports().unwrap().is_empty());
        // Version 4: each recipient has its message's hold, and the due
        // scan's index in place of version 3's.
        let held = |id: &str| -> i64 {
            reader
                .conn
                .query_row(
                    "SELECT held FROM recipients WHERE message_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!((held("OLD1"), held("OLD2")), (0, 1));
        let due: Vec<String> = reader
            .due(i64::MAX, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.message_id)
            .collect();
        assert!(
            due.contains(&"OLD1".to_string()) && !due.contains(&"OLD2".to_string()),
            "{due:?}"
        );
        let indexes: Vec<String> = reader
            .conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'recipients'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert!(
            indexes.contains(&"recipients_ready".to_string()),
            "{indexes:?}"
        );
        assert!(
            !indexes.contains(&"recipients_due".to_string()),
            "{indexes:?}"
        );
    }

    /// Holding a message marks its recipients too (the due scan's index
    /// has the mark), and releasing it clears them.
    #[test]
    fn a_hold_is_copied_to_the_recipients_and_a_release_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let id = stored_with_two_recipients(&spool);
        let other = message(&spool, 2);
        spool.apply_blocking(SpoolOp::Insert(other)).unwrap();
        let reader = SpoolReader::open(&path).unwrap();
        let marked = || -> i64 {
            reader
                .conn
                .query_row("SELECT count(*) FROM recipients WHERE held = 1", [], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let hold = |held| SpoolOp::Hold {
            message_id: id.clone(),
            held,
        };
        assert_eq!(spool.apply_blocking(hold(true)).unwrap(), 1);
        assert_eq!(marked(), 2);
        assert_eq!(
            reader.due(i64::MAX, 10).unwrap().len(),
            1,
            "the other message only"
        );
        assert_eq!(spool.apply_blocking(hold(false)).unwrap(), 1);
        assert_eq!(marked(), 0);
        assert_eq!(reader.due(i64::MAX, 10).unwrap().len(), 3);
    }

    /// The scheduler's query: every queued recipient that is due, of
    /// messages not held, earliest attempt first (then oldest message);
    /// a smaller limit gives the head of that same order; and the next
    /// attempts are the file's, so a reopened spool (a restart) has them.
    #[test]
    fn due_gives_every_due_recipient_in_order_and_a_reopened_spool_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path).unwrap();
        let now = 1_300;
        // (next attempt, message id, address) of what must be due.
        let mut expected: Vec<(i64, String, String)> = Vec::new();
        let mut later = Vec::new();
        for n in 0..150usize {
            let mut m = message(&spool, n);
            m.recipients = (0..3)
                .map(|k| SpoolRecipient {
                    dsn: Default::default(),
                    address: format!("r{k}@far.test"),
                    class: "outbound".into(),
                    reason: "test".into(),
                })
                .collect();
            let id = m.id.clone();
            spool.apply_blocking(SpoolOp::Insert(m)).unwrap();
            // Scrambled attempt times, half of them due; some recipients
            // delivered or failed; every tenth message held.
            let t = 1_000 + ((n * 7919) % 600) as i64;
            let retry = |at: i64| RecipientUpdate::Retry {
                next_attempt: at,
                error: "451 4.3.0 later".into(),
            };
            let r1 = if n % 3 == 0 {
                RecipientUpdate::Delivered
            } else {
                retry(t + 10_000)
            };
            let r2 = if n % 4 == 0 {
                RecipientUpdate::Failed {
                    error: "550 5.1.1 no".into(),
                }
            } else {
                retry(t)
            };
            spool
                .apply_blocking(SpoolOp::Attempt {
                    message_id: id.clone(),
                    updates: vec![
                        ("r0@far.test".into(), retry(t)),
                        ("r1@far.test".into(), r1),
                        ("r2@far.test".into(), r2),
                    ],
                    reports: Vec::new(),
                })
                .unwrap();
            let held = n % 10 == 0;
            if held {
                spool
                    .apply_blocking(SpoolOp::Hold {
                        message_id: id.clone(),
                        held: true,
                    })
                    .unwrap();
            }
            if n % 3 != 0 {
                later.push((id.clone(), t + 10_000));
            }
            if !held && t <= now {
                expected.push((t, id.clone(), "r0@far.test".into()));
                if n % 4 != 0 {
                    expected.push((t, id.clone(), "r2@far.test".into()));
                }
            }
        }
        expected.sort();
        assert!(expected.len() > 50, "a meaningful share is due");
        let attempts = |v: &[DueRecipient]| v.iter().all(|d| d.attempts == 1);
        let keyed = |v: &[DueRecipient], reader: &SpoolReader| -> Vec<(i64, String, String)> {
            let next: std::collections::HashMap<(String, String), i64> = reader
                .listing()
                .unwrap()
                .into_iter()
                .flat_map(|e| {
                    let id = e.id.clone();
                    e.recipients
                        .into_iter()
                        .map(move |r| ((id.clone(), r.address), r.next_attempt))
                })
                .collect();
            v.iter()
                .map(|d| {
                    (
                        next[&(d.message_id.clone(), d.address.clone())],
                        d.message_id.clone(),
                        d.address.clone(),
                    )
                })
                .collect()
        };
        let reader = SpoolReader::open(&path).unwrap();
        let all = reader.due(now, 100_000).unwrap();
        assert!(attempts(&all));
        let got = keyed(&all, &reader);
        // In order: by next attempt, then message (recipients of one
        // message in any order).
        assert!(
            got.windows(2)
                .all(|w| (w[0].0, &w[0].1) <= (w[1].0, &w[1].1)),
            "{got:?}"
        );
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, expected, "every due recipient, nothing else");
        // A limit takes the head of the same order.
        let head = keyed(&reader.due(now, 17).unwrap(), &reader);
        let head_keys: Vec<_> = head.iter().map(|k| (k.0, k.1.clone())).collect();
        let want: Vec<_> = expected
            .iter()
            .take(17)
            .map(|k| (k.0, k.1.clone()))
            .collect();
        assert_eq!(head_keys, want);
        // Reopened, as after a restart: the same due set, and the deferred
        // recipients keep their next attempts.
        drop(reader);
        drop(spool);
        let reader = SpoolReader::open(&path).unwrap();
        let mut again = keyed(&reader.due(now, 100_000).unwrap(), &reader);
        again.sort();
        assert_eq!(again, expected);
        let listing = reader.listing().unwrap();
        for (id, at) in later {
            let e = listing.iter().find(|e| e.id == id).unwrap();
            let r1 = e
                .recipients
                .iter()
                .find(|r| r.address == "r1@far.test")
                .unwrap();
            assert_eq!((r1.state.as_str(), r1.next_attempt), ("queued", at));
        }
        assert_eq!(reader.next_due().unwrap(), Some(expected[0].0));
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
