//! The engine as an attacker on loopback meets it: parallel AUTH bursts
//! from many addresses, trickled bytes, huge unfinished bodies, relay
//! recipients by the thousand. Each test failed before its fix.

mod common;

use common::{Client, Server, cli_stdin, plain, rss_kib, test_db};
use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// `n` sessions from `source`, each at EHLO, then all send a wrong
/// password at the same moment; the replies' codes.
fn parallel_auth(addr: std::net::SocketAddr, sources: &[IpAddr], per_source: usize) -> Vec<String> {
    let barrier = Arc::new(Barrier::new(sources.len() * per_source));
    let threads: Vec<_> = sources
        .iter()
        .flat_map(|ip| std::iter::repeat_n(*ip, per_source))
        .map(|ip| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut c = Client::connect_from(addr, ip);
                c.reply();
                c.expect("EHLO attacker.test", "250");
                barrier.wait();
                c.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess")))
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

#[test]
fn parallel_sessions_cannot_guess_more_than_auth_max_failures() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("auth-max-failures", "5")]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let replies = parallel_auth(addr, &[ip], 30);
    let judged = replies
        .iter()
        .filter(|r| r.starts_with("535 5.7.8"))
        .count();
    let refused = replies
        .iter()
        .filter(|r| r.starts_with("454 4.7.0"))
        .count();
    assert_eq!(judged + refused, 30, "{replies:?}");
    assert!(judged <= 5, "{judged} wrong passwords judged: {replies:?}");
    // The address is locked out now, even with the right password.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "right")),
        "454 4.7.0",
    );
    // Another address is not.
    let mut c = Client::connect_from(addr, "127.0.0.9".parse().unwrap());
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "right")),
        "235 2.7.0",
    );
}

#[test]
fn auth_bursts_from_many_addresses_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // Every guess judged: the worst case for memory.
    let db = test_db(
        dir.path(),
        &[
            ("auth-max-failures", "10000"),
            ("max-sessions-per-ip", "1000"),
        ],
    );
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let pid = server.child.id();
    // One check first, so that idle includes what any check needs once.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(&format!("AUTH PLAIN {}", plain("alice", "right")), "235");
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let sources: Vec<IpAddr> = (2..6)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    for _ in 0..2 {
        let replies = parallel_auth(addr, &sources, 40);
        assert!(
            replies
                .iter()
                .all(|r| r.starts_with("535 5.7.8") || r.starts_with("454 4.7.0")),
            "{replies:?}"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let after = rss_kib(pid);
    eprintln!("RSS idle {idle} KiB, peak {peak} KiB, 3 s later {after} KiB");
    assert!(
        peak - idle < 150 * 1024,
        "peak {peak} KiB vs idle {idle} KiB"
    );
    assert!(
        after.saturating_sub(idle) < 100 * 1024,
        "after {after} KiB vs idle {idle} KiB"
    );
    // Logging in still works.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect(&format!("AUTH PLAIN {}", plain("alice", "right")), "235");
    let _ = Instant::now();
}

/// Sends `unit` every `every` until the server closes; returns how long
/// the session lasted and the last reply seen.
fn trickle(c: &mut Client, unit: &[u8], every: Duration, limit: Duration) -> (Duration, String) {
    let start = Instant::now();
    c.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    loop {
        if start.elapsed() > limit {
            return (start.elapsed(), String::new());
        }
        if c.try_send(unit).is_err() {
            return (start.elapsed(), String::new());
        }
        std::thread::sleep(every);
        match c.try_reply() {
            Ok(r) if r.is_empty() => return (start.elapsed(), r),
            Ok(r) if r.starts_with("421") => return (start.elapsed(), r),
            _ => {}
        }
    }
}

#[test]
fn slow_clients_are_cut_off_on_time_in_commands_and_in_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[
            ("command-timeout", "2"),
            ("data-timeout", "2"),
            ("delivery", "off"),
        ],
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let every = Duration::from_millis(400);
    let limit = Duration::from_secs(10);

    // A command line, a byte at a time.
    let mut c = Client::connect(addr);
    c.reply();
    let (lasted, reply) = trickle(&mut c, b"N", every, limit);
    assert!(lasted < Duration::from_secs(4), "held {lasted:?}");
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");

    // Inside DATA, one line a byte at a time.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO slow.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<b@example.com>", "250");
    c.expect("DATA", "354");
    let (lasted, reply) = trickle(&mut c, b"x", every, limit);
    assert!(lasted < Duration::from_secs(4), "held {lasted:?}");
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");

    // Inside DATA, whole short lines, each on time, far below 500 bytes/s.
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO slow.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<b@example.com>", "250");
    c.expect("DATA", "354");
    let (lasted, reply) = trickle(&mut c, b"x\r\n", every, limit);
    assert!(lasted < Duration::from_secs(5), "held {lasted:?}");
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    server.wait_for("data too slow", Duration::from_secs(5));

    // A client that keeps up is not disturbed: whole commands, slowly.
    let mut c = Client::connect(addr);
    c.reply();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(1500));
        c.expect("NOOP", "250");
    }
    c.expect("QUIT", "221");
}

#[test]
fn unfinished_large_bodies_do_not_sit_in_memory_and_finished_ones_are_stored_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[("delivery", "off"), ("max-message-size", "30000000")],
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(pid);
    // 20 sessions, each 10 MiB into a 20 MiB message.
    let line = [&[b'a'; 998][..], b"\r\n"].concat();
    let half = 10 * 1024 * 1024 / line.len();
    let mut clients: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.reply();
            c.expect("EHLO big.test", "250");
            c.expect("MAIL FROM:<a@example.com>", "250");
            c.expect("RCPT TO:<b@example.com>", "250");
            c.expect("DATA", "354");
            c
        })
        .collect();
    let chunk: Vec<u8> = line.repeat(256);
    for c in &mut clients {
        for _ in 0..half / 256 {
            c.send(&chunk);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let midway = rss_kib(pid);
    eprintln!("RSS idle {idle} KiB, 20 sessions at 10 MiB each: {midway} KiB");
    assert!(
        midway.saturating_sub(idle) < 100 * 1024,
        "midway {midway} KiB vs idle {idle} KiB"
    );
    // Each finishes its message: stored whole.
    for c in &mut clients {
        for _ in 0..half / 256 {
            c.send(&chunk);
        }
        c.send(b"end\r\n.\r\n");
    }
    for c in &mut clients {
        let r = c.reply();
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    let expected = 2 * (half / 256) * chunk.len() + "end\r\n".len();
    let spool = relaygate::spool::SpoolReader::open(&db.with_extension("spool.db")).unwrap();
    let listing = spool.listing().unwrap();
    assert_eq!(listing.len(), 20);
    for entry in &listing {
        let m = spool.message(&entry.id).unwrap().expect("stored");
        let body = &m.message.body;
        // The Received: header, then exactly the lines sent.
        assert!(body.starts_with(b"Received: "), "starts with our header");
        let sent = body
            .windows(line.len())
            .position(|w| w == line.as_slice())
            .expect("the first line sent");
        assert_eq!(body.len() - sent, expected, "{} body bytes", body.len());
        assert!(
            body.ends_with(b"aaaa\r\nend\r\n"),
            "ends with the last line"
        );
    }
    // Nothing is left in the spill directory.
    let left = std::fs::read_dir(db.with_extension("spill"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "spill files left behind");
}

/// Relays one message, sent as `wire` (dot-stuffed, with its final dot)
/// after EHLO `helo`, through a fresh engine to a sink; returns the body
/// the sink got and where the message's own first line (`first`) starts
/// in it (after our Received: header).
fn relayed_to_a_sink(helo: &str, wire: &[u8], first: &[u8]) -> (Vec<u8>, usize) {
    use common::sink::{Sink, SinkOptions};
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::cli(&db, &["route", "add", "*", &sink.addr().to_string()]);
    let mut server = Server::start(&db);
    let mut c = Client::connect(server.addr());
    c.reply();
    c.expect(&format!("EHLO {helo}"), "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<b@far.test>", "250");
    c.expect("DATA", "354");
    c.send(wire);
    let queued = c.reply();
    assert!(queued.starts_with("250 2.0.0"), "{queued}");
    c.expect("QUIT", "221");
    let body = sink.wait_for(1, Duration::from_secs(30))[0].body.clone();
    assert!(
        body.starts_with(format!("Received: from {helo}").as_bytes()),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let ours = body
        .windows(first.len())
        .position(|w| w == first)
        .expect("the message after our header");
    assert_eq!(server.terminate().code(), Some(0));
    (body, ours)
}

/// A body over 1 MiB is stuffed a piece at a time as it is sent: every
/// line starts with a dot, of every length, so that the pieces' edges fall
/// on dots, CRs and LFs; it still arrives byte for byte.
#[test]
fn a_large_body_full_of_dots_arrives_byte_for_byte() {
    let mut accepted = b"Subject: dots\r\n\r\n".to_vec();
    let mut wire = accepted.clone();
    for i in 0..40_000 {
        let line = format!(".{}\r\n", "x".repeat(i % 97));
        accepted.extend_from_slice(line.as_bytes());
        wire.push(b'.');
        wire.extend_from_slice(line.as_bytes());
    }
    wire.extend_from_slice(b".\r\n");
    assert!(accepted.len() > 1 << 20);
    let (body, ours) = relayed_to_a_sink("dots.test", &wire, b"Subject: dots");
    assert!(
        &body[ours..] == accepted.as_slice(),
        "{} bytes against {}",
        body.len() - ours,
        accepted.len()
    );
}

#[test]
fn what_is_relayed_arrives_byte_for_byte_with_only_our_received_header_added() {
    // As accepted (unstuffed), and as sent on the wire (dot-stuffed).
    let accepted = b"Subject: exact\r\n\r\n.one leading dot\r\n..two\r\n.\r\n \r\nlast line\r\n";
    let wire =
        b"Subject: exact\r\n\r\n..one leading dot\r\n...two\r\n..\r\n \r\nlast line\r\n.\r\n";
    let (body, ours) = relayed_to_a_sink("exact.test", wire, b"Subject: exact");
    assert_eq!(
        &body[ours..],
        accepted,
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    // Our header is one header: its lines end in CRLF, continuations folded.
    let header = &body[..ours];
    assert!(header.ends_with(b"\r\n"));
    for line in header
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|l| !l.is_empty())
    {
        assert!(
            line.starts_with(b" ") || line.starts_with(b"\t"),
            "{header:?}"
        );
    }
}

#[test]
fn refused_recipients_count_as_errors_and_end_the_session_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback may not relay; 5 errors allowed.
    let db = test_db(dir.path(), &[("max-bad-commands", "5")]);
    common::cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO spammer.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    for i in 0..5 {
        c.expect(&format!("RCPT TO:<victim{i}@far.test>"), "554 5.7.1");
    }
    c.expect("RCPT TO:<victim5@far.test>", "421 4.7.0");
    assert!(c.closed(), "the session ends at the limit");
    // Each refused recipient was decided and logged, no more.
    server.wait_for("victim5@far.test", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(200));
    server.drain_log();
    let decisions = server
        .log
        .iter()
        .filter(|l| l.contains("decision session=1 "))
        .count();
    assert_eq!(decisions, 6);
}

#[test]
fn mail_to_the_bare_postmaster_is_delivered_to_a_local_mailbox() {
    use common::sink::{Sink, SinkOptions};
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::cli(&db, &["domain", "add", "z.example"]);
    common::cli(
        &db,
        &["route", "add", "example.com", &sink.addr().to_string()],
    );
    // Anyone may write to postmaster, even from an address that may not relay.
    common::cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let to_postmaster = |server_addr| {
        let mut c = Client::connect(server_addr);
        c.reply();
        c.expect("EHLO stranger.test", "250");
        c.expect("MAIL FROM:<someone@far.test>", "250");
        c.expect("RCPT TO:<Postmaster>", "250");
        c.expect("DATA", "354");
        c.expect("Subject: hello\r\n\r\nhi\r\n.", "250");
        c.expect("QUIT", "221");
    };
    // No setting: postmaster of the first local domain (example.com).
    to_postmaster(addr);
    let line = server.wait_for("delivery ", Duration::from_secs(15));
    assert!(
        line.contains("to=<postmaster@example.com>") && line.contains("delivered"),
        "{line}"
    );
    let got = sink.wait_for(1, Duration::from_secs(15));
    assert_eq!(got[0].rcpts, ["postmaster@example.com"]);
    // With postmaster-address set, there.
    common::cli(
        &db,
        &[
            "policy",
            "set",
            "postmaster-address",
            "hostmaster@example.com",
        ],
    );
    std::thread::sleep(Duration::from_millis(600));
    to_postmaster(addr);
    let got = sink.wait_for(2, Duration::from_secs(15));
    assert_eq!(got[1].rcpts, ["hostmaster@example.com"]);
    let refused = common::run_cli(&db, &["policy", "set", "postmaster-address", "nobody"], "");
    assert_eq!(refused.code, 2, "{}", refused.stderr);
}

#[test]
fn allow_listed_clients_are_exempt_from_the_per_ip_cap_unless_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-sessions-per-ip", "3")]);
    common::cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    common::cli(&db, &["list", "add", "allow", "127.0.0.5"]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let lan: IpAddr = "127.0.0.5".parse().unwrap();
    let stranger: IpAddr = "127.0.0.6".parse().unwrap();
    let open = |ip: IpAddr, n: usize| -> (Vec<Client>, Vec<String>) {
        let mut held = Vec::new();
        let mut greetings = Vec::new();
        for _ in 0..n {
            let mut c = Client::connect_from(addr, ip);
            greetings.push(c.reply());
            held.push(c);
        }
        (held, greetings)
    };
    // The LAN mail server opens 10 sessions: all admitted.
    let (lan_sessions, greetings) = open(lan, 10);
    assert!(
        greetings.iter().all(|g| g.starts_with("220")),
        "{greetings:?}"
    );
    // A stranger is capped at 3.
    let (_s, greetings) = open(stranger, 4);
    assert!(greetings[3].starts_with("421 4.7.0"), "{greetings:?}");
    drop(lan_sessions);
    // Switched off: the cap applies to listed clients too.
    common::cli(&db, &["policy", "set", "per-ip-exempt-listed", "off"]);
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let (_l, greetings) = open(lan, 4);
    assert!(greetings[3].starts_with("421 4.7.0"), "{greetings:?}");
}

#[test]
fn a_binding_that_cannot_open_is_retried_until_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    // Something else holds the port when the engine starts.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let busy = format!("127.0.0.1:{port}");
    common::cli(&db, &["bind", "add", &busy]);
    let mut server = Server::start(&db);
    server.addr();
    let failed = server.wait_for(&format!("cannot listen on {busy}"), Duration::from_secs(5));
    assert!(failed.contains("in use"), "{failed}");
    // bind show asks the running engine, and says so.
    let shown = common::cli(&db, &["bind", "show"]);
    let line = shown
        .lines()
        .find(|l| l.starts_with(&busy))
        .unwrap_or_else(|| panic!("{shown}"));
    assert!(
        line.contains("NOT LISTENING") && line.contains("in use"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("127.0.0.1:0") && l.contains("listening on 127.0.0.1:")),
        "{shown}"
    );
    // The port comes free: the engine takes it within its back-off.
    std::thread::sleep(Duration::from_millis(1500));
    drop(squatter);
    server.wait_for(&format!("listening on {busy}"), Duration::from_secs(10));
    let mut c = Client::connect(busy.parse().unwrap());
    assert!(c.reply().starts_with("220"));
    // The failure was reported once, not at every retry.
    server.drain_log();
    let reports = server
        .log
        .iter()
        .filter(|l| l.contains(&format!("cannot listen on {busy}")))
        .count();
    assert_eq!(reports, 1, "{:?}", server.log);
}

#[test]
fn control_characters_from_the_network_are_stored_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    let evil = "al\u{1b}[2Jice\u{7}\u{9b}31m";
    c.expect(&format!("AUTH PLAIN {}", plain(evil, "x")), "535");
    c.expect("QUIT", "221");
    server.wait_for("AUTH failed", Duration::from_secs(5));
    // The event log is written in batches.
    std::thread::sleep(Duration::from_millis(500));
    let conn = rusqlite::Connection::open(db.with_extension("log.db")).unwrap();
    let rows: Vec<String> = conn
        // A session's events can share a row; this one has the failure.
        .prepare("SELECT event FROM events WHERE event LIKE '%\"auth_failed\"%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let stored = &rows[0];
    assert!(
        !stored.chars().any(|c| c.is_control()),
        "raw control characters stored: {stored:?}"
    );
    // JSON keeps the escape as text: \x1b, \x07, \x9b.
    for escaped in ["\\\\x1b", "\\\\x07", "\\\\x9b"] {
        assert!(stored.contains(escaped), "{escaped} missing in {stored}");
    }
}

#[test]
fn a_listing_into_a_closed_pipe_stops_quietly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let entries: String = (0..20000)
        .map(|i| format!("10.{}.{}.1\n", i / 250, i % 250))
        .collect();
    let file = dir.path().join("deny.txt");
    std::fs::write(&file, entries).unwrap();
    common::cli(&db, &["list", "import", "deny", file.to_str().unwrap()]);
    // `relaygate list show deny | head -1`
    let mut child = std::process::Command::new(common::BIN)
        .arg("--db")
        .arg(&db)
        .args(["list", "show", "deny"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("deny (20002 entries)"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_read_only_database_is_reported_as_read_only_and_can_still_be_read() {
    let root = common::is_root();
    if !root {
        eprintln!("skipped: needs root to run the CLI as nobody on a file it cannot write");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |args: &[&str]| cli_as_nobody(&db, args);
    let show = as_nobody(&["list", "show", "allow"]);
    assert_eq!(
        show.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(String::from_utf8_lossy(&show.stdout).contains("127.0.0.0/8"));
    let check = as_nobody(&[
        "check",
        "--ip",
        "192.168.1.2",
        "--from",
        "a@example.com",
        "--to",
        "b@far.test",
    ]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let change = as_nobody(&["list", "add", "allow", "192.0.2.1"]);
    let stderr = String::from_utf8_lossy(&change.stderr);
    assert_eq!(change.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is read-only") && !stderr.contains("not a relaygate database"),
        "{stderr}"
    );
}

/// The CLI run as nobody (root only), on `db`.
fn cli_as_nobody(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
            "--db",
        ])
        .arg(db)
        .args(args)
        .output()
        .expect("setpriv")
}

/// Another user pointed at the service's private database is told so
/// plainly, not SQLite's "unable to open database file".
#[test]
fn a_database_another_user_may_not_read_is_said_to_be_so() {
    if !common::is_root() {
        eprintln!("skipped: needs root to run the CLI as nobody");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db = test_db(&data, &[]);
    // An event log, as the engine leaves one (owner-only).
    relaygate::decision_log::DecisionLog::open(&relaygate::decision_log::log_path_for(&db))
        .unwrap();
    let as_nobody = |args: &[&str]| cli_as_nobody(&db, args);
    // The data directory 0700: not even its files can be seen.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    for args in [
        &["policy", "show"][..],
        &["domain", "add", "x.test"][..],
        &["trace", "127.0.0.1"][..],
    ] {
        let out = as_nobody(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("this user may not enter its directory"),
            "{stderr}"
        );
    }
    // The directory open, the 0600 file not.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for args in [&["policy", "show"][..], &["trace", "127.0.0.1"][..]] {
        let out = as_nobody(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("this user may not read it"), "{stderr}");
    }
}

#[test]
fn every_file_relaygate_creates_is_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("relaygate.db");
    let with_umask = |args: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask 022; exec {} --db {} {args}",
                common::BIN,
                db.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_umask("bind remove 127.0.0.1:2525");
    with_umask("bind add 127.0.0.1:0");
    with_umask("domain add example.com");
    with_umask("policy set delivery off");
    // The engine, started with umask 022 (exec: the child is the binary).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(format!(
        "umask 022; exec {} --db {} serve --headless",
        common::BIN,
        db.display()
    ));
    let (child, addr) = common::spawn_engine(sh);
    let engine = KillOnDrop(child);
    // A message (spool, event log) and a large one (spill file).
    let mut c = Client::connect(addr);
    c.reply();
    c.expect("EHLO modes.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<b@example.com>", "250");
    c.expect("DATA", "354");
    let line = [&[b'x'; 998][..], b"\r\n"].concat();
    c.send(&line.repeat(300));
    std::thread::sleep(Duration::from_millis(300));
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    use std::path::Path;
    let spill_files: Vec<_> = std::fs::read_dir(db.with_extension("spill"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(spill_files.len(), 1, "a large body is being spilled");
    assert_eq!(mode(&spill_files[0]).unwrap(), 0o600);
    c.send(b"\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.expect("QUIT", "221");
    std::thread::sleep(Duration::from_millis(500));
    let mut checked = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let m = mode(&path).unwrap();
        let expected = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(m, expected, "{} is {m:o}", path.display());
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                let p = inner.unwrap().path();
                assert_eq!(mode(&p).unwrap(), 0o600, "{}", p.display());
            }
        }
        checked += 1;
    }
    assert_eq!(mode(&data).unwrap(), 0o700, "the data directory");
    for name in [
        "relaygate.db-wal",
        "relaygate.spool.db",
        "relaygate.spool.db-wal",
        "relaygate.spool.db-shm",
        "relaygate.log.db",
        "relaygate.log.db-wal",
        "relaygate.lock",
        "relaygate.sock",
        "relaygate.tls",
    ] {
        assert!(data.join(name).exists(), "{name} was not created");
    }
    assert!(checked >= 10);
    drop(engine);
}

#[test]
fn an_attempt_in_flight_shows_in_the_queue_with_its_host_and_age() {
    let dir = tempfile::tempdir().unwrap();
    // A next hop that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hop = silent.local_addr().unwrap();
    let db = test_db(dir.path(), &[]);
    common::cli(
        &db,
        &["route", "add", "*", &hop.to_string(), "--tls", "none"],
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let r = common::send_message(
        addr,
        "a@example.com",
        &["b@far.test"],
        "Subject: x\r\n\r\nx\r\n",
    );
    let id = r.trim().rsplit(' ').next().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queue = common::cli(&db, &["queue", "show"]);
        if queue.contains(&format!("{id}  ")) && queue.contains("IN FLIGHT for") {
            assert!(queue.contains(&hop.to_string()), "{queue}");
            break;
        }
        assert!(Instant::now() < deadline, "never shown in flight: {queue}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(silent);
}

#[test]
fn smtputf8_is_required_for_utf8_addresses_and_passed_on_or_bounced() {
    use common::sink::{Sink, SinkOptions};
    let dir = tempfile::tempdir().unwrap();
    let modern = Sink::start(SinkOptions {
        smtputf8: true,
        ..SinkOptions::default()
    });
    let old = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::cli(
        &db,
        &[
            "route",
            "add",
            "modern.test",
            &modern.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    common::cli(
        &db,
        &[
            "route",
            "add",
            "old.test",
            &old.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    // Bounces to example.com go to the modern sink too.
    common::cli(
        &db,
        &[
            "route",
            "add",
            "example.com",
            &modern.addr().to_string(),
            "--tls",
            "none",
        ],
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut c = Client::connect(addr);
    c.reply();
    let ehlo = c.cmd("EHLO intl.test");
    assert!(ehlo.contains("SMTPUTF8"), "{ehlo}");
    // Without the parameter: refused, both sender and recipient.
    c.expect("MAIL FROM:<jörg@example.com>", "553 5.6.7");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<müller@modern.test>", "553 5.6.7");
    c.expect("RSET", "250");
    // With it: accepted, and passed on to a next hop that offers it.
    c.expect("MAIL FROM:<jörg@example.com> SMTPUTF8", "250");
    c.expect("RCPT TO:<müller@modern.test>", "250");
    c.expect("RCPT TO:<ünal@old.test>", "250");
    c.expect("DATA", "354");
    c.expect("Subject: grüße\r\n\r\nhallo\r\n.", "250");
    c.expect("QUIT", "221");
    let got = modern.wait_for(1, Duration::from_secs(15));
    assert!(got[0].smtputf8, "the modern next hop got SMTPUTF8");
    assert_eq!(got[0].rcpts, ["müller@modern.test"]);
    assert_eq!(got[0].mail_from, "jörg@example.com");
    // The old next hop gets nothing; its recipient bounces with 5.6.7.
    let line = server.wait_for("to=<ünal@old.test> via", Duration::from_secs(15));
    assert!(line.contains("bounced") && line.contains("5.6.7"), "{line}");
    assert!(old.messages().is_empty());
    // The bounce reaches the sender through the modern hop.
    let got = modern.wait_for(2, Duration::from_secs(15));
    assert!(got[1].body_str().contains("5.6.7"), "{}", got[1].body_str());
}

#[test]
fn the_login_cache_follows_password_changes_and_removals_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "first\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let auth = |password: &str| {
        let mut c = Client::connect(addr);
        c.reply();
        c.expect("EHLO roaming.test", "250");
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", password)))
    };
    // Verified once, then from the cache.
    assert!(auth("first").starts_with("235"));
    assert!(auth("first").starts_with("235"));
    server.drain_log();
    server.log.clear();
    cli_stdin(
        &db,
        &["user", "password", "alice", "--password-stdin"],
        "second\n",
    );
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    assert!(
        auth("first").starts_with("535"),
        "the old password is refused at once"
    );
    assert!(auth("second").starts_with("235"));
    server.log.clear();
    common::cli(&db, &["user", "remove", "alice"]);
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    assert!(
        auth("second").starts_with("535"),
        "a removed user cannot log in"
    );
}

#[test]
fn the_login_cache_is_no_free_oracle_while_guesses_are_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("auth-max-failures", "1")]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "right\n",
    );
    let mut server = Server::start(&db);
    let addr = server.addr();
    let attacker: IpAddr = "127.0.0.3".parse().unwrap();
    let session = |ip: IpAddr| {
        let mut c = Client::connect_from(addr, ip);
        c.reply();
        c.expect("EHLO guesser.test", "250");
        c
    };
    // Alice logged in a moment ago from the attacker's address (a shared
    // NAT, say): her password is in the cache.
    let mut c = session(attacker);
    c.expect(&format!("AUTH PLAIN {}", plain("alice", "right")), "235");
    drop(c);
    // Keep the checkers busy with guesses from other addresses...
    let busy: Vec<_> = (10..40)
        .map(|i| {
            let ip: IpAddr = format!("127.0.0.{i}").parse().unwrap();
            std::thread::spawn(move || {
                let mut c = Client::connect_from(addr, ip);
                c.reply();
                c.cmd("EHLO busy.test");
                c.cmd(&format!("AUTH PLAIN {}", plain("alice", "nope")))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // ...so that the attacker's one guess stays under way for a while.
    let mut guess = session(attacker);
    guess.send(format!("AUTH PLAIN {}\r\n", plain("alice", "guess")).as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    // Meanwhile every other try from that address is refused unjudged,
    // cached password or not: the cache answers nothing for free.
    let mut probe = session(attacker);
    let r = probe.cmd(&format!("AUTH PLAIN {}", plain("alice", "right")));
    assert!(r.starts_with("454 4.7.0"), "{r}");
    let r = guess.reply();
    assert!(r.starts_with("535") || r.starts_with("454"), "{r}");
    for t in busy {
        let _ = t.join();
    }
}

/// A small tmpfs of its own for a test's database (root only); unmounted
/// when dropped. `None`, with a note, where it cannot be had.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl SmallDisk {
    /// 8 MB: too small for the disk reserve.
    fn mount() -> Option<SmallDisk> {
        SmallDisk::mount_mb(8)
    }

    fn mount_mb(mb: u32) -> Option<SmallDisk> {
        if !common::is_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("small");
        std::fs::create_dir(&path).expect("mkdir");
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(SmallDisk { _dir: dir, path })
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Waits (10 s at most) for one more log line with `needle` than the
/// server has logged so far.
fn next_log_line(server: &mut Server, needle: &str) {
    let count = |server: &mut Server| {
        server.drain_log();
        server.log.iter().filter(|l| l.contains(needle)).count()
    };
    let before = count(server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(server) == before {
        assert!(Instant::now() < deadline, "no new log line with {needle:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Empties the spool's write-ahead log into its file and cuts it to
/// nothing, so that the next write needs room of its own (else a small
/// change could fit in the log's old room, and a test of a full disk
/// would not see one).
fn truncate_wal(db: &std::path::Path) {
    let spool = db.with_file_name("relaygate.spool.db");
    let conn = rusqlite::Connection::open(&spool).expect("spool");
    conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
    let _: (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
}

/// Fills what is left of the disk holding `path`.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("ballast");
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// Waits (10 s at most) for `f`.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one message; the first reply that is not 2xx/3xx, or the final
/// one.
fn send_until_refused(addr: std::net::SocketAddr, body: &str) -> String {
    let mut c = Client::connect(addr);
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    for line in [
        "EHLO client.test",
        "MAIL FROM:<alice@example.com>",
        "RCPT TO:<bob@far.test>",
        "DATA",
    ] {
        let r = c.cmd(line);
        if !(r.starts_with('2') || r.starts_with('3')) {
            return r;
        }
    }
    c.send(body.as_bytes());
    c.send(b"\r\n.\r\n");
    c.reply()
}

/// A disk without room for a whole message (1.5 × max-message-size, or
/// spool-min-free if more) refuses MAIL with 452 4.3.1 before any message
/// is read, says so once in the log, and takes mail again as soon as a
/// setting or the disk gives it room; all live, on a real 8 MB tmpfs.
#[test]
fn mail_is_refused_while_the_spool_disk_is_short_of_room() {
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    // The default limit (25 MiB) needs 37.5 MiB free: more than the disk.
    let db = test_db(disk.path(), &[("delivery", "off")]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let low = server.wait_for("spool disk short of room", Duration::from_secs(10));
    assert!(
        low.contains("37.5 MiB needed") && low.contains("452 4.3.1"),
        "{low}"
    );
    let body = "Subject: room\r\n\r\nhello\r\n";
    for _ in 0..3 {
        let reply = send_until_refused(addr, body);
        assert!(reply.starts_with("452 4.3.1"), "{reply}");
    }
    // A smaller limit gives the same disk room: mail is taken again.
    common::cli(&db, &["policy", "set", "max-message-size", "1048576"]);
    let again = server.wait_for("spool disk has room again", Duration::from_secs(10));
    assert!(again.contains("1.5 MiB needed"), "{again}");
    let reply = send_until_refused(addr, body);
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    // spool-min-free above what the disk has: refused again.
    common::cli(&db, &["policy", "set", "spool-min-free", "100000000"]);
    next_log_line(&mut server, "spool disk short of room");
    let reply = send_until_refused(addr, body);
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    // Ballast fills the disk: with spool-min-free back at 0, still short.
    common::cli(&db, &["policy", "set", "spool-min-free", "0"]);
    next_log_line(&mut server, "spool disk has room again");
    let ballast = disk.path().join("ballast");
    fill(&ballast);
    // Refused at MAIL itself (not at the end of DATA) within a measurement.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(addr);
        c.reply();
        c.expect("EHLO client.test", "250");
        let reply = c.cmd("MAIL FROM:<alice@example.com>");
        if reply.starts_with("452 4.3.1") {
            break;
        }
        assert!(Instant::now() < deadline, "MAIL still taken: {reply}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = send_until_refused(addr, body);
        if reply.starts_with("250 2.0.0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no mail after the ballast went: {reply}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A disk that fills up: a message that cannot be stored gets `452 4.3.1`
/// (no fault of the client's), and deliveries whose outcome the spool
/// cannot record are not sent again and again: each queued message
/// reaches the next hop once, delivery waits for the disk, and once there
/// is room the outcomes are written and the queue empties. Root only (the
/// database goes on a small tmpfs of its own).
#[test]
fn a_full_disk_refuses_with_4_3_1_and_sends_nothing_twice() {
    use common::sink::{Sink, SinkMode, SinkOptions};
    let Some(disk) = SmallDisk::mount() else {
        return;
    };
    let small = disk.path().to_path_buf();
    let sink = Sink::start(SinkOptions::default());
    sink.set_mode(SinkMode::TempFailAll);
    // Messages of up to 1 MiB, so the disk (8 MB) has room for mail until
    // the ballast fills it (1.5 MiB must be free to take mail).
    let db = test_db(
        &small,
        &[
            ("retry-first", "1"),
            ("retry-max-interval", "1"),
            ("max-message-size", "1048576"),
        ],
    );
    common::smarthost(&db, sink.addr());
    let mut server = Server::start(&db);
    let addr = server.addr();
    let body = format!(
        "Subject: fill\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(78)).repeat(250)
    );
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(common::send_queued(
            addr,
            "alice@example.com",
            &["bob@far.test"],
            &body,
        ));
    }
    // Fill what is left of the disk.
    let ballast = small.join("ballast");
    fill(&ballast);
    // A new message: refused as a full disk, at MAIL once the engine has
    // measured the disk, at the end of DATA if it has not yet.
    let reply = send_until_refused(addr, &body);
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    // The next hop comes back while the disk is full.
    sink.set_mode(SinkMode::Normal);
    server.wait_for(
        "no delivery starts until the spool",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(3));
    let sent = sink.messages().len();
    assert!(
        sent <= ids.len(),
        "{sent} deliveries of {} messages",
        ids.len()
    );
    // Room again: the outcomes are written, nothing is sent twice.
    std::fs::remove_file(&ballast).expect("remove ballast");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !common::cli(&db, &["queue", "show"]).contains("the queue is empty") {
        assert!(Instant::now() < deadline, "the queue did not empty");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.body_str())
        .filter_map(|b| ids.iter().find(|id| b.contains(id.as_str())).cloned())
        .collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "each message exactly once");
    // The event log kept what it could not write meanwhile: the refusal
    // is in the story of its session.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = common::run_cli(&db, &["trace", "127.0.0.1"], "");
        if out.stdout.contains("no space left") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} / {} / by id: {} / log: {:?}",
            out.stdout,
            out.stderr,
            common::run_cli(&db, &["trace", &ids[0]], "").stdout,
            server.log
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A full disk can still be emptied through relaygate: the engine keeps an
/// 8 MiB reserve beside the spool while there is room, and `queue delete`
/// that finds the disk full gives it up to make its change (saying so),
/// instead of "database or disk is full" with no way out. Once there is
/// room again the reserve is made again. Root only (a 64 MB tmpfs).
#[test]
fn a_full_disk_can_still_be_emptied_with_queue_delete() {
    let Some(disk) = SmallDisk::mount_mb(64) else {
        return;
    };
    let db = test_db(
        disk.path(),
        &[("delivery", "off"), ("max-message-size", "1048576")],
    );
    let reserve = disk.path().join("relaygate.spool.reserve");
    let mut server = Server::start(&db);
    let addr = server.addr();
    until("the reserve", || reserve.exists());
    assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 8 << 20);
    let body = format!(
        "Subject: x\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(98)).repeat(1000)
    );
    for _ in 0..5 {
        common::send_queued(addr, "alice@example.com", &["bob@far.test"], &body);
    }
    let ballast = disk.path().join("ballast");
    truncate_wal(&db);
    fill(&ballast);
    // Looking is not a change: the reserve stays for the change.
    let shown = common::run_cli(&db, &["queue", "show"], "");
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(reserve.exists(), "queue show took the reserve: {shown:?}");
    let out = common::run_cli(&db, &["queue", "delete", "all"], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("5 messages deleted"), "{out:?}");
    assert!(
        out.stderr.contains("gave up the 8.0 MiB reserve"),
        "{out:?}"
    );
    assert!(!reserve.exists());
    assert!(common::cli(&db, &["queue", "show"]).contains("the queue is empty"));
    // Room again: the reserve comes back.
    std::fs::remove_file(&ballast).expect("remove ballast");
    until("the reserve made again", || reserve.exists());
    // With the engine stopped too: the databases cannot even be opened on
    // a full disk (SQLite makes its -wal and -shm files), so the reserve
    // goes first, for a CLI change as for the engine's start.
    for _ in 0..3 {
        common::send_queued(addr, "alice@example.com", &["bob@far.test"], &body);
    }
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    fill(&ballast);
    let out = common::run_cli(&db, &["queue", "hold", "all"], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("3 messages held"), "{out:?}");
    assert!(
        out.stderr.contains("gave up the 8.0 MiB reserve"),
        "{out:?}"
    );
    std::fs::remove_file(&ballast).expect("remove ballast");
    let mut server = Server::start(&db);
    server.addr();
    until("the reserve made again", || reserve.exists());
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    fill(&ballast);
    let mut server = Server::start(&db);
    server.wait_for(
        "the disk is full at start: gave up the 8.0 MiB reserve",
        Duration::from_secs(10),
    );
    server.addr();
    let out = common::run_cli(&db, &["queue", "delete", "all"], "");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("3 messages deleted"), "{out:?}");
}

/// With the disk full, delivery outcomes that cannot be written give the
/// reserve up (said once in the log), so the queue drains (each delivered
/// message frees its room) and nothing is sent twice. Root only.
#[test]
fn a_full_disk_gives_up_its_reserve_for_delivery_outcomes() {
    use common::sink::{Sink, SinkMode, SinkOptions};
    let Some(disk) = SmallDisk::mount_mb(64) else {
        return;
    };
    let sink = Sink::start(SinkOptions::default());
    sink.set_mode(SinkMode::TempFailAll);
    let db = test_db(
        disk.path(),
        &[
            ("retry-first", "1"),
            ("retry-max-interval", "1"),
            ("max-message-size", "1048576"),
        ],
    );
    common::smarthost(&db, sink.addr());
    let reserve = disk.path().join("relaygate.spool.reserve");
    let mut server = Server::start(&db);
    let addr = server.addr();
    until("the reserve", || reserve.exists());
    let body = format!(
        "Subject: x\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(98)).repeat(1000)
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(common::send_queued(
            addr,
            "alice@example.com",
            &["bob@far.test"],
            &body,
        ));
    }
    truncate_wal(&db);
    fill(&disk.path().join("ballast"));
    sink.set_mode(SinkMode::Normal);
    server.wait_for("gave up the 8.0 MiB reserve", Duration::from_secs(20));
    until("the queue drained", || {
        common::cli(&db, &["queue", "show"]).contains("the queue is empty")
    });
    let got = sink.messages();
    assert_eq!(got.len(), ids.len(), "each message once");
}
