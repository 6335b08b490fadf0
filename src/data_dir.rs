//! The files that go with one configuration database, derived in one
//! place, and the lock that lets one engine at a time run on them.
//!
//! `data/relaygate.db` has beside it the spool (`relaygate.spool.db`), the
//! event log (`relaygate.log.db`), the generated TLS files
//! (`relaygate.tls/`), the engine lock (`relaygate.lock`), the control
//! socket (`relaygate.sock`) and the disk reserve
//! (`relaygate.spool.reserve`, see [`crate::spool_space::RESERVE`]). Every file relaygate creates here is
//! owner-only, whatever the umask.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The paths that belong to one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub db: PathBuf,
    pub spool: PathBuf,
    pub log: PathBuf,
    pub lock: PathBuf,
    pub socket: PathBuf,
    /// Large message bodies while they arrive (`relaygate.spill/`).
    pub spill: PathBuf,
}

impl DataDir {
    pub fn for_db(db: &Path) -> DataDir {
        DataDir {
            db: db.to_path_buf(),
            spool: crate::spool::spool_path_for(db),
            log: crate::decision_log::log_path_for(db),
            lock: db.with_extension("lock"),
            socket: db.with_extension("sock"),
            spill: db.with_extension("spill"),
        }
    }

    /// Whether an engine holds the lock now, and its process id if it
    /// wrote one. A missing lock file means no engine.
    pub fn running_engine(&self) -> Option<Option<u32>> {
        let mut file = File::open(&self.lock).ok()?;
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(std::fs::TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(std::fs::TryLockError::Error(_)) => None,
        }
    }
}

/// Why the engine could not take its lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another relaygate engine{} is already running on {db}; attach to it with `relaygate console{}`",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        db_flag(db)
    )]
    Held { pid: Option<u32>, db: PathBuf },
    #[error(
        "the database {db} has {names} names (hard links): the engine's lock, spool, event log, socket and SQLite's write-ahead log go by the name, so an engine started on another name would run beside this one on the same file; remove the other names, or copy the file (sqlite3 {db} .backup COPY)",
        db = db.display()
    )]
    HardLinked { db: PathBuf, names: u64 },
    #[error("cannot take the engine lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `--db PATH` unless the path is the default.
pub fn db_flag(db: &Path) -> String {
    if db == Path::new(crate::cli::DEFAULT_DB) {
        String::new()
    } else {
        format!(" --db {}", db.display())
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The engine's exclusive hold on its data directory, for its whole life.
/// The kernel lets go when the process ends, however it ends, so a crash
/// never leaves a stale lock.
#[derive(Debug)]
pub struct EngineLock {
    _file: File,
    path: PathBuf,
}

impl EngineLock {
    /// Takes the lock and writes our process id into the file.
    pub fn acquire(dir: &DataDir) -> Result<EngineLock, LockError> {
        let io = |source| LockError::Io {
            path: dir.lock.clone(),
            source,
        };
        // One file, one name: a hard link would give it a second lock.
        if let Ok(meta) = std::fs::metadata(&dir.db)
            && meta.nlink() > 1
        {
            return Err(LockError::HardLinked {
                db: dir.db.clone(),
                names: meta.nlink(),
            });
        }
        if let Some(parent) = dir.lock.parent() {
            ensure_private_dir(parent).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&dir.lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    pid: read_pid(&mut file),
                    db: dir.db.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(EngineLock {
            _file: file,
            path: dir.lock.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates a directory (and its parents) owner-only if it does not exist.
/// An existing directory is left as the administrator made it.
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates an empty owner-only file if none exists (so that SQLite, which
/// gives its -wal and -shm files the database file's mode, keeps them
/// private too); an existing file made by relaygate is put back to 0600.
pub fn ensure_private_file(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        ensure_private_dir(parent)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = std::fs::metadata(path)?;
            if meta.permissions().mode() & 0o077 != 0 && meta.len() == 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn paths_sit_beside_the_database() {
        let d = DataDir::for_db(Path::new("/var/lib/relaygate/relaygate.db"));
        assert_eq!(d.lock, Path::new("/var/lib/relaygate/relaygate.lock"));
        assert_eq!(d.socket, Path::new("/var/lib/relaygate/relaygate.sock"));
        assert_eq!(d.spool, Path::new("/var/lib/relaygate/relaygate.spool.db"));
        assert_eq!(d.log, Path::new("/var/lib/relaygate/relaygate.log.db"));
    }

    #[test]
    fn one_holder_at_a_time_and_the_pid_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::for_db(&tmp.path().join("sub/r.db"));
        assert_eq!(dir.running_engine(), None);
        let lock = EngineLock::acquire(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(tmp.path().join("sub")).unwrap().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(lock.path()).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(dir.running_engine(), Some(Some(std::process::id())));
        match EngineLock::acquire(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(lock);
        assert_eq!(dir.running_engine(), None);
        EngineLock::acquire(&dir).unwrap();
    }

    #[test]
    fn a_database_with_a_second_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("r.db");
        std::fs::write(&db, b"").unwrap();
        std::fs::hard_link(&db, tmp.path().join("other.db")).unwrap();
        match EngineLock::acquire(&DataDir::for_db(&db)) {
            Err(e @ LockError::HardLinked { names: 2, .. }) => {
                assert!(e.to_string().contains("2 names (hard links)"), "{e}")
            }
            other => panic!("expected HardLinked, got {other:?}"),
        }
        std::fs::remove_file(tmp.path().join("other.db")).unwrap();
        EngineLock::acquire(&DataDir::for_db(&db)).unwrap();
    }
}
