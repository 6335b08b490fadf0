//! The compiled allow/deny matcher against a naive reference: random lists
//! of every spelling, random addresses, IPv4 and IPv6. The reference knows
//! nothing of the compiled form: it works from how each entry was generated.

use proptest::prelude::*;
use relaygate::policy::ip_lists::{IpLists, ListEntry, ListKind, ListVerdict};
use relaygate::policy::ip_pattern::IpPattern;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A generated entry: its text and its address set as a predicate + size.
#[derive(Debug, Clone)]
enum Gen {
    /// Octet ranges, rendered with `*`, `a-b` and single values.
    Octets([(u8, u8); 4]),
    /// IPv4 CIDR.
    Cidr4(u32, u8),
    /// IPv6 CIDR (or a single address at /128).
    Cidr6(u128, u8),
}

impl Gen {
    fn text(&self) -> String {
        match self {
            Gen::Octets(r) => r
                .iter()
                .map(|&(lo, hi)| match (lo, hi) {
                    (0, 255) => "*".to_string(),
                    (l, h) if l == h => l.to_string(),
                    (l, h) => format!("{l}-{h}"),
                })
                .collect::<Vec<_>>()
                .join("."),
            Gen::Cidr4(a, p) => format!("{}/{p}", Ipv4Addr::from(*a)),
            Gen::Cidr6(a, 128) => Ipv6Addr::from(*a).to_string(),
            Gen::Cidr6(a, p) => format!("{}/{p}", Ipv6Addr::from(*a)),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Gen::Octets(r), IpAddr::V4(v4)) => r
                .iter()
                .zip(v4.octets())
                .all(|(&(lo, hi), o)| lo <= o && o <= hi),
            (Gen::Cidr4(a, p), IpAddr::V4(v4)) => {
                *p == 0 || (u32::from(v4) ^ a) >> (32 - u32::from(*p)) == 0
            }
            (Gen::Cidr6(a, p), IpAddr::V6(v6)) => {
                *p == 0 || (u128::from(v6) ^ a) >> (128 - u32::from(*p)) == 0
            }
            _ => false,
        }
    }

    /// log2-free size: number of addresses, saturating for ::/0.
    fn size(&self) -> u128 {
        match self {
            Gen::Octets(r) => r.iter().map(|&(lo, hi)| u128::from(hi - lo) + 1).product(),
            Gen::Cidr4(_, p) => 1u128 << (32 - u32::from(*p)),
            Gen::Cidr6(_, 0) => u128::MAX,
            Gen::Cidr6(_, p) => 1u128 << (128 - u32::from(*p)),
        }
    }
}

fn small_octet() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..6, 250u8..=255, Just(128u8)]
}

fn octet_range() -> impl Strategy<Value = (u8, u8)> {
    prop_oneof![
        small_octet().prop_map(|v| (v, v)),
        Just((0u8, 255u8)),
        (small_octet(), small_octet()).prop_map(|(a, b)| (a.min(b), a.max(b))),
    ]
}

fn gen_entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        4 => prop::array::uniform4(octet_range()).prop_map(Gen::Octets),
        3 => (prop::array::uniform4(small_octet()), 0u8..=32).prop_map(|(o, p)| {
            let a = u32::from_be_bytes(o);
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            Gen::Cidr4(a & mask, p)
        }),
        2 => (prop::array::uniform4(0u16..4), prop_oneof![Just(0u8), 1u8..=128]).prop_map(|(w, p)| {
            let a = (u128::from(w[0]) << 112) | (u128::from(w[1]) << 96) | (u128::from(w[2]) << 16) | u128::from(w[3]);
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - u32::from(p)) };
            Gen::Cidr6(a & mask, p)
        }),
    ]
}

fn gen_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => prop::array::uniform4(small_octet()).prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        1 => prop::array::uniform4(0u16..4).prop_map(|w| {
            let a = (u128::from(w[0]) << 112) | (u128::from(w[1]) << 96) | (u128::from(w[2]) << 16) | u128::from(w[3]);
            IpAddr::V6(Ipv6Addr::from(a))
        }),
    ]
}

/// (list, size) of the winner and of the best entry of the other list.
type Outcome = Option<(ListKind, u128, Option<u128>)>;

fn reference(entries: &[(ListKind, Gen)], ip: IpAddr) -> Outcome {
    let best = |kind| {
        entries
            .iter()
            .filter(|(k, g)| *k == kind && g.contains(ip))
            .map(|(_, g)| g.size())
            .min()
    };
    match (best(ListKind::Allow), best(ListKind::Deny)) {
        (None, None) => None,
        (Some(a), Some(d)) if a < d => Some((ListKind::Allow, a, Some(d))),
        (Some(a), None) => Some((ListKind::Allow, a, None)),
        (a, Some(d)) => Some((ListKind::Deny, d, a)),
    }
}

fn compiled(lists: &IpLists, ip: IpAddr) -> Outcome {
    let size = |e: &ListEntry| e.pattern.span().saturating_add(1);
    match lists.check(ip) {
        ListVerdict::Unlisted => None,
        ListVerdict::Allowed { entry, over } => {
            Some((ListKind::Allow, size(&entry), over.as_ref().map(size)))
        }
        ListVerdict::Denied { entry, over } => {
            Some((ListKind::Deny, size(&entry), over.as_ref().map(size)))
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compiled_matches_reference(
        entries in prop::collection::vec((prop_oneof![Just(ListKind::Allow), Just(ListKind::Deny)], gen_entry()), 0..40),
        ips in prop::collection::vec(gen_ip(), 1..40),
    ) {
        let list_entries: Vec<ListEntry> = entries
            .iter()
            .map(|(kind, g)| {
                let text = g.text();
                let pattern = IpPattern::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
                ListEntry { list: *kind, text: Arc::from(text.as_str()), pattern }
            })
            .collect();
        let lists = IpLists::build(list_entries);
        for ip in ips {
            prop_assert_eq!(compiled(&lists, ip), reference(&entries, ip), "ip {} entries {:?}", ip, entries);
            // An IPv4-mapped IPv6 peer is matched as the IPv4 address.
            if let IpAddr::V4(v4) = ip {
                prop_assert_eq!(compiled(&lists, IpAddr::V6(v4.to_ipv6_mapped())), reference(&entries, ip));
            }
        }
    }

    #[test]
    fn canonical_form_is_equivalent(g in gen_entry(), ip in gen_ip()) {
        let p = IpPattern::parse(&g.text()).unwrap();
        let again = IpPattern::parse(&p.canonical()).unwrap();
        prop_assert_eq!(&again, &p);
        prop_assert_eq!(p.matches(ip), g.contains(ip));
    }

    #[test]
    fn parse_never_panics(s in "\\PC{0,40}") {
        let _ = IpPattern::parse(&s);
    }
}
