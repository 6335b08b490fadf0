//! DNS blocklists (DNSBL, RFC 5782): a client listed on one of the `dnsbl`
//! zones is refused at RCPT with 554 5.7.1, unless it authenticated or
//! the allow list allows it, as Postfix's `reject_rbl_client` placed after
//! `permit_mynetworks` and `permit_sasl_authenticated`. (Roaming users on
//! dynamic addresses are on such lists: Spamhaus's PBL, for one.)
//!
//! The query name and the reading of an answer are pure. [`DnsblChecker`]
//! asks every zone at once, remembers each client's answer for
//! [`REMEMBER`], and fails open: a zone that does not answer lists nobody,
//! and an answer that is an error code (127.255.255.x: Spamhaus refusing
//! queries from public resolvers, for one) lists nobody either, and is
//! reported.

use crate::answer_memory::AnswerMemory;
use crate::delivery::mx::MxResolver;
use crate::events::BlocklistTrouble;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a client's answer is remembered (listed or not).
pub const REMEMBER: Duration = Duration::from_secs(600);
/// How long "not listed" is remembered when a zone did not answer.
pub const UNANSWERED: Duration = Duration::from_secs(60);
/// The longest the lookups of one client may take; then it is not listed.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Clients remembered at most (see [`AnswerMemory`]).
const MAX_REMEMBERED: usize = 100_000;
/// A problem with a zone is reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(600);
/// Where a problem with the resolver itself is kept (not a zone name:
/// zones have a dot).
const RESOLVER: &str = "(resolver)";
/// Zones at most.
pub const MAX_ZONES: usize = 8;

/// A client found on a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub zone: String,
    /// The zone's answer (127.0.0.x: what kind of listing).
    pub answer: Ipv4Addr,
}

/// The name to look up for `ip` on `zone` (RFC 5782 2.1, 2.4): IPv4 as
/// its octets reversed, IPv6 as its 32 nibbles reversed.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str(zone);
            name
        }
    }
}

/// What one zone's A records say: listed (an address in 127.0.0.0/8,
/// RFC 5782 2.3), an error code (127.255.255.0/24), or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneAnswer {
    Listed(Ipv4Addr),
    ErrorCode(Ipv4Addr),
    NotListed,
}

pub fn read_answer(answers: &[Ipv4Addr]) -> ZoneAnswer {
    let loopback = |a: &&Ipv4Addr| a.octets()[0] == 127;
    let error = |a: &&Ipv4Addr| a.octets()[..3] == [127, 255, 255];
    if let Some(a) = answers.iter().filter(loopback).find(|a| !error(a)) {
        return ZoneAnswer::Listed(*a);
    }
    match answers.iter().find(error) {
        Some(a) => ZoneAnswer::ErrorCode(*a),
        None => ZoneAnswer::NotListed,
    }
}

/// The outcome of looking a client up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The first zone, in the configured order, that lists the client.
    pub listing: Option<Listing>,
    /// Zones that failed or answered with an error code (`None`: the
    /// resolver), to be reported (at most once per zone every
    /// [`REPORT_EVERY`]).
    pub problems: Vec<(Option<String>, BlocklistTrouble)>,
}

/// Looks clients up on the configured zones, and remembers the answers.
pub struct DnsblChecker {
    remembered: AnswerMemory<IpAddr, Option<Listing>>,
    /// The resolver, built for the `dns-servers` it was built with.
    resolver: Mutex<Option<(Vec<SocketAddr>, MxResolver)>>,
    reported: Mutex<HashMap<String, Instant>>,
}

impl Default for DnsblChecker {
    fn default() -> DnsblChecker {
        DnsblChecker {
            remembered: AnswerMemory::new(MAX_REMEMBERED),
            resolver: Mutex::default(),
            reported: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DnsblChecker {
    /// Forgets every answer (the zones may have changed).
    pub fn forget_all(&self) {
        self.remembered.forget_all();
    }

    /// Whether `ip` is on one of `zones`, asking the DNS (`servers`, or
    /// the system's when empty) unless the answer is remembered.
    pub async fn check(&self, servers: &[SocketAddr], zones: &[String], ip: IpAddr) -> Lookup {
        // An IPv4 client on a dual-stack listener arrives as ::ffff:a.b.c.d;
        // the zones list it by its IPv4 address.
        let ip = ip.to_canonical();
        if let Some(listing) = self.recall(ip) {
            return Lookup {
                listing,
                problems: Vec::new(),
            };
        }
        let resolver = match self.resolver(servers) {
            Ok(r) => r,
            Err(e) => {
                return Lookup {
                    listing: None,
                    problems: self.to_report(vec![(
                        RESOLVER.into(),
                        BlocklistTrouble::Failed { error: e },
                    )]),
                };
            }
        };
        let mut asks = tokio::task::JoinSet::new();
        for (i, zone) in zones.iter().enumerate() {
            let resolver = resolver.clone();
            let name = query_name(ip, zone);
            asks.spawn(async move {
                let answer = resolver.ipv4_of(&name).await;
                (
                    i,
                    answer.map_err(|error| BlocklistTrouble::Failed { error }),
                )
            });
        }
        let mut answers: Vec<Option<Result<Vec<Ipv4Addr>, BlocklistTrouble>>> =
            vec![None; zones.len()];
        let _ = tokio::time::timeout(DEADLINE, async {
            while let Some(done) = asks.join_next().await {
                if let Ok((i, answer)) = done
                    && let Some(slot) = answers.get_mut(i)
                {
                    // A listing decides: the other zones are not waited for.
                    let listed =
                        matches!(&answer, Ok(a) if matches!(read_answer(a), ZoneAnswer::Listed(_)));
                    *slot = Some(answer);
                    if listed {
                        break;
                    }
                }
            }
        })
        .await;
        asks.abort_all();
        let decided = answers
            .iter()
            .any(|a| matches!(a, Some(Ok(a)) if matches!(read_answer(a), ZoneAnswer::Listed(_))));
        let answers = zones
            .iter()
            .cloned()
            .zip(answers)
            .filter_map(|(zone, a)| match a {
                Some(a) => Some((zone, a)),
                // Not waited for once another zone listed the client.
                None if decided => None,
                None => Some((
                    zone,
                    Err(BlocklistTrouble::NoAnswer {
                        within_secs: DEADLINE.as_secs(),
                    }),
                )),
            });
        let mut listing = None;
        let mut problems = Vec::new();
        let mut complete = true;
        for (zone, answer) in answers {
            match answer.map(|a| read_answer(&a)) {
                Ok(ZoneAnswer::Listed(answer)) => {
                    listing = listing.or(Some(Listing { zone, answer }));
                }
                Ok(ZoneAnswer::NotListed) => {}
                Ok(ZoneAnswer::ErrorCode(code)) => {
                    complete = false;
                    problems.push((zone, BlocklistTrouble::ErrorCode { answer: code }));
                }
                Err(e) => {
                    complete = false;
                    problems.push((zone, e));
                }
            }
        }
        // A listing holds whatever the other zones said. "Not listed" is
        // remembered for its full time when every zone answered, and for
        // a minute when one failed: while a zone is down, each new client
        // waits for it once, not at every session.
        if listing.is_some() || complete {
            self.remember(ip, listing.clone(), REMEMBER);
        } else {
            self.remember(ip, None, UNANSWERED);
        }
        Lookup {
            listing,
            problems: self.to_report(problems),
        }
    }

    fn resolver(&self, servers: &[SocketAddr]) -> Result<MxResolver, String> {
        let mut slot = lock(&self.resolver);
        if let Some((s, r)) = slot.as_ref()
            && s == servers
        {
            return Ok(r.clone());
        }
        let r = MxResolver::new(servers).map_err(|e| e.to_string())?;
        *slot = Some((servers.to_vec(), r.clone()));
        Ok(r)
    }

    fn recall(&self, ip: IpAddr) -> Option<Option<Listing>> {
        self.remembered.recall(&ip)
    }

    fn remember(&self, ip: IpAddr, listing: Option<Listing>, ttl: Duration) {
        self.remembered.remember(ip, listing, ttl);
    }

    /// The problems not reported in the last [`REPORT_EVERY`]; the
    /// resolver's with no zone.
    fn to_report(
        &self,
        problems: Vec<(String, BlocklistTrouble)>,
    ) -> Vec<(Option<String>, BlocklistTrouble)> {
        let now = Instant::now();
        let mut reported = lock(&self.reported);
        problems
            .into_iter()
            .filter(|(zone, _)| {
                let due = reported
                    .get(zone)
                    .is_none_or(|at| now.duration_since(*at) >= REPORT_EVERY);
                if due {
                    reported.insert(zone.clone(), now);
                }
                due
            })
            .map(|(zone, trouble)| ((zone != RESOLVER).then_some(zone), trouble))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_client_on_a_dual_stack_listener_is_looked_up_by_its_ipv4_address() {
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(
            query_name(mapped.to_canonical(), "bl.example"),
            "99.2.0.192.bl.example"
        );
    }

    #[test]
    fn query_names_follow_rfc_5782() {
        assert_eq!(
            query_name("192.0.2.99".parse().unwrap(), "bl.example"),
            "99.2.0.192.bl.example"
        );
        // RFC 5782 2.4's own example.
        assert_eq!(
            query_name(
                "2001:db8:1:2:3:4:567:89ab".parse().unwrap(),
                "ugly.example.com"
            ),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
    }

    #[test]
    fn only_loopback_answers_list_and_error_codes_do_not() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(read_answer(&[]), ZoneAnswer::NotListed);
        assert_eq!(
            read_answer(&[ip("127.0.0.2")]),
            ZoneAnswer::Listed(ip("127.0.0.2"))
        );
        assert_eq!(read_answer(&[ip("10.0.0.1")]), ZoneAnswer::NotListed);
        assert_eq!(
            read_answer(&[ip("127.255.255.254")]),
            ZoneAnswer::ErrorCode(ip("127.255.255.254"))
        );
        assert_eq!(
            read_answer(&[ip("127.255.255.254"), ip("127.0.0.4")]),
            ZoneAnswer::Listed(ip("127.0.0.4"))
        );
    }

    #[test]
    fn a_problem_is_reported_once_in_a_while() {
        let c = DnsblChecker::default();
        let trouble = || BlocklistTrouble::NoAnswer { within_secs: 5 };
        let p = || vec![("zen.test".to_string(), trouble())];
        assert_eq!(c.to_report(p()), [(Some("zen.test".into()), trouble())]);
        assert!(c.to_report(p()).is_empty());
        // Another zone, and the resolver (no zone), on their own clocks.
        let failed = BlocklistTrouble::Failed { error: "x".into() };
        assert_eq!(
            c.to_report(vec![
                ("other.test".into(), failed.clone()),
                (RESOLVER.into(), failed.clone())
            ]),
            [(Some("other.test".into()), failed.clone()), (None, failed)]
        );
    }
}
