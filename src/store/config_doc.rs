//! The configuration tables to and from a [`ConfigDoc`]: `config export`
//! reads them in one read transaction, `config apply` replaces them in one
//! write transaction, validated and compiled before it commits.

use super::{Result, Store, StoreError, check_login_name, load_config_in, normalize_owned_address};
use crate::config_file::{
    BindingRow, ConfigDoc, DkimRow, Lists, QuotaRow, RouteRow, RuleRow, User, VERSION,
};
use crate::policy::Policy;
use crate::policy::settings::SWITCH_KEYS;
use crate::server_settings::ServerSettings;
use rusqlite::{Connection, params};
use std::collections::HashMap;

const AUTH_KEYS: &[&str] = &["auth.mode", "auth.specified-user", "auth.specified-hash"];

impl Store {
    /// The whole configuration, as one consistent read.
    pub fn export_config(&mut self) -> Result<ConfigDoc> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let read = read_doc(&self.conn);
        let end = self.conn.execute_batch("COMMIT");
        let doc = read?;
        end?;
        Ok(doc.normalized())
    }

    /// Makes the configuration equal to `doc`, in one transaction: nothing
    /// is written unless all of it is valid and compiles. Bans, quota
    /// counts and suspensions (a node's own state) are kept.
    pub fn apply_config(&mut self, doc: &ConfigDoc) -> Result<()> {
        if doc.version != VERSION {
            return Err(StoreError::Invalid(format!(
                "version {} (this relaygate reads version {VERSION})",
                doc.version
            )));
        }
        let tx = self.conn.transaction()?;
        write_doc(&tx, doc)?;
        // What the engine would load, checked before the commit.
        let config = load_config_in(&tx)?;
        Policy::compile(&config).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.commit()?;
        Ok(())
    }
}

fn strings(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    super::query_strings(conn, sql)
}

fn read_doc(conn: &Connection) -> Result<ConfigDoc> {
    let list = |name: &str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare("SELECT entry FROM ip_entries WHERE list = ?1 ORDER BY id")?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let lists = Lists {
        allow: list("allow")?,
        deny: list("deny")?,
    };
    let domains = strings(conn, "SELECT name FROM local_domains ORDER BY name")?;
    let settings = conn
        .prepare("SELECT key, value FROM settings ORDER BY key")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut addresses: HashMap<String, Vec<String>> = HashMap::new();
    for row in conn
        .prepare("SELECT login, address FROM sender_addresses ORDER BY login, address")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
    {
        let (login, address) = row?;
        addresses.entry(login).or_default().push(address);
    }
    let mut users: Vec<User> = conn
        .prepare("SELECT name, password_hash FROM users ORDER BY name")?
        .query_map([], |r| {
            Ok(User {
                name: r.get(0)?,
                password_hash: r.get(1)?,
                addresses: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    for u in &mut users {
        u.addresses = addresses.remove(&u.name).unwrap_or_default();
    }
    let specified: Option<String> = conn
        .query_row(
            "SELECT value FROM settings WHERE key = 'auth.specified-user'",
            [],
            |r| r.get(0),
        )
        .ok();
    let specified_addresses = specified
        .and_then(|s| addresses.remove(&s))
        .unwrap_or_default();
    let rules = conn
        .prepare("SELECT sender, recipient, destination, reject_text FROM rules ORDER BY position")?
        .query_map([], |r| {
            Ok(RuleRow {
                sender: r.get(0)?,
                recipient: r.get(1)?,
                destination: r.get(2)?,
                reject: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let routes = conn
        .prepare(
            "SELECT domain, host, port, tls, auth_user, auth_password, rate, concurrency FROM routes ORDER BY domain",
        )?
        .query_map([], |r| {
            Ok(RouteRow {
                domain: r.get(0)?,
                host: r.get(1)?,
                port: r.get::<_, i64>(2)?.clamp(0, 65_535) as u16,
                tls: r.get(3)?,
                user: r.get(4)?,
                password: r.get(5)?,
                rate: r.get(6)?,
                concurrency: r.get::<_, Option<i64>>(7)?.map(|c| c.clamp(1, i64::from(u32::MAX)) as u32),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let proxied: HashMap<String, String> = conn
        .prepare("SELECT address, trusted FROM proxy_bindings")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let bindings = conn
        .prepare("SELECT address, kind FROM bindings ORDER BY address")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .into_iter()
        .map(|(address, kind)| BindingRow {
            trusted_proxies: proxied
                .get(&address)
                .map(|t| t.split(',').map(str::to_string).collect()),
            address,
            kind,
        })
        .collect();
    let quotas = conn
        .prepare("SELECT id, scope, unit, count, period_secs, suspend FROM quotas ORDER BY id")?
        .query_map([], |r| {
            let count: i64 = r.get(3)?;
            let period: i64 = r.get(4)?;
            Ok(QuotaRow {
                id: r.get(0)?,
                key: r.get(1)?,
                unit: r.get(2)?,
                rate: crate::abuse::rate::Rate {
                    count: count.max(1) as u64,
                    period_secs: period.max(1) as u64,
                }
                .to_string(),
                suspend: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let dkim = conn
        .prepare("SELECT domain, selector, private_key FROM dkim_keys ORDER BY domain")?
        .query_map([], |r| {
            Ok(DkimRow {
                domain: r.get(0)?,
                selector: r.get(1)?,
                private_key: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ConfigDoc {
        version: VERSION,
        dkim,
        domains,
        settings,
        lists,
        users,
        specified_addresses,
        rules,
        routes,
        bindings,
        quotas,
    })
}

fn invalid(section: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("{section}: {what}"))
}

fn write_doc(tx: &Connection, doc: &ConfigDoc) -> Result<()> {
    use crate::policy::ip_pattern::IpPattern;
    let suspended: HashMap<String, String> = tx
        .prepare("SELECT name, suspended FROM users WHERE suspended IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    tx.execute_batch(
        "DELETE FROM ip_entries; DELETE FROM local_domains; DELETE FROM sender_addresses;
         DELETE FROM users; DELETE FROM settings; DELETE FROM rules; DELETE FROM bindings;
         DELETE FROM proxy_bindings; DELETE FROM routes; DELETE FROM quotas;
         DELETE FROM dkim_keys;",
    )?;
    for (list, entries) in [("allow", &doc.lists.allow), ("deny", &doc.lists.deny)] {
        for e in entries {
            let canonical = IpPattern::parse(e)
                .map_err(|p| invalid(&format!("lists.{list}"), format!("{e:?}: {p}")))?
                .canonical();
            tx.execute(
                "INSERT OR IGNORE INTO ip_entries (list, entry, canonical) VALUES (?1, ?2, ?3)",
                (list, e, canonical),
            )?;
        }
    }
    // One domain's two spellings are one local domain: given twice, the
    // file says something other than what it means.
    let mut local = std::collections::HashSet::new();
    for d in &doc.domains {
        let name = crate::policy::address::normalize_domain(d)
            .map_err(|p| invalid("domains", format!("{d:?}: {p}")))?;
        if !local.insert(crate::policy::address::dns_form(&name).into_owned()) {
            return Err(invalid(
                "domains",
                format!("{name}: the domain is listed already (in another spelling)"),
            ));
        }
        tx.execute(
            "INSERT OR IGNORE INTO local_domains (name) VALUES (?1)",
            [name],
        )?;
    }
    for (key, value) in &doc.settings {
        let mut value = value.clone();
        if SWITCH_KEYS.iter().any(|(k, _)| k == key) {
            crate::policy::settings::parse_on_off(&value)
                .map_err(|e| invalid("settings", format!("{key}: {e}")))?;
        } else if ServerSettings::is_key(key) {
            // Kept as `policy set` keeps it ("5d" as 432000).
            let mut settings = ServerSettings::default();
            settings
                .set(key, &value)
                .map_err(|e| invalid("settings", e))?;
            value = settings.get(key).unwrap_or(value);
        } else if !AUTH_KEYS.contains(&key.as_str()) {
            return Err(invalid("settings", format!("unknown setting {key:?}")));
        }
        tx.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)",
            (key, &value),
        )?;
    }
    for u in &doc.users {
        check_login_name(&u.name).map_err(|e| invalid("users", e))?;
        if !u.password_hash.starts_with("$argon2") {
            return Err(invalid(
                "users",
                format!("{}: password_hash is not an argon2 hash", u.name),
            ));
        }
        tx.execute(
            "INSERT INTO users (name, password_hash, suspended) VALUES (?1, ?2, ?3)",
            params![u.name, u.password_hash, suspended.get(&u.name)],
        )
        .map_err(|e| invalid("users", format!("{}: {e}", u.name)))?;
        for a in &u.addresses {
            let a = normalize_owned_address(a).map_err(|e| invalid("users", e))?;
            tx.execute(
                "INSERT OR IGNORE INTO sender_addresses (login, address) VALUES (?1, ?2)",
                (&u.name, a),
            )?;
        }
    }
    if !doc.specified_addresses.is_empty() {
        let login = doc
            .settings
            .get("auth.specified-user")
            .ok_or_else(|| invalid("specified_addresses", "no auth.specified-user in settings"))?;
        for a in &doc.specified_addresses {
            let a = normalize_owned_address(a).map_err(|e| invalid("specified_addresses", e))?;
            tx.execute(
                "INSERT OR IGNORE INTO sender_addresses (login, address) VALUES (?1, ?2)",
                (login, a),
            )?;
        }
    }
    for (i, r) in doc.rules.iter().enumerate() {
        for pattern in [&r.sender, &r.recipient] {
            if let Some(why) = crate::policy::rules::unmatchable_domain(pattern) {
                return Err(invalid("rules", why));
            }
        }
        tx.execute(
            "INSERT INTO rules (position, sender, recipient, destination, reject_text) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![i as i64 + 1, r.sender, r.recipient, r.destination, r.reject],
        )?;
    }
    // One domain's two spellings (`bücher.example`, `xn--bcher-kva.example`)
    // are one route: given twice, which one routes would be a guess.
    let mut routed = std::collections::HashSet::new();
    for r in &doc.routes {
        let domain = crate::delivery::router::normalize_route_domain(&r.domain)
            .map_err(|e| invalid("routes", e))?;
        if !routed.insert(crate::delivery::router::route_dns_form(&domain)) {
            return Err(invalid(
                "routes",
                format!("{domain}: the domain has a route already"),
            ));
        }
        crate::delivery::TlsMode::parse(&r.tls)
            .ok_or_else(|| invalid("routes", format!("{domain}: tls {:?}", r.tls)))?;
        if r.host.trim().is_empty() || r.port == 0 {
            return Err(invalid("routes", format!("{domain}: no host or port")));
        }
        if let Some(rate) = &r.rate {
            crate::abuse::rate::Rate::parse(rate).map_err(|e| invalid("routes", e))?;
        }
        if r.user.is_some() != r.password.is_some() {
            return Err(invalid(
                "routes",
                format!("{domain}: user and password go together"),
            ));
        }
        tx.execute(
            "INSERT INTO routes (domain, host, port, tls, auth_user, auth_password, rate, concurrency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![domain, r.host, r.port, r.tls, r.user, r.password, r.rate, r.concurrency],
        )
        .map_err(|e| invalid("routes", format!("{domain}: {e}")))?;
    }
    for k in &doc.dkim {
        let domain = crate::policy::address::normalize_domain(&k.domain)
            .map_err(|e| invalid("dkim", format!("{:?}: {e}", k.domain)))?;
        // Kept in its DNS form, as `dkim add` keeps it.
        let domain = crate::policy::address::ascii_domain(&domain)
            .ok_or_else(|| invalid("dkim", format!("{domain:?} is not a DNS name")))?;
        crate::dkim::DkimKey::from_pem(&k.private_key)
            .map_err(|e| invalid("dkim", format!("{domain}: {e}")))?;
        if !crate::dkim::valid_selector(&k.selector.to_ascii_lowercase()) {
            return Err(invalid(
                "dkim",
                format!("{domain}: selector {:?} is not DNS labels", k.selector),
            ));
        }
        tx.execute(
            "INSERT INTO dkim_keys (domain, selector, private_key) VALUES (?1, ?2, ?3)",
            params![domain, k.selector.to_ascii_lowercase(), k.private_key],
        )
        .map_err(|e| invalid("dkim", format!("{domain}: {e}")))?;
    }
    for b in &doc.bindings {
        let addr =
            crate::bindings::parse_listen_addr(&b.address).map_err(|e| invalid("bindings", e))?;
        let kind = crate::bindings::BindKind::parse(&b.kind)
            .ok_or_else(|| invalid("bindings", format!("{addr}: kind {:?}", b.kind)))?;
        tx.execute(
            "INSERT INTO bindings (address, kind) VALUES (?1, ?2)",
            (addr.to_string(), kind.as_str()),
        )
        .map_err(|e| invalid("bindings", format!("{addr}: {e}")))?;
        if let Some(trusted) = &b.trusted_proxies {
            let nets = super::parse_trusted_proxies(&trusted.join(","))
                .map_err(|e| invalid("bindings", format!("{addr}: {e}")))?;
            let text = super::trusted_text(&nets);
            tx.execute(
                "INSERT INTO proxy_bindings (address, trusted) VALUES (?1, ?2)",
                (addr.to_string(), text),
            )?;
        }
    }
    for q in &doc.quotas {
        let scope =
            crate::abuse::quota::QuotaScope::parse(&q.key).map_err(|e| invalid("quotas", e))?;
        let rate = crate::abuse::rate::Rate::parse(&q.rate).map_err(|e| invalid("quotas", e))?;
        if !matches!(q.unit.as_str(), "messages" | "recipients") {
            return Err(invalid("quotas", format!("#{}: unit {:?}", q.id, q.unit)));
        }
        if q.suspend && scope != crate::abuse::quota::QuotaScope::Login {
            return Err(invalid(
                "quotas",
                format!("#{}: suspend needs a login quota", q.id),
            ));
        }
        tx.execute(
            "INSERT INTO quotas (id, scope, unit, count, period_secs, suspend) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![q.id, scope.spelling(), q.unit, rate.count as i64, rate.period_secs as i64, q.suspend],
        )
        .map_err(|e| invalid("quotas", format!("#{}: {e}", q.id)))?;
    }
    // The engine settings as a whole (each was checked alone above).
    let mut settings = ServerSettings::default();
    for (k, v) in &doc.settings {
        if ServerSettings::is_key(k) {
            settings.set(k, v).map_err(|e| invalid("settings", e))?;
        }
    }
    Ok(())
}
