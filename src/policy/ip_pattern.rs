//! One entry of an allow or deny list, as administrators type it.
//!
//! Every IPv4 spelling (single address, CIDR, `*` wildcards, `a-b` octet
//! ranges) is held as four inclusive octet ranges, so equivalent spellings
//! (`192.168.*.*` and `192.168.0.0/16`) compare equal and the number of
//! addresses an entry covers (its specificity) is exact. IPv6 entries are
//! networks; a single address is a /128.

use ipnet::Ipv6Net;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed list entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPattern {
    /// Inclusive `(low, high)` range for each of the four octets.
    V4([(u8, u8); 4]),
    /// An IPv6 network with no host bits set.
    V6(Ipv6Net),
}

/// Why an entry was refused, naming the entry as typed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IP entry {entry:?}: {problem}")]
pub struct PatternError {
    pub entry: String,
    pub problem: String,
}

/// The address a peer is matched as: an IPv4-mapped IPv6 peer
/// (`::ffff:10.1.2.3`) is the IPv4 address it carries.
pub fn effective_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

impl IpPattern {
    /// Parses one entry: `10.1.2.3`, `::1`, `192.168.0.0/16`, `2001:db8::/32`,
    /// `10.*.*.*`, `172.16-31.*.*`, `10.1.2.1-100`.
    pub fn parse(input: &str) -> Result<IpPattern, PatternError> {
        let entry = input.trim();
        let fail = |problem: String| PatternError {
            entry: entry.to_string(),
            problem,
        };
        if entry.is_empty() {
            return Err(fail("the entry is empty".into()));
        }
        if let Some((addr, len)) = entry.split_once('/') {
            return parse_cidr(addr, len).map_err(fail);
        }
        if entry.contains(':') {
            let v6: Ipv6Addr = entry
                .parse()
                .map_err(|_| fail("not an IPv6 address".into()))?;
            return Ok(match v6.to_ipv4_mapped() {
                Some(v4) => IpPattern::single_v4(v4),
                None => IpPattern::V6(Ipv6Net::new_assert(v6, 128)),
            });
        }
        parse_octets(entry).map(IpPattern::V4).map_err(fail)
    }

    fn single_v4(ip: Ipv4Addr) -> IpPattern {
        let o = ip.octets();
        IpPattern::V4([(o[0], o[0]), (o[1], o[1]), (o[2], o[2]), (o[3], o[3])])
    }

    /// Number of addresses covered, minus one (fits `::/0` in a u128).
    /// Smaller means more specific.
    pub fn span(&self) -> u128 {
        match self {
            IpPattern::V4(r) => {
                r.iter()
                    .map(|(lo, hi)| u128::from(hi - lo) + 1)
                    .product::<u128>()
                    - 1
            }
            IpPattern::V6(net) => host_mask(net.prefix_len()),
        }
    }

    /// The entry as one contiguous address interval, when it is one (every
    /// CIDR and every pattern whose wildcards and ranges are trailing).
    pub fn interval(&self) -> Option<(u128, u128)> {
        match self {
            IpPattern::V4(r) => {
                let first_open = r.iter().position(|(lo, hi)| lo != hi).unwrap_or(4);
                if r.iter().skip(first_open + 1).any(|&o| o != (0, 255)) {
                    return None;
                }
                let lo = u32::from_be_bytes([r[0].0, r[1].0, r[2].0, r[3].0]);
                let hi = u32::from_be_bytes([r[0].1, r[1].1, r[2].1, r[3].1]);
                Some((u128::from(lo), u128::from(hi)))
            }
            IpPattern::V6(net) => {
                let lo = u128::from(net.network());
                Some((lo, lo | host_mask(net.prefix_len())))
            }
        }
    }

    /// The lowest address the entry covers.
    pub fn lowest(&self) -> IpAddr {
        match self {
            IpPattern::V4(r) => IpAddr::V4(Ipv4Addr::new(r[0].0, r[1].0, r[2].0, r[3].0)),
            IpPattern::V6(net) => IpAddr::V6(net.network()),
        }
    }

    /// Whether the peer address falls under this entry.
    pub fn matches(&self, ip: IpAddr) -> bool {
        match (self, effective_ip(ip)) {
            (IpPattern::V4(r), IpAddr::V4(v4)) => r
                .iter()
                .zip(v4.octets())
                .all(|((lo, hi), o)| *lo <= o && o <= *hi),
            (IpPattern::V6(net), IpAddr::V6(v6)) => net.contains(&v6),
            _ => false,
        }
    }

    pub fn is_v4(&self) -> bool {
        matches!(self, IpPattern::V4(_))
    }

    /// The one spelling used to spot duplicates: CIDR where the entry is
    /// a network, octet form otherwise.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

fn host_mask(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        u128::MAX
    } else {
        (1u128 << (128 - u32::from(prefix_len))) - 1
    }
}

fn parse_cidr(addr: &str, len: &str) -> Result<IpPattern, String> {
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} before the '/' is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match len.parse::<u8>() {
        Ok(p) if p <= max && !len.starts_with('+') => p,
        _ => {
            return Err(format!(
                "prefix length {len:?} must be a number from 0 to {max}"
            ));
        }
    };
    match ip {
        IpAddr::V4(v4) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            let bits = u32::from(v4);
            if bits & !mask != 0 {
                return Err(format!(
                    "host bits are set; did you mean {}/{prefix}?",
                    Ipv4Addr::from(bits & mask)
                ));
            }
            let lo = (bits & mask).to_be_bytes();
            let hi = (bits | !mask).to_be_bytes();
            Ok(IpPattern::V4(std::array::from_fn(|i| (lo[i], hi[i]))))
        }
        IpAddr::V6(v6) => {
            let net = Ipv6Net::new(v6, prefix).map_err(|e| e.to_string())?;
            if net.network() != v6 {
                return Err(format!(
                    "host bits are set; did you mean {}/{prefix}?",
                    net.network()
                ));
            }
            Ok(IpPattern::V6(net))
        }
    }
}

fn parse_octets(entry: &str) -> Result<[(u8, u8); 4], String> {
    let parts: Vec<&str> = entry.split('.').collect();
    if parts.len() != 4 {
        return Err(format!(
            "expected four octets like 10.1.*.* or 10.1.2.1-100, found {}",
            parts.len()
        ));
    }
    let mut out = [(0u8, 0u8); 4];
    for (slot, part) in out.iter_mut().zip(&parts) {
        *slot = if *part == "*" {
            (0, 255)
        } else if let Some((lo, hi)) = part.split_once('-') {
            let (lo, hi) = (octet(lo)?, octet(hi)?);
            if lo > hi {
                return Err(format!("octet range {part} runs backwards"));
            }
            (lo, hi)
        } else {
            let v = octet(part)?;
            (v, v)
        };
    }
    Ok(out)
}

fn octet(text: &str) -> Result<u8, String> {
    if text.is_empty() {
        return Err("an octet is empty".into());
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 3 {
        return Err(format!(
            "octet {text:?} is not a number, '*' or a range like 1-100"
        ));
    }
    if text.len() > 1 && text.starts_with('0') {
        return Err(format!(
            "octet {text:?} has a leading zero (ambiguous: octal or decimal?)"
        ));
    }
    text.parse::<u8>()
        .map_err(|_| format!("octet {text} is out of range 0-255"))
}

impl fmt::Display for IpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpPattern::V4(r) => {
                if let Some((lo, hi)) = self.interval() {
                    let size = hi - lo + 1;
                    if size.is_power_of_two() && lo % size == 0 {
                        let ip = Ipv4Addr::from(lo as u32);
                        return if size == 1 {
                            write!(f, "{ip}")
                        } else {
                            write!(f, "{ip}/{}", 32 - size.trailing_zeros())
                        };
                    }
                }
                for (i, (lo, hi)) in r.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    match (lo, hi) {
                        (0, 255) => f.write_str("*")?,
                        (lo, hi) if lo == hi => write!(f, "{lo}")?,
                        (lo, hi) => write!(f, "{lo}-{hi}")?,
                    }
                }
                Ok(())
            }
            IpPattern::V6(net) if net.prefix_len() == 128 => write!(f, "{}", net.addr()),
            IpPattern::V6(net) => write!(f, "{net}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn equivalent_spellings_are_one_canonical_form() {
        let a = IpPattern::parse("192.168.*.*").unwrap();
        let b = IpPattern::parse("192.168.0.0/16").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.canonical(), "192.168.0.0/16");
        assert_eq!(
            IpPattern::parse("172.16-31.*.*").unwrap().canonical(),
            "172.16.0.0/12"
        );
        assert_eq!(
            IpPattern::parse("192.10-50.*.*").unwrap().canonical(),
            "192.10-50.*.*"
        );
        assert_eq!(
            IpPattern::parse("::ffff:10.1.2.3").unwrap().canonical(),
            "10.1.2.3"
        );
        assert_eq!(
            IpPattern::parse("2001:db8::5").unwrap().canonical(),
            "2001:db8::5"
        );
    }

    #[test]
    fn matching_covers_every_spelling() {
        let cases = [
            ("192.168.1.10", "192.168.1.10", true),
            ("192.168.1.10", "192.168.1.11", false),
            ("::1", "::1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("10.*.*.*", "10.200.3.4", true),
            ("*.*.*.*", "203.0.113.9", true),
            ("*.*.*.*", "::1", false),
            ("172.16-31.*.*", "172.31.255.255", true),
            ("172.16-31.*.*", "172.32.0.0", false),
            ("10.1.2.1-100", "10.1.2.100", true),
            ("10.1.2.1-100", "10.1.2.101", false),
            ("10.*.5.*", "10.9.5.1", true),
            ("10.*.5.*", "10.9.6.1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
        ];
        for (pattern, addr, want) in cases {
            let p = IpPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(ip(addr)), want, "{pattern} vs {addr}");
        }
    }

    #[test]
    fn invalid_entries_name_the_problem() {
        for (entry, needle) in [
            ("300.1.1.1", "out of range"),
            ("10.5-2.*.*", "backwards"),
            ("10.*", "four octets"),
            ("1.2.3.4/33", "prefix length"),
            ("", "empty"),
            ("   ", "empty"),
            ("garbage", "four octets"),
            ("1.2.3.x", "not a number"),
            ("10.1.1.1/8", "host bits"),
            ("2001:db8::1/32", "host bits"),
            ("fe80::zz", "IPv6"),
            ("010.1.1.1", "leading zero"),
            ("1..2.3", "empty"),
        ] {
            let err = IpPattern::parse(entry).unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{entry:?}: {err} lacks {needle:?}"
            );
            assert_eq!(err.entry, entry.trim());
        }
    }

    #[test]
    fn span_orders_by_specificity() {
        let span = |s: &str| IpPattern::parse(s).unwrap().span();
        assert_eq!(span("1.2.3.4"), 0);
        assert_eq!(span("*.*.*.*"), u128::from(u32::MAX));
        assert_eq!(span("::/0"), u128::MAX);
        assert!(span("192.168.1.1") < span("192.168.0.0/16"));
        assert_eq!(span("10.1.2.1-100"), 99);
        assert!(IpPattern::parse("10.*.5.*").unwrap().interval().is_none());
    }
}
