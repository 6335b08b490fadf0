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

/// How often the disk is measured.
pub const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// The spool disk's free bytes as last measured (and what the settings
/// then needed), shared by the engine's watcher, every session and the
/// consoles' status line.
#[derive(Debug, Clone)]
pub struct SpoolSpace(Arc<Measured>);

#[derive(Debug)]
struct Measured {
    free: AtomicU64,
    needed: AtomicU64,
}

impl Default for SpoolSpace {
    fn default() -> Self {
        SpoolSpace(Arc::new(Measured {
            free: AtomicU64::new(UNKNOWN),
            needed: AtomicU64::new(0),
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

    /// Free bytes against what the settings need, once measured.
    pub fn room(&self) -> Option<SpoolRoom> {
        let needed = self.0.needed.load(Ordering::Relaxed);
        self.free().map(|free| SpoolRoom { free, needed })
    }

    /// Whether a session may start a transaction: the disk has `needed`
    /// bytes free, or its space is unknown.
    pub fn has_room(&self, needed: u64) -> bool {
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

/// `n` bytes for a person: "37.5 MB", "2.1 GB", "512 kB".
pub fn size_text(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TB"),
        (1 << 30, "GB"),
        (1 << 20, "MB"),
        (1 << 10, "kB"),
    ];
    for (unit, name) in UNITS {
        if n >= unit {
            return format!("{:.1} {name}", n as f64 / unit as f64);
        }
    }
    format!("{n} bytes")
}

/// Measures the spool's disk every second until the engine stops, keeping
/// `shared.spool_space` current, and says when the disk goes short of room
/// for mail and when it has room again (one event each way, not one per
/// refused MAIL).
pub async fn watch(shared: Arc<crate::engine::Shared>, spool: PathBuf) {
    let mut low = false;
    let mut every = tokio::time::interval(MEASURE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
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
        shared.spool_space.set(measured);
        let Some(free) = measured else { continue };
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
        assert_eq!(size_text(75 << 19), "37.5 MB");
        assert_eq!(size_text(3 << 30), "3.0 GB");
    }
}
