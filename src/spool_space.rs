//! Free space on the spool's disk, and the room a session needs to take
//! mail. A relay whose disk cannot hold a whole message refuses MAIL with
//! `452 4.3.1` (RFC 3463: the client tries again later) rather than read a
//! message it then cannot store; the rule is Postfix's: 1.5 times the
//! message size limit, or `spool-min-free` if that is more.
//!
//! The engine measures the disk once a second ([`watch`]); sessions only
//! read the last figure, so the SMTP logic stays free of I/O. A message
//! that still finds the disk full when it is written gets `452 4.3.1` at
//! the end of DATA, and nothing acknowledged is lost either way.

use crate::events::Event;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// "Not measured yet" (or the disk cannot be asked): mail is taken.
const UNKNOWN: u64 = u64::MAX;

/// How often the disk is measured. Between measurements, what the engine
/// itself writes (a message stored, a body spilled) is taken off the last
/// figure at once ([`SpoolSpace::consume`]), so a burst of mail cannot
/// fill the disk behind the measurement's back.
pub const MEASURE_EVERY: Duration = Duration::from_millis(250);

/// The spool disk's free bytes as last measured (and what the settings
/// then needed), shared by the engine's watcher, every session and the
/// consoles' status line.
#[derive(Debug, Clone)]
pub struct SpoolSpace(Arc<Measured>);

#[derive(Debug)]
struct Measured {
    free: AtomicU64,
    needed: AtomicU64,
    /// Bytes consumed since the measurement under way began: taken off
    /// what it finds, so that a write during `statvfs` is not lost.
    since: AtomicU64,
}

impl Default for SpoolSpace {
    fn default() -> Self {
        SpoolSpace(Arc::new(Measured {
            free: AtomicU64::new(UNKNOWN),
            needed: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }))
    }
}

/// The spool disk's room as a console shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolRoom {
    pub free: u64,
    pub needed: u64,
}

impl SpoolRoom {
    /// Too little room to take mail: MAIL gets 452 4.3.1.
    pub fn is_short(&self) -> bool {
        self.free < self.needed
    }
}

impl SpoolSpace {
    /// Bytes free at the last measurement; `None` before the first one or
    /// when the disk cannot be measured.
    pub fn free(&self) -> Option<u64> {
        match self.0.free.load(Ordering::Relaxed) {
            UNKNOWN => None,
            n => Some(n),
        }
    }

    pub fn set(&self, free: Option<u64>) {
        let stored = free.map_or(UNKNOWN, |n| n.min(UNKNOWN - 1));
        self.0.free.store(stored, Ordering::Relaxed);
    }

    /// Takes `bytes` the engine has just written off the free figure (the
    /// next measurement puts in the truth).
    pub fn consume(&self, bytes: u64) {
        self.0.since.fetch_add(bytes, Ordering::Relaxed);
        let _ = self
            .0
            .free
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
                (f != UNKNOWN).then(|| f.saturating_sub(bytes))
            });
    }

    /// A measurement begins: what is consumed from now on is taken off
    /// its result ([`SpoolSpace::measured`]).
    pub fn measuring(&self) {
        self.0.since.store(0, Ordering::Relaxed);
    }

    /// A measurement's result, less what was consumed while it was taken.
    pub fn measured(&self, free: Option<u64>) {
        let since = self.0.since.swap(0, Ordering::Relaxed);
        self.set(free.map(|f| f.saturating_sub(since)));
    }

    /// What the settings in force need free (0 before the first
    /// measurement): sessions opened before a change use it too.
    pub fn needed_now(&self) -> u64 {
        self.0.needed.load(Ordering::Relaxed)
    }

    /// Free bytes against what the settings need, once measured.
    pub fn room(&self) -> Option<SpoolRoom> {
        let needed = self.0.needed.load(Ordering::Relaxed);
        self.free().map(|free| SpoolRoom { free, needed })
    }

    /// Whether a session may start a transaction: the disk has `needed`
    /// bytes free (or what the settings in force now need, if more), or
    /// its space is unknown.
    pub fn has_room(&self, needed: u64) -> bool {
        let needed = needed.max(self.needed_now());
        self.free().is_none_or(|free| free >= needed)
    }
}

/// The bytes the spool's disk must have free to take mail: 1.5 times the
/// largest message (so the message, its copy in the spool's write-ahead
/// log and the event log all fit), or `min_free` if that is more.
pub fn needed(min_free: u64, max_message_size: u64) -> u64 {
    min_free.max(max_message_size.saturating_add(max_message_size / 2))
}

/// Bytes an unprivileged writer may still use on the filesystem that holds
/// `path` (root's reserve not counted: the engine should not live on it).
pub fn measure(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Disk kept back for a full disk: a file of zeros beside the spool
/// (`relaygate.spool.reserve`), made while there is room and given up when
/// a delivery outcome or an administrator's queue change cannot be
/// written. SQLite needs room to write even a deletion; without the
/// reserve, a full disk could not be emptied through relaygate itself.
pub const RESERVE: u64 = 8 << 20;

/// The reserve file that goes with a spool file: beside the real file, if
/// the spool is a link to another disk.
pub fn reserve_path(spool: &Path) -> PathBuf {
    std::fs::canonicalize(spool)
        .unwrap_or_else(|_| spool.to_path_buf())
        .with_extension("reserve")
}

/// Whether the reserve is there, whole (one cut short by a crash is not).
pub fn has_reserve(spool: &Path) -> bool {
    std::fs::metadata(reserve_path(spool)).is_ok_and(|m| m.len() == RESERVE)
}

/// Makes the reserve if it is missing (or short) and `free` leaves room
/// for it on top of what taking mail needs. `Ok(true)` if it was made now.
pub fn keep_reserve(spool: &Path, free: u64, needed: u64) -> std::io::Result<bool> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = reserve_path(spool);
    // Room for it and for mail after it (pages freed in the spool's file
    // by deleted mail are reused by new mail, though `statvfs` counts
    // them as used).
    if has_reserve(spool) || free < needed.saturating_add(RESERVE).saturating_add(RESERVE / 2) {
        return Ok(false);
    }
    let _ = std::fs::remove_file(&path);
    // Written under another name and renamed: the reserve is whole or absent.
    let partial = path.with_extension("reserve-partial");
    let _ = std::fs::remove_file(&partial);
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut f| {
            // Written, not sized: a sparse file would hold nothing back.
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..RESERVE / (1 << 20) {
                f.write_all(&zeros)?;
            }
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&partial, &path));
    if made.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    made.map(|()| true)
}

/// Gives the reserve up; true if there was one.
pub fn release_reserve(spool: &Path) -> bool {
    std::fs::remove_file(reserve_path(spool)).is_ok()
}

/// Under this much free, a command that changes something gives up the
/// reserve before it opens anything: SQLite needs room for its -wal and
/// -shm files when no engine has them open.
pub const NEARLY_FULL: u64 = 1 << 20;

/// `n` bytes for a person, in binary units: "37.5 MiB", "2.1 GiB".
pub fn size_text(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if n >= unit {
            return format!("{:.1} {name}", n as f64 / unit as f64);
        }
    }
    format!("{n} bytes")
}

/// Measures the spool's disk four times a second until the engine stops, keeping
/// `shared.spool_space` current, and says when the disk goes short of room
/// for mail and when it has room again (one event each way, not one per
/// refused MAIL).
pub async fn watch(shared: Arc<crate::engine::Shared>, spool: PathBuf) {
    let mut low = false;
    let mut every = tokio::time::interval(MEASURE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A reserve that could not be made is not tried again for a while
    // (a user quota that statvfs does not show, a permission): said once.
    let mut reserve_retry_at = tokio::time::Instant::now();
    let mut reserve_failed = false;
    loop {
        every.tick().await;
        shared.spool_space.measuring();
        let measured = {
            let spool = spool.clone();
            tokio::task::spawn_blocking(move || measure(&spool))
                .await
                .ok()
                .and_then(Result::ok)
        };
        let settings = &shared.snapshot().settings;
        let needed = needed(settings.spool_min_free, settings.max_message_size);
        shared.spool_space.0.needed.store(needed, Ordering::Relaxed);
        shared.spool_space.measured(measured);
        let Some(free) = shared.spool_space.free() else {
            continue;
        };
        if tokio::time::Instant::now() >= reserve_retry_at && !has_reserve(&spool) {
            let path = spool.clone();
            let made = tokio::task::spawn_blocking(move || keep_reserve(&path, free, needed))
                .await
                .unwrap_or(Ok(false));
            match made {
                Ok(true) => {
                    shared.spool_space.consume(RESERVE);
                    reserve_failed = false;
                    continue; // judged at the next tick, with it
                }
                Ok(false) => {}
                Err(e) => {
                    reserve_retry_at = tokio::time::Instant::now() + Duration::from_secs(300);
                    if !std::mem::replace(&mut reserve_failed, true) {
                        shared.events.emit(Event::Error {
                            session: None,
                            message: format!(
                                "cannot make the disk reserve {}: {e}; tried again every 5 minutes",
                                reserve_path(&spool).display()
                            ),
                        });
                    }
                }
            }
        }
        if (free < needed) != low {
            low = free < needed;
            shared.events.emit(Event::SpoolSpace { free, needed, low });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needed_is_one_and_a_half_messages_or_the_minimum() {
        assert_eq!(needed(0, 25 << 20), 75 << 19);
        assert_eq!(needed(1 << 30, 25 << 20), 1 << 30);
        assert_eq!(needed(0, u64::MAX), u64::MAX);
    }

    #[test]
    fn unknown_space_takes_mail_and_known_space_is_judged() {
        let space = SpoolSpace::default();
        assert_eq!(space.free(), None);
        assert!(space.has_room(u64::MAX));
        space.set(Some(1000));
        assert!(space.has_room(1000));
        assert!(!space.has_room(1001));
        // A disk reporting the sentinel itself is still a measurement.
        space.set(Some(u64::MAX));
        assert_eq!(space.free(), Some(u64::MAX - 1));
        space.set(None);
        assert_eq!(space.free(), None);
        // What the engine writes comes off at once; unknown stays unknown.
        space.consume(10);
        assert_eq!(space.free(), None);
        space.set(Some(1000));
        space.consume(300);
        assert_eq!(space.free(), Some(700));
        space.consume(5000);
        assert_eq!(space.free(), Some(0));
        // A write while the disk is measured is not lost to the result.
        space.measuring();
        space.consume(100);
        space.measured(Some(2000));
        assert_eq!(space.free(), Some(1900));
        space.measuring();
        space.measured(Some(2000));
        assert_eq!(space.free(), Some(2000));
    }

    #[test]
    fn the_reserve_is_made_whole_and_owner_only_and_given_up() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("relaygate.spool.db");
        std::fs::write(&spool, b"").unwrap();
        // Not while taking mail would leave too little.
        assert!(!keep_reserve(&spool, 2 * RESERVE, RESERVE).unwrap());
        assert!(!has_reserve(&spool));
        assert!(keep_reserve(&spool, u64::MAX, 0).unwrap());
        let meta = std::fs::metadata(reserve_path(&spool)).unwrap();
        assert_eq!(meta.len(), RESERVE);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(!keep_reserve(&spool, u64::MAX, 0).unwrap(), "already there");
        // One cut short (a crash while it was written) is made again.
        std::fs::write(reserve_path(&spool), b"short").unwrap();
        assert!(!has_reserve(&spool));
        assert!(keep_reserve(&spool, u64::MAX, 0).unwrap());
        assert!(has_reserve(&spool));
        assert!(release_reserve(&spool));
        assert!(!release_reserve(&spool));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "nothing left over"
        );
    }

    #[test]
    fn the_disk_holding_a_directory_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(measure(dir.path()).is_ok());
        assert!(measure(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn sizes_read_as_a_person_writes_them() {
        assert_eq!(size_text(512), "512 bytes");
        assert_eq!(size_text(75 << 19), "37.5 MiB");
        assert_eq!(size_text(3 << 30), "3.0 GiB");
    }
}
