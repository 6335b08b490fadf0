//! Recipient verification end to end: the real binary asks the route of a
//! local domain (an SMTP sink on loopback, which refuses `perm...` local
//! parts with 550 5.1.1) about each recipient before taking its mail.

mod common;

use common::sink::{Sink, SinkMode, SinkOptions};
use common::{Client, Server, cli, run_cli, test_db};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn engine_with_route(dir: &Path, sink: &Sink, settings: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut all = vec![("verify-recipients", "on")];
    all.extend_from_slice(settings);
    let db = test_db(dir, &all);
    common::route(&db, "example.com", sink.addr());
    let mut server = Server::start(&db);
    let addr = server.addr();
    (server, addr)
}

/// A session from an outside sender, up to MAIL.
fn inbound(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO far.test", "250");
    c.expect("MAIL FROM:<someone@far.test>", "250");
    c
}

#[test]
fn unknown_recipients_are_refused_at_rcpt_and_answers_are_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let (mut server, addr) = engine_with_route(
        dir.path(),
        &sink,
        &[("metrics-listen", metrics_listen.as_str())],
    );
    // Metrics count from when they are served: wait for that.
    let start = Instant::now();
    while !scrape(metrics_port).contains("relaygate_") {
        assert!(start.elapsed() < WAIT, "metrics never served");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut c = inbound(addr);
    c.expect("RCPT TO:<alice@example.com>", "250 2.1.5");
    let r = c.cmd("RCPT TO:<perm-bob@example.com>");
    assert!(r.starts_with("550 5.1.1 "), "{r}");
    assert_eq!(sink.rcpt_attempts("alice@example.com"), 1);
    assert_eq!(sink.rcpt_attempts("perm-bob@example.com"), 1);
    // Postmaster is taken without asking (RFC 5321 4.5.1).
    c.expect("RCPT TO:<Postmaster@example.com>", "250");
    assert_eq!(sink.rcpt_attempts("Postmaster@example.com"), 0);
    // The probe made no message: the sink got nothing yet.
    assert!(sink.messages().is_empty());
    c.expect("DATA", "354");
    c.send(b"Subject: verified\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.expect("QUIT", "221");
    let got = sink.wait_for(1, WAIT);
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["Postmaster@example.com", "alice@example.com"]);

    // Each decision says what the route said.
    let known = server.wait_for("knows the recipient", WAIT);
    assert!(known.contains(&sink.addr().to_string()), "{known}");
    let refused = server.wait_for("refuses the recipient", WAIT);
    assert!(refused.contains("550 5.1.1"), "{refused}");

    // A second session is answered from memory: the sink is not asked
    // (it saw alice twice: the question, and the delivery).
    assert_eq!(sink.rcpt_attempts("alice@example.com"), 2);
    let mut c = inbound(addr);
    c.expect("RCPT TO:<alice@example.com>", "250");
    assert!(
        c.cmd("RCPT TO:<perm-bob@example.com>")
            .starts_with("550 5.1.1")
    );
    c.expect("QUIT", "221");
    assert_eq!(sink.rcpt_attempts("alice@example.com"), 2);
    assert_eq!(sink.rcpt_attempts("perm-bob@example.com"), 1);
    server.wait_for("as it said when asked earlier", WAIT);

    // Any configuration change empties the memory.
    cli(&server.db, &["policy", "set", "verify-known-ttl", "2h"]);
    server.wait_for_count("configuration reloaded", 1, WAIT);
    let mut c = inbound(addr);
    c.expect("RCPT TO:<alice@example.com>", "250");
    assert_eq!(sink.rcpt_attempts("alice@example.com"), 3);

    // Outbound mail is not verified, and neither is a local domain
    // without a route (its mail waits for one at delivery).
    cli(&server.db, &["domain", "add", "unrouted.example"]);
    server.wait_for_count("configuration reloaded", 2, WAIT);
    let mut c = inbound(addr);
    c.expect("RCPT TO:<perm-x@unrouted.example>", "250");
    c.expect("QUIT", "221");
    assert_eq!(sink.rcpt_attempts("perm-x@unrouted.example"), 0);

    // Prometheus counts the answers, asked and remembered; postmaster and
    // the unrouted domain were not checked.
    let wanted = [
        r#"relaygate_recipient_verifications_total{answer="known",source="asked"} 2"#,
        r#"relaygate_recipient_verifications_total{answer="known",source="remembered"} 1"#,
        r#"relaygate_recipient_verifications_total{answer="unknown",source="asked"} 1"#,
        r#"relaygate_recipient_verifications_total{answer="unknown",source="remembered"} 1"#,
    ];
    let start = Instant::now();
    loop {
        let body = scrape(metrics_port);
        if wanted.iter().all(|w| body.lines().any(|l| l == *w)) {
            assert!(!body.contains(r#"answer="unreachable""#), "{body}");
            break;
        }
        assert!(start.elapsed() < WAIT, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metrics page's body.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

#[test]
fn guessing_names_ends_the_session_like_any_refused_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let (_server, addr) = engine_with_route(dir.path(), &sink, &[("max-bad-commands", "3")]);
    let mut c = inbound(addr);
    for i in 0..3 {
        let r = c.cmd(&format!("RCPT TO:<perm-guess{i}@example.com>"));
        assert!(r.starts_with("550 5.1.1"), "{r}");
    }
    let r = c.cmd("RCPT TO:<perm-guess3@example.com>");
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert!(c.closed());
}

#[test]
fn an_unreachable_route_defers_unless_set_to_accept() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let (mut server, addr) = engine_with_route(dir.path(), &sink, &[]);

    sink.set_mode(SinkMode::Down);
    let mut c = inbound(addr);
    let r = c.cmd("RCPT TO:<carol@example.com>");
    assert!(r.starts_with("450 4.4.1 "), "{r}");
    // Put off, not a protocol error: the session goes on.
    c.expect("RSET", "250");
    c.expect("QUIT", "221");
    let line = server.wait_for("could not be verified", WAIT);
    assert!(line.contains(&sink.addr().to_string()), "{line}");

    // A hop found down is taken as down for 30 s: the next recipient is
    // answered at once from that, and the decision says so.
    let mut c = inbound(addr);
    let r = c.cmd("RCPT TO:<erin@example.com>");
    assert!(r.starts_with("450 4.4.1"), "{r}");
    let line = server.wait_for("(less than 30 s ago)", WAIT);
    assert!(line.contains("to=<erin@example.com>"), "{line}");

    // An edit forgets it. A server refusing every session (421 at the
    // greeting) is unreachable too.
    sink.set_mode(SinkMode::TempFailAll);
    cli(&server.db, &["policy", "set", "verify-unknown-ttl", "2h"]);
    server.wait_for_count("configuration reloaded", 1, WAIT);
    let mut c = inbound(addr);
    let r = c.cmd("RCPT TO:<carol@example.com>");
    assert!(r.starts_with("450 4.4.1"), "{r}");
    server.wait_for("421 4.3.2", WAIT);

    // Back, and an edit later, the route is asked again.
    sink.set_mode(SinkMode::Normal);
    cli(
        &server.db,
        &["policy", "set", "verify-unreachable", "accept"],
    );
    server.wait_for_count("configuration reloaded", 2, WAIT);
    c.expect("RCPT TO:<carol@example.com>", "250");
    sink.set_mode(SinkMode::Down);
    let mut c = inbound(addr);
    c.expect("RCPT TO:<dave@example.com>", "250");
    server.wait_for("accepted all the same", WAIT);
}

#[test]
fn a_real_client_sees_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let (_server, addr) = engine_with_route(dir.path(), &sink, &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .build();
    let message = |to: &str| {
        Message::builder()
            .from("someone@far.test".parse().unwrap())
            .to(to.parse().unwrap())
            .subject("hi")
            .body("hello".to_string())
            .unwrap()
    };
    let refused = runtime
        .block_on(transport.send(message("perm-nobody@example.com")))
        .unwrap_err();
    assert!(refused.is_permanent(), "{refused}");
    assert!(refused.to_string().contains("5.1.1"), "{refused}");
    runtime
        .block_on(transport.send(message("erin@example.com")))
        .unwrap();
    let got = sink.wait_for(1, WAIT);
    assert_eq!(got[0].rcpts, ["erin@example.com"]);
}

#[test]
fn check_asks_the_route_as_the_engine_would() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::route(&db, "example.com", sink.addr());
    let ask = |extra: &[&str]| {
        let mut args = vec![
            "check",
            "--ip",
            "203.0.113.9",
            "--from",
            "someone@far.test",
            "--to",
            "alice@example.com",
            "--to",
            "perm-bob@example.com",
        ];
        args.extend_from_slice(extra);
        run_cli(&db, &args, "")
    };
    // Off, and not asked for: the policy alone decides.
    let out = ask(&[]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(sink.rcpt_attempts("perm-bob@example.com"), 0);
    let out = ask(&["--verify"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("knows the recipient (250"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("reply    550 5.1.1 Recipient address rejected"),
        "{}",
        out.stdout
    );
    assert_eq!(sink.rcpt_attempts("perm-bob@example.com"), 1);

    // Turned on, with a local domain that has no route: said, and check
    // asks without --verify.
    cli(&db, &["domain", "add", "unrouted.example"]);
    let on = cli(&db, &["policy", "set", "verify-recipients", "on"]);
    assert!(
        on.contains("local domain unrouted.example has no route"),
        "{on}"
    );
    assert!(
        !on.contains("local domain example.com has no route"),
        "{on}"
    );
    let out = ask(&[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(sink.rcpt_attempts("perm-bob@example.com"), 2);

    sink.set_mode(SinkMode::Down);
    let out = ask(&[]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("verdict  deferred"), "{}", out.stdout);
    assert!(out.stdout.contains("450 4.4.1"), "{}", out.stdout);
}
