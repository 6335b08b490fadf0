//! The SQLite store: the only place that speaks SQL. Typed reads and
//! writes; every multi-row edit is one transaction; input is validated
//! before anything is written.

mod config_doc;
mod schema;

pub use schema::{CURRENT_VERSION, DEFAULT_ALLOW, DEFAULT_BINDING, DEFAULT_DENY};

use crate::abuse::bans::{Ban, BanReason, STRIKES_KEPT_MS};
use crate::abuse::quota::{Quota, QuotaScope, QuotaUnit};
use crate::abuse::rate::{Rate, SlidingCount};
use crate::bindings::{BindKind, Binding};
use crate::delivery::{Route, RouteAuth, TlsMode};
use crate::policy::address::{normalize_domain, parse_mailbox};
use crate::policy::ip_lists::ListKind;
use crate::policy::list_text::ParsedEntry;
use crate::policy::rules::{Rule, RuleAction};
use crate::policy::settings::{AuthMode, SWITCH_KEYS, Switches, parse_on_off};
use crate::policy::{Login, Policy, PolicyConfig};
use crate::server_settings::ServerSettings;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: not a relaygate database ({detail}); it was left untouched")]
    NotRelaygate { path: PathBuf, detail: String },
    #[error(
        "{path}: schema version {found} was written by a newer relaygate (this one knows up to {known}); it was left untouched"
    )]
    NewerSchema {
        path: PathBuf,
        found: i32,
        known: i32,
    },
    #[error(
        "{path} is read-only for this user: reading works, changes need write access to it and its directory (run as its owner, e.g. with sudo -u)"
    )]
    ReadOnly { path: PathBuf },
    #[error("{path}: no such database")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Input that fails validation; nothing was written.
    #[error("{0}")]
    Invalid(String),
    /// The stored configuration does not compile (edited by hand?).
    #[error("the stored policy is invalid: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A user as listed by `user show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub addresses: Vec<String>,
    /// Why the login may not authenticate now (a quota suspended it, or
    /// the administrator did).
    pub suspended: Option<String>,
}

/// What adding entries to a list did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: Vec<String>,
    /// (entry as given, the equivalent entry already listed)
    pub duplicates: Vec<(String, String)>,
}

/// What SQLite would say obscurely ("disk I/O error", "unable to open
/// database file"), said plainly: a directory given for the file, a file
/// this user may not read.
pub fn check_db_path(path: &Path) -> Result<()> {
    if let Err(e) = std::fs::metadata(path)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(StoreError::Invalid(format!(
            "{}: this user may not enter its directory (the service's data directory is its owner's, mode 0700, or 0710 for its group): run the command as the service user; a console-group member can watch with `relaygate console`",
            path.display()
        )));
    }
    if path.is_dir() {
        return Err(StoreError::Invalid(format!(
            "{} is a directory: --db names the database file, like data/relaygate.db",
            path.display()
        )));
    }
    if path.exists()
        && let Err(e) = std::fs::File::open(path)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(StoreError::Invalid(format!(
            "{}: this user may not read it (it is its owner's, mode 0600): run the command as the service user; a console-group member can watch with `relaygate console`",
            path.display()
        )));
    }
    Ok(())
}

/// An open relaygate database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens a relaygate database, creating it (mode 0600, safe defaults)
    /// if the file does not exist. A file that is not a relaygate database,
    /// or has a newer schema, is refused before anything is written to it.
    pub fn open(path: &Path) -> Result<Store> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        check_db_path(path)?;
        if !path.exists() {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                // The database's own directory is made; a whole missing
                // chain above it is a mistyped path, not a place for one.
                if let Some(above) = parent
                    .parent()
                    .filter(|a| !a.as_os_str().is_empty() && !parent.exists() && !a.is_dir())
                {
                    let what = if above.exists() {
                        "is not a directory"
                    } else {
                        "does not exist"
                    };
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "cannot create the database: {} {what} (relaygate makes the database's own directory, not the ones above it)",
                            above.display()
                        ),
                    )));
                }
                crate::data_dir::ensure_private_dir(parent).map_err(io)?;
            }
            create_private_file(path).map_err(io)?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let not_ours = |detail: String| StoreError::NotRelaygate {
            path: path.to_path_buf(),
            detail,
        };
        let read_only = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen)
            )
        };
        let app_id: i32 = match conn.pragma_query_value(None, "application_id", |r| r.get(0)) {
            Ok(id) => id,
            Err(e) if read_only(&e) || is_read_only_file(path) => {
                return Err(StoreError::ReadOnly {
                    path: path.to_path_buf(),
                });
            }
            // The disk, not the file: said as it is (a full disk cannot
            // make the -wal and -shm files), not as a foreign file.
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::DiskFull)
                ) =>
            {
                return Err(StoreError::Invalid(format!(
                    "{}: cannot be opened: {e} (is its disk full? `df` tells)",
                    path.display()
                )));
            }
            Err(e) => return Err(not_ours(e.to_string())),
        };
        if is_read_only_file(path) {
            return Err(StoreError::ReadOnly {
                path: path.to_path_buf(),
            });
        }
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
        let fresh = app_id == 0 && version == 0 && objects == 0;
        if !fresh && app_id != schema::APPLICATION_ID {
            return Err(not_ours(format!(
                "application id {app_id:#x}, {objects} schema objects"
            )));
        }
        if version > CURRENT_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                known: CURRENT_VERSION,
            });
        }
        if fresh {
            set_private_mode(path).map_err(io)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
        };
        if version < CURRENT_VERSION {
            let tx = store.conn.transaction()?;
            schema::migrate(&tx, version)?;
            if fresh {
                tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
                schema::insert_defaults(&tx)?;
            }
            tx.commit()?;
        }
        Ok(store)
    }

    /// A fresh database in memory, with the defaults: where a whole
    /// configuration is tried before it is applied (`config apply`).
    pub fn scratch() -> Result<Store> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store {
            conn,
            path: PathBuf::from(":memory:"),
        };
        let tx = store.conn.transaction()?;
        schema::migrate(&tx, 0)?;
        tx.pragma_update(None, "application_id", schema::APPLICATION_ID)?;
        schema::insert_defaults(&tx)?;
        tx.commit()?;
        Ok(store)
    }

    /// Opens an existing database for reading only (the `show` commands
    /// and `check`): works on a file or directory this user cannot write.
    /// Nothing is created, migrated or written.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        check_db_path(path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let probe = |conn: &Connection| -> rusqlite::Result<(i32, i32)> {
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok((
                conn.pragma_query_value(None, "application_id", |r| r.get(0))?,
                conn.pragma_query_value(None, "user_version", |r| r.get(0))?,
            ))
        };
        let opened =
            Connection::open_with_flags(path, flags).and_then(|c| probe(&c).map(|v| (c, v)));
        let (conn, (app_id, version)) = match opened {
            Ok(ok) => ok,
            Err(e) => {
                // A WAL database in a directory we cannot write: SQLite
                // cannot make its -shm file. Read the file as it is, but
                // only if no engine is writing it (else the read could miss
                // what is in its WAL).
                if crate::data_dir::DataDir::for_db(path)
                    .running_engine()
                    .is_some()
                {
                    return Err(StoreError::Invalid(format!(
                        "{}: cannot be read consistently by this user while the engine runs ({e}); run as the service user",
                        path.display()
                    )));
                }
                let uri = format!("file:{}?immutable=1", uri_path(path));
                let conn = Connection::open_with_flags(uri, flags)?;
                let v = probe(&conn).map_err(|e| StoreError::NotRelaygate {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?;
                (conn, v)
            }
        };
        if app_id != schema::APPLICATION_ID {
            return Err(StoreError::NotRelaygate {
                path: path.to_path_buf(),
                detail: format!("application id {app_id:#x}"),
            });
        }
        if version > CURRENT_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                known: CURRENT_VERSION,
            });
        }
        if version < CURRENT_VERSION {
            return Err(StoreError::Invalid(format!(
                "{}: schema version {version} needs an upgrade, which needs write access (run any changing command as its owner)",
                path.display()
            )));
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A number that changes whenever another connection commits: cheap to
    /// poll for live reload.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// Reads the whole configuration in one read transaction, so it is one
    /// consistent state even while another process writes.
    pub fn load_config(&mut self) -> Result<PolicyConfig> {
        let tx = self.conn.transaction()?;
        let config = load_config_in(&tx)?;
        tx.commit()?;
        Ok(config)
    }

    /// Everything the engine runs on (policy, settings, bindings, routes),
    /// read in one read transaction: one consistent state, never half of
    /// an edit another process is committing.
    pub fn engine_config(&mut self) -> Result<EngineConfig> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let read = (|| -> Result<EngineConfig> {
            let policy_config = load_config_in(&self.conn)?;
            let policy =
                Policy::compile(&policy_config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(EngineConfig {
                policy,
                settings: self.server_settings()?,
                bindings: self.bindings()?,
                routes: self.routes()?,
                quotas: self.quotas()?,
                bans: self.bans()?,
                suspended: self.suspended_logins()?,
                proxied: self.proxy_bindings()?,
                dkim_keys: self.dkim_keys()?,
            })
        })();
        let end = self.conn.execute_batch("COMMIT");
        let config = read?;
        end?;
        Ok(config)
    }

    /// Loads and compiles the policy snapshot.
    pub fn load_policy(&mut self) -> Result<Policy> {
        let config = self.load_config()?;
        Policy::compile(&config).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    // ----- allow / deny lists -----

    /// The entries of one list, as typed, in the order they were added.
    pub fn list_entries(&self, list: ListKind) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT entry FROM ip_entries WHERE list = ?1 ORDER BY id")?;
        let rows = stmt.query_map([list.as_str()], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds parsed entries in one transaction. An entry equivalent to one
    /// already listed (same addresses, any spelling) is reported, not added.
    pub fn add_entries(&mut self, list: ListKind, entries: &[ParsedEntry]) -> Result<AddOutcome> {
        let tx = self.conn.transaction()?;
        let mut outcome = AddOutcome::default();
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO ip_entries (list, entry, canonical) VALUES (?1, ?2, ?3)",
            )?;
            let mut existing =
                tx.prepare("SELECT entry FROM ip_entries WHERE list = ?1 AND canonical = ?2")?;
            for e in entries {
                let canonical = e.pattern.canonical();
                if insert.execute(params![list.as_str(), e.text, canonical])? == 1 {
                    outcome.added.push(e.text.clone());
                } else {
                    let first: String =
                        existing.query_row(params![list.as_str(), canonical], |r| r.get(0))?;
                    outcome.duplicates.push((e.text.clone(), first));
                }
            }
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// Removes entries (matched by the addresses they cover, any spelling)
    /// in one transaction; if any is not listed, nothing is removed.
    pub fn remove_entries(
        &mut self,
        list: ListKind,
        entries: &[ParsedEntry],
    ) -> Result<Vec<String>> {
        let tx = self.conn.transaction()?;
        let mut removed = Vec::new();
        {
            let mut find =
                tx.prepare("SELECT id, entry FROM ip_entries WHERE list = ?1 AND canonical = ?2")?;
            let mut delete = tx.prepare("DELETE FROM ip_entries WHERE id = ?1")?;
            for e in entries {
                let found: Option<(i64, String)> = find
                    .query_row(params![list.as_str(), e.pattern.canonical()], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let Some((id, text)) = found else {
                    return Err(StoreError::Invalid(format!(
                        "{} is not on the {list} list; nothing was removed",
                        e.text
                    )));
                };
                delete.execute([id])?;
                removed.push(text);
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Saves an edit of one or both lists (the console's save), in one
    /// transaction. Each edit was made from `base`, the list as stored when
    /// the edit began; what another process added or removed meanwhile is
    /// kept so (a three-way merge by canonical entry), so that a save never
    /// undoes a change its editor did not see. Returns, per list, what it
    /// now holds and what was kept from elsewhere.
    pub fn save_list_edits(&mut self, edits: &[ListEdit]) -> Result<Vec<SavedList>> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut merged = Vec::new();
        {
            let mut current_of =
                tx.prepare("SELECT entry, canonical FROM ip_entries WHERE list = ?1 ORDER BY id")?;
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO ip_entries (list, entry, canonical) VALUES (?1, ?2, ?3)",
            )?;
            for edit in edits {
                let current: Vec<(String, String)> = current_of
                    .query_map([edit.list.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let (entries, saved) = merge_list_edit(edit, &current);
                tx.execute(
                    "DELETE FROM ip_entries WHERE list = ?1",
                    [edit.list.as_str()],
                )?;
                for (text, canonical) in &entries {
                    insert.execute(params![edit.list.as_str(), text, canonical])?;
                }
                merged.push(saved);
            }
        }
        tx.commit()?;
        Ok(merged)
    }

    /// Replaces a whole list in one transaction.
    pub fn replace_entries(&mut self, list: ListKind, entries: &[ParsedEntry]) -> Result<()> {
        self.replace_lists(&[(list, entries)])
    }

    /// Replaces one or both lists in a single transaction (the console's
    /// save): the engine sees the old lists or the new ones, never a mix.
    pub fn replace_lists(&mut self, lists: &[(ListKind, &[ParsedEntry])]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare(
                "INSERT OR IGNORE INTO ip_entries (list, entry, canonical) VALUES (?1, ?2, ?3)",
            )?;
            for (list, entries) in lists {
                tx.execute("DELETE FROM ip_entries WHERE list = ?1", [list.as_str()])?;
                for e in *entries {
                    insert.execute(params![list.as_str(), e.text, e.pattern.canonical()])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    // ----- local domains -----

    pub fn domains(&self) -> Result<Vec<String>> {
        query_strings(&self.conn, "SELECT name FROM local_domains ORDER BY name")
    }

    /// Adds a local domain as written. One already there in its other
    /// spelling (`bücher.example`, `xn--bcher-kva.example`) is the same
    /// domain: refused as a duplicate.
    pub fn add_domain(&mut self, name: &str) -> Result<String> {
        let name = normalize_domain(name.trim())
            .map_err(|p| StoreError::Invalid(format!("invalid domain {name:?}: {p}")))?;
        if let Some(there) = self.same_domain(&self.domains()?, &name).first() {
            return Err(StoreError::Invalid(if *there == name {
                format!("{name} is already a local domain")
            } else {
                format!("{name} is already a local domain, written {there}")
            }));
        }
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO local_domains (name) VALUES (?1)",
            [&name],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!(
                "{name} is already a local domain"
            )));
        }
        Ok(name)
    }

    /// Removes a local domain, given in either spelling; returns it as it
    /// was stored.
    pub fn remove_domain(&mut self, name: &str) -> Result<String> {
        let key = normalize_domain(name.trim()).unwrap_or_else(|_| name.to_lowercase());
        let stored = self.same_domain(&self.domains()?, &key);
        let Some(first) = stored.first().cloned() else {
            return Err(StoreError::Invalid(format!("{name} is not a local domain")));
        };
        let tx = self.conn.transaction()?;
        for d in &stored {
            tx.execute("DELETE FROM local_domains WHERE name = ?1", [d])?;
        }
        tx.commit()?;
        Ok(first)
    }

    /// The names among `stored` that are `name` in one spelling or the
    /// other (compared in their DNS form).
    fn same_domain(&self, stored: &[String], name: &str) -> Vec<String> {
        let want = crate::policy::address::dns_form(name);
        stored
            .iter()
            .filter(|d| crate::policy::address::dns_form(d) == want)
            .cloned()
            .collect()
    }

    // ----- users and sender addresses -----

    pub fn users(&self) -> Result<Vec<UserInfo>> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, suspended FROM users ORDER BY name")?;
        let rows: Vec<(String, Option<String>)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(name, suspended)| {
                let addresses = self.sender_addresses(&name)?;
                Ok(UserInfo {
                    name,
                    addresses,
                    suspended,
                })
            })
            .collect()
    }

    /// The sender addresses assigned to a login.
    pub fn sender_addresses(&self, login: &str) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT address FROM sender_addresses WHERE login = ?1 ORDER BY address")?;
        let rows = stmt.query_map([login], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn add_user(&mut self, name: &str, password_hash: &str) -> Result<()> {
        check_login_name(name)?;
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO users (name, password_hash) VALUES (?1, ?2)",
            [name, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!("user {name} already exists")));
        }
        Ok(())
    }

    pub fn set_password(&mut self, name: &str, password_hash: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE users SET password_hash = ?2 WHERE name = ?1",
            [name, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!("no user {name}")));
        }
        Ok(())
    }

    /// Removes a user and its sender addresses in one transaction.
    pub fn remove_user(&mut self, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        if tx.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
            return Err(StoreError::Invalid(format!("no user {name}")));
        }
        let specified: Option<String> = tx
            .query_row(
                "SELECT value FROM settings WHERE key = 'auth.specified-user'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if specified.as_deref() != Some(name) {
            tx.execute("DELETE FROM sender_addresses WHERE login = ?1", [name])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces the sender addresses of a login (a user, or the `specified`
    /// login) in one transaction. An address is `local@domain` or `@domain`
    /// for a whole domain.
    pub fn set_sender_addresses(
        &mut self,
        login: &str,
        addresses: &[String],
    ) -> Result<Vec<String>> {
        let mut normalized = Vec::new();
        for a in addresses {
            normalized.push(normalize_owned_address(a)?);
        }
        normalized.sort();
        normalized.dedup();
        let tx = self.conn.transaction()?;
        put_sender_addresses(&tx, login, &normalized)?;
        tx.commit()?;
        Ok(normalized)
    }

    /// The console's save of a login's sender addresses, edited from
    /// `base` (what it had when the form opened): what another process
    /// added or removed meanwhile is kept so, as [`Store::save_list_edits`]
    /// does for the IP lists.
    pub fn edit_sender_addresses(
        &mut self,
        login: &str,
        base: &[String],
        addresses: &[String],
    ) -> Result<EditedAddresses> {
        let normalize = |list: &[String]| -> Result<std::collections::BTreeSet<String>> {
            list.iter().map(|a| normalize_owned_address(a)).collect()
        };
        let (base, edited) = (normalize(base)?, normalize(addresses)?);
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: std::collections::BTreeSet<String> = tx
            .prepare("SELECT address FROM sender_addresses WHERE login = ?1")?
            .query_map([login], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let removed_here: std::collections::BTreeSet<&String> = base.difference(&edited).collect();
        let now: Vec<String> = current
            .iter()
            .filter(|a| !removed_here.contains(a))
            .chain(edited.difference(&base))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        put_sender_addresses(&tx, login, &now)?;
        tx.commit()?;
        Ok(EditedAddresses {
            added_elsewhere: current.difference(&base).cloned().collect(),
            removed_elsewhere: base.difference(&current).cloned().collect(),
            now,
        })
    }

    // ----- auth mode and switches -----

    pub fn auth_mode(&self) -> Result<(AuthMode, Option<String>)> {
        let mode = self.setting("auth.mode")?.unwrap_or_default();
        let mode = AuthMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("auth.mode = {mode:?}")))?;
        Ok((mode, self.setting("auth.specified-user")?))
    }

    /// Sets the auth mode; `specified` needs the login and its hash, and
    /// keeps an earlier one if none is given.
    pub fn set_auth_mode(&mut self, mode: AuthMode, specified: Option<&Login>) -> Result<()> {
        let tx = self.conn.transaction()?;
        if let Some(login) = specified {
            check_login_name(&login.name)?;
            for (k, v) in [
                ("auth.specified-user", &login.name),
                ("auth.specified-hash", &login.password_hash),
            ] {
                upsert_setting(&tx, k, v)?;
            }
        } else if mode == AuthMode::Specified {
            let has: Option<String> = tx
                .query_row(
                    "SELECT value FROM settings WHERE key = 'auth.specified-hash'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if has.is_none() {
                return Err(StoreError::Invalid(
                    "auth mode specified needs --user NAME --password-stdin".into(),
                ));
            }
        }
        upsert_setting(&tx, "auth.mode", mode.as_str())?;
        tx.commit()?;
        Ok(())
    }

    pub fn switches(&mut self) -> Result<Switches> {
        Ok(self.load_config()?.switches)
    }

    pub fn set_switch(&mut self, key: &str, on: bool) -> Result<()> {
        Switches::default()
            .set(key, on)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let tx = self.conn.transaction()?;
        upsert_setting(&tx, key, if on { "on" } else { "off" })?;
        tx.commit()?;
        Ok(())
    }

    /// The engine settings: defaults overlaid with what is stored.
    pub fn server_settings(&self) -> Result<ServerSettings> {
        let mut settings = ServerSettings::default();
        let mut stmt = self.conn.prepare("SELECT key, value FROM settings")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (key, value) in rows {
            if ServerSettings::is_key(&key) {
                settings
                    .set(&key, &value)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            }
        }
        Ok(settings)
    }

    /// Validates and stores one engine setting.
    pub fn set_server_setting(&mut self, key: &str, value: &str) -> Result<String> {
        let mut settings = ServerSettings::default();
        settings
            .set(key, value)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let normalized = settings.get(key).unwrap_or_default();
        let tx = self.conn.transaction()?;
        upsert_setting(&tx, key, &normalized)?;
        tx.commit()?;
        Ok(normalized)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    // ----- rules -----

    pub fn rules(&self) -> Result<Vec<Rule>> {
        load_rules(&self.conn)
    }

    /// Inserts a rule at a 1-based position (the end if `None`).
    pub fn add_rule(&mut self, rule: &Rule, at: Option<usize>) -> Result<usize> {
        for glob in [&rule.sender, &rule.recipient] {
            if let Some(why) = crate::policy::rules::unmatchable_domain(&glob.pattern) {
                return Err(StoreError::Invalid(why));
            }
        }
        let mut rules = self.rules()?;
        let pos = at.unwrap_or(rules.len() + 1);
        if pos == 0 || pos > rules.len() + 1 {
            return Err(StoreError::Invalid(format!(
                "position {pos} is out of range 1-{}",
                rules.len() + 1
            )));
        }
        rules.insert(pos - 1, rule.clone());
        self.write_rules(&rules)?;
        Ok(pos)
    }

    /// Removes the rule at a 1-based position.
    pub fn remove_rule(&mut self, number: usize) -> Result<Rule> {
        let mut rules = self.rules()?;
        if number == 0 || number > rules.len() {
            return Err(StoreError::Invalid(format!(
                "there is no rule #{number} ({} rules)",
                rules.len()
            )));
        }
        let removed = rules.remove(number - 1);
        self.write_rules(&rules)?;
        Ok(removed)
    }

    fn write_rules(&mut self, rules: &[Rule]) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM rules", [])?;
        for (i, r) in rules.iter().enumerate() {
            let reject = match &r.action {
                RuleAction::Reject(t) => Some(t.as_str()),
                RuleAction::Accept => None,
            };
            tx.execute(
                "INSERT INTO rules (position, sender, recipient, destination, reject_text) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    i as i64 + 1,
                    r.sender.to_string(),
                    r.recipient.to_string(),
                    r.destination.as_str(),
                    reject
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    // ----- bindings -----

    pub fn bindings(&self) -> Result<Vec<Binding>> {
        let mut stmt = self
            .conn
            .prepare("SELECT address, kind FROM bindings ORDER BY address")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(addr, kind)| {
                Ok(Binding {
                    addr: addr
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("binding {addr:?}")))?,
                    kind: BindKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("binding kind {kind:?}")))?,
                })
            })
            .collect()
    }

    /// Adds a binding, or changes the kind of an existing one.
    pub fn add_binding(&mut self, binding: Binding) -> Result<bool> {
        let n = self.conn.execute(
            "INSERT INTO bindings (address, kind) VALUES (?1, ?2)
             ON CONFLICT (address) DO UPDATE SET kind = excluded.kind WHERE kind != excluded.kind",
            [binding.addr.to_string(), binding.kind.as_str().to_string()],
        )?;
        Ok(n == 1)
    }

    pub fn remove_binding(&mut self, addr: std::net::SocketAddr) -> Result<()> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM bindings WHERE address = ?1",
            [addr.to_string()],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!("{addr} is not a binding")));
        }
        tx.execute(
            "DELETE FROM proxy_bindings WHERE address = ?1",
            [addr.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Bindings that require the PROXY protocol, with the proxies trusted
    /// to send it.
    pub fn proxy_bindings(&self) -> Result<HashMap<std::net::SocketAddr, Vec<ipnet::IpNet>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT address, trusted FROM proxy_bindings")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(addr, trusted)| {
                let corrupt =
                    || StoreError::Corrupt(format!("proxy binding {addr:?}: {trusted:?}"));
                let addr = addr.parse().map_err(|_| corrupt())?;
                let nets = parse_trusted_proxies(&trusted).map_err(|_| corrupt())?;
                Ok((addr, nets))
            })
            .collect()
    }

    /// Adds a binding, or changes it, with its PROXY protocol setting (None:
    /// a plain listener), in one transaction.
    pub fn put_binding(
        &mut self,
        binding: Binding,
        trusted_proxies: Option<&[ipnet::IpNet]>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO bindings (address, kind) VALUES (?1, ?2)
             ON CONFLICT (address) DO UPDATE SET kind = excluded.kind WHERE kind != excluded.kind",
            [binding.addr.to_string(), binding.kind.as_str().to_string()],
        )?;
        match trusted_proxies {
            Some(nets) => {
                let text = trusted_text(nets);
                tx.execute(
                    "INSERT INTO proxy_bindings (address, trusted) VALUES (?1, ?2)
                     ON CONFLICT (address) DO UPDATE SET trusted = excluded.trusted",
                    [binding.addr.to_string(), text],
                )?;
            }
            None => {
                tx.execute(
                    "DELETE FROM proxy_bindings WHERE address = ?1",
                    [binding.addr.to_string()],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

impl Store {
    // ----- delivery routes -----

    /// Every route, the default `*` last.
    pub fn routes(&self) -> Result<Vec<Route>> {
        let mut stmt = self.conn.prepare(
            "SELECT domain, host, port, tls, auth_user, auth_password, rate, concurrency FROM routes
             ORDER BY domain = '*', domain",
        )?;
        let rows = stmt.query_map([], |r| {
            let tls: String = r.get(3)?;
            let port: i64 = r.get(2)?;
            let user: Option<String> = r.get(4)?;
            let password: Option<String> = r.get(5)?;
            let rate: Option<String> = r.get(6)?;
            let concurrency: Option<i64> = r.get(7)?;
            Ok((
                Route {
                    domain: r.get(0)?,
                    host: r.get(1)?,
                    port: 0,
                    tls: TlsMode::None,
                    auth: user
                        .zip(password)
                        .map(|(user, password)| RouteAuth { user, password }),
                    rate: None,
                    concurrency: concurrency.and_then(|c| usize::try_from(c).ok()),
                },
                port,
                tls,
                rate,
            ))
        })?;
        rows.map(|row| {
            let (mut route, port, tls, rate) = row?;
            if let Some(rate) = rate {
                route.rate =
                    Some(crate::abuse::rate::Rate::parse(&rate).map_err(|e| {
                        StoreError::Corrupt(format!("route {}: {e}", route.domain))
                    })?);
            }
            route.port = u16::try_from(port)
                .map_err(|_| StoreError::Corrupt(format!("route {}: port {port}", route.domain)))?;
            route.tls = TlsMode::parse(&tls)
                .ok_or_else(|| StoreError::Corrupt(format!("route {}: tls {tls}", route.domain)))?;
            Ok(route)
        })
        .collect()
    }

    /// DKIM keys, by domain.
    pub fn dkim_keys(&self) -> Result<Vec<DkimKeyRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT domain, selector, private_key FROM dkim_keys ORDER BY domain")?;
        let rows = stmt.query_map([], |r| {
            Ok(DkimKeyRow {
                domain: r.get(0)?,
                selector: r.get(1)?,
                pem: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Adds or replaces the DKIM key of a domain.
    pub fn set_dkim_key(&mut self, domain: &str, selector: &str, pem: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO dkim_keys (domain, selector, private_key) VALUES (?1, ?2, ?3)
             ON CONFLICT (domain) DO UPDATE SET selector = excluded.selector,
               private_key = excluded.private_key",
            [domain, selector, pem],
        )?;
        Ok(())
    }

    pub fn remove_dkim_key(&mut self, domain: &str) -> Result<()> {
        if self
            .conn
            .execute("DELETE FROM dkim_keys WHERE domain = ?1", [domain])?
            == 0
        {
            return Err(StoreError::Invalid(format!("no DKIM key for {domain}")));
        }
        Ok(())
    }

    /// Adds or replaces the route of a domain pattern; one stored for the
    /// other spelling of the same domain is replaced too.
    pub fn set_route(&mut self, route: &Route) -> Result<()> {
        let others = self.same_route(&route.domain)?;
        // One commit: a reload in between never sees the domain unrouted.
        let tx = self.conn.transaction()?;
        for other in others {
            if other != route.domain {
                tx.execute("DELETE FROM routes WHERE domain = ?1", [&other])?;
            }
        }
        let (user, password) = match &route.auth {
            Some(a) => (Some(a.user.as_str()), Some(a.password.as_str())),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO routes (domain, host, port, tls, auth_user, auth_password, rate, concurrency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (domain) DO UPDATE SET host = excluded.host, port = excluded.port,
               tls = excluded.tls, auth_user = excluded.auth_user, auth_password = excluded.auth_password,
               rate = excluded.rate, concurrency = excluded.concurrency",
            params![
                route.domain,
                route.host,
                route.port,
                route.tls.as_str(),
                user,
                password,
                route.rate.map(|r| r.to_string()),
                route.concurrency.map(|c| c as i64)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the route of a domain pattern, given in either spelling.
    pub fn remove_route(&mut self, domain: &str) -> Result<()> {
        let stored = self.same_route(domain)?;
        if stored.is_empty() {
            return Err(StoreError::Invalid(format!("no route for {domain}")));
        }
        let tx = self.conn.transaction()?;
        for d in stored {
            tx.execute("DELETE FROM routes WHERE domain = ?1", [d])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The stored route patterns that are `pattern` in one spelling or the
    /// other (`*.bücher.example`, `*.xn--bcher-kva.example`).
    fn same_route(&self, pattern: &str) -> Result<Vec<String>> {
        use crate::delivery::router::route_dns_form;
        let want = route_dns_form(pattern);
        let stored = query_strings(&self.conn, "SELECT domain FROM routes")?;
        Ok(stored
            .into_iter()
            .filter(|d| route_dns_form(d) == want)
            .collect())
    }

    // ----- quotas, bans, suspensions -----

    pub fn quotas(&self) -> Result<Vec<Quota>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, scope, unit, count, period_secs, suspend FROM quotas ORDER BY id",
        )?;
        let rows: Vec<(i64, String, String, i64, i64, bool)> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, scope, unit, count, period_secs, suspend)| {
                let corrupt = |what: &str| StoreError::Corrupt(format!("quota #{id}: {what}"));
                Ok(Quota {
                    id,
                    scope: QuotaScope::parse(&scope).map_err(|e| corrupt(&e))?,
                    unit: match unit.as_str() {
                        "recipients" => QuotaUnit::Recipients,
                        _ => QuotaUnit::Messages,
                    },
                    rate: Rate {
                        count: u64::try_from(count).map_err(|_| corrupt("count"))?,
                        period_secs: u64::try_from(period_secs).map_err(|_| corrupt("period"))?,
                    },
                    suspend,
                })
            })
            .collect()
    }

    /// Adds a quota; returns it with its number.
    pub fn add_quota(
        &mut self,
        scope: QuotaScope,
        unit: QuotaUnit,
        rate: Rate,
        suspend: bool,
    ) -> Result<Quota> {
        if suspend && scope != QuotaScope::Login {
            return Err(StoreError::Invalid(
                "--suspend suspends a login: it needs a login quota".into(),
            ));
        }
        let count = i64::try_from(rate.count)
            .map_err(|_| StoreError::Invalid(format!("{} is too large", rate.count)))?;
        self.conn.execute(
            "INSERT INTO quotas (scope, unit, count, period_secs, suspend) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![scope.spelling(), unit.as_str(), count, rate.period_secs as i64, suspend],
        )?;
        Ok(Quota {
            id: self.conn.last_insert_rowid(),
            scope,
            unit,
            rate,
            suspend,
        })
    }

    /// Removes a quota and its counts.
    pub fn remove_quota(&mut self, id: i64) -> Result<Quota> {
        let quota = self
            .quotas()?
            .into_iter()
            .find(|q| q.id == id)
            .ok_or_else(|| StoreError::Invalid(format!("no quota #{id} (see quota show)")))?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM quotas WHERE id = ?1", [id])?;
        tx.execute("DELETE FROM quota_counts WHERE quota_id = ?1", [id])?;
        tx.commit()?;
        Ok(quota)
    }

    /// The counts the engine saved last.
    pub fn quota_counts(&self) -> Result<Vec<(i64, String, SlidingCount)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT quota_id, key, window_start, previous, current FROM quota_counts")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                SlidingCount {
                    window_start: r.get::<_, i64>(2)?.max(0) as u64,
                    previous: r.get::<_, i64>(3)?.clamp(0, i64::from(u32::MAX)) as u32,
                    current: r.get::<_, i64>(4)?.clamp(0, i64::from(u32::MAX)) as u32,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Saves changed counts, drops spent ones, and saves new bans and
    /// suspensions: the engine's periodic write, one transaction.
    pub fn save_abuse_state(
        &mut self,
        counts: &[(i64, String, SlidingCount)],
        bans: &[Ban],
        suspensions: &[(String, String)],
        now_ms: u64,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO quota_counts (quota_id, key, window_start, previous, current)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM quotas WHERE id = ?1)
                 ON CONFLICT (quota_id, key) DO UPDATE SET window_start = excluded.window_start,
                   previous = excluded.previous, current = excluded.current",
            )?;
            for (id, key, c) in counts {
                put.execute(params![
                    id,
                    key,
                    c.window_start as i64,
                    i64::from(c.previous),
                    i64::from(c.current)
                ])?;
            }
            let mut ban = tx.prepare_cached(
                "INSERT INTO bans (net, since, until, strikes, reason) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (net) DO UPDATE SET since = excluded.since, until = excluded.until,
                   strikes = excluded.strikes, reason = excluded.reason",
            )?;
            for b in bans {
                let reason = serde_json::to_string(&b.reason)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                ban.execute(params![
                    b.net.to_string(),
                    b.since as i64,
                    b.until as i64,
                    i64::from(b.strikes),
                    reason
                ])?;
            }
            let mut suspend = tx.prepare_cached(
                "UPDATE users SET suspended = ?2 WHERE lower(name) = ?1 AND suspended IS NULL",
            )?;
            for (login, why) in suspensions {
                suspend.execute(params![login.to_ascii_lowercase(), why])?;
            }
        }
        // Counts whose two windows are over, and bans too old to count as
        // strikes, are forgotten.
        tx.execute(
            "DELETE FROM quota_counts WHERE window_start + 2 * 1000 *
               (SELECT period_secs FROM quotas WHERE id = quota_id) <= ?1
               OR quota_id NOT IN (SELECT id FROM quotas)",
            [now_ms as i64],
        )?;
        tx.execute(
            "DELETE FROM bans WHERE until + ?2 <= ?1",
            params![now_ms as i64, STRIKES_KEPT_MS as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every ban stored: in force, and ended ones kept for their strikes.
    pub fn bans(&self) -> Result<Vec<Ban>> {
        let mut stmt = self
            .conn
            .prepare("SELECT net, since, until, strikes, reason FROM bans ORDER BY since DESC")?;
        let rows: Vec<(String, i64, i64, i64, String)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(net, since, until, strikes, reason)| {
                Ok(Ban {
                    net: net
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("ban of {net:?}")))?,
                    since: since.max(0) as u64,
                    until: until.max(0) as u64,
                    strikes: strikes.clamp(0, i64::from(u32::MAX)) as u32,
                    reason: serde_json::from_str(&reason).unwrap_or(BanReason::Admin {
                        note: reason.clone(),
                    }),
                })
            })
            .collect()
    }

    /// Adds or replaces a ban by hand.
    pub fn put_ban(&mut self, ban: &Ban) -> Result<()> {
        self.save_abuse_state(&[], std::slice::from_ref(ban), &[], 0)
    }

    /// Lifts a ban (the address keeps no strike); false if there was none.
    pub fn remove_ban(&mut self, net: &ipnet::IpNet) -> Result<bool> {
        Ok(self
            .conn
            .execute("DELETE FROM bans WHERE net = ?1", [net.to_string()])?
            > 0)
    }

    /// Logins that may not authenticate now, lower-cased.
    pub fn suspended_logins(&self) -> Result<Vec<String>> {
        query_strings(
            &self.conn,
            "SELECT lower(name) FROM users WHERE suspended IS NOT NULL ORDER BY name",
        )
    }

    /// Suspends (with why) or lifts (None) a login's suspension. Lifting
    /// also clears the login's saved quota counts: it starts from zero.
    pub fn set_suspended(&mut self, name: &str, why: Option<&str>) -> Result<()> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE users SET suspended = ?2 WHERE name = ?1",
            params![name, why],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid(format!("no user {name}")));
        }
        if why.is_none() {
            tx.execute(
                "DELETE FROM quota_counts WHERE key = ?1",
                [format!("login:{}", name.to_ascii_lowercase())],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Local domains that have no route of their own: their mail is held.
    pub fn local_domains_without_route(&self) -> Result<Vec<String>> {
        let routes = self.routes()?;
        Ok(self
            .domains()?
            .into_iter()
            .filter(|d| {
                !matches!(
                    crate::delivery::router::next_hop(d, &routes, true),
                    crate::delivery::router::NextHop::Route(_)
                )
            })
            .collect())
    }
}

/// The policy configuration, read through a transaction the caller holds.
fn load_config_in(tx: &Connection) -> Result<PolicyConfig> {
    let mut config = PolicyConfig::default();
    {
        let mut stmt = tx.prepare("SELECT list, entry FROM ip_entries ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let list: String = row.get(0)?;
            let entry: String = row.get(1)?;
            if list == "allow" {
                config.allow.push(entry);
            } else {
                config.deny.push(entry);
            }
        }
    }
    config.local_domains = query_strings(tx, "SELECT name FROM local_domains ORDER BY name")?;
    config.users = tx
        .prepare("SELECT name, password_hash FROM users ORDER BY name")?
        .query_map([], |r| {
            Ok(Login {
                name: r.get(0)?,
                password_hash: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    config.sender_addresses = tx
        .prepare("SELECT login, address FROM sender_addresses ORDER BY login, address")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let settings: Vec<(String, String)> = tx
        .prepare("SELECT key, value FROM settings")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut specified = (None, None);
    for (key, value) in settings {
        match key.as_str() {
            "auth.mode" => {
                config.auth_mode = AuthMode::parse(&value)
                    .ok_or_else(|| StoreError::Corrupt(format!("auth.mode = {value:?}")))?
            }
            "auth.specified-user" => specified.0 = Some(value),
            "auth.specified-hash" => specified.1 = Some(value),
            k if SWITCH_KEYS.iter().any(|(s, _)| *s == k) => {
                let on =
                    parse_on_off(&value).map_err(|e| StoreError::Corrupt(format!("{k}: {e}")))?;
                config
                    .switches
                    .set(k, on)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            }
            _ => {}
        }
    }
    if let (Some(name), Some(password_hash)) = specified {
        config.specified = Some(Login {
            name,
            password_hash,
        });
    }
    config.rules = load_rules(tx)?;
    Ok(config)
}

/// What the engine runs on, read in one transaction ([`Store::engine_config`]).
#[derive(Debug)]
pub struct EngineConfig {
    pub policy: Policy,
    pub settings: ServerSettings,
    pub bindings: Vec<Binding>,
    pub routes: Vec<Route>,
    pub quotas: Vec<Quota>,
    /// In force and remembered (for their strikes).
    pub bans: Vec<Ban>,
    /// Logins that may not authenticate, lower-cased.
    pub suspended: Vec<String>,
    /// Bindings behind a load balancer, with its trusted addresses.
    pub proxied: HashMap<std::net::SocketAddr, Vec<ipnet::IpNet>>,
    pub dkim_keys: Vec<DkimKeyRow>,
}

/// A stored DKIM key.
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKeyRow {
    pub domain: String,
    pub selector: String,
    /// The RSA private key, PEM.
    pub pem: String,
}

impl std::fmt::Debug for DkimKeyRow {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeyRow")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// How trusted proxies are stored: `10.0.0.5/32,10.0.1.0/24`.
pub fn trusted_text(nets: &[ipnet::IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `10.0.0.5,10.0.1.0/24,::1`: the proxies a PROXY binding trusts (an
/// address alone is its /32 or /128).
pub fn parse_trusted_proxies(text: &str) -> std::result::Result<Vec<ipnet::IpNet>, String> {
    let nets: Vec<ipnet::IpNet> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<ipnet::IpNet>()
                .map(|n| n.trunc())
                .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("{t:?} is not an address or CIDR (like 10.0.0.5 or 10.0.0.0/24)")
                })
        })
        .collect::<std::result::Result<_, _>>()?;
    if nets.is_empty() {
        return Err("give at least one trusted proxy address or CIDR".into());
    }
    Ok(nets)
}

/// Whether this process may not write the file or its directory (root
/// may write anything; `access(2)` would need unsafe code).
fn is_read_only_file(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let uid = crate::control::access::own_uid();
    if uid == 0 {
        return false;
    }
    let writable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            let mode = m.mode();
            if m.uid() == uid {
                mode & 0o200 != 0
            } else {
                // Group or other: without the group list, be conservative.
                mode & 0o022 != 0
            }
        })
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    !writable(path) || !writable(dir)
}

/// A path as a `file:` URI path (percent-encoding what URIs reserve).
fn uri_path(path: &Path) -> String {
    let text = path.to_string_lossy();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

fn query_strings(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn load_rules(conn: &Connection) -> Result<Vec<Rule>> {
    let mut stmt = conn.prepare(
        "SELECT sender, recipient, destination, reject_text FROM rules ORDER BY position",
    )?;
    let rows: Vec<(String, String, String, Option<String>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    rows.iter()
        .map(|(s, r, d, t)| {
            Rule::new(s, r, d, t.as_deref()).map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .collect()
}

fn upsert_setting(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// A login name: 1 to 128 printable characters, no spaces.
pub fn check_login_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii())
    {
        return Err(StoreError::Invalid(format!(
            "invalid user name {name:?}: 1 to 128 printable characters, no spaces"
        )));
    }
    Ok(())
}

/// `local@domain` or `@domain`, lowercased.
fn normalize_owned_address(text: &str) -> Result<String> {
    let t = text.trim();
    if let Some(domain) = t.strip_prefix('@') {
        return normalize_domain(domain)
            .map(|d| format!("@{d}"))
            .map_err(|p| StoreError::Invalid(format!("invalid address {t:?}: {p}")));
    }
    parse_mailbox(t)
        .map(|a| a.key())
        .map_err(|e| StoreError::Invalid(e.to_string()))
}

#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}

#[cfg(unix)]
fn set_private_mode(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private_mode(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// An edit of one IP list: the entries it ends with, and the list it was
/// made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEdit {
    pub list: ListKind,
    /// The entries as stored when the edit began.
    pub base: Vec<String>,
    pub entries: Vec<ParsedEntry>,
}

/// A list as [`Store::save_list_edits`] saved it: how many entries it
/// holds, and what another process changed in it while it was edited
/// (kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedList {
    pub list: ListKind,
    pub entries: usize,
    /// Added elsewhere, and kept.
    pub added_elsewhere: Vec<String>,
    /// Removed elsewhere, and left out.
    pub removed_elsewhere: Vec<String>,
}

/// The list an edit saves as, as (entry, canonical) pairs, given the list
/// stored now: the stored list without what the edit removed from its
/// base, then what it added. When nothing changed underneath, simply the
/// edit.
fn merge_list_edit(
    edit: &ListEdit,
    current: &[(String, String)],
) -> (Vec<(String, String)>, SavedList) {
    use std::collections::HashSet;
    let edited: Vec<(String, String)> = edit
        .entries
        .iter()
        .map(|e| (e.text.clone(), e.pattern.canonical()))
        .collect();
    let mut elsewhere = SavedList {
        list: edit.list,
        entries: edited.len(),
        added_elsewhere: Vec::new(),
        removed_elsewhere: Vec::new(),
    };
    if current.iter().map(|(t, _)| t).eq(edit.base.iter()) {
        return (edited, elsewhere);
    }
    // The base came from the store: every entry parses. Parsed once, as
    // (entry, canonical) pairs like the others.
    let base_entries: Vec<(String, String)> =
        crate::policy::list_text::parse_list_text(&edit.base.join("\n"))
            .entries
            .into_iter()
            .map(|e| {
                let canonical = e.pattern.canonical();
                (e.text, canonical)
            })
            .collect();
    let base: HashSet<&str> = base_entries.iter().map(|(_, c)| c.as_str()).collect();
    let kept: HashSet<&str> = edited.iter().map(|(_, c)| c.as_str()).collect();
    let stored: HashSet<&str> = current.iter().map(|(_, c)| c.as_str()).collect();
    let mut out: Vec<(String, String)> = Vec::new();
    for (text, canonical) in current {
        let in_base = base.contains(canonical.as_str());
        if !in_base {
            elsewhere.added_elsewhere.push(text.clone());
        }
        // Removed by this edit: left out.
        if !in_base || kept.contains(canonical.as_str()) {
            out.push((text.clone(), canonical.clone()));
        }
    }
    for (text, canonical) in &edited {
        if !base.contains(canonical.as_str()) && !stored.contains(canonical.as_str()) {
            out.push((text.clone(), canonical.clone()));
        }
    }
    for (text, canonical) in &base_entries {
        if !stored.contains(canonical.as_str()) {
            elsewhere.removed_elsewhere.push(text.clone());
        }
    }
    elsewhere.entries = out.len();
    (out, elsewhere)
}

/// A login's sender addresses after [`Store::edit_sender_addresses`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedAddresses {
    pub now: Vec<String>,
    /// Added by another process while the form was open, and kept.
    pub added_elsewhere: Vec<String>,
    /// Removed by another process meanwhile, and left out.
    pub removed_elsewhere: Vec<String>,
}

/// Replaces a login's sender addresses within `tx` (a user's, or the
/// `specified` login's).
fn put_sender_addresses(
    tx: &rusqlite::Transaction,
    login: &str,
    addresses: &[String],
) -> Result<()> {
    {
        let is_user: bool = tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [login], |_| Ok(true))
            .optional()?
            .unwrap_or(false);
        let is_specified: bool = tx
            .query_row(
                "SELECT 1 FROM settings WHERE key = 'auth.specified-user' AND value = ?1",
                [login],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if !is_user && !is_specified {
            return Err(StoreError::Invalid(format!(
                "no user {login} (nor a specified login of that name)"
            )));
        }
        tx.execute("DELETE FROM sender_addresses WHERE login = ?1", [login])?;
        for a in addresses {
            tx.execute(
                "INSERT INTO sender_addresses (login, address) VALUES (?1, ?2)",
                [login, a],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::list_text::parse_list_text;

    fn edit(base: &[&str], edited: &[&str]) -> ListEdit {
        ListEdit {
            list: ListKind::Allow,
            base: base.iter().map(|s| s.to_string()).collect(),
            entries: parse_list_text(&edited.join("\n")).entries,
        }
    }

    fn stored(entries: &[&str]) -> Vec<(String, String)> {
        parse_list_text(&entries.join("\n"))
            .entries
            .into_iter()
            .map(|e| (e.text, e.pattern.canonical()))
            .collect()
    }

    fn texts(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(t, _)| t.as_str()).collect()
    }

    #[test]
    fn an_edit_keeps_what_changed_elsewhere_meanwhile() {
        // Nothing changed underneath: the edit as it is, in its order.
        let e = edit(&["10.0.0.1", "10.0.0.2"], &["10.0.0.2", "10.0.0.3"]);
        let (out, elsewhere) = merge_list_edit(&e, &stored(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(texts(&out), ["10.0.0.2", "10.0.0.3"]);
        assert!(elsewhere.added_elsewhere.is_empty() && elsewhere.removed_elsewhere.is_empty());
        // Another admin added .60 and removed .2 meanwhile; this edit
        // removed .1 and added .50: all four changes hold.
        let e = edit(&["10.0.0.1", "10.0.0.2"], &["10.0.0.2", "10.0.0.50"]);
        let (out, elsewhere) = merge_list_edit(&e, &stored(&["10.0.0.1", "10.0.0.60"]));
        assert_eq!(texts(&out), ["10.0.0.60", "10.0.0.50"]);
        assert_eq!(elsewhere.added_elsewhere, ["10.0.0.60"]);
        assert_eq!(elsewhere.removed_elsewhere, ["10.0.0.2"]);
        assert_eq!(elsewhere.entries, 2);
        // An entry both added (in another spelling) is kept once.
        let e = edit(&["10.0.0.1"], &["10.0.0.1", "10.0.0.0/24"]);
        let (out, _) = merge_list_edit(&e, &stored(&["10.0.0.1", "10.0.0.*"]));
        assert_eq!(texts(&out), ["10.0.0.1", "10.0.0.*"]);
    }
}
