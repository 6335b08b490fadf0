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
    hosts
        .iter()
        .map(|h| (h.name.as_str(), h.preference))
        .collect()
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

/// A query by hand: `name` (case kept), `qtype`, RD set, with an EDNS OPT.
fn raw_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    q
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

#[test]
fn dns_server_wire_format() {
    use std::io::{Read, Write};
    let dns = DnsServer::start(vec![
        DnsRecord::mx("two.test", 20, "mx2.two.test"),
        DnsRecord::mx("two.test", 10, "mx1.two.test"),
        DnsRecord::a("two.test", "127.0.0.1"),
    ]);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = |q: &[u8]| {
        udp.send_to(q, dns.addr()).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = udp.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    };

    let q = raw_query(0xbeef, "Two.TEST", 15);
    let r = ask(&q);
    assert_eq!(u16_at(&r, 0), 0xbeef, "id echoed");
    // QR, opcode 0, AA, RD echoed, RA clear, NOERROR.
    assert_eq!(u16_at(&r, 2), 0x8000 | 0x0400 | 0x0100);
    assert_eq!(
        (u16_at(&r, 4), u16_at(&r, 6), u16_at(&r, 8), u16_at(&r, 10)),
        (1, 2, 0, 1)
    );
    let qlen = q.len() - 12 - 11;
    assert_eq!(
        &r[12..12 + qlen],
        &q[12..12 + qlen],
        "question echoed, case kept"
    );
    let first = 12 + qlen;
    assert_eq!(
        &r[first..first + 4],
        &[0xc0, 0x0c, 0, 15],
        "owner points at the question"
    );
    assert_eq!(
        &r[r.len() - 11..],
        &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0],
        "minimal OPT"
    );

    // Known name, no record of the type: NOERROR, empty. Unknown: NXDOMAIN.
    let r = ask(&raw_query(7, "two.test", 28));
    assert_eq!(u16_at(&r, 2) & 0x000f, 0);
    assert_eq!(u16_at(&r, 6), 0);
    let r = ask(&raw_query(8, "nope.test", 1));
    assert_eq!(u16_at(&r, 2) & 0x000f, 3);
    assert_eq!(u16_at(&r, 0), 8);

    // The same over TCP, two queries on one connection.
    let mut tcp = std::net::TcpStream::connect(dns.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for id in [1u16, 2] {
        let q = raw_query(id, "two.test", 1);
        tcp.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
        tcp.write_all(&q).unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).unwrap();
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut r).unwrap();
        assert_eq!(u16_at(&r, 0), id);
        assert_eq!(u16_at(&r, 6), 1);
        assert_eq!(&r[r.len() - 15..r.len() - 11], &[127, 0, 0, 1]);
    }
    assert!(dns.queries() >= 5);
}

/// The system configuration is only read here, never queried: with a
/// resolv.conf naming servers, the resolver builds.
#[test]
fn system_resolver_builds_from_resolv_conf() {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !conf
        .lines()
        .any(|l| l.trim_start().starts_with("nameserver"))
    {
        eprintln!("skipped: /etc/resolv.conf names no nameserver here");
        return;
    }
    if let Err(e) = MxResolver::new(&[]) {
        panic!("the system resolver did not build: {e:?}");
    }
}
