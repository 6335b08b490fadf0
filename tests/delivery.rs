//! Delivery end to end: the real binary relays to SMTP sinks on loopback,
//! chosen by route or by MX from a DNS server the test runs; per-recipient
//! outcomes, retries, bounces, expiry, loops, queue control, smarthost AUTH
//! and STARTTLS.

mod common;

use common::dns::{DnsRecord, DnsServer};
use common::sink::{Sink, SinkMode, SinkOptions};
use common::{Server, cli, cli_stdin, send_queued, test_db};
use mail_parser::{MessageParser, MimeHeaders};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

/// Sends one message; returns its queue id.
fn send(server: &mut Server, from: &str, to: &[&str], body: &str) -> String {
    send_queued(server.addr(), from, to, body)
}

fn queue_show(db: &Path) -> String {
    cli(db, &["queue", "show"])
}

/// Polls `f` until it is true (15 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn routes_outcomes_retries_and_bounces() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Sink::start(SinkOptions::default());
    let smarthost = Sink::start(SinkOptions::default());
    let db = test_db(
        dir.path(),
        &[("retry-first", "1"), ("retry-max-interval", "1")],
    );
    cli(
        &db,
        &[
            "route",
            "add",
            "example.com",
            &internal.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    common::smarthost(&db, smarthost.addr());
    let mut server = Server::start(&db);

    let id = send(
        &mut server,
        "alice@example.com",
        &[
            "bob@example.com",
            "ok@far.test",
            "perm1@far.test",
            "temp1@far.test",
            "flaky1@far.test",
        ],
        "Subject: outcomes\r\nMessage-ID: <outcomes@example.com>\r\n\r\nbody line\r\n",
    );

    // Route selection: the local recipient went to the internal server, the rest to the smarthost.
    let inside = internal.wait_for(1, WAIT);
    assert_eq!(inside[0].rcpts, ["bob@example.com"]);
    assert!(inside[0].body_str().contains("Subject: outcomes"));
    assert!(
        inside[0]
            .body_str()
            .starts_with("Received: from client.test")
    );
    let out = smarthost.wait_for(1, WAIT);
    assert_eq!(out[0].mail_from, "alice@example.com");
    assert_eq!(
        out[0].rcpts,
        ["ok@far.test"],
        "perm/temp/flaky refused at RCPT, ok accepted"
    );

    // The flaky recipient is retried (after about a second) and delivered; ok is never sent again.
    let out = smarthost.wait_for(2, WAIT);
    assert_eq!(out[1].rcpts, ["flaky1@far.test"]);
    assert_eq!(smarthost.rcpt_attempts("flaky1@far.test"), 2);
    assert_eq!(smarthost.rcpt_attempts("ok@far.test"), 1);

    // The permanent failure bounced to the sender, through the internal route.
    let inside = internal.wait_for(2, WAIT);
    let bounce = &inside[1];
    assert_eq!(bounce.mail_from, "", "a bounce has the null sender");
    assert_eq!(bounce.rcpts, ["alice@example.com"]);
    let parsed = MessageParser::default()
        .parse(&bounce.body)
        .expect("bounce parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let text = bounce.body_str();
    assert!(
        text.contains("Final-Recipient: rfc822; perm1@far.test"),
        "{text}"
    );
    assert!(
        text.contains("Action: failed") && text.contains("Status: 5.1.1"),
        "{text}"
    );
    assert!(
        text.contains("Message-ID: <outcomes@example.com>"),
        "original headers: {text}"
    );
    assert!(
        !text.contains("temp1@far.test"),
        "temp1 is still being retried: {text}"
    );
    assert!(!text.contains("body line"), "never the original body");

    // temp1 stays queued, with its last error.
    eventually("temp1 retried", || {
        smarthost.rcpt_attempts("temp1@far.test") >= 2
    });
    let q = queue_show(&db);
    assert!(
        q.contains(&id) && q.contains("<temp1@far.test>  queued"),
        "{q}"
    );
    assert!(q.contains("451"), "{q}");
    assert!(
        !q.contains("ok@far.test") || q.contains("<ok@far.test>  delivered"),
        "{q}"
    );
    server.wait_for(&format!("delivery {id} to=<ok@far.test>"), WAIT);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn null_sender_expiry_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Sink::start(SinkOptions::default());
    let smarthost = Sink::start(SinkOptions::default());
    let db = test_db(
        dir.path(),
        &[
            ("retry-first", "1"),
            ("retry-max-interval", "1"),
            ("max-queue-age", "2"),
            ("domain-restrict-send", "off"),
        ],
    );
    cli(
        &db,
        &[
            "route",
            "add",
            "example.com",
            &internal.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    common::smarthost(&db, smarthost.addr());
    let mut server = Server::start(&db);

    // A bounce that bounces: no bounce for the null sender.
    let null_id = send(
        &mut server,
        "",
        &["perm2@far.test"],
        "Subject: a bounce\r\n\r\nx\r\n",
    );
    server.wait_for(&format!("delivery {null_id} to=<perm2@far.test>"), WAIT);

    // Expiry: temp3 fails for longer than max-queue-age and bounces.
    let expired = send(
        &mut server,
        "carol@example.com",
        &["temp3@far.test"],
        "Subject: slow\r\n\r\nx\r\n",
    );
    let inside = internal.wait_for(1, WAIT);
    assert_eq!(inside[0].rcpts, ["carol@example.com"]);
    let text = inside[0].body_str();
    assert!(
        text.contains("Final-Recipient: rfc822; temp3@far.test") && text.contains("expired"),
        "{text}"
    );
    server.wait_for(&format!("delivery {expired} to=<temp3@far.test> via"), WAIT);

    // A loop: more Received: headers than max-hops (100, RFC 5321 6.3) bounces with 5.4.6, undelivered.
    let hops = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n".repeat(101);
    let looped = send(
        &mut server,
        "dave@example.com",
        &["ok2@far.test"],
        &format!("{hops}Subject: loop\r\n\r\nx\r\n"),
    );
    let inside = internal.wait_for(2, WAIT);
    let text = inside[1].body_str();
    assert!(
        text.contains("Status: 5.4.6") && text.contains("ok2@far.test"),
        "{text}"
    );
    assert!(
        smarthost
            .messages()
            .iter()
            .all(|m| !m.rcpts.contains(&"ok2@far.test".to_string()))
    );
    server.wait_for(
        &format!("delivery {looped} to=<ok2@far.test> via -: bounced"),
        WAIT,
    );

    // Nothing went to the null sender, and the queue is empty.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(internal.messages().len(), 2, "no bounce to <>");
    eventually("queue empty", || {
        queue_show(&db).contains("the queue is empty")
    });
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn queue_hold_release_retry_delete() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Sink::start(SinkOptions::default());
    let smarthost = Sink::start(SinkOptions::default());
    smarthost.set_mode(SinkMode::TempFailAll);
    let db = test_db(dir.path(), &[("retry-first", "3600")]);
    cli(
        &db,
        &[
            "route",
            "add",
            "example.com",
            &internal.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    common::smarthost(&db, smarthost.addr());
    let mut server = Server::start(&db);

    let a = send(
        &mut server,
        "erin@example.com",
        &["x@far.test"],
        "Subject: a\r\n\r\nx\r\n",
    );
    let b = send(
        &mut server,
        "frank@example.com",
        &["y@far.test"],
        "Subject: b\r\n\r\nx\r\n",
    );
    server.wait_for(
        &format!("delivery {a} to=<x@far.test> via -: deferred"),
        WAIT,
    );
    server.wait_for(
        &format!("delivery {b} to=<y@far.test> via -: deferred"),
        WAIT,
    );
    let q = queue_show(&db);
    assert!(q.contains("next attempt in"), "deferred for an hour: {q}");
    assert!(q.contains("421"), "last error: {q}");

    smarthost.set_mode(SinkMode::Normal);
    assert!(cli(&db, &["queue", "hold", &a]).contains("held"));
    assert!(queue_show(&db).contains("HELD"));
    cli(&db, &["queue", "retry", "all"]);
    // b goes now; a is held and does not.
    let out = smarthost.wait_for(1, WAIT);
    assert_eq!(out[0].rcpts, ["y@far.test"]);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        smarthost.messages().len(),
        1,
        "a held message is not delivered"
    );
    cli(&db, &["queue", "release", &a]);
    cli(&db, &["queue", "retry", &a]);
    let out = smarthost.wait_for(2, WAIT);
    assert_eq!(out[1].rcpts, ["x@far.test"]);

    // Delete: silently, or with a bounce to the sender.
    smarthost.set_mode(SinkMode::Down);
    let c = send(
        &mut server,
        "gina@example.com",
        &["z@far.test"],
        "Subject: c\r\n\r\nx\r\n",
    );
    let d = send(
        &mut server,
        "hank@example.com",
        &["w@far.test"],
        "Subject: d\r\n\r\nx\r\n",
    );
    for (id, rcpt) in [(&c, "z@far.test"), (&d, "w@far.test")] {
        let line = server.wait_for(&format!("delivery {id} to=<{rcpt}> via"), WAIT);
        assert!(line.contains("deferred"), "{line}");
    }
    assert!(cli(&db, &["queue", "delete", &c]).contains("deleted"));
    let out = cli(&db, &["queue", "delete", &d, "--bounce"]);
    assert!(
        out.contains("bounce") && out.contains("<hank@example.com>"),
        "{out}"
    );
    let inside = internal.wait_for(1, WAIT);
    assert_eq!(inside[0].rcpts, ["hank@example.com"]);
    assert!(
        inside[0]
            .body_str()
            .contains("deleted from the queue by the administrator")
    );
    eventually("queue empty", || {
        queue_show(&db).contains("the queue is empty")
    });

    // Bad input: exit 2, nothing changed.
    let o = std::process::Command::new(common::BIN)
        .args(["--db", db.to_str().unwrap(), "queue", "hold", "NOSUCHID"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no message NOSUCHID"));
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn smarthost_auth_starttls_and_connection_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let smarthost = Sink::start(SinkOptions {
        tls: true,
        auth: Some(("relayuser".into(), "relaypass".into())),
        hostname: "localhost".into(),
        ..SinkOptions::default()
    });
    let db = test_db(dir.path(), &[]);
    cli_stdin(
        &db,
        &[
            "route",
            "add",
            "*",
            &smarthost.addr().to_string(),
            "--tls",
            "opportunistic",
            "--user",
            "relayuser",
            "--password-stdin",
        ],
        "relaypass\n",
    );
    let shown = cli(&db, &["route", "show"]);
    assert!(
        shown.contains("auth relayuser") && !shown.contains("relaypass"),
        "{shown}"
    );
    let mut server = Server::start(&db);
    for i in 0..3 {
        send(
            &mut server,
            "ivy@example.com",
            &[&format!("r{i}@far.test")],
            "Subject: tls\r\n\r\nx\r\n",
        );
    }
    let out = smarthost.wait_for(3, WAIT);
    for m in &out {
        assert!(m.tls, "STARTTLS was used");
        assert_eq!(m.auth_user.as_deref(), Some("relayuser"));
    }
    assert!(
        smarthost.connections() < 3,
        "connections were reused: {}",
        smarthost.connections()
    );

    // Verified TLS: trust the smarthost's certificate and require it.
    let ca = dir.path().join("smarthost-ca.pem");
    std::fs::write(&ca, smarthost.cert_pem().expect("certificate")).unwrap();
    cli(
        &db,
        &["policy", "set", "delivery-ca-file", ca.to_str().unwrap()],
    );
    let port = smarthost.addr().port();
    cli_stdin(
        &db,
        &[
            "route",
            "add",
            "*",
            &format!("localhost:{port}"),
            "--tls",
            "required",
            "--user",
            "relayuser",
            "--password-stdin",
        ],
        "relaypass\n",
    );
    server.wait_for("configuration reloaded", WAIT);
    std::thread::sleep(Duration::from_millis(300));
    send(
        &mut server,
        "ivy@example.com",
        &["verified@far.test"],
        "Subject: verified\r\n\r\nx\r\n",
    );
    let out = smarthost.wait_for(4, WAIT);
    assert_eq!(out[3].rcpts, ["verified@far.test"]);
    assert!(out[3].tls);

    // A rate added to the same next hop keeps its TLS and its login
    // (README's "Route rates" after its smarthost line).
    let changed = cli(
        &db,
        &[
            "route",
            "add",
            "*",
            &format!("localhost:{port}"),
            "--rate",
            "100/minute",
        ],
    );
    assert!(
        changed.contains("tls required, login relayuser, at most 100 messages per")
            && changed.contains("kept from the route it changes: tls required, login relayuser"),
        "{changed}"
    );
    server.wait_for("configuration reloaded", WAIT);
    std::thread::sleep(Duration::from_millis(300));
    send(
        &mut server,
        "ivy@example.com",
        &["rated@far.test"],
        "Subject: rated\r\n\r\nx\r\n",
    );
    let out = smarthost.wait_for(5, WAIT);
    assert_eq!(out[4].rcpts, ["rated@far.test"]);
    assert!(out[4].tls);
    assert_eq!(out[4].auth_user.as_deref(), Some("relayuser"));

    // Wrong password: deferred with the smarthost's reply, nothing delivered.
    cli_stdin(
        &db,
        &[
            "route",
            "add",
            "*",
            &smarthost.addr().to_string(),
            "--user",
            "relayuser",
            "--password-stdin",
        ],
        "wrong\n",
    );
    std::thread::sleep(Duration::from_millis(600));
    let id = send(
        &mut server,
        "ivy@example.com",
        &["denied@far.test"],
        "Subject: nope\r\n\r\nx\r\n",
    );
    let line = server.wait_for(&format!("delivery {id} to=<denied@far.test>"), WAIT);
    assert!(line.contains("deferred") && line.contains("AUTH"), "{line}");
    assert_eq!(smarthost.messages().len(), 5);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn mx_preference_fallback_and_unrouted_local_domain() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let dns = DnsServer::start(vec![
        // Listed first but less preferred.
        DnsRecord::mx("far.test", 20, "mx2.far.test"),
        DnsRecord::mx("far.test", 10, "mx1.far.test"),
        // The preferred MX refuses connections (nothing listens on 127.0.0.2).
        DnsRecord::a("mx1.far.test", "127.0.0.2"),
        DnsRecord::a("mx2.far.test", "127.0.0.1"),
        // No MX: the domain's own address (implicit MX).
        DnsRecord::a("plain.test", "127.0.0.1"),
    ]);
    let db = test_db(dir.path(), &[]);
    cli(
        &db,
        &["policy", "set", "dns-servers", &dns.addr().to_string()],
    );
    cli(
        &db,
        &["policy", "set", "mx-port", &sink.addr().port().to_string()],
    );
    let mut server = Server::start(&db);

    let id = send(
        &mut server,
        "jo@example.com",
        &["one@far.test", "two@plain.test"],
        "Subject: mx\r\n\r\nx\r\n",
    );
    let out = sink.wait_for(2, WAIT);
    let mut rcpts: Vec<String> = out.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["one@far.test", "two@plain.test"]);
    let line = server.wait_for(&format!("delivery {id} to=<one@far.test>"), WAIT);
    assert!(
        line.contains("mx2.far.test (127.0.0.1:"),
        "fell back to the second MX: {line}"
    );

    // A local domain without a route is held, never looked up in DNS.
    let before = dns.queries();
    let held = send(
        &mut server,
        "jo@example.com",
        &["boss@example.com"],
        "Subject: held\r\n\r\nx\r\n",
    );
    let line = server.wait_for(&format!("delivery {held} to=<boss@example.com>"), WAIT);
    assert!(
        line.contains("deferred") && line.contains("no route for local domain example.com"),
        "{line}"
    );
    assert_eq!(dns.queries(), before, "no DNS query for a local domain");
    // The event comes just before the spool records the attempt.
    eventually("the queue shows why it is held", || {
        queue_show(&db).contains("no route for local domain example.com")
    });
    // Held is not failing: no attempt is counted, so it never backs off,
    // expires or bounces.
    let spool = relaygate::data_dir::DataDir::for_db(&db).spool;
    let listing = relaygate::spool::SpoolReader::open(&spool)
        .unwrap()
        .listing()
        .unwrap();
    let entry = listing.iter().find(|e| e.id == held).expect("still queued");
    assert_eq!(entry.recipients[0].state, "queued");
    assert_eq!(entry.recipients[0].attempts, 0, "a hold is not an attempt");
    assert!(cli(&db, &["domain", "show"]).contains("no route"));
    assert_eq!(server.terminate().code(), Some(0));
}

/// A database whose smarthost is down (every attempt deferred, retried
/// in an hour): the sink, the database and its spool file.
fn deferring(dir: &Path) -> (Sink, std::path::PathBuf, std::path::PathBuf) {
    let sink = Sink::start(SinkOptions::default());
    sink.set_mode(SinkMode::TempFailAll);
    let db = test_db(dir, &[("retry-first", "3600")]);
    common::smarthost(&db, sink.addr());
    let spool = relaygate::data_dir::DataDir::for_db(&db).spool;
    (sink, db, spool)
}

/// A deferred recipient keeps its next attempt across a restart, clean or
/// kill -9: the engine neither forgets it nor tries it early.
#[test]
fn a_deferred_recipient_keeps_its_next_attempt_across_restarts() {
    use relaygate::spool::SpoolReader;
    let dir = tempfile::tempdir().unwrap();
    let (sink, db, spool) = deferring(dir.path());
    let next_attempt = |id: &str| -> Option<(i64, i64)> {
        let reader = SpoolReader::open(&spool).ok()?;
        let listing = reader.listing().ok()?;
        let e = listing.into_iter().find(|e| e.id == id)?;
        let r = e.recipients.first()?;
        (r.state == "queued").then_some((r.attempts, r.next_attempt))
    };
    let mut server = Server::start(&db);
    let id = send(
        &mut server,
        "alice@example.com",
        &["later@far.test"],
        "Subject: later\r\n\r\nbody\r\n",
    );
    eventually("the first attempt deferred", || {
        next_attempt(&id).is_some_and(|(attempts, _)| attempts == 1)
    });
    let (_, deferred_until) = next_attempt(&id).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(deferred_until >= now + 3500, "{deferred_until} vs {now}");
    let tried = sink.connections();
    assert_eq!(server.terminate().code(), Some(0));

    // Restarted after a clean stop, then after a kill -9.
    let mut previous = "a clean stop";
    for kill_next in [true, false] {
        let mut server = Server::start(&db);
        server.addr();
        // The engine has scanned its queue at start; give it time to try.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            next_attempt(&id),
            Some((1, deferred_until)),
            "after {previous}"
        );
        assert_eq!(
            sink.connections(),
            tried,
            "tried before its time after {previous}"
        );
        let q = queue_show(&db);
        assert!(q.contains("next attempt in 59m"), "{q}");
        if kill_next {
            server.kill();
            previous = "a kill -9";
        } else {
            assert_eq!(server.terminate().code(), Some(0));
        }
    }
    // And once it is due (queue retry), it is tried again.
    let server = Server::start(&db);
    cli(&db, &["queue", "retry", &id]);
    eventually("tried again when due", || sink.connections() > tried);
    drop(server);
}

/// MAIL, RCPT and DATA go out together to a next hop that offers
/// PIPELINING, one by one to one that does not; either way every
/// recipient has its own outcome and the message arrives byte for byte
/// (dot-stuffed on the wire, unstuffed by the sink).
#[test]
fn pipelining_only_where_offered_with_the_same_outcomes_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let piped = Sink::start(SinkOptions::default());
    let plain = Sink::start(SinkOptions {
        pipelining: false,
        ..SinkOptions::default()
    });
    let db = test_db(dir.path(), &[]);
    for (domain, sink) in [("piped.test", &piped), ("plain.test", &plain)] {
        cli(
            &db,
            &[
                "route",
                "add",
                domain,
                &sink.addr().to_string(),
                "--tls",
                "none",
            ],
        );
    }
    let mut server = Server::start(&db);
    // As the client puts it on the wire (dot-stuffed), and as it must
    // arrive (send_message ends the data with CRLF . CRLF).
    let wire = "Subject: dots\r\n\r\n..leading dot\r\n...two dots\r\nmiddle . dot\r\n..\r\nend";
    let body = "Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\nmiddle . dot\r\n.\r\nend\r\n";
    for domain in ["piped.test", "plain.test"] {
        send(
            &mut server,
            "alice@example.com",
            &[
                &format!("one@{domain}"),
                &format!("perm1@{domain}"),
                &format!("two@{domain}"),
            ],
            wire,
        );
    }
    for (sink, domain) in [(&piped, "piped.test"), (&plain, "plain.test")] {
        let got = sink.wait_for(1, WAIT);
        let mut rcpts = got[0].rcpts.clone();
        rcpts.sort();
        assert_eq!(
            rcpts,
            [format!("one@{domain}"), format!("two@{domain}")],
            "the refused recipient alone is left out"
        );
        let text = got[0].body_str();
        assert!(text.ends_with(body), "{text:?}");
    }
    assert!(
        piped.pipelined() >= 3,
        "MAIL, RCPTs and DATA pipelined: {}",
        piped.pipelined()
    );
    assert_eq!(plain.pipelined(), 0, "never pipelined without PIPELINING");
    // The refused recipients bounced, each with its own reply.
    eventually("both bounces recorded", || {
        let log = cli(&db, &["queue", "show"]);
        !log.contains("perm1@")
    });
    drop(server);
}

/// Bulk queue actions by domain, text and age: one transaction each, and
/// afterwards the spool holds what the command said.
#[test]
fn bulk_queue_actions_by_domain_text_and_age() {
    use relaygate::spool::SpoolReader;
    let dir = tempfile::tempdir().unwrap();
    let (_sink, db, spool) = deferring(dir.path());
    let listing = || SpoolReader::open(&spool).unwrap().listing().unwrap();
    let mut server = Server::start(&db);
    let mut one = Vec::new();
    for i in 0..3 {
        one.push(send(
            &mut server,
            "alice@example.com",
            &[&format!("a{i}@one.test")],
            "Subject: 1\r\n\r\nx\r\n",
        ));
    }
    let mut two = Vec::new();
    for i in 0..2 {
        two.push(send(
            &mut server,
            "alice@example.com",
            &[&format!("b{i}@two.test")],
            "Subject: 2\r\n\r\nx\r\n",
        ));
    }
    let special = send(
        &mut server,
        "special@example.com",
        &["c@two.test"],
        "Subject: 3\r\n\r\nx\r\n",
    );
    eventually("every message deferred once", || {
        let l = listing();
        l.len() == 6
            && l.iter()
                .all(|e| e.recipients.iter().all(|r| r.attempts == 1))
    });

    let out = cli(&db, &["queue", "hold", "--domain", "ONE.test"]);
    assert!(out.contains("3 messages held"), "{out}");
    for e in listing() {
        assert_eq!(e.held, one.contains(&e.id), "{}", e.id);
    }
    let shown = cli(&db, &["queue", "show"]);
    for id in &one {
        let block: String = shown
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(id.as_str()))
            .take(2)
            .collect();
        assert!(
            block.contains("HELD") && block.contains("  held"),
            "{block}"
        );
        assert!(
            !block.contains("next attempt"),
            "a held message has no next attempt: {block}"
        );
    }

    let out = cli(
        &db,
        &[
            "queue", "release", "--domain", "one.test", "--match", "A1@ONE",
        ],
    );
    assert!(out.contains("1 message released"), "{out}");
    assert_eq!(listing().iter().filter(|e| e.held).count(), 2);

    assert!(cli(&db, &["queue", "hold", "--older-than", "1h"]).contains("0 messages held"));
    // `all`, as `queue retry all` takes it: every message, then back.
    // Two are held already, and said so.
    let out = cli(&db, &["queue", "hold", "all"]);
    assert!(
        out.contains("4 messages held; 2 were held already"),
        "{out}"
    );
    let out = cli(&db, &["queue", "hold", &one[0]]);
    assert!(
        out.contains(&format!("{} was held already", one[0])),
        "{out}"
    );
    assert!(listing().iter().all(|e| e.held));
    let out = cli(&db, &["queue", "release", "ALL"]);
    assert!(out.contains("6 messages released"), "{out}");
    assert!(listing().iter().all(|e| !e.held));
    cli(
        &db,
        &["queue", "hold", "--domain", "one.test", "--match", "a0@one"],
    );
    cli(
        &db,
        &["queue", "hold", "--domain", "one.test", "--match", "a2@one"],
    );

    let out = cli(&db, &["queue", "delete", "--match", "special@"]);
    assert!(out.contains("1 message deleted silently"), "{out}");
    assert!(listing().iter().all(|e| e.id != special));

    let out = cli(&db, &["queue", "retry", "--domain", "two.test"]);
    assert!(out.contains("2 messages: 2 recipients due now"), "{out}");

    let out = cli(
        &db,
        &["queue", "delete", "--domain", "one.test", "--bounce"],
    );
    assert!(
        out.contains("3 messages deleted, 3 bounces queued"),
        "{out}"
    );
    let left = listing();
    assert!(left.iter().all(|e| !one.contains(&e.id)));
    assert_eq!(
        left.iter().filter(|e| e.sender.is_empty()).count(),
        3,
        "the bounces"
    );
    assert!(two.iter().all(|id| left.iter().any(|e| &e.id == id)));

    for bad in [
        vec!["queue", "hold"],
        vec!["queue", "hold", &two[0], "--domain", "two.test"],
        vec!["queue", "delete", "--older-than", "5x"],
        vec!["queue", "release", "NOSUCHID"],
    ] {
        let out = common::run_cli(&db, &bad, "");
        assert_eq!(out.code, 2, "{bad:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("relaygate: "),
            "{bad:?}: {}",
            out.stderr
        );
    }
    drop(server);
}

/// DSN (RFC 3461) end to end: a next hop that offers DSN is given the
/// client's RET, ENVID, NOTIFY and ORCPT and answers for them; for one
/// that does not, relaygate itself sends the "relayed" notice NOTIFY=SUCCESS
/// asked for, bounces only the failures NOTIFY asks to hear of, returns
/// ENVID and ORCPT in its notice, and the whole message for RET=FULL.
#[test]
fn dsn_requests_are_passed_on_or_answered_here() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Sink::start(SinkOptions {
        smtputf8: true,
        ..SinkOptions::default()
    });
    let with_dsn = Sink::start(SinkOptions {
        dsn: true,
        smtputf8: true,
        ..SinkOptions::default()
    });
    let without = Sink::start(SinkOptions::default());
    // Below the room DSN parameters need: taken as 1,200 all the same.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = test_db(
        dir.path(),
        &[
            ("max-command-line", "512"),
            ("metrics-listen", &metrics.to_string()),
        ],
    );
    for (domain, sink) in [
        ("example.com", &internal),
        ("dsn.test", &with_dsn),
        ("plain.test", &without),
    ] {
        let hop = sink.addr().to_string();
        cli(&db, &["route", "add", domain, &hop, "--tls", "none"]);
    }
    let mut server = Server::start(&db);
    let mut c = common::Client::connect(server.addr());
    c.reply();
    assert!(c.expect("EHLO client.test", "250").contains("250-DSN"));
    c.expect(
        "MAIL FROM:<alice@example.com> RET=HDRS ENVID=QQ+20314+2b",
        "250 2.1.0",
    );
    for rcpt in [
        "RCPT TO:<a@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;A+2bx@dsn.test",
        "RCPT TO:<b@plain.test> NOTIFY=SUCCESS ORCPT=rfc822;Orig+2Bb@plain.test",
        "RCPT TO:<perm1@plain.test> NOTIFY=NEVER",
        "RCPT TO:<perm2@plain.test> NOTIFY=FAILURE ORCPT=rfc822;perm2@plain.test",
        "RCPT TO:<ok@plain.test>",
    ] {
        c.expect(rcpt, "250 2.1.5");
    }
    c.expect("DATA", "354");
    c.expect(
        "Subject: dsn\r\nMessage-ID: <dsn-1@example.com>\r\n\r\nfirst body line\r\n.",
        "250 2.0.0",
    );

    // Passed on whole to the hop that offers DSN.
    let got = with_dsn.wait_for(1, WAIT);
    // ENVID and ORCPT exactly as sent (RFC 3461 5.2.1), case and hex.
    assert_eq!(got[0].mail_dsn, "RET=HDRS ENVID=QQ+20314+2b");
    assert_eq!(got[0].rcpts, ["a@dsn.test"]);
    assert_eq!(
        got[0].rcpt_params,
        ["NOTIFY=SUCCESS,FAILURE ORCPT=RFC822;A+2bx@dsn.test"]
    );
    // None of it to the hop that does not (the sink would refuse it).
    let got = without.wait_for(1, WAIT);
    let mut rcpts = got[0].rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["b@plain.test", "ok@plain.test"]);

    // One notice: perm2 failed, b relayed; nothing of perm1 (NEVER), of
    // ok (no NOTIFY: failures only) or of a (the next hop answers for it).
    eventually("queue empty", || !queue_show(&db).contains("queued"));
    let notices = internal.wait_for(1, WAIT);
    assert_eq!(notices.len(), 1, "one notice");
    let notice = &notices[0];
    assert_eq!(
        (notice.mail_from.as_str(), notice.rcpts.as_slice()),
        ("", &["alice@example.com".to_string()][..])
    );
    let text = notice.body_str();
    let parsed = MessageParser::default()
        .parse(&notice.body)
        .expect("notice parses");
    assert_eq!(
        parsed.subject(),
        Some("Undelivered Mail Returned to Sender")
    );
    assert!(text.contains("Original-Envelope-Id: QQ 314+\r\n"), "{text}");
    assert!(
        text.contains("Original-Recipient: rfc822;Orig+b@plain.test\r\nFinal-Recipient: rfc822; b@plain.test\r\nAction: relayed\r\nStatus: 2.0.0"),
        "{text}"
    );
    assert!(
        text.contains("Original-Recipient: rfc822;perm2@plain.test\r\nFinal-Recipient: rfc822; perm2@plain.test\r\nAction: failed\r\nStatus: 5.1.1"),
        "{text}"
    );
    // The bounce not sent is said, with why.
    server.wait_for(
        "for <perm1@plain.test>: NOTIFY=NEVER on that recipient",
        WAIT,
    );
    for absent in ["perm1@", "ok@plain.test", "a@dsn.test", "first body line"] {
        assert!(!text.contains(absent), "{absent} in {text}");
    }

    // RET=FULL: the failed message comes back whole.
    c.expect("MAIL FROM:<alice@example.com> RET=FULL", "250 2.1.0");
    c.expect("RCPT TO:<perm3@plain.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.expect("Subject: whole\r\n\r\nsecond body line\r\n.", "250 2.0.0");
    let notices = internal.wait_for(2, WAIT);
    let text = notices[1].body_str();
    assert!(text.contains("Content-Type: message/rfc822"), "{text}");
    assert!(text.contains("second body line"), "{text}");

    // Success alone: a notice that is not a bounce, and says so in the log.
    c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<c@plain.test> NOTIFY=SUCCESS", "250 2.1.5");
    c.expect("DATA", "354");
    c.expect("Subject: told\r\n\r\nthird\r\n.", "250 2.0.0");
    let notices = internal.wait_for(3, WAIT);
    let parsed = MessageParser::default()
        .parse(&notices[2].body)
        .expect("notice parses");
    assert_eq!(parsed.subject(), Some("Successful Mail Delivery Report"));
    assert!(notices[2].body_str().contains("Action: relayed"));
    server.wait_for("as NOTIFY=SUCCESS asked", WAIT);
    // Counted for Prometheus as a notice, not a bounce.
    eventually("the relayed notice counted", || {
        scrape(metrics).contains("relaygate_notices_total{kind=\"relayed\"} 1")
    });
    let m = scrape(metrics);
    assert!(m.contains("relaygate_bounces_total 2"), "{m}");

    // The longest ORCPT (500 characters) fits the command line; a UTF-8
    // ORCPT goes as it is to a hop that takes SMTPUTF8 and DSN.
    let long = format!("rfc822;{}@dsn.test", "l".repeat(484));
    assert_eq!(long.len(), 500);
    c.expect("MAIL FROM:<alice@example.com> SMTPUTF8", "250 2.1.0");
    c.expect(
        &format!("RCPT TO:<long@dsn.test> ORCPT={long}"),
        "250 2.1.5",
    );
    c.expect(
        "RCPT TO:<j\u{fc}rgen@dsn.test> ORCPT=utf-8;J\u{fc}rgen@dsn.test",
        "250 2.1.5",
    );
    c.expect("DATA", "354");
    c.expect("Subject: utf8\r\n\r\nfourth\r\n.", "250 2.0.0");
    let got = with_dsn.wait_for(2, WAIT);
    let mut params = got[1].rcpt_params.clone();
    params.sort();
    assert_eq!(
        params,
        [
            format!("ORCPT={long}"),
            "ORCPT=utf-8;J\u{fc}rgen@dsn.test".to_string()
        ]
    );

    // A notice to a UTF-8 sender goes with SMTPUTF8 (or not at all).
    c.expect("MAIL FROM:<j\u{fc}rgen@example.com> SMTPUTF8", "250 2.1.0");
    c.expect("RCPT TO:<perm9@plain.test>", "250 2.1.5");
    c.expect("DATA", "354");
    c.expect("Subject: back\r\n\r\nfifth\r\n.", "250 2.0.0");
    let notices = internal.wait_for(4, WAIT);
    assert_eq!(notices[3].rcpts, ["j\u{fc}rgen@example.com"]);
    assert!(notices[3].smtputf8, "the notice carries SMTPUTF8");
    let text = notices[3].body_str();
    assert!(
        text.contains("report-type=global-delivery-status"),
        "RFC 6533: {text}"
    );
    c.expect("QUIT", "221");
    assert_eq!(server.terminate().code(), Some(0));
}

/// `delay-warning`: a message still queued after that long gets its
/// sender one warning (Action: delayed), never a second one however often
/// it is retried; it names every deferred recipient of both next hops, and
/// none whose NOTIFY leaves DELAY out; the warning is remembered in the
/// spool across a restart.
#[test]
fn a_delayed_recipient_is_warned_of_once_unless_notify_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let internal = Sink::start(SinkOptions::default());
    let far = Sink::start(SinkOptions::default());
    // Another next hop: tried apart, recorded apart.
    let other = Sink::start(SinkOptions::default());
    let db = test_db(
        dir.path(),
        &[
            ("retry-first", "1"),
            ("retry-max-interval", "1"),
            ("delay-warning", "2s"),
        ],
    );
    for (domain, sink) in [
        ("example.com", &internal),
        ("far.test", &far),
        ("other.test", &other),
    ] {
        let hop = sink.addr().to_string();
        cli(&db, &["route", "add", domain, &hop, "--tls", "none"]);
    }
    let mut server = Server::start(&db);
    let mut c = common::Client::connect(server.addr());
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0");
    for rcpt in [
        "RCPT TO:<temp1@far.test>",
        "RCPT TO:<temp2@far.test> NOTIFY=FAILURE",
        "RCPT TO:<temp3@far.test> NOTIFY=DELAY ORCPT=rfc822;temp3@far.test",
        "RCPT TO:<temp4@other.test>",
    ] {
        c.expect(rcpt, "250 2.1.5");
    }
    c.expect("DATA", "354");
    let id = c.expect("Subject: slow\r\n\r\nslow body\r\n.", "250 2.0.0");
    let id = id.rsplit(' ').next().unwrap_or_default().to_string();
    c.expect("QUIT", "221");

    // One warning: temp1 (no NOTIFY) and temp3 (DELAY) of one next hop,
    // and temp4 of the other, each with the reply of the hop that
    // deferred it; never temp2.
    let notices = internal.wait_for(1, WAIT);
    let notice = &notices[0];
    assert_eq!(notice.rcpts, ["alice@example.com"]);
    let text = notice.body_str();
    let parsed = MessageParser::default()
        .parse(&notice.body)
        .expect("notice parses");
    assert_eq!(parsed.subject(), Some("Delayed Mail (still being retried)"));
    let temp1 = text
        .contains("Final-Recipient: rfc822; temp1@far.test\r\nAction: delayed\r\nStatus: 4.3.0");
    let temp3 = text.contains("Original-Recipient: rfc822;temp3@far.test\r\nFinal-Recipient: rfc822; temp3@far.test\r\nAction: delayed");
    let temp4 = text.contains("Final-Recipient: rfc822; temp4@other.test\r\nAction: delayed");
    assert!(
        temp1 && temp3 && temp4,
        "both next hops' recipients: {text}"
    );
    assert_eq!(text.matches("Action: delayed").count(), 3, "{text}");
    assert!(!text.contains("temp2@far.test"), "{text}");
    assert!(
        !text.contains("slow body"),
        "a warning returns headers only"
    );
    assert!(text.contains("Will-Retry-Until: "), "{text}");
    server.wait_for(
        &format!("for {id} queued to <alice@example.com>: 3 recipient(s) delayed"),
        WAIT,
    );

    // The queue says what each recipient asked to hear of.
    let q = queue_show(&db);
    let line = |who: &str| {
        q.lines()
            .find(|l| l.contains(who))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("<temp2@far.test>").contains("NOTIFY=FAILURE"), "{q}");
    assert!(line("<temp3@far.test>").contains("NOTIFY=DELAY"), "{q}");
    assert!(!line("<temp1@far.test>").contains("NOTIFY"), "{q}");

    // Retried again and again (every second), across a restart: no second
    // warning.
    let tried = far.rcpt_attempts("temp1@far.test");
    eventually("two more attempts", || {
        far.rcpt_attempts("temp1@far.test") >= tried + 2
    });
    assert_eq!(server.terminate().code(), Some(0));
    let server = Server::start(&db);
    let tried = far.rcpt_attempts("temp1@far.test");
    eventually("two more after the restart", || {
        far.rcpt_attempts("temp1@far.test") >= tried + 2
    });
    let spool = relaygate::data_dir::DataDir::for_db(&db).spool;
    let queued = relaygate::spool::SpoolReader::open(&spool)
        .unwrap()
        .listing()
        .unwrap();
    assert_eq!(queued.len(), 1, "no second warning waiting: {queued:?}");
    assert_eq!(internal.messages().len(), 1, "warned once");
    drop(server);
}

/// The `/metrics` page of an engine serving them on `addr`.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut page = String::new();
    let _ = s.read_to_string(&mut page);
    page
}

/// A backlog of large messages drains whole: the spool reader's thread
/// reads each with the memory for it when that is free at once, and a
/// message that must wait for memory (six of 6 MiB take five times their
/// size of a 128 MiB budget: four at a time) is read again once it has
/// it. Every body arrives byte for byte, each once.
#[test]
fn a_backlog_of_large_messages_drains_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[("delivery", "off")]);
    common::smarthost(&db, sink.addr());
    let mut server = Server::start(&db);
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    let body = |n: usize| {
        let mut b = format!("Subject: big {n}\r\n\r\n");
        while b.len() < 6 << 20 {
            b.push_str(&format!("{n:02} {line}"));
        }
        b
    };
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(send(
            &mut server,
            "alice@example.com",
            &["bob@far.test"],
            &body(n),
        ));
    }
    assert!(sink.messages().is_empty(), "delivery is off");
    cli(&db, &["policy", "set", "delivery", "on"]);
    let got = sink.wait_for(6, Duration::from_secs(60));
    assert_eq!(got.len(), 6, "{}", queue_show(&db));
    for n in 0..6 {
        // What was sent: the body, and the line end before the final dot.
        let sent = body(n) + "\r\n";
        let arrived: Vec<_> = got
            .iter()
            .filter(|m| m.body_str().contains(&format!("Subject: big {n}\r\n")))
            .collect();
        assert_eq!(
            arrived.len(),
            1,
            "message {n} arrived {} times",
            arrived.len()
        );
        // The body after our Received: header, byte for byte.
        assert!(
            arrived[0].body.ends_with(sent.as_bytes()),
            "message {n} changed"
        );
    }
    eventually("the queue empty", || queue_show(&db).contains("empty"));
}

/// An international local domain is one domain in both spellings: added
/// as `bücher.example` and routed as `xn--bcher-kva.example`, it takes
/// mail for either spelling from a client that may not relay, and
/// delivers it by that route; the CLI finds it by either spelling.
#[test]
fn an_international_local_domain_takes_mail_in_both_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions {
        smtputf8: true,
        ..SinkOptions::default()
    });
    let db = test_db(dir.path(), &[]);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["domain", "add", "bücher.example"]);
    let mapped = common::run_cli(&db, &["domain", "add", "ｂücher.example"], "");
    assert_eq!(mapped.code, 2, "{mapped:?}");
    assert!(mapped.stderr.contains("IDNA form"), "{mapped:?}");
    let rule = common::run_cli(
        &db,
        &[
            "rule",
            "add",
            "--sender",
            "*@ｂücher.example",
            "--reject",
            "no",
        ],
        "",
    );
    assert_eq!(rule.code, 2, "{rule:?}");
    assert!(rule.stderr.contains("IDNA form"), "{rule:?}");
    let twice = common::run_cli(&db, &["domain", "add", "XN--BCHER-KVA.example"], "");
    assert_eq!(twice.code, 2, "{twice:?}");
    assert!(
        twice
            .stderr
            .contains("already a local domain, written bücher.example"),
        "{twice:?}"
    );
    common::route(&db, "xn--bcher-kva.example", sink.addr());
    let shown = cli(&db, &["domain", "show"]);
    assert!(
        shown.lines().any(|l| l == "bücher.example"),
        "the route in the other spelling serves the domain: {shown}"
    );
    let mut server = Server::start(&db);

    send(
        &mut server,
        "x@far.test",
        &["leser@xn--bcher-kva.example"],
        "Subject: a-label\r\n\r\nhi\r\n",
    );
    let mut c = common::Client::connect(server.addr());
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<x@far.test> SMTPUTF8", "250");
    c.expect("RCPT TO:<jörg@Bücher.example>", "250");
    // Only the domain is ours, not what merely looks like it; and a
    // spelling IDNA would have to map first is no domain name at all.
    c.expect("RCPT TO:<a@bucher.example>", "554 5.7.1");
    c.expect("RCPT TO:<a@ｂücher.example>", "501 5.1.3");
    c.expect("RCPT TO:<a@bu\u{308}cher.example>", "501 5.1.3");
    c.expect("DATA", "354");
    c.send(b"Subject: u-label\r\n\r\nhi\r\n.\r\n");
    let queued = c.reply();
    assert!(queued.starts_with("250"), "{queued}");
    c.cmd("QUIT");

    let got = sink.wait_for(2, WAIT);
    let mut rcpts: Vec<_> = got.iter().flat_map(|m| m.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        ["jörg@bücher.example", "leser@xn--bcher-kva.example"]
    );
    server.terminate();

    let routes = cli(&db, &["route", "show"]);
    assert!(routes.contains("xn--bcher-kva.example"), "{routes}");
    cli(&db, &["route", "remove", "bücher.example"]);
    assert!(!cli(&db, &["route", "show"]).contains("xn--bcher-kva.example"));
    let removed = cli(&db, &["domain", "remove", "xn--bcher-kva.example"]);
    assert!(removed.contains("bücher.example"), "{removed}");
    assert!(!cli(&db, &["domain", "show"]).contains("bücher"));
}

/// Failures at two next hops in one attempt make one bounce naming both,
/// as Postfix sends one per message: each hop's failures are recorded with
/// their outcome, and folded into one notice once the attempt is over.
#[test]
fn failures_at_two_next_hops_make_one_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let (hop_a, hop_b, home) = (
        Sink::start(SinkOptions::default()),
        Sink::start(SinkOptions::default()),
        Sink::start(SinkOptions::default()),
    );
    let db = test_db(dir.path(), &[]);
    common::route(&db, "a.test", hop_a.addr());
    common::route(&db, "b.test", hop_b.addr());
    common::route(&db, "example.com", home.addr());
    let mut server = Server::start(&db);
    let id = send(
        &mut server,
        "alice@example.com",
        &["perm1@a.test", "ok@a.test", "perm2@b.test"],
        "Subject: two hops\r\n\r\nbody\r\n",
    );
    eventually("the message and its bounce to leave the queue", || {
        !queue_show(&db).contains(&id) && home.messages().len() == 1
    });
    eventually("the queue to be empty", || {
        queue_show(&db).contains("queue is empty")
    });
    let bounces = home.messages();
    assert_eq!(bounces.len(), 1, "one bounce for the message: {bounces:?}");
    let text = bounces[0].body_str();
    for failed in ["perm1@a.test", "perm2@b.test"] {
        assert!(
            text.contains(&format!("Final-Recipient: rfc822; {failed}")),
            "{failed} in {text}"
        );
    }
    assert!(
        !text.contains("Final-Recipient: rfc822; ok@a.test"),
        "{text}"
    );
    assert_eq!(hop_a.messages().len(), 1);
    server.terminate();
}

/// A message in the spool from alice@example.com to `gone@far.test`
/// (failed, its report recorded and not sent, as a crash between an
/// attempt's record and its notice leaves it) and to `others` (queued).
fn spool_with_a_report(db: &Path, others: &[&str]) -> String {
    use relaygate::delivery::dsn::{DsnAction, StoredReport};
    use relaygate::spool::{NewMessage, RecipientUpdate, Spool, SpoolOp, SpoolRecipient};
    let spool = Spool::open(&relaygate::spool::spool_path_for(db)).unwrap();
    let id = spool.next_id();
    let recipient = |address: &str| SpoolRecipient {
        address: address.into(),
        class: "outbound".into(),
        reason: "test".into(),
        dsn: Default::default(),
    };
    let mut recipients = vec![recipient("gone@far.test")];
    recipients.extend(others.iter().map(|a| recipient(a)));
    spool
        .apply_blocking(SpoolOp::Insert(NewMessage {
            id: id.clone(),
            sender: "alice@example.com".into(),
            recipients,
            login: None,
            peer: "127.0.0.1".into(),
            client_listed: Some(true),
            helo: "client.test".into(),
            body: b"Subject: before the crash\r\n\r\nbody\r\n".to_vec(),
            spilled: None,
            smtputf8: false,
            dsn: Default::default(),
        }))
        .unwrap();
    let report = StoredReport {
        action: DsnAction::Failed,
        status: "5.1.1".into(),
        diagnostic: Some("550 5.1.1 gone for good".into()),
        remote_mta: Some("mx.far.test".into()),
    };
    spool
        .apply_blocking(SpoolOp::Attempt {
            message_id: id.clone(),
            updates: vec![(
                "gone@far.test".into(),
                RecipientUpdate::Failed {
                    error: "550 5.1.1 gone for good".into(),
                },
            )],
            reports: vec![("gone@far.test".into(), report.text())],
        })
        .unwrap();
    id
}

/// A failure recorded with its report, and the process gone before the
/// notice was stored (as a crash leaves it): the next start sends the
/// bounce, once, and the message then leaves the queue.
#[test]
fn a_report_recorded_before_a_crash_is_sent_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let home = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::route(&db, "example.com", home.addr());
    let id = spool_with_a_report(&db, &[]);
    assert!(queue_show(&db).contains(&id), "kept for its report");

    let server = Server::start(&db);
    let bounce = home.wait_for(1, WAIT);
    let text = bounce[0].body_str();
    assert!(
        text.contains("Final-Recipient: rfc822; gone@far.test"),
        "{text}"
    );
    assert!(text.contains("550 5.1.1 gone for good"), "{text}");
    assert_eq!(bounce[0].rcpts, ["alice@example.com"]);
    eventually("the queue to be empty", || {
        queue_show(&db).contains("queue is empty")
    });
    assert_eq!(home.messages().len(), 1, "one bounce");
    server.terminate();
}

/// `queue delete --bounce` of a message with a report not yet sent: the
/// one bounce names the recorded failure with its reply, and the
/// recipients the deletion gives up.
#[test]
fn a_deletion_bounce_carries_the_reports_not_yet_sent() {
    let dir = tempfile::tempdir().unwrap();
    let home = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::route(&db, "example.com", home.addr());
    let id = spool_with_a_report(&db, &["still@far.test"]);
    cli(&db, &["queue", "delete", &id, "--bounce"]);
    let server = Server::start(&db);
    let bounce = home.wait_for(1, WAIT);
    let text = bounce[0].body_str();
    for failed in ["gone@far.test", "still@far.test"] {
        assert!(
            text.contains(&format!("Final-Recipient: rfc822; {failed}")),
            "{failed} in {text}"
        );
    }
    assert!(text.contains("550 5.1.1 gone for good"), "{text}");
    eventually("the queue to be empty", || {
        queue_show(&db).contains("queue is empty")
    });
    assert_eq!(home.messages().len(), 1, "one bounce");
    server.terminate();
}
