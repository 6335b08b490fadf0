//! MX resolution against the test DNS server on loopback: preference
//! order, implicit MX, null MX, NXDOMAIN, exchanges without addresses and
//! temporary failures. No query ever leaves 127.0.0.1.

mod common;

use common::dns::{DnsRecord, DnsServer};
use relaygate::delivery::mx::{MxConfig, MxError, MxHost, MxResolver};
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn resolver(dns: &DnsServer) -> MxResolver {
    MxResolver::with_config(&MxConfig {
        servers: vec![dns.addr()],
        timeout: Duration::from_secs(1),
        attempts: 1,
        shuffle_equal_preference: false,
    })
    .expect("resolver")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn names(hosts: &[MxHost]) -> Vec<(&str, u16)> {
    hosts.iter().map(|h| (h.name.as_str(), h.preference)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preference_order_with_loopback_addresses() {
    // Listed backwards in the zone: 20 first, 10 must come first.
    let dns = DnsServer::start(vec![
        DnsRecord::mx("two.test", 20, "mx2.two.test"),
        DnsRecord::mx("two.test", 10, "mx1.two.test"),
        DnsRecord::a("mx1.two.test", "127.0.0.2"),
        DnsRecord::a("mx2.two.test", "127.0.0.1"),
        DnsRecord::aaaa("mx2.two.test", "::1"),
    ]);
    let hosts = resolver(&dns).resolve("Two.Test.").await.expect("resolve");
    assert_eq!(names(&hosts), [("mx1.two.test", 10), ("mx2.two.test", 20)]);
    assert_eq!(hosts[0].addrs, [ip("127.0.0.2")]);
    assert_eq!(hosts[1].addrs, [ip("127.0.0.1"), ip("::1")]);
    assert!(hosts.iter().flat_map(|h| &h.addrs).all(|a| a.is_loopback()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_preferences_are_all_returned() {
    let dns = DnsServer::start(vec![
        DnsRecord::mx("eq.test", 10, "b.eq.test"),
        DnsRecord::mx("eq.test", 10, "a.eq.test"),
        DnsRecord::mx("eq.test", 5, "first.eq.test"),
        DnsRecord::a("a.eq.test", "127.0.0.3"),
        DnsRecord::a("b.eq.test", "127.0.0.4"),
        DnsRecord::a("first.eq.test", "127.0.0.5"),
    ]);
    // Stable: the answer's order within a preference.
    let stable = resolver(&dns).resolve("eq.test").await.expect("resolve");
    assert_eq!(
        names(&stable),
        [("first.eq.test", 5), ("b.eq.test", 10), ("a.eq.test", 10)]
    );
    // Shuffled (the default): preference order still holds.
    let shuffling = MxResolver::with_config(&MxConfig {
        servers: vec![dns.addr()],
        timeout: Duration::from_secs(1),
        attempts: 1,
        ..MxConfig::default()
    })
    .expect("resolver");
    for _ in 0..5 {
        let hosts = shuffling.resolve("eq.test").await.expect("resolve");
        assert_eq!(hosts[0].name, "first.eq.test");
        let mut rest: Vec<_> = hosts[1..].iter().map(|h| h.name.as_str()).collect();
        rest.sort();
        assert_eq!(rest, ["a.eq.test", "b.eq.test"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_mx_falls_back_to_a_and_aaaa() {
    let dns = DnsServer::start(vec![
        DnsRecord::a("plain.test", "127.0.0.1"),
        DnsRecord::aaaa("plain.test", "::1"),
        DnsRecord::aaaa("six.test", "::1"),
    ]);
    let r = resolver(&dns);
    let hosts = r.resolve("plain.test").await.expect("resolve");
    assert_eq!(
        hosts,
        [MxHost {
            name: "plain.test".into(),
            preference: 0,
            addrs: vec![ip("127.0.0.1"), ip("::1")],
        }]
    );
    let hosts = r.resolve("six.test").await.expect("resolve");
    assert_eq!(hosts[0].addrs, [ip("::1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_is_permanent() {
    let dns = DnsServer::start(vec![
        DnsRecord::mx("nomail.test", 0, "."),
        DnsRecord::a("nomail.test", "127.0.0.1"),
    ]);
    let err = resolver(&dns).resolve("nomail.test").await.unwrap_err();
    assert_eq!(err, MxError::NullMx);
    assert!(err.is_permanent());
    assert_eq!(err.enhanced_status(), "5.1.10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_is_permanent() {
    let dns = DnsServer::start(vec![DnsRecord::a("exists.test", "127.0.0.1")]);
    let err = resolver(&dns).resolve("missing.test").await.unwrap_err();
    assert_eq!(err, MxError::NoSuchDomain);
    assert!(err.is_permanent());
    assert_eq!(err.enhanced_status(), "5.1.2");
}

/// Decision: an exchange without an address is skipped; if none has one,
/// the domain is undeliverable (permanent, 5.4.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_without_addresses() {
    let dns = DnsServer::start(vec![
        // The preferred exchange does not exist: skipped.
        DnsRecord::mx("half.test", 10, "gone.half.test"),
        DnsRecord::mx("half.test", 20, "mx.half.test"),
        DnsRecord::a("mx.half.test", "127.0.0.2"),
        // Neither exchange has an address (one NXDOMAIN, one NODATA).
        DnsRecord::mx("dead.test", 10, "gone.dead.test"),
        DnsRecord::mx("dead.test", 20, "noaddr.dead.test"),
        DnsRecord::mx("noaddr.dead.test", 10, "elsewhere.test"),
        // A null MX next to a real one is ignored (RFC 7505 forbids the mix).
        DnsRecord::mx("mixed.test", 0, "."),
        DnsRecord::mx("mixed.test", 10, "mx.mixed.test"),
        DnsRecord::a("mx.mixed.test", "127.0.0.1"),
    ]);
    let r = resolver(&dns);
    let hosts = r.resolve("half.test").await.expect("resolve");
    assert_eq!(names(&hosts), [("mx.half.test", 20)]);

    let err = r.resolve("dead.test").await.unwrap_err();
    assert!(matches!(err, MxError::NoMailHost(_)), "{err:?}");
    assert!(err.is_permanent());
    assert_eq!(err.enhanced_status(), "5.4.4");
    assert!(err.to_string().contains("gone.dead.test"), "{err}");
    assert!(err.to_string().contains("noaddr.dead.test"), "{err}");

    let hosts = r.resolve("mixed.test").await.expect("resolve");
    assert_eq!(names(&hosts), [("mx.mixed.test", 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_mx_and_no_address_is_permanent() {
    let dns = DnsServer::start(vec![DnsRecord::txt("textonly.test", "v=spf1 -all")]);
    let err = resolver(&dns).resolve("textonly.test").await.unwrap_err();
    assert!(matches!(err, MxError::NoMailHost(_)), "{err:?}");
    assert!(err.is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_and_timeout_are_temporary() {
    let dns = DnsServer::start(vec![
        DnsRecord::ServFail {
            name: "broken.test".into(),
        },
        DnsRecord::NoResponse {
            name: "silent.test".into(),
        },
        DnsRecord::mx("lame.test", 10, "mx.lame.test"),
        DnsRecord::ServFail {
            name: "mx.lame.test".into(),
        },
    ]);
    let r = resolver(&dns);
    let err = r.resolve("broken.test").await.unwrap_err();
    assert!(matches!(err, MxError::Temporary(_)), "{err:?}");
    assert!(!err.is_permanent());
    assert_eq!(err.enhanced_status(), "4.4.3");

    let started = Instant::now();
    let err = r.resolve("silent.test").await.unwrap_err();
    assert!(matches!(err, MxError::Temporary(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "timeout took {:?}",
        started.elapsed()
    );

    let err = r.resolve("lame.test").await.unwrap_err();
    assert!(matches!(err, MxError::Temporary(_)), "{err:?}");
    assert!(err.to_string().contains("mx.lame.test"), "{err}");
}
