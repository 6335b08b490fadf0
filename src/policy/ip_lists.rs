//! The compiled "allow relay from" and "deny relay from" lists.
//!
//! Lookup must stay fast with hundreds of thousands of entries, so entries
//! that are one contiguous interval (all CIDRs and trailing wildcards or
//! ranges) are flattened at build time into sorted, disjoint segments, each
//! remembering the most specific allow and deny entry that covers it. A
//! lookup is then one binary search. The rare entries that are not one
//! interval (`10.*.5.*`) are checked one by one.

use super::ip_pattern::{IpPattern, effective_ip};
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// Which of the two lists an entry belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    Allow,
    Deny,
}

impl ListKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Allow => "allow",
            ListKind::Deny => "deny",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry as the administrator typed it, with its parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    pub list: ListKind,
    /// The text as typed, shown in every reason.
    pub text: Arc<str>,
    pub pattern: IpPattern,
}

impl fmt::Display for ListEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} entry {}", self.list, self.text)
    }
}

/// The outcome of matching one address against both lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListVerdict {
    /// The most specific matching entry is an allow entry; `over` is the best
    /// deny entry it beat, if any.
    Allowed {
        entry: ListEntry,
        over: Option<ListEntry>,
    },
    /// The most specific matching entry is a deny entry (deny wins ties);
    /// `over` is the best allow entry it beat, if any.
    Denied {
        entry: ListEntry,
        over: Option<ListEntry>,
    },
    /// No entry of either list matches.
    Unlisted,
}

const NONE: u32 = u32::MAX;

/// Sorted disjoint segments of one address family.
#[derive(Debug, Default, Clone)]
struct SegmentMap<K> {
    starts: Vec<K>,
    /// Best (allow, deny) entry index for each segment, `NONE` if none.
    best: Vec<(u32, u32)>,
}

impl<K: Copy + Ord> SegmentMap<K> {
    /// The segment containing `key`, searching only `starts[lo..hi]`: the
    /// caller knows no segment outside it (but `lo - 1`) can contain `key`.
    fn lookup_in(&self, key: K, lo: usize, hi: usize) -> (u32, u32) {
        let i = lo + self.starts[lo..hi].partition_point(|&s| s <= key);
        if i == 0 {
            (NONE, NONE)
        } else {
            self.best[i - 1]
        }
    }

    fn lookup(&self, key: K) -> (u32, u32) {
        self.lookup_in(key, 0, self.starts.len())
    }
}

/// IPv4 segments with a direct index on the top 16 bits of the address, so
/// a lookup binary-searches only the few segments starting in that /16
/// instead of all of them (a few cache misses fewer per decision).
#[derive(Debug, Default, Clone)]
struct IndexedV4 {
    map: SegmentMap<u32>,
    /// `index[h]`: the first segment starting at or after `h << 16`.
    index: Vec<u32>,
}

impl IndexedV4 {
    fn new(map: SegmentMap<u32>) -> IndexedV4 {
        let index = (0..=0x1_0000u64)
            .map(|h| {
                let at = h << 16;
                map.starts.partition_point(|&s| u64::from(s) < at) as u32
            })
            .collect();
        IndexedV4 { map, index }
    }

    fn lookup(&self, key: u32) -> (u32, u32) {
        let h = (key >> 16) as usize;
        match (self.index.get(h), self.index.get(h + 1)) {
            (Some(&lo), Some(&hi)) => self.map.lookup_in(key, lo as usize, hi as usize),
            _ => self.map.lookup(key),
        }
    }
}

/// Both lists, compiled for lookup. Immutable once built.
#[derive(Debug, Default, Clone)]
pub struct IpLists {
    entries: Vec<ListEntry>,
    spans: Vec<u128>,
    v4: IndexedV4,
    v6: SegmentMap<u128>,
    /// IPv4 entries that are not one interval, checked one by one.
    scattered: Vec<u32>,
}

impl IpLists {
    /// Compiles the entries. Their order only breaks ties between equally
    /// specific entries of the same list (the earlier one is reported).
    pub fn build(entries: Vec<ListEntry>) -> IpLists {
        let spans: Vec<u128> = entries.iter().map(|e| e.pattern.span()).collect();
        let mut v4_intervals = Vec::new();
        let mut v6_intervals = Vec::new();
        let mut scattered = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(NONE - 1);
            match e.pattern.interval() {
                Some((lo, hi)) if e.pattern.is_v4() => v4_intervals.push((lo, hi, idx)),
                Some((lo, hi)) => v6_intervals.push((lo, hi, idx)),
                None => scattered.push(idx),
            }
        }
        let v4 = sweep(&entries, &spans, v4_intervals, u128::from(u32::MAX));
        let v4 = IndexedV4::new(SegmentMap {
            starts: v4.starts.into_iter().map(|s| s as u32).collect(),
            best: v4.best,
        });
        let v6 = sweep(&entries, &spans, v6_intervals, u128::MAX);
        IpLists {
            entries,
            spans,
            v4,
            v6,
            scattered,
        }
    }

    pub fn entries(&self) -> &[ListEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the allow list allows a peer address (as [`IpLists::check`]
    /// decides): the LAN, exempt from blocklists and some limits, and
    /// whose mail is the users' own.
    pub fn allows(&self, ip: IpAddr) -> bool {
        matches!(self.check(ip), ListVerdict::Allowed { .. })
    }

    /// Matches a peer address: the most specific entry wins, deny on a tie.
    pub fn check(&self, ip: IpAddr) -> ListVerdict {
        let ip = effective_ip(ip);
        let (mut allow, mut deny) = match ip {
            IpAddr::V4(v4) => self.v4.lookup(u32::from(v4)),
            IpAddr::V6(v6) => self.v6.lookup(u128::from(v6)),
        };
        if ip.is_ipv4() {
            for &idx in &self.scattered {
                let e = &self.entries[idx as usize];
                if e.pattern.matches(ip) {
                    let slot = match e.list {
                        ListKind::Allow => &mut allow,
                        ListKind::Deny => &mut deny,
                    };
                    if *slot == NONE || self.rank(idx) < self.rank(*slot) {
                        *slot = idx;
                    }
                }
            }
        }
        let entry = |i: u32| (i != NONE).then(|| self.entries[i as usize].clone());
        match (allow, deny) {
            (NONE, NONE) => ListVerdict::Unlisted,
            (a, d)
                if d == NONE || (a != NONE && self.spans[a as usize] < self.spans[d as usize]) =>
            {
                ListVerdict::Allowed {
                    entry: self.entries[a as usize].clone(),
                    over: entry(d),
                }
            }
            (a, d) => ListVerdict::Denied {
                entry: self.entries[d as usize].clone(),
                over: entry(a),
            },
        }
    }

    fn rank(&self, idx: u32) -> (u128, u32) {
        (self.spans[idx as usize], idx)
    }
}

/// Flattens possibly overlapping intervals into disjoint segments carrying
/// the most specific allow and deny entry covering each.
fn sweep(
    entries: &[ListEntry],
    spans: &[u128],
    intervals: Vec<(u128, u128, u32)>,
    max: u128,
) -> SegmentMap<u128> {
    // (point, is_start, idx): removals at a point sort before additions.
    let mut events: Vec<(u128, bool, u32)> = Vec::with_capacity(intervals.len() * 2);
    for (lo, hi, idx) in intervals {
        events.push((lo, true, idx));
        if hi < max {
            events.push((hi + 1, false, idx));
        }
    }
    events.sort_unstable();
    let mut active: [BTreeSet<(u128, u32)>; 2] = [BTreeSet::new(), BTreeSet::new()];
    let mut map = SegmentMap {
        starts: vec![0u128],
        best: vec![(NONE, NONE)],
    };
    let mut i = 0;
    while i < events.len() {
        let point = events[i].0;
        while i < events.len() && events[i].0 == point {
            let (_, start, idx) = events[i];
            let set = &mut active[entries[idx as usize].list as usize];
            let key = (spans[idx as usize], idx);
            if start {
                set.insert(key);
            } else {
                set.remove(&key);
            }
            i += 1;
        }
        let best = |s: &BTreeSet<(u128, u32)>| s.first().map_or(NONE, |&(_, idx)| idx);
        let seg = (best(&active[0]), best(&active[1]));
        let last = map.best.len() - 1;
        if map.starts[last] == point {
            map.best[last] = seg;
        } else if map.best[last] != seg {
            map.starts.push(point);
            map.best.push(seg);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(allow: &[&str], deny: &[&str]) -> IpLists {
        let mk = |list, text: &&str| ListEntry {
            list,
            text: Arc::from(*text),
            pattern: IpPattern::parse(text).unwrap(),
        };
        let mut v: Vec<ListEntry> = allow.iter().map(|t| mk(ListKind::Allow, t)).collect();
        v.extend(deny.iter().map(|t| mk(ListKind::Deny, t)));
        IpLists::build(v)
    }

    fn verdict(l: &IpLists, ip: &str) -> (char, String, Option<String>) {
        match l.check(ip.parse().unwrap()) {
            ListVerdict::Allowed { entry, over } => (
                'A',
                entry.text.to_string(),
                over.map(|o| o.text.to_string()),
            ),
            ListVerdict::Denied { entry, over } => (
                'D',
                entry.text.to_string(),
                over.map(|o| o.text.to_string()),
            ),
            ListVerdict::Unlisted => ('-', String::new(), None),
        }
    }

    #[test]
    fn router_is_denied_inside_allowed_lan() {
        let l = lists(&["192.168.0.0/16"], &["192.168.1.1"]);
        assert_eq!(verdict(&l, "192.168.1.1").0, 'D');
        assert_eq!(verdict(&l, "192.168.1.2").0, 'A');
        assert_eq!(verdict(&l, "10.0.0.1").0, '-');
    }

    #[test]
    fn deny_world_allow_ten() {
        let l = lists(&["10.*.*.*"], &["*.*.*.*"]);
        assert_eq!(
            verdict(&l, "10.3.4.5"),
            ('A', "10.*.*.*".into(), Some("*.*.*.*".into()))
        );
        assert_eq!(verdict(&l, "11.0.0.1"), ('D', "*.*.*.*".into(), None));
        assert_eq!(verdict(&l, "255.255.255.255").0, 'D');
        assert_eq!(verdict(&l, "0.0.0.0").0, 'D');
    }

    #[test]
    fn tie_goes_to_deny() {
        let l = lists(&["192.168.*.*"], &["192.168.0.0/16"]);
        assert_eq!(verdict(&l, "192.168.3.3").0, 'D');
    }

    #[test]
    fn scattered_patterns_and_ipv6() {
        let l = lists(&["10.*.5.*", "2001:db8::/32"], &["10.0.0.0/8", "::/0"]);
        assert_eq!(verdict(&l, "10.9.5.1").0, 'A');
        assert_eq!(verdict(&l, "10.9.6.1").0, 'D');
        assert_eq!(verdict(&l, "2001:db8::1").0, 'A');
        assert_eq!(verdict(&l, "::1").0, 'D');
        assert_eq!(verdict(&l, "::ffff:10.9.5.200").0, 'A');
    }
}
