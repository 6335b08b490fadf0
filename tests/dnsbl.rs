//! DNS blocklists end to end: the real binary looks clients up on a zone
//! served by the test DNS server on loopback, and refuses listed ones at
//! RCPT unless they authenticated or the allow list allows them.

mod common;

use common::dns::{DnsRecord, DnsServer};
use common::{Client, Server, cli, cli_stdin, plain, test_db};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn from(addr: SocketAddr, ip: [u8; 4]) -> Client {
    let mut c = Client::connect_from(addr, IpAddr::from(ip));
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO client.test", "250");
    c
}

/// Waits until 127.0.0.2's recipient is taken (an edit is in force).
fn taken_within_a_while(addr: SocketAddr, what: &str) {
    let start = Instant::now();
    loop {
        let mut c = from(addr, [127, 0, 0, 2]);
        c.expect("MAIL FROM:<someone@far.test>", "250");
        if c.cmd("RCPT TO:<bob@example.com>").starts_with("250") {
            return;
        }
        assert!(start.elapsed() < WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn listed_clients_are_refused_unless_authenticated_or_allowed() {
    let dns = DnsServer::start(vec![
        DnsRecord::a("2.0.0.127.bl.test", "127.0.0.2"),
        // An error code (Spamhaus: "query through a public resolver"):
        // not a listing.
        DnsRecord::a("4.0.0.127.bl.test", "127.255.255.254"),
        DnsRecord::ServFail {
            name: "5.0.0.127.bl.test".into(),
        },
    ]);
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[
            ("dns-servers", &dns.addr().to_string()),
            ("dnsbl", "bl.test"),
        ],
    );
    // Loopback clients are allowed by a fresh install's list: not here.
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["auth", "mode", "any-user"]);
    cli_stdin(&db, &["user", "add", "roamer", "--password-stdin"], "pw\n");
    let mut server = Server::start(&db);
    let addr = server.addr();

    let mut c = from(addr, [127, 0, 0, 2]);
    c.expect("MAIL FROM:<someone@far.test>", "250");
    let r = c.cmd("RCPT TO:<bob@example.com>");
    assert_eq!(
        r,
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    c.expect("RCPT TO:<carol@example.com>", "554 5.7.1");
    c.expect("QUIT", "221");
    let line = server.wait_for("is on the DNS blocklist bl.test (127.0.0.2)", WAIT);
    assert!(line.contains("to=<bob@example.com>"), "{line}");
    // One lookup for the session, and the next session of the same
    // client is answered from memory.
    let queries = dns.queries();
    assert_eq!(queries, 1);
    let mut c = from(addr, [127, 0, 0, 2]);
    c.expect("MAIL FROM:<someone@far.test>", "250");
    c.expect("RCPT TO:<bob@example.com>", "554 5.7.1");
    assert_eq!(dns.queries(), queries);

    // `check` looks the client up as the engine does.
    let check = |ip: &str| {
        common::run_cli(
            &db,
            &[
                "check",
                "--ip",
                ip,
                "--from",
                "someone@far.test",
                "--to",
                "bob@example.com",
            ],
            "",
        )
    };
    let out = check("127.0.0.2");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("blocked using bl.test") && out.stdout.contains("(dnsbl)"),
        "{out:?}"
    );
    assert_eq!(check("127.0.0.3").code, 0);

    // Not listed, an error code, a zone failing: taken (fail open), and
    // the problems said in the log.
    for ip in [[127, 0, 0, 3], [127, 0, 0, 4], [127, 0, 0, 5]] {
        let mut c = from(addr, ip);
        c.expect("MAIL FROM:<someone@far.test>", "250");
        c.expect("RCPT TO:<bob@example.com>", "250");
    }
    server.wait_for("answered 127.255.255.254, an error code", WAIT);
    server.wait_for("DNS blocklist bl.test:", WAIT);

    // Authenticated: not looked up.
    let before = dns.queries();
    let mut c = from(addr, [127, 0, 0, 2]);
    c.expect(&format!("AUTH PLAIN {}", plain("roamer", "pw")), "235");
    c.expect("MAIL FROM:<someone@far.test>", "250");
    c.expect("RCPT TO:<bob@example.com>", "250");
    assert_eq!(dns.queries(), before);

    // On the allow list: not looked up either.
    cli(&db, &["list", "add", "allow", "127.0.0.2"]);
    server.wait_for("configuration reloaded", WAIT);
    taken_within_a_while(addr, "the allow list did not exempt it");

    // Turned off: nobody is looked up.
    cli(&db, &["list", "remove", "allow", "127.0.0.2"]);
    cli(&db, &["policy", "set", "dnsbl", ""]);
    taken_within_a_while(addr, "dnsbl off still refused");
}

#[test]
fn the_setting_takes_zones_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let ok = common::run_cli(
        &db,
        &["policy", "set", "dnsbl", "Zen.Spamhaus.org, bl.spamcop.net"],
        "",
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout
            .contains("dnsbl = zen.spamhaus.org,bl.spamcop.net"),
        "{ok:?}"
    );
    for bad in [
        "not a zone",
        "localhost",
        "a..b",
        "a1.test,a2.test,a3.test,a4.test,a5.test,a6.test,a7.test,a8.test,a9.test",
    ] {
        let out = common::run_cli(&db, &["policy", "set", "dnsbl", bad], "");
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains("dnsbl"), "{bad}: {out:?}");
    }
}

#[test]
fn an_ipv4_client_of_a_dual_stack_listener_is_looked_up_by_its_ipv4_address() {
    // Found by an attack: such a client arrives as ::ffff:127.0.0.2, and
    // was looked up by 32 nibbles, which no zone lists.
    if std::net::TcpListener::bind("[::]:0").is_err() {
        eprintln!("skipped: no IPv6 on this machine");
        return;
    }
    let dns = DnsServer::start(vec![DnsRecord::a("2.0.0.127.bl.test", "127.0.0.2")]);
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[
            ("dns-servers", &dns.addr().to_string()),
            ("dnsbl", "bl.test"),
        ],
    );
    cli(&db, &["bind", "remove", "127.0.0.1:0"]);
    cli(&db, &["bind", "add", "[::]:0"]);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let mut server = Server::start(&db);
    let line = server.wait_for("listening on [::]:", WAIT);
    let port: u16 = line
        .split("listening on [::]:")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .expect("the port");
    let mut c = from(SocketAddr::from(([127, 0, 0, 1], port)), [127, 0, 0, 2]);
    c.expect("MAIL FROM:<someone@far.test>", "250");
    let r = c.cmd("RCPT TO:<bob@example.com>");
    assert!(
        r.starts_with("554 5.7.1") && r.contains("blocked using bl.test"),
        "{r}"
    );
}
