//! Automatic bans: an address that fails AUTH too often, or keeps trying
//! recipients it may not relay to, is refused at connect for a while;
//! each ban of the same address lasts twice as long as the one before, up
//! to a cap. Administrators add and lift bans by hand too (any prefix).
//!
//! Checked for every connection, so the common case (no ban at all) is
//! one atomic load; a lookup is a hash of the client's key plus a scan of
//! the few hand-made prefix bans.

use ipnet::IpNet;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// When bans happen, from the engine settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanRules {
    /// Failed AUTH attempts in the window that ban (0: never).
    pub auth_failures: u32,
    /// Refused relay recipients in the window that ban (0: never).
    pub relay_denials: u32,
    pub window_secs: u64,
    /// The first ban's length; each next one doubles.
    pub first_secs: u64,
    pub max_secs: u64,
    /// Clients on the allow list may be banned too.
    pub listed_too: bool,
}

impl BanRules {
    pub fn enabled(&self) -> bool {
        self.auth_failures > 0 || self.relay_denials > 0
    }

    /// How long the ban after `strikes` earlier ones lasts.
    pub fn length_secs(&self, strikes: u32) -> u64 {
        self.first_secs
            .saturating_mul(1u64 << strikes.min(40))
            .min(self.max_secs.max(self.first_secs))
    }
}

/// What an address did to be banned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BanReason {
    AuthFailures {
        count: u32,
        window_secs: u64,
    },
    RelayDenials {
        count: u32,
        window_secs: u64,
    },
    /// Added with `ban add` or in the console.
    Admin {
        note: String,
    },
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanReason::AuthFailures { count, window_secs } => write!(
                f,
                "{count} failed logins in {}",
                super::rate::period_text(*window_secs)
            ),
            BanReason::RelayDenials { count, window_secs } => write!(
                f,
                "{count} refused relay recipients in {}",
                super::rate::period_text(*window_secs)
            ),
            BanReason::Admin { note } if note.is_empty() => {
                f.write_str("banned by the administrator")
            }
            BanReason::Admin { note } => write!(f, "banned by the administrator: {note}"),
        }
    }
}

/// One ban, in force or remembered for its strikes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    pub net: IpNet,
    /// ms since the epoch.
    pub since: u64,
    pub until: u64,
    /// Bans of this address so far, this one included.
    pub strikes: u32,
    pub reason: BanReason,
}

impl Ban {
    pub fn active(&self, now: u64) -> bool {
        now < self.until
    }
}

/// A ban remembered this long after it ends still counts as a strike.
pub const STRIKES_KEPT_MS: u64 = 30 * 86_400 * 1000;

/// The key an address is counted and banned under: IPv4 /32, IPv6 /64.
pub fn ban_net(ip: IpAddr) -> IpNet {
    match crate::engine::client_key(ip) {
        IpAddr::V4(a) => IpNet::new(IpAddr::V4(a), 32),
        IpAddr::V6(a) => IpNet::new(IpAddr::V6(a), 64),
    }
    .unwrap_or_else(|_| IpNet::from(ip))
}

/// An address (banned as its /32 or /64) or a prefix, as an
/// administrator types it.
pub fn parse_ban_net(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(ban_net(ip));
    }
    let net = t.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        format!("{t:?} is not an address or prefix (like 203.0.113.7 or 198.51.100.0/24)")
    })?;
    // An IPv4-mapped range is that IPv4 range: clients are looked up by
    // their IPv4 address.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).map_err(|e| e.to_string());
    }
    Ok(net)
}

/// A ban by hand (`ban add`, the console): for `time` (`90m`, `12h`,
/// `7d`, `forever`), with a note; one more strike than the address had.
/// The longest note an administrator may give a ban or a suspension:
/// it is shown in the console, `ban show` and `user show`, and said in
/// SMTP replies (cut there to one line).
pub const MAX_NOTE: usize = 200;

/// A note for a ban or a suspension: one line of text of at most
/// [`MAX_NOTE`] characters, without control characters (a terminal
/// escape in a note would be played by every console that shows it).
pub fn check_note(note: &str) -> Result<(), String> {
    if crate::events::has_control(note) {
        return Err("the note has a control character (a line break, a tab, an escape)".into());
    }
    if note.chars().count() > MAX_NOTE {
        return Err(format!("the note is longer than {MAX_NOTE} characters"));
    }
    Ok(())
}

pub fn manual_ban(
    net: &str,
    time: &str,
    note: &str,
    stored: &[Ban],
    now: u64,
) -> Result<Ban, String> {
    let net = parse_ban_net(net)?;
    check_note(note)?;
    let until = if time.trim().eq_ignore_ascii_case("forever") {
        u64::MAX / 4
    } else {
        let secs = crate::queue_admin::age_secs(time)?;
        if secs <= 0 {
            return Err("the ban's time must be longer than 0".into());
        }
        now.saturating_add((secs as u64).saturating_mul(1000))
    };
    let strikes = stored
        .iter()
        .find(|b| b.net == net)
        .map_or(0, |b| b.strikes);
    Ok(Ban {
        net,
        since: now,
        until,
        strikes: strikes + 1,
        reason: BanReason::Admin {
            note: note.trim().to_string(),
        },
    })
}

/// `2026-11-26T19:00:00Z (in 3h 20m)`, `forever`, `ended 2d ago`.
pub fn until_text(until: u64, now: u64) -> String {
    let span = |ms: u64| {
        let s = ms / 1000;
        match s {
            s if s >= 86_400 * 365 * 50 => "forever".to_string(),
            s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
            s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
            s if s >= 60 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    };
    if until > now {
        let left = span(until - now);
        if left == "forever" {
            left
        } else {
            format!("{} (in {left})", crate::events::utc_text(until))
        }
    } else {
        format!("ended {} ago", span(now - until))
    }
}

/// Recent offences of one address.
#[derive(Debug, Default, Clone)]
struct Offences {
    auth: Vec<u64>,
    relay: Vec<u64>,
}

/// Bans in force (and remembered), and the offences that lead to them.
#[derive(Debug, Default)]
pub struct BanTable {
    /// Per client key (a /32 or /64).
    by_client: HashMap<IpNet, Ban>,
    /// Bans of other prefixes (added by hand).
    prefixes: Vec<Ban>,
    offences: HashMap<IpNet, Offences>,
    /// Bans added or changed here and not yet saved.
    unsaved: Vec<Ban>,
}

/// The most client bans kept (in force or remembered for their strikes):
/// an attacker rotating IPv6 /64s cannot grow the table without bound.
pub const BANS_KEPT: usize = 200_000;

/// The most addresses whose offences are remembered.
const OFFENDERS_KEPT: usize = 100_000;

impl BanTable {
    /// The ban refusing this address now, if any.
    pub fn banned(&self, ip: IpAddr, now: u64) -> Option<&Ban> {
        let net = ban_net(ip);
        if let Some(b) = self.by_client.get(&net).filter(|b| b.active(now)) {
            return Some(b);
        }
        let ip = crate::policy::ip_pattern::effective_ip(ip);
        self.prefixes
            .iter()
            .find(|b| b.active(now) && b.net.contains(&ip))
    }

    /// The latest moment any ban ends (0: none in force), for the
    /// engine's one-load fast path.
    pub fn last_until(&self) -> u64 {
        self.by_client
            .values()
            .chain(self.prefixes.iter())
            .map(|b| b.until)
            .max()
            .unwrap_or(0)
    }

    /// Records a failed AUTH; the ban it causes, if any.
    pub fn auth_failed(&mut self, ip: IpAddr, rules: &BanRules, now: u64) -> Option<Ban> {
        self.offence(ip, rules, now, true)
    }

    /// Records a refused relay recipient; the ban it causes, if any.
    pub fn relay_denied(&mut self, ip: IpAddr, rules: &BanRules, now: u64) -> Option<Ban> {
        self.offence(ip, rules, now, false)
    }

    fn offence(&mut self, ip: IpAddr, rules: &BanRules, now: u64, auth: bool) -> Option<Ban> {
        let limit = if auth {
            rules.auth_failures
        } else {
            rules.relay_denials
        };
        if limit == 0 {
            return None;
        }
        let net = ban_net(ip);
        if self.by_client.get(&net).is_some_and(|b| b.active(now)) {
            return None;
        }
        let window = rules.window_secs.saturating_mul(1000);
        if self.offences.len() >= OFFENDERS_KEPT && !self.offences.contains_key(&net) {
            self.offences.retain(|_, o| {
                o.auth
                    .iter()
                    .chain(o.relay.iter())
                    .any(|t| now.saturating_sub(*t) < window)
            });
            if self.offences.len() >= OFFENDERS_KEPT {
                // Still full: the newest offender is remembered, not the
                // oldest ones (who may come back).
                return None;
            }
        }
        let o = self.offences.entry(net).or_default();
        let times = if auth { &mut o.auth } else { &mut o.relay };
        times.retain(|t| now.saturating_sub(*t) < window);
        times.push(now);
        if (times.len() as u32) < limit {
            return None;
        }
        let count = times.len() as u32;
        self.offences.remove(&net);
        let reason = if auth {
            BanReason::AuthFailures {
                count,
                window_secs: rules.window_secs,
            }
        } else {
            BanReason::RelayDenials {
                count,
                window_secs: rules.window_secs,
            }
        };
        let strikes = self
            .by_client
            .get(&net)
            .filter(|b| now.saturating_sub(b.until) < STRIKES_KEPT_MS)
            .map_or(0, |b| b.strikes);
        let ban = Ban {
            net,
            since: now,
            until: now.saturating_add(rules.length_secs(strikes).saturating_mul(1000)),
            strikes: strikes + 1,
            reason,
        };
        self.put(ban.clone());
        Some(ban)
    }

    /// Adds (or replaces) a ban.
    pub fn put(&mut self, ban: Ban) {
        self.unsaved.push(ban.clone());
        self.insert(ban);
    }

    fn insert(&mut self, ban: Ban) {
        if self.by_client.len() >= BANS_KEPT && !self.by_client.contains_key(&ban.net) {
            // Ended bans (kept for their strikes) go first, then the one
            // that would end soonest.
            let now = ban.since;
            self.by_client.retain(|_, b| b.active(now));
            if self.by_client.len() >= BANS_KEPT
                && let Some(soonest) = self
                    .by_client
                    .values()
                    .min_by_key(|b| b.until)
                    .map(|b| b.net)
            {
                self.by_client.remove(&soonest);
            }
        }
        let is_client = ban.net == ban_net(ban.net.addr()) && ban.net.addr() == ban.net.network();
        if is_client {
            self.by_client.insert(ban.net, ban);
        } else {
            self.prefixes.retain(|b| b.net != ban.net);
            self.prefixes.push(ban);
        }
    }

    /// Replaces every ban with those stored (the database changed: a ban
    /// added or lifted by hand), keeping the ones made here and not yet
    /// saved.
    pub fn replace(&mut self, stored: Vec<Ban>) {
        self.by_client.clear();
        self.prefixes.clear();
        for b in stored {
            self.insert(b);
        }
        for b in self.unsaved.clone() {
            self.insert(b);
        }
    }

    /// Bans made here since the last call, to save.
    pub fn take_unsaved(&mut self) -> Vec<Ban> {
        std::mem::take(&mut self.unsaved)
    }

    /// Bans whose save failed: saved again next time.
    pub fn unsaved_again(&mut self, bans: Vec<Ban>) {
        self.unsaved.extend(bans);
    }

    /// Every ban in force now, newest first.
    pub fn in_force(&self, now: u64) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .by_client
            .values()
            .chain(self.prefixes.iter())
            .filter(|b| b.active(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.since.cmp(&a.since).then_with(|| a.net.cmp(&b.net)));
        v
    }

    pub fn len(&self) -> usize {
        self.by_client.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> BanRules {
        BanRules {
            auth_failures: 3,
            relay_denials: 5,
            window_secs: 600,
            first_secs: 60,
            max_secs: 200,
            listed_too: false,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn failures_in_the_window_ban_and_repeat_bans_double_up_to_the_cap() {
        let mut t = BanTable::default();
        let r = rules();
        let a = ip("203.0.113.7");
        assert!(t.auth_failed(a, &r, 0).is_none());
        assert!(t.auth_failed(a, &r, 1_000).is_none());
        let ban = t.auth_failed(a, &r, 2_000).unwrap();
        assert_eq!((ban.strikes, ban.until), (1, 62_000));
        assert_eq!(ban.reason.to_string(), "3 failed logins in 10m");
        assert!(t.banned(a, 61_999).is_some());
        assert!(t.banned(a, 62_000).is_none());
        assert!(t.banned(ip("203.0.113.8"), 3_000).is_none());
        // The second ban lasts 120 s, the third is capped at 200 s.
        for at in [100_000, 101_000, 102_000] {
            t.auth_failed(a, &r, at);
        }
        assert_eq!(t.banned(a, 102_000).unwrap().until, 222_000);
        for at in [300_000, 300_001, 300_002] {
            t.auth_failed(a, &r, at);
        }
        let b = t.banned(a, 300_002).unwrap();
        assert_eq!((b.strikes, b.until), (3, 500_002));
    }

    #[test]
    fn offences_outside_the_window_do_not_add_up() {
        let mut t = BanTable::default();
        let r = rules();
        let a = ip("2001:db8::1");
        for i in 0..10u64 {
            assert!(t.relay_denied(a, &r, i * 200_000).is_none());
        }
        // An IPv6 client is counted per /64.
        for i in 0..4u64 {
            assert!(
                t.relay_denied(ip(&format!("2001:db8::{}", i + 2)), &r, 5_000_000)
                    .is_none()
            );
        }
        let ban = t.relay_denied(a, &r, 5_000_000).unwrap();
        assert_eq!(ban.net.to_string(), "2001:db8::/64");
        assert!(t.banned(ip("2001:db8::ffff"), 5_000_001).is_some());
    }

    #[test]
    fn hand_made_prefix_bans_cover_their_range_and_survive_a_replace() {
        let mut t = BanTable::default();
        t.put(Ban {
            net: "198.51.100.0/24".parse().unwrap(),
            since: 0,
            until: 1_000,
            strikes: 1,
            reason: BanReason::Admin {
                note: String::new(),
            },
        });
        assert!(t.banned(ip("198.51.100.77"), 10).is_some());
        assert!(t.banned(ip("::ffff:198.51.100.77"), 10).is_some());
        assert!(t.banned(ip("198.51.101.1"), 10).is_none());
        // Not yet saved: a reload of the stored bans keeps it.
        t.replace(Vec::new());
        assert!(t.banned(ip("198.51.100.1"), 10).is_some());
        assert_eq!(t.take_unsaved().len(), 1);
        // Saved, then lifted in the database: gone.
        t.replace(Vec::new());
        assert!(t.banned(ip("198.51.100.1"), 10).is_none());
        assert_eq!(t.last_until(), 0);
    }

    #[test]
    fn an_ipv4_mapped_range_is_banned_as_ipv4() {
        assert_eq!(
            parse_ban_net("::ffff:198.51.100.0/120")
                .unwrap()
                .to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_ban_net("::ffff:203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert!(parse_ban_net("nope").is_err());
    }

    #[test]
    fn zero_means_never() {
        let mut t = BanTable::default();
        let r = BanRules {
            auth_failures: 0,
            relay_denials: 0,
            ..rules()
        };
        assert!(!r.enabled());
        for i in 0..100 {
            assert!(t.auth_failed(ip("192.0.2.1"), &r, i).is_none());
        }
    }
}
