//! The whole configuration as one versioned TOML document, for Git and
//! Ansible: `relaygate config export` writes it, `config apply` makes the
//! database equal to it in one transaction and says what changed.
//!
//! The document mirrors the configuration tables: lists, domains, users
//! (password hashes, never passwords), every setting (switches, auth mode,
//! engine settings), rules, routes (credentials included: the file is
//! written 0600), bindings (with their PROXY protocol trust), quotas and
//! DKIM keys (private keys included, as route credentials are).
//! Runtime state stays out: bans, quota counts and suspensions belong to
//! the node that made them, and applying a file keeps them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The version this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDoc {
    pub version: u32,
    #[serde(default)]
    pub domains: Vec<String>,
    /// Every row of the settings table: switches (`relay.auth = "on"`),
    /// the auth mode (`auth.*`) and engine settings (`hostname`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub lists: Lists,
    #[serde(default)]
    pub users: Vec<User>,
    /// Sender addresses of the `auth.specified-user` login when it is not
    /// also a user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub specified_addresses: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleRow>,
    #[serde(default)]
    pub routes: Vec<RouteRow>,
    #[serde(default)]
    pub bindings: Vec<BindingRow>,
    #[serde(default)]
    pub quotas: Vec<QuotaRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<DkimRow>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimRow {
    pub domain: String,
    pub selector: String,
    /// The RSA private key, PEM.
    pub private_key: String,
}

impl std::fmt::Debug for DkimRow {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimRow")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lists {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRow {
    pub sender: String,
    pub recipient: String,
    pub destination: String,
    /// The reject text; absent: the rule accepts and stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRow {
    pub domain: String,
    pub host: String,
    pub port: u16,
    pub tls: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindingRow {
    pub address: String,
    pub kind: String,
    /// Set: the PROXY protocol is required, from these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRow {
    pub id: i64,
    /// `login`, `ip/24`, `sender-domain`.
    pub key: String,
    /// `200/hour`.
    pub rate: String,
    /// `messages` or `recipients`.
    pub unit: String,
    #[serde(default)]
    pub suspend: bool,
}

/// Why a document was not read.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{0}")]
    Toml(String),
    #[error(
        "line {line}: version {found}: written by a newer relaygate (this one reads version {VERSION}); nothing was changed"
    )]
    Newer { found: u32, line: usize },
    #[error("line {line}: version {found} is not a relaygate configuration version")]
    BadVersion { found: u32, line: usize },
}

impl ConfigDoc {
    /// The document as TOML, with a header that says what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# relaygate configuration (relaygate config export); apply with: relaygate config apply FILE\n# Holds password hashes and route credentials: keep it private (0600).\n{body}"
        )
    }

    /// Reads a document; unknown keys and a newer version are refused,
    /// naming the line.
    pub fn parse(text: &str) -> Result<ConfigDoc, DocError> {
        // The version first, so a newer file is named as such rather than
        // by whatever key it added.
        let version_line = text
            .lines()
            .position(|l| l.trim_start().starts_with("version"))
            .map_or(1, |i| i + 1);
        if let Ok(v) = toml::from_str::<toml::Table>(text)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                toml::Value::Table(t)
                    .try_into::<VersionOnlyLoose>()
                    .map_err(|e| e.to_string())
            })
            && let Some(found) = v.version
        {
            if found > VERSION {
                return Err(DocError::Newer {
                    found,
                    line: version_line,
                });
            }
            if found == 0 {
                return Err(DocError::BadVersion {
                    found,
                    line: version_line,
                });
            }
        }
        toml::from_str(text).map_err(|e| DocError::Toml(e.to_string().trim_end().to_string()))
    }

    /// Puts every list in a stable order, so that export, apply, export
    /// writes the same file.
    pub fn normalized(mut self) -> ConfigDoc {
        self.domains.sort();
        self.users.sort_by(|a, b| a.name.cmp(&b.name));
        for u in &mut self.users {
            u.addresses.sort();
        }
        self.specified_addresses.sort();
        self.routes.sort_by(|a, b| a.domain.cmp(&b.domain));
        self.bindings.sort_by(|a, b| a.address.cmp(&b.address));
        self.quotas.sort_by_key(|q| q.id);
        self.dkim.sort_by(|a, b| a.domain.cmp(&b.domain));
        // Engine settings as the database keeps them ("5d" as 432000), so
        // that a file compares equal to what applying it stored.
        for (key, value) in &mut self.settings {
            let mut settings = crate::server_settings::ServerSettings::default();
            if crate::server_settings::ServerSettings::is_key(key)
                && settings.set(key, value).is_ok()
                && let Some(kept) = settings.get(key)
            {
                *value = kept;
            }
        }
        self
    }
}

/// Only the version, ignoring the rest.
#[derive(Deserialize)]
struct VersionOnlyLoose {
    version: Option<u32>,
}

/// What applying `new` over `old` changes, section by section; empty when
/// nothing does. A setting `new` leaves out takes its default
/// (`defaults`, as a new database has them): no change if it had it
/// already, else a change to the default.
pub fn diff(old: &ConfigDoc, new: &ConfigDoc, defaults: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut section =
        |name: &str, added: Vec<String>, removed: Vec<String>, changed: Vec<String>| {
            if added.is_empty() && removed.is_empty() && changed.is_empty() {
                return;
            }
            let _ = writeln!(out, "{name}:");
            for a in added {
                let _ = writeln!(out, "  + {a}");
            }
            for r in removed {
                let _ = writeln!(out, "  - {r}");
            }
            for c in changed {
                let _ = writeln!(out, "  ~ {c}");
            }
        };
    let set_diff = |a: &[String], b: &[String]| {
        let added = b.iter().filter(|x| !a.contains(x)).cloned().collect();
        let removed = a.iter().filter(|x| !b.contains(x)).cloned().collect();
        (added, removed)
    };
    let (add, rm) = set_diff(&old.lists.allow, &new.lists.allow);
    section("lists.allow", add, rm, Vec::new());
    let (add, rm) = set_diff(&old.lists.deny, &new.lists.deny);
    section("lists.deny", add, rm, Vec::new());
    let (add, rm) = set_diff(&old.domains, &new.domains);
    section("domains", add, rm, Vec::new());
    // Settings: by key.
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    let shown = |k: &str, v: &str| {
        if k.ends_with("-hash") {
            "(a password hash)".to_string()
        } else {
            format!("{v:?}")
        }
    };
    for (k, v) in &new.settings {
        match old.settings.get(k) {
            None => added.push(format!("{k} = {}", shown(k, v))),
            Some(o) if o != v => changed.push(format!("{k}: {} -> {}", shown(k, o), shown(k, v))),
            Some(_) => {}
        }
    }
    for (k, v) in &old.settings {
        if new.settings.contains_key(k) {
            continue;
        }
        match defaults.get(k) {
            Some(d) if d == v => {}
            Some(d) => changed.push(format!(
                "{k}: {} -> {} (the default)",
                shown(k, v),
                shown(k, d)
            )),
            None => removed.push(format!("{k} = {}", shown(k, v))),
        }
    }
    section("settings", added, removed, changed);
    // Keyed rows.
    fn keyed<T: PartialEq>(
        old: &[T],
        new: &[T],
        key: impl Fn(&T) -> String,
        what: impl Fn(&T, &T) -> String,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for n in new {
            match old.iter().find(|o| key(o) == key(n)) {
                None => added.push(key(n)),
                Some(o) if o != n => changed.push(format!("{}: {}", key(n), what(o, n))),
                Some(_) => {}
            }
        }
        let removed = old
            .iter()
            .filter(|o| !new.iter().any(|n| key(n) == key(o)))
            .map(&key)
            .collect();
        (added, removed, changed)
    }
    let (a, r, c) = keyed(
        &old.users,
        &new.users,
        |u| u.name.clone(),
        |o, n| {
            let mut what = Vec::new();
            if o.password_hash != n.password_hash {
                what.push("password".to_string());
            }
            if o.addresses != n.addresses {
                what.push(format!("addresses {:?} -> {:?}", o.addresses, n.addresses));
            }
            what.join(", ")
        },
    );
    section("users", a, r, c);
    let (add, rm) = set_diff(&old.specified_addresses, &new.specified_addresses);
    section("specified_addresses", add, rm, Vec::new());
    let (a, r, c) = keyed(
        &old.routes,
        &new.routes,
        |r| r.domain.clone(),
        |o, n| {
            if o.password != n.password && o.host == n.host && o.port == n.port {
                "credentials".to_string()
            } else {
                format!("{}:{} -> {}:{}", o.host, o.port, n.host, n.port)
            }
        },
    );
    section("routes", a, r, c);
    let (a, r, c) = keyed(
        &old.dkim,
        &new.dkim,
        |k| k.domain.clone(),
        |o, n| {
            if o.selector == n.selector {
                "key".to_string()
            } else {
                format!("selector {} -> {}", o.selector, n.selector)
            }
        },
    );
    section("dkim", a, r, c);
    let (a, r, c) = keyed(
        &old.bindings,
        &new.bindings,
        |b| b.address.clone(),
        |o, n| {
            format!(
                "{} {:?} -> {} {:?}",
                o.kind, o.trusted_proxies, n.kind, n.trusted_proxies
            )
        },
    );
    section("bindings", a, r, c);
    let (a, r, c) = keyed(
        &old.quotas,
        &new.quotas,
        |q| format!("#{}", q.id),
        |o, n| {
            format!(
                "{} {} {} -> {} {} {}",
                o.key, o.rate, o.unit, n.key, n.rate, n.unit
            )
        },
    );
    // Added and removed quotas are said whole, not by number alone.
    let whole = |rows: &[QuotaRow], key: String| {
        rows.iter()
            .find(|q| format!("#{}", q.id) == key)
            .map_or(key.clone(), |q| {
                format!(
                    "{key}: {} {} {}{}",
                    q.key,
                    q.rate,
                    q.unit,
                    if q.suspend { " (suspends)" } else { "" }
                )
            })
    };
    let a = a.into_iter().map(|k| whole(&new.quotas, k)).collect();
    let r = r.into_iter().map(|k| whole(&old.quotas, k)).collect();
    section("quotas", a, r, c);
    if old.rules != new.rules {
        let show = |r: &RuleRow| {
            format!(
                "sender {} recipient {} destination {} {}",
                r.sender,
                r.recipient,
                r.destination,
                r.reject
                    .as_ref()
                    .map_or("accept".to_string(), |t| format!("reject {t:?}"))
            )
        };
        section(
            "rules (replaced in order)",
            new.rules.iter().map(show).collect(),
            old.rules.iter().map(show).collect(),
            Vec::new(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> ConfigDoc {
        ConfigDoc {
            version: VERSION,
            domains: vec!["example.com".into()],
            settings: [("hostname".to_string(), "gw.example.com".to_string())].into(),
            lists: Lists {
                allow: vec!["10.0.0.0/8".into()],
                deny: vec!["*.*.*.*".into()],
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_document_reads_back_the_same() {
        let d = doc();
        assert_eq!(ConfigDoc::parse(&d.to_toml()).unwrap(), d);
    }

    #[test]
    fn unknown_keys_and_newer_versions_are_named_with_their_line() {
        let text = doc()
            .to_toml()
            .replace("version = 1", "version = 1\ncolour = \"blue\"");
        let e = ConfigDoc::parse(&text).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("colour"), "{e}");
        let text = doc().to_toml().replace("version = 1", "version = 2");
        let e = ConfigDoc::parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("line 3: version 2: written by a newer relaygate"),
            "{e}"
        );
        let e = ConfigDoc::parse("version = 1\n[lists]\nallowed = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("allowed"), "{e}");
    }

    #[test]
    fn the_difference_is_said_section_by_section() {
        let old = doc();
        let mut new = doc();
        new.lists.allow.push("192.168.0.0/16".into());
        new.domains.clear();
        new.settings
            .insert("hostname".into(), "mx.example.com".into());
        let none = BTreeMap::new();
        let d = diff(&old, &new, &none);
        assert!(d.contains("lists.allow:\n  + 192.168.0.0/16"), "{d}");
        assert!(d.contains("domains:\n  - example.com"), "{d}");
        assert!(
            d.contains("settings:\n  ~ hostname: \"gw.example.com\" -> \"mx.example.com\""),
            "{d}"
        );
        assert_eq!(diff(&old, &old, &none), "");
        // Left out: the default, said only where it changes something.
        let mut old = doc();
        old.settings.insert("relay.listed-ip".into(), "on".into());
        old.settings.insert("max-recipients".into(), "50".into());
        let mut new = old.clone();
        new.settings.clear();
        let defaults: BTreeMap<String, String> = [
            ("relay.listed-ip".to_string(), "on".to_string()),
            ("max-recipients".to_string(), "100".to_string()),
        ]
        .into();
        let d = diff(&old, &new, &defaults);
        assert!(!d.contains("relay.listed-ip"), "{d}");
        assert!(
            d.contains("~ max-recipients: \"50\" -> \"100\" (the default)"),
            "{d}"
        );
        assert!(d.contains("- hostname = \"gw.example.com\""), "{d}");
    }
}
