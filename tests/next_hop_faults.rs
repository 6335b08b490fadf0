//! Next hops that misbehave, each scripted byte by byte on loopback, and
//! what the real binary's delivery does about them: no hang, no endless
//! resend, no body sent as commands, no message lost; liberal where RFC
//! 5321 asks it (a reply with no text, an unknown second digit), with HELO
//! when EHLO is refused, plaintext when opportunistic STARTTLS is refused.

mod common;

use common::{Server, cli, send_queued, test_db};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the scripted next hop saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Bodies that reached the final dot.
    bodies: Vec<Vec<u8>>,
    /// Command lines, in order, over all connections.
    commands: Vec<String>,
}

/// One connection's side of the script.
struct Peer {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    seen: Arc<Mutex<Seen>>,
}

impl Peer {
    fn say(&mut self, text: &str) {
        let _ = self.writer.write_all(text.as_bytes());
    }

    /// The next command line, recorded; None when the client has gone.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                let line = line.trim_end().to_string();
                if let Ok(mut seen) = self.seen.lock() {
                    seen.commands.push(line.clone());
                }
                Some(line)
            }
        }
    }

    /// Reads the body up to its final dot and records it.
    fn body(&mut self) -> Option<()> {
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            if self.reader.read_until(b'\n', &mut line).ok()? == 0 {
                return None;
            }
            if line == b".\r\n" {
                break;
            }
            body.extend_from_slice(&line);
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.bodies.push(body);
        }
        Some(())
    }

    /// A whole session the usual way (DATA takes the body and says 250,
    /// QUIT ends it, anything else gets 250) except where `special`
    /// answers a command line itself.
    fn serve(&mut self, mut special: impl FnMut(&str) -> Option<String>) {
        while let Some(l) = self.line() {
            if let Some(reply) = special(&l) {
                self.say(&reply);
                continue;
            }
            match l.split([' ', ':']).next().unwrap_or_default() {
                "DATA" => {
                    self.say("354 go\r\n");
                    if self.body().is_none() {
                        return;
                    }
                    self.say("250 2.0.0 taken\r\n");
                }
                "QUIT" => {
                    self.say("221 bye\r\n");
                    return;
                }
                _ => self.say("250 ok\r\n"),
            }
        }
    }

    /// Answers commands the usual way until DATA's 354 and the body are
    /// done, then hands over: EHLO with `ehlo` lines.
    fn up_to_the_dot(&mut self, ehlo: &str) -> Option<()> {
        loop {
            let line = self.line()?;
            let verb = line
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => self.say(ehlo),
                "DATA" => {
                    self.say("354 go ahead\r\n");
                    return self.body();
                }
                "QUIT" => {
                    self.say("221 bye\r\n");
                    return None;
                }
                _ => self.say("250 ok\r\n"),
            }
        }
    }
}

/// A next hop on 127.0.0.1 running `script` for each connection.
fn next_hop(script: fn(&mut Peer, usize)) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let shared = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let n = {
                let mut s = shared.lock().expect("seen");
                s.connections += 1;
                s.connections
            };
            let seen = Arc::clone(&shared);
            std::thread::spawn(move || {
                let Ok(writer) = stream.try_clone() else {
                    return;
                };
                let mut peer = Peer {
                    reader: BufReader::new(stream),
                    writer,
                    seen,
                };
                script(&mut peer, n);
            });
        }
    });
    (addr, seen)
}

const EHLO: &str = "250-hop.test\r\n250 8BITMIME\r\n";

fn setup(dir: &Path, hop: SocketAddr, tls: &str) -> (Server, std::path::PathBuf) {
    let db = test_db(
        dir,
        &[
            ("retry-first", "1"),
            ("retry-max-interval", "1"),
            ("delivery-command-timeout", "2"),
        ],
    );
    cli(&db, &["route", "add", "*", &hop.to_string(), "--tls", tls]);
    (Server::start(&db), db)
}

/// A database that tries each message once in the test's time (the next
/// retry an hour away), with `extra` settings, `*` routed to `hop` in
/// plaintext and example.com (the senders' domain) to `home`, if given;
/// the engine started on it.
fn once_only(
    dir: &Path,
    hop: SocketAddr,
    home: Option<&str>,
    extra: &[(&str, &str)],
) -> (Server, std::path::PathBuf) {
    let mut settings = vec![("retry-first", "3600")];
    settings.extend_from_slice(extra);
    let db = test_db(dir, &settings);
    cli(
        &db,
        &["route", "add", "*", &hop.to_string(), "--tls", "none"],
    );
    if let Some(home) = home {
        cli(&db, &["route", "add", "example.com", home, "--tls", "none"]);
    }
    (Server::start(&db), db)
}

fn send(server: &mut Server) -> String {
    send_queued(
        server.addr(),
        "alice@example.com",
        &["bob@far.test"],
        "Subject: t\r\n\r\n..leading dot\r\nhello\r\n",
    )
}

/// Polls until `f` holds (20 s at most).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

fn queue_is_empty(db: &Path) -> bool {
    cli(db, &["queue", "show"]).contains("queue is empty")
}

/// Silent after the final dot: the attempt times out, is deferred and
/// tried again (it used to hang in flight for ever); the second time the
/// hop answers and the message is delivered.
#[test]
fn a_hop_silent_after_the_dot_costs_a_timeout_not_a_slot_for_ever() {
    let (hop, seen) = next_hop(|p, n| {
        p.say("220 hop.test\r\n");
        if p.up_to_the_dot(EHLO).is_none() {
            return;
        }
        if n == 1 {
            // Reads on (QUIT, anything) and never answers.
            while p.line().is_some() {}
            return;
        }
        p.say("250 2.0.0 taken\r\n");
        while let Some(l) = p.line() {
            p.say(if l == "QUIT" {
                "221 bye\r\n"
            } else {
                "250 ok\r\n"
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    send(&mut server);
    eventually("a second connection after the silent one", || {
        seen.lock().expect("seen").connections >= 2
    });
    eventually("the message delivered and gone", || queue_is_empty(&db));
    assert_eq!(seen.lock().expect("seen").bodies.len(), 2);
}

/// RFC 5321 4.2: any text, or none, is acceptable, and a reply is judged
/// by its first digit. "250" alone after the dot is a delivery, once: not
/// a parse error that sends the message again and again. A 10 MB
/// greeting line is read through (only its start kept).
#[test]
fn bare_and_unusual_replies_count_as_what_their_first_digit_says() {
    let (hop, seen) = next_hop(|p, _| {
        let mut greeting = String::from("220 ");
        greeting.push_str(&"x".repeat(10 << 20));
        greeting.push_str("\r\n");
        p.say(&greeting);
        if p.up_to_the_dot("250-hop.test\r\n250 PIPELINING\r\n")
            .is_none()
        {
            return;
        }
        p.say("250\r\n");
        while let Some(l) = p.line() {
            p.say(if l == "QUIT" {
                "221\r\n"
            } else {
                "270 2.0.0 fine\r\n"
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    send(&mut server);
    eventually("the message delivered and gone", || queue_is_empty(&db));
    // Two retry intervals more: no second copy.
    std::thread::sleep(Duration::from_millis(2500));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bodies.len(), 1);
    // Stuffed on the wire: the stored line is ".leading dot".
    let body = String::from_utf8_lossy(&seen.bodies[0]);
    assert!(
        body.contains("\r\nSubject: t\r\n\r\n..leading dot\r\nhello\r\n"),
        "{body}"
    );
}

/// A 2xx to DATA (without PIPELINING) is not a go-ahead: the body is not
/// sent (its lines would be taken as commands), the connection is not
/// used again, and the message is deferred, not bounced.
#[test]
fn a_2xx_to_data_sends_no_body_and_defers() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        while let Some(l) = p.line() {
            let reply = match l.split(' ').next().unwrap_or_default() {
                "EHLO" => EHLO,
                "QUIT" => "221 bye\r\n",
                "DATA" => "250 ok, whatever\r\n",
                _ => "250 ok\r\n",
            };
            p.say(reply);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    let id = send(&mut server);
    eventually("two attempts", || {
        seen.lock().expect("seen").connections >= 2
    });
    let seen = seen.lock().expect("seen");
    assert!(
        !seen
            .commands
            .iter()
            .any(|c| c.contains("hello") || c.contains("Subject")),
        "body lines went out as commands: {:?}",
        seen.commands
    );
    let queue = cli(&db, &["queue", "show"]);
    assert!(queue.contains(&id), "{queue}");
    assert!(queue.contains("did not ask for the message"), "{queue}");
}

/// EHLO refused with 502: HELO (RFC 5321 3.2). STARTTLS refused with 454
/// on an opportunistic route: the message goes on in plaintext (RFC 3207
/// 4.1), as Postfix's `may` does.
#[test]
fn helo_when_ehlo_is_refused_and_plaintext_when_starttls_is() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        p.serve(|l| {
            l.starts_with("EHLO")
                .then(|| "502 5.5.1 no EHLO here\r\n".into())
        });
    });
    let (tls_hop, tls_seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        p.serve(|l| match l {
            _ if l.starts_with("EHLO") => Some("250-hop.test\r\n250 STARTTLS\r\n".into()),
            "STARTTLS" => Some("454 4.7.0 TLS not available now\r\n".into()),
            _ => None,
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    cli(
        &db,
        &[
            "route",
            "add",
            "tls.test",
            &tls_hop.to_string(),
            "--tls",
            "opportunistic",
        ],
    );
    send(&mut server);
    send_queued(
        server.addr(),
        "alice@example.com",
        &["carol@tls.test"],
        "Subject: t\r\n\r\nhello\r\n",
    );
    eventually("both delivered", || queue_is_empty(&db));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bodies.len(), 1);
    assert!(
        seen.commands.iter().any(|c| c.starts_with("HELO ")),
        "{:?}",
        seen.commands
    );
    assert_eq!(tls_seen.lock().expect("seen").bodies.len(), 1);
}

/// `queue hold` while deliveries wait for a slot (one connection at a
/// time to a slow next hop): the held messages are not sent when their
/// turn comes, only the one already under way is.
#[test]
fn messages_held_while_waiting_for_a_slot_are_not_sent() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        loop {
            if p.up_to_the_dot(EHLO).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1500));
            p.say("250 2.0.0 taken\r\n");
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    cli(&db, &["policy", "set", "destination-concurrency", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    let ids: Vec<String> = (0..4).map(|_| send(&mut server)).collect();
    eventually("the first body at the next hop", || {
        !seen.lock().expect("seen").bodies.is_empty()
    });
    let out = cli(&db, &["queue", "hold", "--domain", "far.test"]);
    assert!(out.contains("held"), "{out}");
    std::thread::sleep(Duration::from_secs(5));
    let delivered = seen.lock().expect("seen").bodies.len();
    assert_eq!(delivered, 1, "held messages were sent");
    let queue = cli(&db, &["queue", "show"]);
    let held = ids.iter().filter(|id| queue.contains(id.as_str())).count();
    assert_eq!(held, 3, "{queue}");
}

/// A connection kept for reuse is not kept for ever: after 5 s idle it
/// gets its QUIT, whether or not another message comes.
#[test]
fn idle_connections_are_closed_with_quit() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        if p.up_to_the_dot(EHLO).is_none() {
            return;
        }
        p.say("250 2.0.0 taken\r\n");
        while let Some(l) = p.line() {
            if l == "QUIT" {
                p.say("221 bye\r\n");
                return;
            }
            p.say("250 ok\r\n");
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = setup(dir.path(), hop, "none");
    send(&mut server);
    eventually("the message delivered and gone", || queue_is_empty(&db));
    eventually("a QUIT on the idle connection", || {
        seen.lock()
            .expect("seen")
            .commands
            .iter()
            .any(|c| c == "QUIT")
    });
}

/// A next hop that takes two recipients a transaction ("452 too many
/// recipients" past them): the others go at once in more transactions on
/// the same connection, not an hour later.
#[test]
fn recipients_put_off_as_too_many_go_in_another_transaction_at_once() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        let mut rcpts = 0;
        p.serve(|l| match l.split([' ', ':']).next().unwrap_or_default() {
            "EHLO" => Some(EHLO.into()),
            "MAIL" => {
                rcpts = 0;
                None
            }
            "RCPT" if rcpts >= 2 => Some("452 4.5.3 too many recipients\r\n".into()),
            "RCPT" => {
                rcpts += 1;
                None
            }
            _ => None,
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = once_only(dir.path(), hop, None, &[]);
    let to = [
        "a@far.test",
        "b@far.test",
        "c@far.test",
        "d@far.test",
        "e@far.test",
    ];
    send_queued(
        server.addr(),
        "alice@example.com",
        &to,
        "Subject: t\r\n\r\nhi\r\n",
    );
    eventually("all five delivered and gone", || queue_is_empty(&db));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bodies.len(), 3, "three transactions: 2 + 2 + 1");
    assert_eq!(seen.connections, 1);
}

/// Smarthost credentials never go out in plaintext unless the route says
/// `--tls none`: an opportunistic route to a next hop that offers no
/// STARTTLS (or refuses it) defers instead of logging in.
#[test]
fn credentials_never_go_in_plaintext_unless_the_route_says_so() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        p.serve(|l| {
            if l.starts_with("EHLO") {
                Some("250-hop.test\r\n250 AUTH PLAIN LOGIN\r\n".into())
            } else if l.starts_with("AUTH") {
                Some("235 2.7.0 ok\r\n".into())
            } else {
                None
            }
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let db = test_db(
        dir.path(),
        &[("retry-first", "1"), ("retry-max-interval", "1")],
    );
    let route = |tls: &str| {
        common::cli_stdin(
            &db,
            &[
                "route",
                "add",
                "*",
                &hop.to_string(),
                "--tls",
                tls,
                "--user",
                "gw",
                "--password-stdin",
            ],
            "secret pass\n",
        );
    };
    route("opportunistic");
    let mut server = Server::start(&db);
    let id = send(&mut server);
    server.wait_for(&format!("delivery {id}"), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    {
        let seen = seen.lock().expect("seen");
        assert!(
            !seen.commands.iter().any(|c| c.starts_with("AUTH")),
            "{:?}",
            seen.commands
        );
        assert!(seen.bodies.is_empty());
    }
    let queue = cli(&db, &["queue", "show"]);
    assert!(queue.contains("never sent in plaintext"), "{queue}");
    // Said plainly by the administrator: then it logs in.
    route("none");
    eventually("delivered once the route allows plaintext", || {
        queue_is_empty(&db)
    });
    assert!(
        seen.lock()
            .expect("seen")
            .commands
            .iter()
            .any(|c| c.starts_with("AUTH PLAIN"))
    );
}

/// A 421 at MAIL on a kept connection is a server that closed it for
/// idleness: the message goes at once on a new connection, not an
/// attempt later.
#[test]
fn a_421_on_a_kept_connection_means_a_new_one_not_a_retry() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        let mut mails = 0;
        p.serve(|l| match l.split([' ', ':']).next().unwrap_or_default() {
            "EHLO" => Some(EHLO.into()),
            "MAIL" => {
                mails += 1;
                (mails == 2).then(|| "421 4.4.2 hop.test timeout exceeded\r\n".into())
            }
            _ => None,
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = once_only(dir.path(), hop, None, &[]);
    send(&mut server);
    eventually("the first delivered", || queue_is_empty(&db));
    send(&mut server);
    eventually("the second delivered, not deferred", || queue_is_empty(&db));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bodies.len(), 2);
    assert_eq!(seen.connections, 2);
}

/// A pipelining next hop that refuses MAIL but still says 354 to DATA
/// waits for a body: that connection is not kept for the next message
/// (whose commands it would take as the body).
#[test]
fn a_connection_left_waiting_for_a_body_is_not_reused() {
    let (hop, seen) = next_hop(|p, n| {
        p.say("220 hop.test\r\n");
        // The first connection refuses its first MAIL.
        let mut refused = false;
        let mut mails = 0;
        p.serve(|l| match l.split([' ', ':']).next().unwrap_or_default() {
            "EHLO" => Some("250-hop.test\r\n250 PIPELINING\r\n".into()),
            "MAIL" => {
                mails += 1;
                refused = n == 1 && mails == 1;
                refused.then(|| "550 5.7.1 not from you\r\n".into())
            }
            "RCPT" if refused => Some("503 5.5.1 need MAIL\r\n".into()),
            _ => None,
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = once_only(dir.path(), hop, None, &[]);
    send(&mut server);
    // The first is refused for good (a bounce goes to the local sender).
    std::thread::sleep(Duration::from_millis(500));
    let id = send(&mut server);
    eventually("the second delivered", || {
        !cli(&db, &["queue", "show"]).contains(&id)
    });
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.connections, 2, "{:?}", seen.commands);
    assert!(
        seen.bodies
            .iter()
            .any(|b| String::from_utf8_lossy(b).contains("leading dot")),
        "{:?}",
        seen.commands
    );
}

/// 250 recipients to a pipelining next hop go in one transaction, their
/// RCPTs written a hundred at a time, every one answered and delivered.
#[test]
fn many_recipients_are_pipelined_in_batches_in_one_transaction() {
    let (hop, seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        p.serve(|l| {
            l.starts_with("EHLO")
                .then(|| "250-hop.test\r\n250 PIPELINING\r\n".into())
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = once_only(dir.path(), hop, None, &[("max-recipients", "300")]);
    let to: Vec<String> = (0..250).map(|i| format!("r{i}@far.test")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    send_queued(
        server.addr(),
        "alice@example.com",
        &to,
        "Subject: t\r\n\r\nhi\r\n",
    );
    eventually("all 250 delivered", || queue_is_empty(&db));
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.bodies.len(), 1);
    let rcpts = seen
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 250);
}

/// A message over the size a next hop announces is bounced without being
/// sent, and the bounce does not put the refusal in the next hop's mouth
/// (no Remote-MTA, no "host ... said").
#[test]
fn a_message_over_the_announced_size_is_bounced_as_ours_not_the_hop_s() {
    let (small, small_seen) = next_hop(|p, _| {
        p.say("220 small.test\r\n");
        p.serve(|l| {
            l.starts_with("EHLO")
                .then(|| "250-small.test\r\n250 SIZE 100\r\n".into())
        });
    });
    let (home, home_seen) = next_hop(|p, _| {
        p.say("220 home.test\r\n");
        p.serve(|l| l.starts_with("EHLO").then(|| EHLO.into()));
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, _db) = once_only(dir.path(), small, Some(&home.to_string()), &[]);
    send(&mut server);
    eventually("the bounce at home", || {
        !home_seen.lock().expect("seen").bodies.is_empty()
    });
    let bounce = String::from_utf8_lossy(&home_seen.lock().expect("seen").bodies[0]).into_owned();
    assert!(bounce.contains("not sent: the message"), "{bounce}");
    assert!(bounce.contains("Status: 5.3.4"), "{bounce}");
    assert!(!bounce.contains("Remote-MTA"), "{bounce}");
    assert!(!bounce.contains("said:"), "{bounce}");
    let small_seen = small_seen.lock().expect("seen");
    assert!(small_seen.bodies.is_empty());
    assert!(!small_seen.commands.iter().any(|c| c.starts_with("MAIL")));
}

/// A 421 partway through the recipients keeps the refusals already given
/// (a 550 still bounces) and defers only the rest; a 452 that is not
/// "too many recipients" (a full mailbox) waits for the retry instead of
/// another transaction.
#[test]
fn a_421_partway_keeps_earlier_refusals_and_a_full_mailbox_waits() {
    let (hop, seen) = next_hop(|p, n| {
        p.say("220 hop.test\r\n");
        // On the first connection, whatever comes after gone@'s refusal
        // (a RCPT or DATA) gets 421.
        let mut cut_next = false;
        p.serve(|l| {
            let verb = l.split([' ', ':']).next().unwrap_or_default();
            if cut_next && (verb == "RCPT" || verb == "DATA") {
                cut_next = false;
                return Some("421 4.3.2 shutting down\r\n".into());
            }
            match verb {
                "EHLO" => Some("250-hop.test\r\n250 PIPELINING\r\n".into()),
                "RCPT" if l.contains("gone@") => {
                    cut_next = n == 1;
                    Some("550 5.1.1 no such user\r\n".into())
                }
                "RCPT" if l.contains("full@") => Some("452 4.2.2 mailbox full\r\n".into()),
                _ => None,
            }
        });
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, _db) = once_only(dir.path(), hop, Some("127.0.0.1:9"), &[]);
    // First connection: gone@ refused, then 421 (recipients go in any
    // order): gone@ bounces, every other recipient is deferred.
    let first = send_queued(
        server.addr(),
        "alice@example.com",
        &["a@far.test", "gone@far.test", "b@far.test", "c@far.test"],
        "Subject: t\r\n\r\nhi\r\n",
    );
    let gone = server.wait_for(
        &format!("delivery {first} to=<gone@far.test>"),
        Duration::from_secs(10),
    );
    assert!(
        gone.contains("bounced") && gone.contains("550 5.1.1"),
        "{gone}"
    );
    for r in ["a", "b", "c"] {
        let line = server.wait_for(
            &format!("delivery {first} to=<{r}@far.test>"),
            Duration::from_secs(10),
        );
        assert!(line.contains("deferred") && line.contains("421"), "{line}");
    }
    // A new connection: one takes, one mailbox is full; no second
    // transaction for the full one.
    let second = send_queued(
        server.addr(),
        "alice@example.com",
        &["d@far.test", "full@far.test"],
        "Subject: t\r\n\r\nhi\r\n",
    );
    server.wait_for(
        &format!("delivery {second} to=<full@far.test>"),
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    let fulls = seen
        .lock()
        .expect("seen")
        .commands
        .iter()
        .filter(|c| c.contains("full@far.test"))
        .count();
    assert_eq!(fulls, 1, "the full mailbox was asked again at once");
}

/// A next hop that refuses a message partway through its body (552, too
/// big) and closes: its reply is read and the message bounces, rather
/// than a "connection reset" that is retried for days.
#[test]
fn a_refusal_partway_through_the_body_is_heard() {
    let (hop, _seen) = next_hop(|p, _| {
        p.say("220 hop.test\r\n");
        while let Some(l) = p.line() {
            match l.split([' ', ':']).next().unwrap_or_default() {
                "EHLO" => p.say(EHLO),
                "DATA" => {
                    p.say("354 go\r\n");
                    let mut taken = 0;
                    let mut line = Vec::new();
                    while taken < 100_000 {
                        line.clear();
                        match p.reader.read_until(b'\n', &mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => taken += n,
                        }
                    }
                    p.say("552 5.3.4 message too big for me\r\n");
                    return;
                }
                "QUIT" => return,
                _ => p.say("250 ok\r\n"),
            }
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, _db) = once_only(dir.path(), hop, Some("127.0.0.1:9"), &[]);
    let line = format!("{}\r\n", "x".repeat(70));
    let body = format!("Subject: big\r\n\r\n{}", line.repeat(30_000));
    let id = send_queued(server.addr(), "alice@example.com", &["bob@far.test"], &body);
    let line = server.wait_for(
        &format!("delivery {id} to=<bob@far.test>"),
        Duration::from_secs(15),
    );
    assert!(
        line.contains("bounced") && line.contains("552 5.3.4"),
        "{line}"
    );
}

/// RFC 6152 3: an 8-bit MIME message goes to a next hop without 8BITMIME
/// as quoted-printable (7-bit, decodable back to the text), with no
/// BODY=8BITMIME; to a hop that offers 8BITMIME it goes unchanged, with
/// BODY=8BITMIME.
#[test]
fn eight_bit_mime_is_converted_for_a_hop_without_8bitmime() {
    fn seven_bit_hop(p: &mut Peer, _: usize) {
        p.say("220 old.test\r\n");
        p.serve(|l| l.starts_with("EHLO").then(|| "250 old.test\r\n".into()));
    }
    fn eight_bit_hop(p: &mut Peer, _: usize) {
        p.say("220 new.test\r\n");
        p.serve(|l| l.starts_with("EHLO").then(|| EHLO.into()));
    }
    let (old, old_seen_handle) = next_hop(seven_bit_hop);
    let (new, new_seen) = next_hop(eight_bit_hop);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut server, db) = once_only(dir.path(), old, None, &[]);
    let addr = server.addr();
    cli(
        &db,
        &[
            "route",
            "add",
            "new.test",
            &new.to_string(),
            "--tls",
            "none",
        ],
    );
    // The route in force before the message that needs it is sent (else
    // it goes by the smarthost: a race the test lost once).
    server.wait_for("configuration reloaded", Duration::from_secs(15));
    let text = "Grüße aus Köln = 100%";
    let message = format!(
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nSubject: t\r\n\r\n{text}\r\n"
    );
    for to in ["bob@far.test", "carol@new.test"] {
        let mut c = common::Client::connect(addr);
        c.reply();
        c.expect("EHLO client.test", "250");
        c.expect("MAIL FROM:<alice@example.com> BODY=8BITMIME", "250");
        c.expect(&format!("RCPT TO:<{to}>"), "250");
        c.expect("DATA", "354");
        c.send(message.as_bytes());
        c.expect(".", "250 2.0.0");
    }
    eventually("both delivered", || queue_is_empty(&db));
    let old_seen = old_seen_handle.lock().expect("seen");
    let body = String::from_utf8(old_seen.bodies[0].clone()).expect("utf-8");
    assert!(body.is_ascii(), "{body}");
    assert!(
        body.contains("Content-Transfer-Encoding: quoted-printable\r\n")
            && !body.contains("8bit")
            && body.contains("Gr=C3=BC=C3=9Fe aus K=C3=B6ln =3D 100%\r\n"),
        "{body}"
    );
    let mail = old_seen
        .commands
        .iter()
        .find(|c| c.starts_with("MAIL"))
        .expect("MAIL");
    assert!(!mail.contains("BODY="), "{mail}");
    drop(old_seen);
    // A large one (converted aside from the worker's other tasks).
    let line = "é".repeat(30) + "\r\n";
    let big = format!(
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}",
        line.repeat(10_000)
    );
    common::send_queued(addr, "alice@example.com", &["dave@far.test"], &big);
    eventually("the big one delivered", || queue_is_empty(&db));
    let old_seen = old_seen_handle.lock().expect("seen");
    let body = old_seen.bodies.last().expect("a body").clone();
    assert!(
        body.is_ascii() && body.len() > 600_000,
        "{} bytes",
        body.len()
    );
    let text = String::from_utf8(body).expect("ascii");
    assert!(text.contains("=C3=A9=C3=A9"), "converted");
    drop(old_seen);
    let new_seen = new_seen.lock().expect("seen");
    let body = String::from_utf8(new_seen.bodies[0].clone()).expect("utf-8");
    assert!(body.ends_with(&message), "{body}");
    let mail = new_seen
        .commands
        .iter()
        .find(|c| c.starts_with("MAIL"))
        .expect("MAIL");
    assert!(mail.contains("BODY=8BITMIME"), "{mail}");
}
