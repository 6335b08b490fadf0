//! `/metrics` from the real binary, scraped over HTTP and read by a
//! Prometheus text-format parser: the counts follow what happened.

mod common;

use common::{Client, Server, cli, cli_stdin, test_db};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn get(port: u16, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// A database with metrics served on a free loopback port: (that port,
/// the directory holding the database, the database).
fn with_metrics() -> (u16, tempfile::TempDir, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[("metrics-listen", &format!("127.0.0.1:{port}"))],
    );
    (port, dir, db)
}

/// Samples by name and labels (`name{k="v",...}`, labels sorted).
fn samples(body: &str) -> HashMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            let key = if labels.is_empty() {
                s.metric
            } else {
                format!("{}{{{}}}", s.metric, labels.join(","))
            };
            (key, value)
        })
        .collect()
}

#[test]
fn metrics_are_served_parsed_and_follow_the_traffic() {
    let (port, _dir, db) = with_metrics();
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "metrics not served");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One message in, one relay refused, one wrong password.
    common::send_queued(
        addr,
        "someone@far.test",
        &["bob@example.com"],
        "Subject: m\r\n\r\nhi\r\n",
    );
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<spam@far.test>", "250");
    c.expect("RCPT TO:<x@elsewhere.test>", "554");
    c.expect("RSET", "250");
    let bad = common::plain("alice", "wrong");
    c.expect(&format!("AUTH PLAIN {bad}"), "535");
    // Counted within a tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let (head, body) = get(port, "/metrics");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        let m = samples(&body);
        let measured = m
            .get("relaygate_spool_free_bytes")
            .is_some_and(|f| *f >= 0.0);
        if m.get("relaygate_auth_failures_total") == Some(&1.0) && measured {
            break m;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m["relaygate_messages_accepted_total"], 1.0, "{m:?}");
    assert!(m["relaygate_messages_accepted_bytes_total"] > 10.0);
    assert_eq!(
        m[r#"relaygate_decisions_total{class="inbound",reason="inbound_to_local",verdict="allow"}"#],
        1.0,
        "{m:?}"
    );
    assert_eq!(
        m[r#"relaygate_decisions_total{class="relay",reason="ip_denied",verdict="deny"}"#], 1.0,
        "{m:?}"
    );
    let listener = format!("listener=\"{addr}\"");
    assert_eq!(
        m[&format!("relaygate_sessions_total{{{listener}}}")],
        2.0,
        "{m:?}"
    );
    // The second session is still open.
    assert_eq!(
        m[&format!("relaygate_sessions_open{{{listener}}}")],
        1.0,
        "{m:?}"
    );
    assert_eq!(m["relaygate_queue_messages"], 1.0, "{m:?}");
    assert!(m.contains_key("relaygate_events_dropped"));
    assert!(m.contains_key("relaygate_policy_reloads_total"));
    // The spool disk's free bytes, as `df` counts them for a user
    // (measured each second).
    let free = m["relaygate_spool_free_bytes"];
    // (Within the disk's size: other writers move the free figure.)
    let df = std::process::Command::new("df")
        .args(["--output=size", "-B1"])
        .arg(&db)
        .output()
        .expect("df");
    let size: f64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df's figure");
    assert!(
        free > 0.0 && free <= size,
        "metrics {free}, disk size {size}"
    );
    // Anything else is a 404; and the setting is live: off, no listener.
    let (head, _) = get(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    drop(c);
    cli(&db, &["policy", "set", "metrics-listen", ""]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still served after metrics-listen was cleared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = common::run_cli(&db, &["policy", "set", "metrics-listen", "nowhere"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
    server.drain_log();
}

/// Every way a transaction ends takes it off the count of transactions
/// under way (which also decides when the spool gathers commits): a
/// message stored, RSET, QUIT, a client that just goes. A refused DATA
/// leaves it under way (MAIL still holds) until RSET.
#[test]
fn transactions_under_way_are_counted_until_each_ends() {
    let (port, _dir, db) = with_metrics();
    let mut server = Server::start(&db);
    let addr = server.addr();
    let open_now = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let (_, body) = get(port, "/metrics");
                return samples(&body)["relaygate_transactions_open"];
            }
            assert!(Instant::now() < deadline, "metrics not served");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(open_now(), 0.0);
    // Six sessions, each with a transaction under way.
    let mut clients: Vec<Client> = (0..6)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.reply();
            c.expect("EHLO client.test", "250");
            c.expect("MAIL FROM:<a@far.test>", "250");
            c.expect("RCPT TO:<bob@example.com>", "250");
            c
        })
        .collect();
    assert_eq!(open_now(), 6.0);
    // The message stored; RSET; QUIT. And a new one whose DATA is refused
    // for want of a recipient.
    let mut stored = clients.pop().unwrap();
    stored.expect("DATA", "354");
    stored.send(b"Subject: t\r\n\r\nhi\r\n.\r\n");
    assert!(stored.reply().starts_with("250"));
    clients.pop().unwrap().expect("RSET", "250");
    clients.pop().unwrap().expect("QUIT", "221");
    let mut refused = Client::connect(addr);
    refused.reply();
    refused.expect("EHLO client.test", "250");
    refused.expect("MAIL FROM:<a@far.test>", "250");
    refused.expect("RCPT TO:<x@elsewhere.test>", "550 5.7.1");
    refused.expect("DATA", "5");
    assert_eq!(open_now(), 4.0, "three ended, the refused one still open");
    refused.expect("RSET", "250");
    // The rest just go away; the server sees them close.
    clients.clear();
    drop(stored);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_now() != 0.0 {
        assert!(Instant::now() < deadline, "transactions still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.drain_log();
}
