//! Abuse containment against the real binary: sending quotas (452 for the
//! key that reached one, nobody else), suspended logins, route send
//! rates, automatic bans (refused at connect, lifted from the CLI, kept
//! across a restart, never for allow-listed clients).

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Client, Server, cli, cli_stdin, plain, run_cli, test_db};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A session from `from`, logged in as `login` when given, at MAIL.
fn session(addr: SocketAddr, from: IpAddr, login: Option<(&str, &str)>, sender: &str) -> Client {
    let mut c = Client::connect_from(addr, from);
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO client.test", "250");
    if let Some((user, password)) = login {
        c.expect(&format!("AUTH PLAIN {}", plain(user, password)), "235");
    }
    c.expect(&format!("MAIL FROM:<{sender}>"), "250");
    c
}

/// One message with these recipients; the replies to each RCPT and, if
/// any was taken, to the end of DATA.
fn message(
    addr: SocketAddr,
    from: IpAddr,
    login: Option<(&str, &str)>,
    sender: &str,
    rcpts: &[&str],
) -> Vec<String> {
    let mut c = session(addr, from, login, sender);
    let mut replies: Vec<String> = rcpts
        .iter()
        .map(|r| c.cmd(&format!("RCPT TO:<{r}>")))
        .collect();
    if replies.iter().any(|r| r.starts_with("250")) {
        c.expect("DATA", "354");
        c.send(b"Subject: quota\r\n\r\nhello\r\n.\r\n");
        replies.push(c.reply());
    }
    c.cmd("QUIT");
    replies
}

fn users(db: &std::path::Path) {
    for (name, pw) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        cli_stdin(
            db,
            &["user", "add", name, "--password-stdin"],
            &format!("{pw}\n"),
        );
    }
}

#[test]
fn a_login_quota_defers_that_login_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    let added = cli(&db, &["quota", "add", "login", "2/hour"]);
    assert!(
        added.contains("#1: at most 2 messages per hour per login"),
        "{added}"
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let lan = ip("127.0.0.1");
    let alice = Some(("alice", "alice-pw"));
    for _ in 0..2 {
        let r = message(
            addr,
            lan,
            alice,
            "alice@example.com",
            &["x@far.test", "y@far.test"],
        );
        assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    }
    // The third message: deferred at RCPT, with the quota named.
    let r = message(addr, lan, alice, "alice@example.com", &["x@far.test"]);
    assert_eq!(r.len(), 1, "no DATA after a refused RCPT: {r:?}");
    assert!(
        r[0].starts_with(
            "452 4.7.1 Sending quota reached for login alice: at most 2 messages per hour"
        ),
        "{r:?}"
    );
    // Bob, and clients that did not log in, are not counted under alice.
    let r = message(
        addr,
        lan,
        Some(("bob", "bob-pw")),
        "bob@example.com",
        &["x@far.test"],
    );
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    for _ in 0..3 {
        let r = message(addr, lan, None, "printer@example.com", &["x@far.test"]);
        assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    }
    // The refusal is an event naming the quota.
    let line = server.wait_for("deferred: quota #1", Duration::from_secs(5));
    assert!(line.contains("is used up for login alice"), "{line}");
}

#[test]
fn a_lettre_client_sees_a_quota_as_a_temporary_failure() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    cli(&db, &["quota", "add", "sender-domain", "1/day"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(addr.port())
        .hello_name(ClientId::Domain("client.test".into()))
        .credentials(Credentials::new("alice".into(), "alice-pw".into()))
        .authentication(vec![Mechanism::Plain])
        .build();
    let email = || {
        Message::builder()
            .from("alice@example.com".parse().unwrap())
            .to("someone@far.test".parse().unwrap())
            .subject("quota")
            .body("hello\n".to_string())
            .unwrap()
    };
    runtime
        .block_on(mailer.send(email()))
        .expect("the first fits");
    let err = runtime
        .block_on(mailer.send(email()))
        .expect_err("the second is over the quota");
    assert!(err.is_transient(), "a 4xx, not a bounce: {err}");
    assert!(err.to_string().contains("4.7.1"), "{err}");
}

#[test]
fn an_address_quota_counts_recipients_per_slash_24() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["quota", "add", "ip/24", "3/hour", "--recipients"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let r = message(
        addr,
        ip("127.0.0.5"),
        None,
        "a@example.com",
        &["1@far.test", "2@far.test"],
    );
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    // A neighbour in the same /24: one more recipient fits, the next not.
    let r = message(
        addr,
        ip("127.0.0.9"),
        None,
        "b@example.com",
        &["3@far.test", "4@far.test"],
    );
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(
        r[1].starts_with("452 4.7.1 Sending quota reached for address 127.0.0.0"),
        "{r:?}"
    );
    assert!(
        r[2].starts_with("250"),
        "the message with its one recipient: {r:?}"
    );
    // Another /24 has its own count.
    let r = message(
        addr,
        ip("127.0.1.5"),
        None,
        "c@example.com",
        &["1@far.test", "2@far.test", "3@far.test"],
    );
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
}

#[test]
fn a_transaction_that_ends_without_a_message_gives_its_count_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["quota", "add", "ip", "1/hour"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let from = ip("127.0.0.20");
    // RCPT, then RSET, then QUIT: nothing was sent, nothing is counted.
    // The count is back by the time the client reads 221.
    for _ in 0..3 {
        let mut c = session(addr, from, None, "a@example.com");
        c.expect("RCPT TO:<x@far.test>", "250");
        c.expect("RSET", "250");
        c.expect("MAIL FROM:<a@example.com>", "250");
        c.expect("RCPT TO:<x@far.test>", "250");
        c.expect("QUIT", "221");
    }
    // A client that just goes away gives its count back once the server
    // sees the connection close: wait for that, up to a deadline.
    let mut c = session(addr, from, None, "a@example.com");
    c.expect("RCPT TO:<x@far.test>", "250");
    drop(c);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = message(addr, from, None, "a@example.com", &["x@far.test"]);
        if r.iter().all(|r| r.starts_with("250")) || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    let r = message(addr, from, None, "a@example.com", &["x@far.test"]);
    assert!(r[0].starts_with("452 4.7.1"), "{r:?}");
}

#[test]
fn a_transaction_that_counted_nothing_does_not_exempt_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["quota", "add", "sender-domain", "1/hour"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut c = Client::connect_from(addr, ip("127.0.0.40"));
    c.reply();
    c.expect("EHLO client.test", "250");
    // The null sender has no domain: nothing is counted...
    c.expect("MAIL FROM:<>", "250");
    c.expect("RCPT TO:<bob@example.com>", "250");
    c.expect("RSET", "250");
    // ...and the next transactions on the connection are counted all the same.
    for (n, wanted) in [(1, "250"), (2, "452 4.7.1")] {
        c.expect(&format!("MAIL FROM:<a{n}@sender.test>"), "250");
        let r = c.expect(&format!("RCPT TO:<bob{n}@example.com>"), wanted);
        if r.starts_with("250") {
            c.expect("DATA", "354");
            c.send(b"Subject: q\r\n\r\nhi\r\n.\r\n");
            assert!(c.reply().starts_with("250"));
        } else {
            c.expect("RSET", "250");
        }
    }
}

#[test]
fn a_suspending_quota_suspends_the_login_until_the_admin_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    cli(&db, &["quota", "add", "login", "1/day", "--suspend"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let lan = ip("127.0.0.1");
    let alice = Some(("alice", "alice-pw"));
    let r = message(addr, lan, alice, "alice@example.com", &["x@far.test"]);
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    let r = message(addr, lan, alice, "alice@example.com", &["x@far.test"]);
    assert!(r[0].starts_with("452 4.7.1"), "{r:?}");
    let line = server.wait_for("login alice suspended", Duration::from_secs(5));
    assert!(line.contains("ERROR"), "shown prominently: {line}");
    // The right password no longer logs in.
    let mut c = Client::connect_from(addr, lan);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "alice-pw")),
        "525 5.7.13",
    );
    // A wrong one is still just wrong.
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "nope")),
        "535 5.7.8",
    );
    drop(c);
    // The engine saves the suspension: `user show` says so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = cli(&db, &["user", "show"]);
        if shown.contains("alice") && shown.contains("SUSPENDED: quota #1") {
            break;
        }
        assert!(Instant::now() < deadline, "{shown}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Lifted: alice logs in and sends again (her count starts from zero).
    let lifted = cli(&db, &["user", "unsuspend", "alice"]);
    assert!(
        lifted.contains("lifted the suspension of alice"),
        "{lifted}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect_from(addr, lan);
        c.reply();
        c.expect("EHLO client.test", "250");
        if c.cmd(&format!("AUTH PLAIN {}", plain("alice", "alice-pw")))
            .starts_with("235")
        {
            break;
        }
        assert!(Instant::now() < deadline, "still suspended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = message(addr, lan, alice, "alice@example.com", &["x@far.test"]);
    assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
}

#[test]
fn a_session_already_logged_in_stops_when_its_login_is_suspended() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut c = session(
        addr,
        ip("127.0.0.1"),
        Some(("bob", "bob-pw")),
        "bob@example.com",
    );
    c.expect("RCPT TO:<x@far.test>", "250");
    c.expect("RSET", "250");
    cli(&db, &["user", "suspend", "bob"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.cmd("NOOP");
        if r.starts_with("421 4.7.1 bob is suspended") {
            break;
        }
        assert!(r.starts_with("250") && Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(c.closed());
}

/// A login the administrator takes back (a new password, the user
/// removed, the auth mode changed) ends the sessions already logged in
/// with it, as a suspension does; the others go on.
#[test]
fn sessions_end_when_their_login_is_taken_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    cli_stdin(
        &db,
        &["user", "add", "carol", "--password-stdin"],
        "carol-pw\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let login = |name: &str| {
        let mut c = session(
            addr,
            ip("127.0.0.1"),
            Some((name, &format!("{name}-pw"))),
            &format!("{name}@example.com"),
        );
        c.expect("RCPT TO:<x@far.test>", "250");
        c.expect("RSET", "250");
        c
    };
    let (mut alice, mut bob, mut carol) = (login("alice"), login("bob"), login("carol"));
    let ends = |c: &mut Client, name: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = c.cmd("NOOP");
            if r.starts_with(&format!("421 4.7.1 {name} may no longer send")) {
                break;
            }
            assert!(r.starts_with("250") && Instant::now() < deadline, "{r}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(c.closed());
    };
    // A new password: the session that used the old one ends.
    cli_stdin(
        &db,
        &["user", "password", "alice", "--password-stdin"],
        "new-pw\n",
    );
    ends(&mut alice, "alice");
    // The user removed.
    cli(&db, &["user", "remove", "bob"]);
    ends(&mut bob, "bob");
    // Carol, untouched by both, still relays; then AUTH is turned off.
    carol.expect("MAIL FROM:<carol@example.com>", "250");
    carol.expect("RCPT TO:<x@far.test>", "250");
    carol.expect("RSET", "250");
    cli(&db, &["auth", "mode", "none"]);
    ends(&mut carol, "carol");
}

#[test]
fn a_login_suspended_by_the_admin_cannot_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    users(&db);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let out = cli(&db, &["user", "suspend", "bob", "--note", "laptop stolen"]);
    assert!(out.contains("suspended bob"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(addr);
        c.reply();
        c.expect("EHLO client.test", "250");
        let r = c.cmd(&format!("AUTH PLAIN {}", plain("bob", "bob-pw")));
        if r.starts_with("525 5.7.13") {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Others are not affected.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(&format!("AUTH PLAIN {}", plain("alice", "alice-pw")), "235");
    assert!(cli(&db, &["user", "show"]).contains("SUSPENDED: by the administrator: laptop stolen"));
    // Bad input: an unknown user is a clear error, exit 2.
    let bad = run_cli(&db, &["user", "suspend", "nobody"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("no user nobody"), "{bad:?}");
}

/// A database where only 127.0.0.1 is listed: other loopback addresses
/// are strangers that can be banned.
fn ban_db(dir: &std::path::Path, settings: &[(&str, &str)]) -> std::path::PathBuf {
    let db = test_db(dir, settings);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["list", "add", "allow", "127.0.0.1"]);
    db
}

fn greeting_from(addr: SocketAddr, from: IpAddr) -> String {
    let mut c = Client::connect_from(addr, from);
    c.try_reply().unwrap_or_default()
}

#[test]
fn failed_logins_ban_an_address_until_lifted_and_the_ban_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = ban_db(
        dir.path(),
        &[("ban-auth-failures", "3"), ("ban-time", "3600")],
    );
    users(&db);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let attacker = ip("127.0.0.66");
    let mut c = Client::connect_from(addr, attacker);
    c.reply();
    c.expect("EHLO client.test", "250");
    for _ in 0..3 {
        c.expect(&format!("AUTH PLAIN {}", plain("alice", "guess")), "535");
    }
    // Banned now: this session ends at its next command...
    let bye = c.cmd("NOOP");
    assert!(
        bye.starts_with("421 4.7.1 Your address is banned until"),
        "{bye}"
    );
    let line = server.wait_for("ban client=127.0.0.66", Duration::from_secs(5));
    assert!(
        line.contains("net=127.0.0.66/32") && line.contains("strikes=1: 3 failed logins in 10m"),
        "{line}"
    );
    // ...and new ones are refused at connect, before any greeting.
    let refused = greeting_from(addr, attacker);
    assert!(
        refused.starts_with("554 5.7.1 Your address is banned until"),
        "{refused}"
    );
    // Other addresses are not.
    assert!(greeting_from(addr, ip("127.0.0.67")).starts_with("220"));
    // Saved by the engine, listed by the CLI.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cli(&db, &["ban", "show"]).contains("127.0.0.66/32") {
        assert!(Instant::now() < deadline, "ban not saved");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A restart keeps it.
    server.terminate();
    let mut server = Server::start(&db);
    let addr = server.addr();
    assert!(greeting_from(addr, attacker).starts_with("554 5.7.1"));
    // Lifted from the CLI: let in within a moment.
    let out = cli(&db, &["ban", "remove", "127.0.0.66"]);
    assert!(out.contains("lifted the ban of 127.0.0.66/32"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !greeting_from(addr, attacker).starts_with("220") {
        assert!(Instant::now() < deadline, "still banned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = run_cli(&db, &["ban", "remove", "127.0.0.66"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
    let bad = run_cli(&db, &["ban", "add", "not-an-address"], "");
    assert_eq!(bad.code, 2, "{bad:?}");
}

#[test]
fn refused_relay_recipients_ban_and_a_prefix_ban_by_hand_covers_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let db = ban_db(dir.path(), &[("ban-relay-denials", "4")]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let prober = ip("127.0.0.77");
    let mut c = session(addr, prober, None, "spam@far.test");
    for i in 0..4 {
        let r = c.cmd(&format!("RCPT TO:<victim{i}@elsewhere.test>"));
        assert!(r.starts_with("554 5.7.1"), "{r}");
    }
    server.wait_for("ban client=127.0.0.77", Duration::from_secs(5));
    assert!(greeting_from(addr, prober).starts_with("554 5.7.1"));
    // Inbound mail to a local domain from a stranger is not an offence.
    let stranger = ip("127.0.0.78");
    for _ in 0..6 {
        let r = message(
            addr,
            stranger,
            None,
            "someone@far.test",
            &["bob@example.com"],
        );
        assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    }
    assert!(greeting_from(addr, stranger).starts_with("220"));
    // By hand: a whole /24 for two hours.
    let out = cli(
        &db,
        &[
            "ban",
            "add",
            "127.0.5.0/24",
            "--for",
            "2h",
            "--note",
            "botnet",
        ],
    );
    assert!(out.contains("banned 127.0.5.0/24 until"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !greeting_from(addr, ip("127.0.5.200")).starts_with("554") {
        assert!(Instant::now() < deadline, "prefix ban not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = greeting_from(addr, ip("127.0.5.1"));
    assert!(
        refused.contains("banned by the administrator: botnet"),
        "{refused}"
    );
    assert!(greeting_from(addr, ip("127.0.6.1")).starts_with("220"));
}

#[test]
fn an_allow_listed_client_is_never_banned_unless_the_switch_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // The default allow list has 127.0.0.0/8.
    let db = test_db(
        dir.path(),
        &[("ban-auth-failures", "2"), ("auth-max-failures", "100")],
    );
    users(&db);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let lan = ip("127.0.0.30");
    let mut c = Client::connect_from(addr, lan);
    c.reply();
    c.expect("EHLO client.test", "250");
    for _ in 0..6 {
        c.expect(&format!("AUTH PLAIN {}", plain("alice", "typo")), "535");
    }
    c.expect("NOOP", "250");
    assert!(greeting_from(addr, lan).starts_with("220"));
    // With ban-listed-clients on, the same mistakes ban.
    cli(&db, &["policy", "set", "ban-listed-clients", "on"]);
    std::thread::sleep(Duration::from_millis(600));
    let mut c = Client::connect_from(addr, lan);
    c.reply();
    c.expect("EHLO client.test", "250");
    for _ in 0..2 {
        c.expect(&format!("AUTH PLAIN {}", plain("alice", "typo")), "535");
    }
    server.wait_for("ban client=127.0.0.30", Duration::from_secs(5));
    assert!(greeting_from(addr, lan).starts_with("554"));
}

#[test]
fn a_rate_limited_route_sends_at_most_n_per_period_and_the_rest_waits() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("retry-first", "600")]);
    let sink = Sink::start(SinkOptions::default());
    let out = cli(
        &db,
        &[
            "route",
            "add",
            "*",
            &sink.addr().to_string(),
            "--tls",
            "none",
            "--rate",
            "3/4s",
        ],
    );
    assert!(out.contains("at most 3 messages per 4s"), "{out}");
    let mut server = Server::start(&db);
    let addr = server.addr();
    let start = Instant::now();
    for i in 0..7 {
        let r = message(
            addr,
            ip("127.0.0.1"),
            None,
            "a@example.com",
            &[&format!("r{i}@far.test")],
        );
        assert!(r.iter().all(|r| r.starts_with("250")), "{r:?}");
    }
    // The first three go at once; the rest wait in the queue, told why.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.messages().len(), 3);
    let queue = cli(&db, &["queue", "show"]);
    assert!(
        queue.contains("waiting for the rate limit of route *"),
        "{queue}"
    );
    // All arrive, never more than three in any four seconds, no bounce.
    let got = sink.wait_for(7, Duration::from_secs(20));
    assert_eq!(got.len(), 7);
    assert!(
        got.iter().all(|m| !m.mail_from.is_empty()),
        "no bounce was sent"
    );
    let mut at: Vec<Duration> = got.iter().map(|m| m.at.duration_since(start)).collect();
    at.sort();
    for w in at.windows(4) {
        assert!(
            w[3] >= w[0] + Duration::from_millis(3800),
            "four within the period: {at:?}"
        );
    }
    server.wait_for("waiting for the rate limit", Duration::from_secs(1));
    // Waiting is not a failed attempt: nothing was retried with back-off
    // (retry-first is 10 minutes, and everything arrived in seconds).
    let bad = run_cli(
        &db,
        &["route", "add", "*", "127.0.0.1:25", "--rate", "3/fortnight"],
        "",
    );
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("is not a rate"), "{bad:?}");
}

#[test]
fn quota_cli_validates_and_lists() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    for (args, wanted) in [
        (vec!["quota", "add", "helo", "1/hour"], "is not a quota key"),
        (
            vec!["quota", "add", "login", "1/fortnight"],
            "is not a rate",
        ),
        (vec!["quota", "add", "ip", "0/hour"], "at least 1"),
        (
            vec!["quota", "add", "ip", "5/hour", "--suspend"],
            "needs a login quota",
        ),
        (vec!["quota", "remove", "9"], "no quota #9"),
    ] {
        let out = run_cli(&db, &args, "");
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(wanted), "{args:?}: {out:?}");
    }
    assert!(cli(&db, &["quota", "show"]).contains("no quotas"));
    cli(&db, &["quota", "add", "login", "200/hour"]);
    cli(&db, &["quota", "add", "login", "1000/day", "--suspend"]);
    let shown = cli(&db, &["quota", "show"]);
    assert!(
        shown.contains("#1: at most 200 messages per hour per login"),
        "{shown}"
    );
    assert!(
        shown.contains(
            "#2: at most 1000 messages per day per login; reaching it suspends the login"
        ),
        "{shown}"
    );
    assert!(cli(&db, &["quota", "remove", "1"]).contains("removed quota #1"));
    assert!(!cli(&db, &["quota", "show"]).contains("#1:"));
}
