//! Sending quotas: "at most N messages (or recipients) per period per
//! login, client address (or prefix) or sender domain", counted in memory
//! with sliding windows and checked at RCPT.
//!
//! A transaction reserves what it would send when a recipient is
//! accepted ([`QuotaTable::reserve`]) and gives it back if it ends without
//! a message ([`QuotaTable::release`]): parallel sessions of one key can
//! never together pass the limit.

use super::rate::{Rate, SlidingCount, period_text};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// What a quota counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaScope {
    /// The authenticated login; sessions without one are not counted.
    Login,
    /// The client address, IPv4 to `v4` bits and IPv6 to `v6` bits.
    Ip { v4: u8, v6: u8 },
    /// The sender's domain; the null sender is not counted.
    SenderDomain,
}

impl QuotaScope {
    /// `login`, `sender-domain`, `ip` (per address: IPv4 /32, IPv6 /64),
    /// `ip/24` (IPv6 stays /64) or `ip/24/48`.
    pub fn parse(text: &str) -> Result<QuotaScope, String> {
        let t = text.trim().to_ascii_lowercase();
        let bad = || {
            format!(
                "{text:?} is not a quota key: give login, sender-domain, ip, ip/24 or ip/24/48 (IPv4 and IPv6 prefix lengths)"
            )
        };
        match t.as_str() {
            "login" | "user" => return Ok(QuotaScope::Login),
            "sender-domain" | "domain" => return Ok(QuotaScope::SenderDomain),
            _ => {}
        }
        let mut parts = t.split('/');
        if parts.next() != Some("ip") {
            return Err(bad());
        }
        let v4 = match parts.next() {
            None => 32,
            Some(n) => n
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=32).contains(n))
                .ok_or_else(bad)?,
        };
        let v6 = match parts.next() {
            None => 64,
            Some(n) => n
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=128).contains(n))
                .ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(QuotaScope::Ip { v4, v6 })
    }

    /// The spelling [`parse`](Self::parse) reads back.
    pub fn spelling(&self) -> String {
        match self {
            QuotaScope::Login => "login".into(),
            QuotaScope::SenderDomain => "sender-domain".into(),
            QuotaScope::Ip { v4: 32, v6: 64 } => "ip".into(),
            QuotaScope::Ip { v4, v6: 64 } => format!("ip/{v4}"),
            QuotaScope::Ip { v4, v6 } => format!("ip/{v4}/{v6}"),
        }
    }
}

impl fmt::Display for QuotaScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuotaScope::Login => f.write_str("login"),
            QuotaScope::SenderDomain => f.write_str("sender domain"),
            QuotaScope::Ip { v4: 32, v6: 64 } => f.write_str("client address (IPv6 /64)"),
            QuotaScope::Ip { v4, v6 } => write!(f, "client /{v4} (IPv6 /{v6})"),
        }
    }
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaUnit {
    Messages,
    Recipients,
}

impl QuotaUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaUnit::Messages => "messages",
            QuotaUnit::Recipients => "recipients",
        }
    }
}

/// One quota, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// Its number in `quota show`; stable while it exists.
    pub id: i64,
    pub scope: QuotaScope,
    pub unit: QuotaUnit,
    pub rate: Rate,
    /// Reaching it also suspends the login (login quotas only).
    pub suspend: bool,
}

/// `#2: at most 1000 messages per day per login; reaching it suspends the login`
impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{}: at most {} {} per {} per {}",
            self.id,
            self.rate.count,
            self.unit.as_str(),
            period_text(self.rate.period_secs),
            self.scope
        )?;
        if self.suspend {
            f.write_str("; reaching it suspends the login")?;
        }
        Ok(())
    }
}

/// Who a recipient is counted for.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub login: Option<&'a str>,
    pub ip: IpAddr,
    /// The sender's domain; `None` for the null sender.
    pub domain: Option<&'a str>,
}

/// The key one quota counts a sender under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    Login(Box<str>),
    Net(IpAddr),
    Domain(Box<str>),
    /// Every new key of a quota whose table is full: they share one count,
    /// so a client making up keys cannot get past the quota.
    Overflow,
}

impl QuotaKey {
    /// `login:alice`, `ip:192.0.2.0`, `domain:example.com`: how a key is
    /// stored and shown.
    pub fn text(&self) -> String {
        match self {
            QuotaKey::Login(l) => format!("login:{l}"),
            QuotaKey::Net(ip) => format!("ip:{ip}"),
            QuotaKey::Domain(d) => format!("domain:{d}"),
            QuotaKey::Overflow => "overflow:".to_string(),
        }
    }

    pub fn parse(text: &str) -> Option<QuotaKey> {
        let (kind, value) = text.split_once(':')?;
        match kind {
            "login" => Some(QuotaKey::Login(value.into())),
            "ip" => value.parse().ok().map(QuotaKey::Net),
            // As the engine counts it: an international domain by its
            // A-labels, so `domain:bücher.example` names the counted one.
            "domain" => Some(QuotaKey::Domain(
                crate::policy::address::dns_form(&value.to_lowercase()).into(),
            )),
            "overflow" => Some(QuotaKey::Overflow),
            _ => None,
        }
    }

    /// What the key names, for a reply or a log line.
    pub fn shown(&self) -> String {
        match self {
            QuotaKey::Login(l) => format!("login {l}"),
            QuotaKey::Net(ip) => format!("address {ip}"),
            QuotaKey::Domain(d) => format!("sender domain {d}"),
            QuotaKey::Overflow => "new senders (too many keys are counted)".to_string(),
        }
    }
}

fn masked(ip: IpAddr, v4: u8, v6: u8) -> IpAddr {
    match crate::policy::ip_pattern::effective_ip(ip) {
        IpAddr::V4(a) => {
            let bits = u32::from(a)
                & u32::MAX
                    .checked_shl(32 - u32::from(v4.min(32)))
                    .unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a)
                & u128::MAX
                    .checked_shl(128 - u32::from(v6.min(128)))
                    .unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// What a refused recipient is told and logged with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub quota: Quota,
    pub key: QuotaKey,
    /// The login to suspend: the quota says so and the key is a login.
    pub suspend: Option<String>,
    /// This refusal is the one that suspended it (the others find it
    /// suspended already).
    pub newly_suspended: bool,
}

/// Counts a transaction holds, to be given back if it ends without a
/// message (see [`QuotaTable::release`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaHolds {
    /// (count slot, window the count went into).
    held: Vec<(u64, u64)>,
    /// Message quotas this transaction already counted its message in.
    messages_counted: bool,
}

impl QuotaHolds {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// One key's count under one quota.
#[derive(Debug, Clone)]
struct Counted {
    quota: i64,
    key: QuotaKey,
    count: SlidingCount,
}

/// Hashes that are already keyed hashes: the map need not hash again.
#[derive(Debug, Default, Clone, Copy)]
struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Slots<V> = HashMap<u64, V, std::hash::BuildHasherDefault<SlotHasher>>;

/// The quotas in force and their counts.
///
/// A count is found by a keyed 64-bit hash of (quota, key) computed from
/// the sender's fields as they are (lower-cased on the fly), so a check
/// allocates nothing; the key is stored once, with the count. The hash
/// key is random per process: a client cannot pick a sender domain that
/// shares another's count.
#[derive(Debug, Default)]
pub struct QuotaTable {
    quotas: Vec<Quota>,
    counts: Slots<Counted>,
    /// Keys counted per quota, for [`KEYS_PER_QUOTA`].
    keys_per_quota: HashMap<i64, usize>,
    /// When a full quota last looked for spent keys (ms): at most once a
    /// second, so a full table costs a scan per second, not per recipient.
    room_sought: u64,
    /// Counts changed since they were last saved.
    dirty: std::collections::HashSet<u64, std::hash::BuildHasherDefault<SlotHasher>>,
    keyed: std::collections::hash_map::RandomState,
}

/// The most keys one quota counts at once. A client that makes up a new
/// sender domain (or IPv6 /64) per message cannot grow the table without
/// bound: past this, spent keys are forgotten, and if none is, a new key
/// is not counted (its quota does not apply to it) until room is made.
/// Each quota has its own room, so filling a sender-domain quota never
/// takes a login quota's.
pub const KEYS_PER_QUOTA: usize = 100_000;

/// The key's fields, borrowed from the sender.
#[derive(Clone, Copy)]
enum KeyOf<'a> {
    Login(&'a str),
    Net(IpAddr),
    Domain(&'a str),
    Overflow,
}

impl<'a> KeyOf<'a> {
    fn of(scope: QuotaScope, s: &Sender<'a>) -> Option<KeyOf<'a>> {
        match scope {
            QuotaScope::Login => s.login.map(KeyOf::Login),
            QuotaScope::SenderDomain => s.domain.map(KeyOf::Domain),
            QuotaScope::Ip { v4, v6 } => Some(KeyOf::Net(masked(s.ip, v4, v6))),
        }
    }

    fn owned(self) -> QuotaKey {
        match self {
            KeyOf::Login(l) => QuotaKey::Login(l.to_ascii_lowercase().into()),
            KeyOf::Net(ip) => QuotaKey::Net(ip),
            KeyOf::Domain(d) => QuotaKey::Domain(d.to_ascii_lowercase().into()),
            KeyOf::Overflow => QuotaKey::Overflow,
        }
    }
}

impl QuotaKey {
    fn borrowed(&self) -> KeyOf<'_> {
        match self {
            QuotaKey::Login(l) => KeyOf::Login(l),
            QuotaKey::Net(ip) => KeyOf::Net(*ip),
            QuotaKey::Domain(d) => KeyOf::Domain(d),
            QuotaKey::Overflow => KeyOf::Overflow,
        }
    }
}

impl QuotaTable {
    fn slot(&self, quota: i64, key: KeyOf<'_>) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = self.keyed.build_hasher();
        h.write_i64(quota);
        let lower = |h: &mut dyn Hasher, text: &str| {
            let mut buf = [0u8; 64];
            for chunk in text.as_bytes().chunks(64) {
                let out = &mut buf[..chunk.len()];
                out.copy_from_slice(chunk);
                out.make_ascii_lowercase();
                h.write(out);
            }
            h.write_u8(0xff);
        };
        match key {
            KeyOf::Login(l) => {
                h.write_u8(1);
                lower(&mut h, l);
            }
            KeyOf::Domain(d) => {
                h.write_u8(2);
                lower(&mut h, d);
            }
            KeyOf::Net(IpAddr::V4(a)) => {
                h.write_u8(3);
                h.write(&a.octets());
            }
            KeyOf::Net(IpAddr::V6(a)) => {
                h.write_u8(4);
                h.write(&a.octets());
            }
            KeyOf::Overflow => h.write_u8(5),
        }
        h.finish()
    }

    /// Forgets the spent keys of one quota; how many.
    fn make_room(&mut self, quota: i64, period: u64, now: u64) -> usize {
        if now < self.room_sought.saturating_add(1000) {
            return 0;
        }
        self.room_sought = now;
        let before = self.counts.len();
        self.counts
            .retain(|_, c| c.quota != quota || !c.count.is_spent(now, period));
        let freed = before - self.counts.len();
        if freed > 0 {
            self.recount();
        }
        freed
    }

    /// Keys per quota, after removals.
    fn recount(&mut self) {
        self.keys_per_quota.clear();
        for c in self.counts.values() {
            *self.keys_per_quota.entry(c.quota).or_default() += 1;
        }
        let counts = &self.counts;
        self.dirty.retain(|slot| counts.contains_key(slot));
    }

    /// Sets the quotas in force; counts of quotas that are gone, or whose
    /// period changed, are dropped.
    pub fn set_quotas(&mut self, quotas: Vec<Quota>) {
        if quotas == self.quotas {
            return;
        }
        let kept: HashMap<i64, u64> = quotas
            .iter()
            .filter(|q| {
                self.quotas
                    .iter()
                    .any(|o| o.id == q.id && o.rate.period_secs == q.rate.period_secs)
            })
            .map(|q| (q.id, q.rate.period_secs))
            .collect();
        self.counts.retain(|_, c| kept.contains_key(&c.quota));
        self.recount();
        self.quotas = quotas;
    }

    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    /// Counts kept now (keys with something in their windows).
    pub fn keys(&self) -> usize {
        self.counts.len()
    }

    /// Reserves what one more accepted recipient sends: the recipient, and
    /// for message quotas the transaction's message (once). Either every
    /// quota takes it, or nothing is counted and the first quota it would
    /// pass is returned.
    pub fn reserve(
        &mut self,
        sender: &Sender<'_>,
        holds: &mut QuotaHolds,
        now: u64,
    ) -> Result<(), QuotaRefusal> {
        // A handful of quotas: no allocation for the list either.
        let mut wanted = [0u64; 8];
        let mut n = 0;
        let mut more: Vec<u64> = Vec::new();
        for i in 0..self.quotas.len() {
            let (id, scope, unit, rate, suspend) = {
                let q = &self.quotas[i];
                (q.id, q.scope, q.unit, q.rate, q.suspend)
            };
            if unit == QuotaUnit::Messages && holds.messages_counted {
                continue;
            }
            let Some(mut key) = KeyOf::of(scope, sender) else {
                continue;
            };
            let mut slot = self.slot(id, key);
            let period = rate.period_ms();
            if !self.counts.contains_key(&slot) {
                let kept = self.keys_per_quota.get(&id).copied().unwrap_or(0);
                if kept >= KEYS_PER_QUOTA && self.make_room(id, period, now) == 0 {
                    // Full: the new key is counted with every other new one.
                    key = KeyOf::Overflow;
                    slot = self.slot(id, key);
                }
                if !self.counts.contains_key(&slot) {
                    *self.keys_per_quota.entry(id).or_default() += 1;
                }
            }
            let counted = self.counts.entry(slot).or_insert_with(|| Counted {
                quota: id,
                key: key.owned(),
                count: SlidingCount::default(),
            });
            counted.count.roll(now, period);
            if counted.count.estimate(now, period) + 1.0 > rate.count as f64 + 1e-9 {
                let key = counted.key.clone();
                let suspend = match (&key, suspend) {
                    (QuotaKey::Login(l), true) => Some(l.to_string()),
                    _ => None,
                };
                return Err(QuotaRefusal {
                    quota: self.quotas[i].clone(),
                    key,
                    suspend,
                    newly_suspended: false,
                });
            }
            if n < wanted.len() {
                wanted[n] = slot;
                n += 1;
            } else {
                more.push(slot);
            }
        }
        for slot in wanted[..n].iter().chain(more.iter()) {
            if let Some(c) = self.counts.get_mut(slot) {
                c.count.current = c.count.current.saturating_add(1);
                holds.held.push((*slot, c.count.window_start));
                self.dirty.insert(*slot);
            }
        }
        holds.messages_counted = true;
        Ok(())
    }

    /// Gives back everything a transaction held (it ended without a
    /// message).
    pub fn release(&mut self, holds: QuotaHolds) {
        for (slot, window_start) in holds.held {
            if let Some(c) = self.counts.get_mut(&slot) {
                c.count.release(window_start, 1);
                self.dirty.insert(slot);
            }
        }
    }

    /// The counts changed since the last call, to save: (quota, key,
    /// count).
    pub fn take_dirty(&mut self) -> Vec<(i64, String, SlidingCount)> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty
            .into_iter()
            .filter_map(|slot| {
                let c = self.counts.get(&slot)?;
                Some((c.quota, c.key.text(), c.count))
            })
            .collect()
    }

    /// Forgets every count of a key (a suspended login was let back in:
    /// it starts from zero); returns how many.
    pub fn forget_key(&mut self, key: &QuotaKey) -> usize {
        let before = self.counts.len();
        self.counts.retain(|_, c| &c.key != key);
        self.recount();
        before - self.counts.len()
    }

    /// Every count is saved at the next [`take_dirty`](Self::take_dirty).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(self.counts.keys().copied());
    }

    /// Counts read back at start (a restart keeps them, approximately).
    pub fn restore(&mut self, saved: impl IntoIterator<Item = (i64, String, SlidingCount)>) {
        for (id, key, count) in saved {
            if !self.quotas.iter().any(|q| q.id == id) {
                continue;
            }
            if let Some(key) = QuotaKey::parse(&key) {
                let slot = self.slot(id, key.borrowed());
                *self.keys_per_quota.entry(id).or_default() += 1;
                self.counts.insert(
                    slot,
                    Counted {
                        quota: id,
                        key,
                        count,
                    },
                );
            }
        }
    }

    /// Forgets keys whose windows are both over; returns how many.
    pub fn forget_spent(&mut self, now: u64) -> usize {
        let periods: HashMap<i64, u64> = self
            .quotas
            .iter()
            .map(|q| (q.id, q.rate.period_ms()))
            .collect();
        let before = self.counts.len();
        self.counts.retain(|_, c| {
            periods
                .get(&c.quota)
                .is_some_and(|p| !c.count.is_spent(now, *p))
        });
        if self.counts.len() != before {
            self.recount();
        }
        before - self.counts.len()
    }

    /// Every key's estimated use of each quota, busiest first, for `quota
    /// show` and the console.
    pub fn usage(&self, now: u64) -> Vec<QuotaUse> {
        let mut out: Vec<QuotaUse> = self
            .counts
            .values()
            .filter_map(|c| {
                let q = self.quotas.iter().find(|q| q.id == c.quota)?;
                let mut count = c.count;
                count.roll(now, q.rate.period_ms());
                let used = count.estimate(now, q.rate.period_ms());
                (used >= 0.5).then(|| QuotaUse {
                    quota: c.quota,
                    key: c.key.text(),
                    used: used.round() as u64,
                    limit: q.rate.count,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (b.used * 1000 / b.limit.max(1))
                .cmp(&(a.used * 1000 / a.limit.max(1)))
                .then_with(|| a.key.cmp(&b.key))
        });
        out
    }
}

/// One key's use of one quota.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaUse {
    pub quota: i64,
    pub key: String,
    pub used: u64,
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(id: i64, scope: &str, rate: &str, unit: QuotaUnit) -> Quota {
        Quota {
            id,
            scope: QuotaScope::parse(scope).unwrap(),
            unit,
            rate: Rate::parse(rate).unwrap(),
            suspend: false,
        }
    }

    fn alice(ip: &str) -> Sender<'static> {
        Sender {
            login: Some("Alice"),
            ip: ip.parse().unwrap(),
            domain: Some("example.com"),
        }
    }

    /// One message with `rcpts` recipients; true if all were taken.
    fn message(t: &mut QuotaTable, s: &Sender<'_>, rcpts: usize, now: u64) -> bool {
        let mut holds = QuotaHolds::default();
        for _ in 0..rcpts {
            if t.reserve(s, &mut holds, now).is_err() {
                t.release(holds);
                return false;
            }
        }
        true
    }

    #[test]
    fn scopes_parse_and_print_back() {
        for (text, spelled) in [
            ("login", "login"),
            ("sender-domain", "sender-domain"),
            ("ip", "ip"),
            ("ip/24", "ip/24"),
            ("IP/24/48", "ip/24/48"),
        ] {
            let s = QuotaScope::parse(text).unwrap();
            assert_eq!(s.spelling(), spelled);
            assert_eq!(QuotaScope::parse(spelled).unwrap(), s);
        }
        for bad in [
            "",
            "ipv4",
            "ip/0",
            "ip/33",
            "ip/24/129",
            "ip/24/64/1",
            "helo",
        ] {
            assert!(QuotaScope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_login_quota_counts_messages_not_recipients_and_other_keys_are_apart() {
        let mut t = QuotaTable::default();
        t.set_quotas(vec![quota(1, "login", "3/hour", QuotaUnit::Messages)]);
        let now = 1_000_000;
        for _ in 0..3 {
            assert!(message(&mut t, &alice("192.0.2.1"), 5, now));
        }
        let e = {
            let mut h = QuotaHolds::default();
            t.reserve(&alice("192.0.2.1"), &mut h, now).unwrap_err()
        };
        assert_eq!(e.key, QuotaKey::Login("alice".into()));
        assert_eq!(e.suspend, None);
        let bob = Sender {
            login: Some("bob"),
            ..alice("192.0.2.1")
        };
        assert!(message(&mut t, &bob, 1, now));
        // Unauthenticated senders are not counted by a login quota.
        let anon = Sender {
            login: None,
            ..alice("192.0.2.1")
        };
        for _ in 0..10 {
            assert!(message(&mut t, &anon, 1, now));
        }
        // An hour later the window has slid past the three.
        assert!(message(&mut t, &alice("192.0.2.1"), 1, now + 2 * 3_600_000));
    }

    #[test]
    fn a_recipient_quota_on_a_prefix_counts_each_recipient_of_the_slash_24() {
        let mut t = QuotaTable::default();
        t.set_quotas(vec![quota(7, "ip/24", "4/10m", QuotaUnit::Recipients)]);
        let now = 50_000_000;
        assert!(message(&mut t, &alice("198.51.100.1"), 3, now));
        // A neighbour in the same /24 shares the count...
        assert!(!message(&mut t, &alice("198.51.100.200"), 2, now));
        // ...and was given back what it held: one more still fits.
        assert!(message(&mut t, &alice("198.51.100.9"), 1, now));
        assert!(message(&mut t, &alice("198.51.101.1"), 4, now));
        assert_eq!(t.usage(now).len(), 2);
    }

    #[test]
    fn a_released_transaction_gives_back_its_message() {
        let mut t = QuotaTable::default();
        t.set_quotas(vec![quota(
            1,
            "sender-domain",
            "1/day",
            QuotaUnit::Messages,
        )]);
        let now = 9_000_000;
        let mut h = QuotaHolds::default();
        t.reserve(&alice("192.0.2.1"), &mut h, now).unwrap();
        t.release(h);
        assert!(message(&mut t, &alice("192.0.2.1"), 2, now));
        assert!(!message(&mut t, &alice("192.0.2.1"), 1, now));
    }

    #[test]
    fn a_suspending_quota_names_the_login() {
        let mut t = QuotaTable::default();
        let mut q = quota(2, "login", "1/day", QuotaUnit::Messages);
        q.suspend = true;
        t.set_quotas(vec![q]);
        assert!(message(&mut t, &alice("192.0.2.1"), 1, 0));
        let mut h = QuotaHolds::default();
        let e = t.reserve(&alice("192.0.2.1"), &mut h, 10).unwrap_err();
        assert_eq!(e.suspend.as_deref(), Some("alice"));
    }

    #[test]
    fn made_up_keys_cannot_grow_a_quota_past_its_room_nor_take_another_quota_s() {
        let mut t = QuotaTable::default();
        t.set_quotas(vec![
            quota(1, "sender-domain", "5/hour", QuotaUnit::Messages),
            quota(2, "login", "2/hour", QuotaUnit::Messages),
        ]);
        let now = 1_000_000;
        let mut taken_past_room = 0;
        for n in 0..KEYS_PER_QUOTA + 500 {
            let domain = format!("d{n}.example");
            let s = Sender {
                login: None,
                ip: "192.0.2.1".parse().unwrap(),
                domain: Some(&domain),
            };
            let ok = t.reserve(&s, &mut QuotaHolds::default(), now).is_ok();
            if n < KEYS_PER_QUOTA {
                assert!(ok);
            } else if ok {
                taken_past_room += 1;
            }
        }
        assert_eq!(taken_past_room, 5);
        // The first 100,000 keys have a count each; the 500 after them
        // share one, which the quota of 5 stopped at 5.
        assert_eq!(t.keys(), KEYS_PER_QUOTA + 1);
        let s = Sender {
            login: None,
            ip: "192.0.2.1".parse().unwrap(),
            domain: Some("yet-another.example"),
        };
        let e = t.reserve(&s, &mut QuotaHolds::default(), now).unwrap_err();
        assert_eq!(e.key, QuotaKey::Overflow);
        // The login quota still has its room and still counts.
        let alice_no_domain = Sender {
            domain: None,
            ..alice("192.0.2.1")
        };
        assert!(message(&mut t, &alice_no_domain, 1, now));
        assert!(message(&mut t, &alice_no_domain, 1, now));
        assert!(!message(&mut t, &alice_no_domain, 1, now));
        // Once the old keys are spent, new ones are counted again.
        let later = now + 3 * 3_600_000;
        let s = Sender {
            login: None,
            ip: "192.0.2.1".parse().unwrap(),
            domain: Some("fresh.example"),
        };
        let mut holds = QuotaHolds::default();
        t.reserve(&s, &mut holds, later).unwrap();
        assert!(!holds.is_empty());
        assert!(t.keys() < 10);
    }

    #[test]
    fn counts_survive_a_save_and_restore_and_removed_quotas_drop_theirs() {
        let mut t = QuotaTable::default();
        t.set_quotas(vec![
            quota(1, "login", "2/hour", QuotaUnit::Messages),
            quota(2, "ip", "100/hour", QuotaUnit::Messages),
        ]);
        assert!(message(&mut t, &alice("192.0.2.1"), 1, 1000));
        assert!(message(&mut t, &alice("192.0.2.1"), 1, 1000));
        let saved = t.take_dirty();
        assert_eq!(saved.len(), 2);
        assert!(t.take_dirty().is_empty());
        let mut back = QuotaTable::default();
        back.set_quotas(t.quotas().to_vec());
        back.restore(saved);
        assert!(!message(&mut back, &alice("192.0.2.1"), 1, 2000));
        back.set_quotas(vec![quota(2, "ip", "100/hour", QuotaUnit::Messages)]);
        assert_eq!(back.keys(), 1);
        assert_eq!(back.forget_spent(3 * 3_600_000), 1);
    }
}
