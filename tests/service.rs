//! relaygate as a service: one engine per data directory, the control
//! socket's permissions and peer checks, the protocol as a client sees it,
//! and the systemd unit.

mod common;

use common::{BIN, Server, cli, is_root, rss_kib, run_cli, test_db};
use relaygate::control::protocol::{
    self, Access, ClientMessage, PROTOCOL_VERSION, ServerMessage, encode,
};
use relaygate::events::Event;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn socket_of(db: &Path) -> std::path::PathBuf {
    db.with_extension("sock")
}

/// `program` run as nobody (uid and gid 65534, no other groups).
fn nobody(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", program]);
    c
}

/// relaygate on `db` run as nobody; the command's arguments follow.
fn as_nobody(db: &Path) -> Command {
    let mut c = nobody(BIN);
    c.arg("--db").arg(db);
    c
}

/// A raw protocol client on the control socket.
struct Raw {
    read: BufReader<UnixStream>,
    write: UnixStream,
}

impl Raw {
    fn connect(db: &Path) -> Raw {
        let stream = UnixStream::connect(socket_of(db)).expect("connect to the control socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            write: stream.try_clone().expect("clone"),
            read: BufReader::new(stream),
        }
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.read.read_until(b'\n', &mut line).expect("a line");
        line
    }

    fn message(&mut self) -> ServerMessage {
        let line = self.line();
        protocol::decode_server(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
    }

    fn send(&mut self, m: &ClientMessage) {
        self.write.write_all(&encode(m)).expect("send");
    }

    fn hello(&mut self) -> Access {
        match protocol::check_hello(&self.line()) {
            Ok((_, _, access)) => {
                self.send(&ClientMessage::Hello {
                    protocol: PROTOCOL_VERSION,
                });
                access
            }
            Err(e) => panic!("hello: {e}"),
        }
    }
}

#[test]
fn a_second_engine_on_the_same_database_is_refused_until_the_first_stops() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut first = Server::start(&db);
    first.addr();
    let pid = first.child.id();

    let second = run_cli(&db, &["serve", "--headless"], "");
    assert_eq!(second.code, 2, "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("(pid {pid}) is already running"))
            && second.stderr.contains("relaygate console"),
        "{}",
        second.stderr
    );
    // Nor through a symbolic link to the database under another name.
    let link = dir.path().join("other-name.db");
    std::os::unix::fs::symlink(&db, &link).unwrap();
    let third = run_cli(&link, &["serve", "--headless"], "");
    assert_eq!(third.code, 2, "{}", third.stderr);
    assert!(
        third.stderr.contains("is already running"),
        "{}",
        third.stderr
    );
    // The configuration commands keep working beside the engine.
    cli(&db, &["list", "add", "allow", "192.0.2.0/24"]);
    assert!(cli(&db, &["list", "show", "allow"]).contains("192.0.2.0/24"));

    assert_eq!(first.terminate().code(), Some(0));
    // A clean stop removes the socket.
    assert!(!socket_of(&db).exists(), "the socket outlived the engine");
    let mut again = Server::start(&db);
    again.addr();
}

#[test]
fn a_console_with_no_engine_says_so_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let out = run_cli(&db, &["console"], "");
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("no relaygate engine is running") && out.stderr.contains("serve"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_stale_socket_left_by_a_crash_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    server.addr();
    server.kill();
    assert!(socket_of(&db).exists(), "SIGKILL leaves the socket behind");
    let mut again = Server::start(&db);
    again.addr();
    let mut raw = Raw::connect(&db);
    assert_eq!(raw.hello(), Access::Admin);
}

#[test]
fn the_socket_is_owner_only_and_sends_hello_snapshot_then_typed_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mode = std::fs::metadata(socket_of(&db))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let mut raw = Raw::connect(&db);
    assert_eq!(raw.hello(), Access::Admin);
    match raw.message() {
        ServerMessage::Snapshot { snapshot } => {
            assert!(
                snapshot
                    .listeners
                    .iter()
                    .any(|l| l.bound.as_ref().is_ok_and(|a| *a == addr))
            );
            assert!(
                snapshot
                    .recent
                    .iter()
                    .any(|e| matches!(*e.event, Event::EngineStarted { .. }))
            );
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    let mut c = common::Client::connect(addr);
    c.reply();
    c.expect("EHLO probe.test", "250");
    c.expect("QUIT", "221");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_open = false;
    let mut seen_close = false;
    let mut seen_tick = false;
    while !(seen_open && seen_close && seen_tick) {
        assert!(Instant::now() < deadline, "no session events on the socket");
        match raw.message() {
            ServerMessage::Event { event } => match event.event.as_ref() {
                Event::SessionOpened { session: 1, .. } => seen_open = true,
                Event::SessionClosed { session: 1, .. } => seen_close = true,
                // Command lines come only for the dialogue a console follows.
                Event::Command { .. } => panic!("a command line nobody follows"),
                _ => {}
            },
            // The live picture, with the session's row.
            ServerMessage::Tick { tick } => {
                seen_tick |= tick
                    .changed
                    .iter()
                    .any(|c| c.helo.as_deref() == Some("probe.test"));
            }
            _ => {}
        }
    }
    // A request: the dialogue of session 1, command lines included, in
    // the order they happened.
    raw.send(&ClientMessage::Dialogue { session: 1 });
    loop {
        if let ServerMessage::Dialogue { session, events } = raw.message() {
            assert_eq!(session, 1);
            let at = |f: &dyn Fn(&Event) -> bool| events.iter().position(|e| f(&e.event));
            let ehlo = at(
                &|e| matches!(e, Event::Command { line, reply, .. } if line == "EHLO probe.test" && reply.starts_with("250")),
            );
            let quit = at(&|e| matches!(e, Event::Command { line, .. } if line == "QUIT"));
            let closed = at(&|e| matches!(e, Event::SessionClosed { .. }));
            assert!(ehlo.is_some() && ehlo < quit && quit < closed, "{events:?}");
            break;
        }
    }
}

#[test]
fn a_followed_dialogue_gets_its_command_lines_as_they_come_and_credentials_never() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut raw = Raw::connect(&db);
    raw.hello();
    let mut c = common::Client::connect(addr);
    c.reply();
    c.expect("EHLO follow.test", "250");
    // The session's row shows its HELO name (in a tick, or already in the
    // snapshot if the engine built it after the EHLO); then its dialogue is
    // opened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let session = loop {
        assert!(Instant::now() < deadline, "no row for the session");
        let rows = match raw.message() {
            ServerMessage::Tick { tick } => tick.changed,
            ServerMessage::Snapshot { snapshot } => {
                snapshot.live.connections.values().cloned().collect()
            }
            _ => continue,
        };
        if let Some(row) = rows
            .iter()
            .find(|c| c.helo.as_deref() == Some("follow.test"))
        {
            break row.session;
        }
    };
    raw.send(&ClientMessage::Dialogue { session });
    loop {
        if let ServerMessage::Dialogue { events, .. } = raw.message() {
            assert!(
                events.iter().any(|e| matches!(&*e.event, Event::Command { line, .. } if line == "EHLO follow.test")),
                "{events:?}"
            );
            break;
        }
    }
    c.expect("NOOP", "250");
    c.expect("AUTH PLAIN AHVzZXIAc2VjcmV0", "5");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.starts_with("(credentials")) {
        assert!(
            Instant::now() < deadline,
            "the followed lines never came: {seen:?}"
        );
        if let ServerMessage::Event { event } = raw.message()
            && let Event::Command {
                session: s, line, ..
            } = event.event.as_ref()
        {
            assert_eq!(*s, session);
            seen.push(line.clone());
        }
    }
    assert_eq!(seen, ["NOOP", "AUTH PLAIN ***", "(credentials checked)"]);
    // Unfollowed, the lines stop.
    raw.send(&ClientMessage::Unfollow);
    std::thread::sleep(Duration::from_millis(200));
    c.expect("NOOP", "250");
    c.expect("QUIT", "221");
    loop {
        assert!(Instant::now() < deadline, "the session never closed");
        if let ServerMessage::Event { event } = raw.message() {
            match event.event.as_ref() {
                Event::Command { .. } => panic!("a command line after unfollowing: {event:?}"),
                Event::SessionClosed { session: s, .. } if *s == session => break,
                _ => {}
            }
        }
    }
}

#[test]
fn a_client_speaking_another_protocol_version_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    server.addr();
    let mut raw = Raw::connect(&db);
    let _hello = raw.line();
    raw.write
        .write_all(b"{\"type\":\"hello\",\"protocol\":999}\n")
        .unwrap();
    match raw.message() {
        ServerMessage::Error { message } => assert!(
            message.contains("protocol 999") && message.contains("same version"),
            "{message}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
    // And the engine closes the connection.
    let mut rest = Vec::new();
    let _ = raw.read.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // A short request cut off before its end of line is said to be that,
    // not an over-long one.
    let mut raw = Raw::connect(&db);
    let _hello = raw.line();
    raw.write
        .write_all(b"{\"type\":\"hello\",\"protocol\":6}")
        .unwrap();
    raw.write.shutdown(std::net::Shutdown::Write).unwrap();
    match raw.message() {
        ServerMessage::Error { message } => assert!(
            message.contains("closed in the middle of a request") && !message.contains("longer"),
            "{message}"
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_peer_running_as_another_user_is_refused_and_logged() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    server.addr();
    // Open the path on purpose, so that only the credentials check stands
    // between nobody and the engine.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(socket_of(&db), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&db).arg("console").output().expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("not allowed"),
        "{stderr}"
    );
    server.wait_for(
        "control socket: refused a client running as uid 65534",
        Duration::from_secs(5),
    );
}

/// A member of the console group only by a supplementary group that no
/// /etc/group line lists (LDAP, sssd, setgroups) watches; a refused user
/// looping connect and close is said once, not once a connection (the
/// event log keeps its newest million rows: a flood would push the mail
/// history out).
#[test]
fn a_supplementary_group_watches_and_a_refused_flood_is_said_once() {
    if !is_root() {
        eprintln!("skipped: needs root to run clients as other users");
        return;
    }
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        eprintln!("skipped: needs {python} to run clients as other users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("console-group", "nogroup")]);
    let mut server = Server::start(&db);
    server.addr();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let hello = "import socket,sys\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.settimeout(10)\n\
         s.connect(sys.argv[1])\n\
         f=s.makefile('rb')\n\
         sys.stdout.write(f.readline().decode())\n";
    // uid 5003, primary group 5003, nogroup (65534) only as a
    // supplementary group.
    let out = Command::new("setpriv")
        .args([
            "--reuid=5003",
            "--regid=5003",
            "--groups=65534",
            python,
            "-c",
            hello,
        ])
        .arg(socket_of(&db))
        .output()
        .expect("setpriv python3");
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(
        reply.contains("\"watch\"") && !reply.contains("not allowed"),
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not in the group at all (the socket opened to all on purpose, so
    // that only the credentials check stands in the way): 300
    // connections, one line.
    std::fs::set_permissions(socket_of(&db), std::fs::Permissions::from_mode(0o666)).unwrap();
    let flood = "import socket,sys\n\
         for _ in range(300):\n    s=socket.socket(socket.AF_UNIX)\n    s.connect(sys.argv[1])\n    s.close()\n";
    let out = Command::new("setpriv")
        .args([
            "--reuid=5004",
            "--regid=5004",
            "--clear-groups",
            python,
            "-c",
            flood,
        ])
        .arg(socket_of(&db))
        .output()
        .expect("setpriv python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_for(
        "refused a client running as uid 5004",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(500));
    server.drain_log();
    let said = server
        .log
        .iter()
        .filter(|l| l.contains("refused a client running as uid 5004"))
        .count();
    assert_eq!(said, 1, "{:?}", server.log);
    assert!(
        !server.log.iter().any(|l| l.contains("uid 5003")),
        "{:?}",
        server.log
    );
}

#[test]
fn the_console_group_gets_a_0660_socket_and_watches_only() {
    if !is_root() {
        eprintln!("skipped: needs root to chown the socket and run a client as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("console-group", "nogroup")]);
    let mut server = Server::start(&db);
    server.addr();
    let meta = std::fs::metadata(socket_of(&db)).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    // A member of the group (nobody, primary group nogroup) is let in to
    // watch; the database itself stays out of its reach.
    let probe = as_nobody(&db)
        .args(["list", "show", "allow"])
        .output()
        .expect("setpriv");
    assert_ne!(probe.status.code(), Some(0), "nobody read the database");
    // Turning the setting off makes the socket owner-only again, live.
    cli(&db, &["policy", "set", "console-group", ""]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mode = std::fs::metadata(socket_of(&db))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        if mode == 0o600 {
            break;
        }
        assert!(Instant::now() < deadline, "socket still {mode:o}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Consoles are capped per user (8) and in all (64): a user who connects
/// over and over gets a clear refusal, not an engine that grows by a
/// snapshot per connection; a place is given back when a console goes.
#[test]
fn consoles_are_capped_per_user_and_places_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut attached: Vec<Raw> = (0..8)
        .map(|_| {
            let mut r = Raw::connect(&db);
            r.hello();
            assert!(matches!(r.message(), ServerMessage::Snapshot { .. }));
            r
        })
        .collect();
    let mut ninth = Raw::connect(&db);
    ninth.hello();
    match ninth.message() {
        ServerMessage::Error { message } => {
            assert!(
                message.contains("too many consoles attached by this user"),
                "{message}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A one-shot question takes no console's place: the CLI still asks
    // the engine which port its port-0 binding got.
    let shown = run_cli(&db, &["bind", "show"], "");
    assert!(
        shown.code == 0 && shown.stdout.contains(&format!("listening on {addr}")),
        "{shown:?}"
    );
    drop(attached.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = Raw::connect(&db);
        again.hello();
        if let ServerMessage::Snapshot { .. } = again.message() {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connections that never say hello are capped too (each waits up to
/// ten seconds), and a question past the cap gets a clear refusal, not a
/// hang; once they go, questions are answered again.
#[test]
fn connections_that_never_say_hello_are_capped_and_a_question_is_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    let mut silent: Vec<Raw> = (0..8)
        .map(|_| {
            let mut r = Raw::connect(&db);
            assert!(matches!(r.message(), ServerMessage::Hello { .. }));
            r
        })
        .collect();
    let shown = run_cli(&db, &["bind", "show"], "");
    assert!(
        shown
            .stdout
            .contains("too many connections opening at once"),
        "{shown:?}"
    );
    silent.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = run_cli(&db, &["bind", "show"], "");
        if shown.stdout.contains(&format!("listening on {addr}")) {
            break;
        }
        assert!(Instant::now() < deadline, "never answered again: {shown:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A watcher attached through the console group is let go when the
/// setting changes (here: turned off), rather than watching on.
#[test]
fn watchers_are_let_go_when_the_console_group_changes() {
    if !is_root() {
        eprintln!("skipped: needs root to run a watcher as nobody");
        return;
    }
    // The system's Python, which any user may run (a pyenv shim under
    // /root is not).
    let python = "/usr/bin/python3";
    if !Path::new(python).exists() {
        eprintln!("skipped: needs {python} to run a watcher as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("console-group", "nogroup")]);
    let mut server = Server::start(&db);
    server.addr();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(socket.AF_UNIX)\n\
         s.settimeout(20)\n\
         s.connect(sys.argv[1])\n\
         s.sendall(b'{{\"type\":\"hello\",\"protocol\":{PROTOCOL_VERSION}}}\\n')\n\
         f=s.makefile('rb')\n\
         last=b''\n\
         for line in f:\n    last=line\n\
         sys.stdout.write(last.decode())\n"
    );
    let watcher = nobody(python)
        .args(["-c", &script])
        .arg(socket_of(&db))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv python3");
    // Attached and watching (the engine's log says nothing of a refusal).
    std::thread::sleep(Duration::from_millis(800));
    cli(&db, &["policy", "set", "console-group", ""]);
    let out = watcher.wait_with_output().expect("watcher");
    let last = String::from_utf8_lossy(&out.stdout);
    assert!(
        last.contains("the console group changed"),
        "the watcher's last line: {last} ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_console_that_stops_reading_is_skipped_ahead_and_never_slows_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("delivery", "off")]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    // Attached, then never reads.
    let mut stalled = Raw::connect(&db);
    stalled.hello();
    let pid = server.child.id();
    // Sessions go on at full speed: many more events (about 40,000) than
    // the console's backlog (16,384) while it reads nothing.
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..400 {
                    let mut c = common::Client::connect(addr);
                    c.reply();
                    c.expect(&format!("EHLO load{t}-{i}.test"), "250");
                    c.expect("MAIL FROM:<a@example.com>", "250");
                    c.expect("RCPT TO:<b@example.com>", "250");
                    c.expect("NOOP", "250");
                    c.expect("NOOP", "250");
                    c.expect("QUIT", "221");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("load thread");
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(60),
        "3,200 sessions took {took:?} with a stalled console"
    );
    let after = rss_kib(pid);
    assert!(
        after < 200_000,
        "engine RSS {after} kB with a stalled console"
    );
    // When it reads again it is told what it did not get (events over the
    // broadcast cap are counted; a console that fell behind the ring is
    // told it lagged and gets a snapshot), and the live picture it gets
    // counts every session.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut told = false;
    let mut counted = false;
    while !(told && counted) {
        assert!(Instant::now() < deadline, "told {told}, counted {counted}");
        match stalled.message() {
            ServerMessage::Skipped { events } if events > 0 => told = true,
            ServerMessage::Lagged { missed } if missed > 0 => told = true,
            ServerMessage::Snapshot { snapshot } => {
                counted |= snapshot.live.counters.sessions >= 3200;
            }
            ServerMessage::Tick { tick } => counted |= tick.counters.sessions >= 3200,
            _ => {}
        }
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/relaygate.service");
    let text = std::fs::read_to_string(&unit).expect("data/relaygate.service");
    for needle in [
        "Type=notify",
        "serve --headless",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "StateDirectory=relaygate",
        "ExecReload=",
    ] {
        assert!(text.contains(needle), "the unit lacks {needle}");
    }
    // verify checks that ExecStart exists: point a copy at the binary built here.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("relaygate.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/relaygate", BIN)).unwrap();
    let Ok(out) = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn sighup_rereads_the_tls_files_and_bad_ones_keep_the_old_certificate_but_hold_nothing_else_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    // The engine generated its certificate; use copies as "configured" files.
    let generated = db.with_extension("tls");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(generated.join("cert.pem"), &cert).unwrap();
    std::fs::copy(generated.join("key.pem"), &key).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    // One of the pair alone is said to do nothing yet.
    let set = cli(&db, &["policy", "set", "tls-cert-file", &path(&cert)]);
    assert!(set.contains("tls-key-file is not set"), "{set}");
    let set = cli(&db, &["policy", "set", "tls-key-file", &path(&key)]);
    assert!(!set.contains("warning") && !set.contains("error"), "{set}");
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    server.drain_log();
    server.log.clear();

    // A renewal gone wrong: the key file is garbage. SIGHUP reads it, the
    // engine refuses it and keeps the certificate in force.
    std::fs::write(&key, "not a key\n").unwrap();
    common::signal(&server.child, "HUP");
    let refused = server.wait_for("TLS files refused", Duration::from_secs(5));
    assert!(
        refused.contains("previous certificate stays") && refused.contains("key.pem"),
        "{refused}"
    );
    let show = cli(&db, &["policy", "show"]);
    assert!(
        show.contains("the TLS files do not load") && show.contains("key.pem"),
        "{show}"
    );
    assert!(!show.contains("the engine refused"), "{show}");
    let mut c = common::Client::connect(addr);
    c.reply();
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("STARTTLS"),
        "the previous TLS stays in force: {ehlo}"
    );
    c.expect("STARTTLS", "220");

    // Everything else still applies while the files are bad: the client's
    // own address denied is refused at once.
    server.drain_log();
    server.log.clear();
    cli(&db, &["list", "add", "deny", "127.0.0.1"]);
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    let mut c = common::Client::connect(addr);
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<x@far.test>", "554 5.7.1");
    c.expect("QUIT", "221");

    // Fixed and reloaded: nothing to report.
    std::fs::copy(generated.join("key.pem"), &key).unwrap();
    server.drain_log();
    server.log.clear();
    common::signal(&server.child, "HUP");
    server.wait_for("configuration reloaded", Duration::from_secs(5));
    let show = cli(&db, &["policy", "show"]);
    assert!(!show.contains("do not load"), "{show}");
}

/// A service restarted with TLS files that do not load still starts and
/// relays (a renewal gone wrong must not stop the mail): without TLS, said
/// in the log, until the files load.
#[test]
fn an_engine_starts_without_tls_when_its_files_do_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A file that does not exist is said to be missing at once, not only
    // that the other of the pair is not set yet.
    let gone = dir.path().join("nonexistent.pem");
    let set = cli(
        &db,
        &["policy", "set", "tls-cert-file", gone.to_str().unwrap()],
    );
    assert!(
        set.contains(&format!(
            "warning: tls-cert-file {}: No such file",
            gone.display()
        )),
        "{set}"
    );
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let set = cli(
        &db,
        &["policy", "set", "tls-cert-file", cert.to_str().unwrap()],
    );
    assert!(set.contains("warning: tls-key-file is not set"), "{set}");
    let set = cli(
        &db,
        &["policy", "set", "tls-key-file", key.to_str().unwrap()],
    );
    assert!(set.contains("the TLS files do not load"), "{set}");
    let mut server = Server::start(&db);
    let refused = server.wait_for("TLS files refused", Duration::from_secs(5));
    assert!(
        refused.contains("STARTTLS and implicit TLS are off"),
        "{refused}"
    );
    let mut c = common::Client::connect(server.addr());
    c.reply();
    let ehlo = c.cmd("EHLO client.test");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    c.expect("STARTTLS", "502 5.5.1");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<x@far.test>", "250");
    c.expect("QUIT", "221");
    assert_eq!(server.terminate().code(), Some(0));
}

/// Under systemd (NOTIFY_SOCKET), the engine says READY once it listens,
/// and at a stop asks for shutdown-grace and 15 s more than the unit's
/// TimeoutStopSec, so a long drain is never cut short by SIGKILL.
#[test]
fn systemd_is_told_ready_and_how_long_the_stop_may_take() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("shutdown-grace", "120")]);
    let notify = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--db")
        .arg(&db)
        .args(["serve", "--headless"])
        .env("NOTIFY_SOCKET", &notify);
    let (mut child, _addr) = common::spawn_engine(cmd);
    let mut said = String::new();
    let mut buf = [0u8; 4096];
    while !said.contains("READY=1") {
        let n = socket.recv(&mut buf).expect("a notification");
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
        said.push('\n');
    }
    assert!(said.contains("STATUS=listening on 1 binding(s)"), "{said}");
    // The status follows the listeners.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let second = probe.local_addr().unwrap();
    drop(probe);
    cli(&db, &["bind", "add", &second.to_string()]);
    while !said.contains("STATUS=listening on 2 binding(s)") {
        let n = socket.recv(&mut buf).expect("a notification");
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
        said.push('\n');
    }
    common::signal(&child, "TERM");
    while !said.contains("STOPPING=1") {
        let n = socket.recv(&mut buf).expect("a notification");
        said.push_str(&String::from_utf8_lossy(&buf[..n]));
        said.push('\n');
    }
    assert!(said.contains("EXTEND_TIMEOUT_USEC=135000000"), "{said}");
    let status = common::wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
}

/// A database whose path is too long for a Unix socket's address: the
/// socket is still beside it (reached through its directory), the CLI asks
/// the engine through it, and the engine relays mail as ever.
#[test]
fn a_database_deeper_than_a_socket_address_still_has_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("d".repeat(100));
    std::fs::create_dir(&deep).unwrap();
    let db = test_db(&deep, &[]);
    assert!(socket_of(&db).as_os_str().len() > 108);
    let mut server = Server::start(&db);
    let addr = server.addr();
    assert!(
        !server
            .log
            .iter()
            .any(|l| l.contains("no console can attach")),
        "{:#?}",
        server.log
    );
    let meta = std::fs::symlink_metadata(socket_of(&db)).expect("the socket beside the database");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // `bind show` asks the engine which port its port-0 binding got: only
    // through the socket.
    let shown = run_cli(&db, &["bind", "show"], "");
    assert!(
        shown.code == 0 && shown.stdout.contains(&format!("listening on {addr}")),
        "{shown:?}"
    );
    let mut c = common::Client::connect(addr);
    assert!(c.reply().starts_with("220"));
    c.expect("EHLO client.test", "250");
    c.expect("QUIT", "221");
}

/// A console group named before it exists is applied once it is created
/// (the socket goes from 0600 to 0660 with the group, without a restart),
/// and dropped once it is deleted.
#[test]
fn a_console_group_created_later_is_applied_and_deleted_is_dropped() {
    if !is_root() || Command::new("groupadd").arg("--help").output().is_err() {
        eprintln!("skipped: needs root and groupadd to create a group");
        return;
    }
    let name = format!("rgtest{}", std::process::id());
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = Command::new("groupdel").arg(&self.0).output();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("console-group", &name)]);
    let mut server = Server::start(&db);
    server.addr();
    let mode = || {
        std::fs::metadata(socket_of(&db))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(), 0o600);
    let made = Command::new("groupadd").arg(&name).output().unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let _gone = Gone(name.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    while mode() != 0o660 {
        assert!(Instant::now() < deadline, "socket still {:o}", mode());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Deleted again: the next connection finds it gone, and the socket is
    // owner-only once more (its old members are not let in).
    let removed = Command::new("groupdel").arg(&name).output().unwrap();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let mut raw = Raw::connect(&db);
    let _hello = raw.line();
    assert_eq!(mode(), 0o600);
}

/// A console group the engine's user is not in cannot be given the
/// socket: the log says why and what to do, once (not every second), and
/// the socket stays owner-only.
#[test]
fn a_console_group_the_engine_is_not_in_is_reported_once() {
    if !is_root() {
        eprintln!("skipped: needs root to run the engine as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // `daemon` (gid 1): nobody is not in it.
    let db = test_db(dir.path(), &[("console-group", "daemon")]);
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    let mut engine = as_nobody(&db)
        .args(["serve", "--headless"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket_of(&db).exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Several of the engine's one-second checks.
    std::thread::sleep(Duration::from_millis(3500));
    let mode = std::fs::metadata(socket_of(&db))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    common::signal(&engine, "TERM");
    let out = engine.wait_with_output_timeout();
    let said = out
        .lines()
        .filter(|l| l.contains("console-group daemon: the engine's user is not in that group"))
        .count();
    assert_eq!(said, 1, "{out}");
    assert!(out.contains("usermod -aG daemon"), "{out}");
    assert_eq!(mode, 0o600);
}

trait WaitWithOutput {
    fn wait_with_output_timeout(&mut self) -> String;
}

impl WaitWithOutput for std::process::Child {
    /// Waits (20 s at most, then kills) and returns stderr.
    fn wait_with_output_timeout(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.wait();
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}
