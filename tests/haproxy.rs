//! Debian's HAProxy in TCP mode with send-proxy-v2 in front of two real
//! relaygate nodes on loopback: each node decides by the address of the
//! client behind HAProxy; with one node killed, HAProxy sends the traffic
//! to the other; the killed node's spool drains after it restarts. Also
//! the PROXY binding's refusals, from the real binary. Skips with a
//! message when haproxy is not installed (`.ci/run` installs it).

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Client, Server, cli, test_db};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A node: only 127.0.0.10 may relay; it listens on `port` and requires
/// the PROXY protocol from 127.0.0.1 (HAProxy).
fn node(dir: &std::path::Path, port: u16, sink: SocketAddr) -> std::path::PathBuf {
    let db = test_db(dir, &[("retry-first", "1")]);
    cli(&db, &["bind", "remove", "127.0.0.1:0"]);
    let out = cli(
        &db,
        &[
            "bind",
            "add",
            &format!("127.0.0.1:{port}"),
            "--proxy-protocol",
            "--trusted-proxy",
            "127.0.0.1",
        ],
    );
    assert!(out.contains("PROXY protocol from 127.0.0.1/32"), "{out}");
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["list", "add", "allow", "127.0.0.10"]);
    cli(
        &db,
        &["route", "add", "*", &sink.to_string(), "--tls", "none"],
    );
    db
}

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(dir: &std::path::Path, front: u16, nodes: &[u16]) -> HaProxy {
    let servers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "    server node{i} 127.0.0.1:{p} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1\n"
            )
        })
        .collect();
    let cfg = format!(
        "defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
         frontend smtp\n    bind 127.0.0.1:{front}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    // Up when the frontend accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    HaProxy(child)
}

/// One message through `addr` from `from`; the RCPT reply and the final one.
fn send(addr: SocketAddr, from: IpAddr, n: usize) -> (String, String) {
    let mut c = Client::connect_from(addr, from);
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    let rcpt = c.cmd(&format!("RCPT TO:<r{n}@far.test>"));
    if !rcpt.starts_with("250") {
        c.cmd("QUIT");
        return (rcpt, String::new());
    }
    c.expect("DATA", "354");
    c.send(format!("Subject: {n}\r\n\r\nmessage {n}\r\n.\r\n").as_bytes());
    let end = c.reply();
    c.cmd("QUIT");
    (rcpt, end)
}

#[test]
fn haproxy_in_front_of_two_nodes() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install haproxy; .ci/run does)");
        return;
    }
    let sink = Sink::start(SinkOptions::default());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let ports = [free_port(), free_port()];
    let dbs = [
        node(dirs[0].path(), ports[0], sink.addr()),
        node(dirs[1].path(), ports[1], sink.addr()),
    ];
    // Node 1 keeps what it accepts (delivery off) until it is killed.
    cli(&dbs[0], &["policy", "set", "delivery", "off"]);
    let mut n1 = Server::start(&dbs[0]);
    n1.addr();
    let mut n2 = Server::start(&dbs[1]);
    n2.addr();
    let front = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _haproxy = haproxy(dir.path(), front, &ports);
    let front: SocketAddr = ([127, 0, 0, 1], front).into();
    let allowed: IpAddr = "127.0.0.10".parse().unwrap();
    let denied: IpAddr = "127.0.0.20".parse().unwrap();

    // Decided by the client behind HAProxy, on both nodes (round robin).
    let mut accepted = 0;
    for n in 0..4 {
        let (rcpt, end) = send(front, allowed, n);
        assert!(rcpt.starts_with("250"), "{rcpt}");
        assert!(end.starts_with("250 2.0.0 Ok: queued as"), "{end}");
        accepted += 1;
        let (rcpt, _) = send(front, denied, 100 + n);
        assert!(rcpt.starts_with("554 5.7.1"), "{rcpt}");
    }
    for (server, name) in [(&mut n1, "node 1"), (&mut n2, "node 2")] {
        server.wait_for("decision session=", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(300));
        server.drain_log();
        for line in server
            .log
            .iter()
            .filter(|l| l.contains("decision session="))
        {
            if line.contains("peer=127.0.0.10") {
                assert!(line.contains("250 2.1.5"), "{name}: {line}");
            } else {
                assert!(
                    line.contains("peer=127.0.0.20"),
                    "{name}: not the client's address: {line}"
                );
                assert!(line.contains("554 5.7.1"), "{name}: {line}");
            }
        }
    }
    let all: Vec<&String> = n1.log.iter().chain(n2.log.iter()).collect();
    assert_eq!(
        all.iter()
            .filter(|l| l.contains("decision session="))
            .count(),
        8
    );
    // The Received: header names the client, not the proxy.
    let first = sink.wait_for(1, Duration::from_secs(10));
    assert!(
        first[0].body_str().contains("[127.0.0.10]"),
        "{}",
        first[0].body_str()
    );

    // Node 1 killed: HAProxy takes it out; every message still goes in.
    n1.kill();
    std::thread::sleep(Duration::from_millis(600));
    for n in 10..16 {
        let (rcpt, end) = send(front, allowed, n);
        assert!(
            rcpt.starts_with("250") && end.starts_with("250"),
            "{rcpt} {end}"
        );
        accepted += 1;
    }
    // Node 1 back, delivering: its spool drains; the sink has everything.
    cli(&dbs[0], &["policy", "set", "delivery", "on"]);
    let mut n1 = Server::start(&dbs[0]);
    n1.addr();
    let got = sink.wait_for(accepted, Duration::from_secs(30));
    assert_eq!(got.len(), accepted, "every accepted message delivered once");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(&dbs[0], &["queue", "show"]).contains("the queue is empty") {
        assert!(Instant::now() < deadline, "node 1's spool did not drain");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(n1);
}

#[test]
fn a_proxy_binding_refuses_strangers_and_bad_headers_without_a_greeting() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let db = test_db(
        dir.path(),
        &[("metrics-listen", &format!("127.0.0.1:{metrics_port}"))],
    );
    let port = free_port();
    cli(&db, &["bind", "remove", "127.0.0.1:0"]);
    cli(
        &db,
        &[
            "bind",
            "add",
            &format!("127.0.0.1:{port}"),
            "--proxy-protocol",
            "--trusted-proxy",
            "127.0.0.1,127.0.0.2",
        ],
    );
    let shown = cli(&db, &["bind", "show"]);
    assert!(
        shown.contains("PROXY protocol from 127.0.0.1/32, 127.0.0.2/32"),
        "{shown}"
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    // The log says which listener takes the PROXY protocol.
    server.wait_for(
        &format!("listening on 127.0.0.1:{port} (smtp, PROXY protocol)"),
        Duration::from_secs(5),
    );
    let closed_silently = |from: &str, send: &[u8]| {
        let mut c = Client::connect_from(addr, from.parse().unwrap());
        let _ = c.stream.write_all(send);
        let mut buf = [0u8; 64];
        matches!(c.stream.read(&mut buf), Ok(0) | Err(_))
    };
    // Not a trusted proxy: closed at once, even with a good header.
    assert!(closed_silently(
        "127.0.0.9",
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 25\r\n"
    ));
    server.wait_for("127.0.0.9 is not a trusted proxy", Duration::from_secs(5));
    // A trusted proxy without a header (a client speaking first).
    assert!(closed_silently("127.0.0.2", b"EHLO client.test\r\n"));
    server.wait_for("no PROXY header", Duration::from_secs(5));
    // A malformed header.
    assert!(closed_silently(
        "127.0.0.2",
        b"PROXY TCP4 203.0.113.7 nope 1 2\r\n"
    ));
    server.wait_for("a malformed PROXY v1 header", Duration::from_secs(5));
    // A good v1 header: the session is the client's.
    let mut c = Client::connect_from(addr, "127.0.0.2".parse().unwrap());
    c.send(b"PROXY TCP4 192.0.2.44 127.0.0.1 4000 25\r\n");
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@far.test>", "250");
    c.expect("RCPT TO:<x@elsewhere.test>", "554");
    server.wait_for("peer=192.0.2.44", Duration::from_secs(5));
    server.wait_for(
        "opened from 192.0.2.44:4000 to 127.0.0.1:25 (smtp) through the load balancer 127.0.0.2:",
        Duration::from_secs(5),
    );
    // The header's destination is the client's story: a session counts
    // under the binding that took it, so a proxy (or a client behind it)
    // cannot make up metric labels.
    let mut c = Client::connect_from(addr, "127.0.0.2".parse().unwrap());
    c.send(b"PROXY TCP4 192.0.2.45 198.51.100.9 4001 4444\r\n");
    assert!(c.reply().starts_with("220"));
    c.expect("QUIT", "221");
    server.wait_for("the client said QUIT", Duration::from_secs(5));
    let want = format!("relaygate_sessions_total{{listener=\"127.0.0.1:{port}\"}} 2");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let scraped = loop {
        let mut m = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics");
        m.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut scraped = String::new();
        m.read_to_string(&mut scraped).unwrap();
        if scraped.contains(&want) || std::time::Instant::now() > deadline {
            break scraped;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(scraped.contains(&want), "{scraped}");
    assert!(
        !scraped.contains("198.51.100.9") && !scraped.contains("127.0.0.1:25\""),
        "{scraped}"
    );
    // Bad input to the CLI: exit 2, nothing changed.
    let out = common::run_cli(&db, &["bind", "add", "127.0.0.1:2", "--proxy-protocol"], "");
    assert_eq!(out.code, 2, "{out:?}");
    let out = common::run_cli(
        &db,
        &[
            "bind",
            "add",
            "127.0.0.1:2",
            "--proxy-protocol",
            "--trusted-proxy",
            "10.0.0.0/33",
        ],
        "",
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("is not an address or CIDR"), "{out:?}");
    assert!(!cli(&db, &["bind", "show"]).contains("127.0.0.1:2 "));
}
