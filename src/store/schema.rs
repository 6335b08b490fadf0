//! The database schema, versioned with `PRAGMA user_version`, and the safe
//! defaults a new database starts with.

use crate::policy::settings::{SWITCH_KEYS, Switches};
use rusqlite::Transaction;

/// `PRAGMA application_id` of a relaygate database ("RGAT").
pub const APPLICATION_ID: i32 = 0x5247_4154;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the relay policy and the listen bindings.
    "CREATE TABLE ip_entries (
        id INTEGER PRIMARY KEY,
        list TEXT NOT NULL CHECK (list IN ('allow', 'deny')),
        entry TEXT NOT NULL,
        canonical TEXT NOT NULL,
        UNIQUE (list, canonical)
    );
    CREATE TABLE local_domains (name TEXT PRIMARY KEY);
    CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL);
    CREATE TABLE sender_addresses (
        login TEXT NOT NULL,
        address TEXT NOT NULL,
        PRIMARY KEY (login, address)
    );
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rules (
        position INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        destination TEXT NOT NULL,
        reject_text TEXT
    );
    CREATE TABLE bindings (address TEXT PRIMARY KEY, kind TEXT NOT NULL);",
    // 2: delivery routes. A smarthost password must be sent, so it is kept
    // as given, in this file that only its owner can read (mode 0600), as
    // Postfix keeps sasl_passwd.
    "CREATE TABLE routes (
        domain TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        port INTEGER NOT NULL,
        tls TEXT NOT NULL CHECK (tls IN ('none', 'opportunistic', 'required')),
        auth_user TEXT,
        auth_password TEXT
    );",
    // 3: abuse containment. Quotas and bans are configuration; the quota
    // counts and the bans the engine makes are written by the engine
    // alone (its own writes do not trigger its reload). A suspended login
    // keeps its password; the column says why it may not log in.
    "CREATE TABLE quotas (
        id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL,
        unit TEXT NOT NULL CHECK (unit IN ('messages', 'recipients')),
        count INTEGER NOT NULL CHECK (count > 0),
        period_secs INTEGER NOT NULL CHECK (period_secs > 0),
        suspend INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE quota_counts (
        quota_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        window_start INTEGER NOT NULL,
        previous INTEGER NOT NULL,
        current INTEGER NOT NULL,
        PRIMARY KEY (quota_id, key)
    );
    CREATE TABLE bans (
        net TEXT PRIMARY KEY,
        since INTEGER NOT NULL,
        until INTEGER NOT NULL,
        strikes INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    ALTER TABLE users ADD COLUMN suspended TEXT;
    ALTER TABLE routes ADD COLUMN rate TEXT;
    ALTER TABLE routes ADD COLUMN concurrency INTEGER;",
    // 4: bindings behind a load balancer: the PROXY protocol is required
    // there, from these proxies only (comma-separated CIDRs).
    "CREATE TABLE proxy_bindings (address TEXT PRIMARY KEY, trusted TEXT NOT NULL);",
    // 5: DKIM signing keys, one per domain, kept as PEM in this owner-only
    // file (the key must be used, as the smarthost password must be sent).
    "CREATE TABLE dkim_keys (
        domain TEXT PRIMARY KEY,
        selector TEXT NOT NULL,
        private_key TEXT NOT NULL
    );",
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i32 = MIGRATIONS.len() as i32;

/// The allow list of a new database: loopback and the private ranges.
pub const DEFAULT_ALLOW: &[&str] = &[
    "127.0.0.0/8",
    "::1",
    "10.*.*.*",
    "172.16-31.*.*",
    "192.168.*.*",
];
/// The deny list of a new database: everything else, IPv4 and IPv6.
pub const DEFAULT_DENY: &[&str] = &["*.*.*.*", "::/0"];
/// The one binding of a new database: unprivileged, loopback only.
pub const DEFAULT_BINDING: (&str, &str) = ("127.0.0.1:2525", "smtp");

/// Brings the schema from `from` to the current version.
pub fn migrate(tx: &Transaction<'_>, from: i32) -> rusqlite::Result<()> {
    for sql in MIGRATIONS.iter().skip(from.max(0) as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", CURRENT_VERSION)?;
    Ok(())
}

/// Writes the safe defaults into a new database.
pub fn insert_defaults(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    use crate::policy::ip_pattern::IpPattern;
    for (list, entries) in [("allow", DEFAULT_ALLOW), ("deny", DEFAULT_DENY)] {
        for e in entries {
            let canonical = IpPattern::parse(e)
                .map(|p| p.canonical())
                .unwrap_or_else(|_| e.to_string());
            tx.execute(
                "INSERT INTO ip_entries (list, entry, canonical) VALUES (?1, ?2, ?3)",
                (list, e, canonical),
            )?;
        }
    }
    let switches = Switches::default();
    for (key, _) in SWITCH_KEYS {
        let on = switches.get(key).unwrap_or(false);
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)",
            (key, if on { "on" } else { "off" }),
        )?;
    }
    tx.execute(
        "INSERT INTO settings (key, value) VALUES ('auth.mode', 'any-user')",
        [],
    )?;
    tx.execute(
        "INSERT INTO bindings (address, kind) VALUES (?1, ?2)",
        DEFAULT_BINDING,
    )?;
    Ok(())
}
