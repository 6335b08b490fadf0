//! Every SMTP error path, end to end: the real binary, raw bytes over
//! loopback, the exact reply code and enhanced status code of each
//! refusal, and whether the session goes on or is closed afterwards.

mod common;

use base64::Engine as _;
use common::{Client, Server, cli, cli_stdin, plain, test_db};
use relaygate::spool::{StoredMessage, read_spool, spool_path_for};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const GREETING: &str = "220 gw.example.com ESMTP relaygate";

/// The server on `db` and the address it listens on.
fn start(db: &Path) -> (Server, SocketAddr) {
    let mut server = Server::start(db);
    let addr = server.addr();
    (server, addr)
}

/// Connects and reads the greeting.
fn connect(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    let greeting = c.reply();
    assert_eq!(greeting, GREETING);
    c
}

/// Connects and says EHLO.
fn session(addr: SocketAddr) -> Client {
    let mut c = connect(addr);
    c.expect("EHLO client.test", "250");
    c
}

/// Asserts that the next reply starts with `want` (code and status).
fn next(c: &mut Client, want: &str) -> String {
    let r = c.reply();
    assert!(r.starts_with(want), "got {r:?}, wanted {want:?}");
    r
}

/// Asserts the server closes the connection now, with nothing more said.
fn assert_closed(c: &mut Client) {
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let t = Instant::now();
    assert!(
        c.closed() && t.elapsed() < Duration::from_secs(4),
        "the connection is still open (or more was sent)"
    );
}

/// Asserts nothing arrives for `wait`.
fn assert_silent(c: &mut Client, wait: Duration) {
    c.stream.set_read_timeout(Some(wait)).expect("timeout");
    match c.try_reply() {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
}

/// Everything in the spool (read after the server stopped).
fn spooled(db: &Path) -> Vec<StoredMessage> {
    read_spool(&spool_path_for(db)).expect("read the spool")
}

fn recipients(m: &StoredMessage) -> Vec<&str> {
    m.message
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect()
}

fn body(m: &StoredMessage) -> String {
    String::from_utf8_lossy(&m.message.body).into_owned()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A connection from another loopback address (127.0.0.2, ...), for the
/// allow list and the per-IP limits.
fn connect_from(source: Ipv4Addr, addr: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            socket.connect(addr).await?.into_std()
        })
        .expect("connect from a source address");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
}

/// Writes `script` at once, reads until the server closes, and returns the
/// last line of every reply.
fn converse(mut stream: TcpStream, script: &str) -> Vec<String> {
    stream.write_all(script.as_bytes()).expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read to the end");
    text.lines()
        .filter(|l| l.len() < 4 || l.as_bytes()[3] != b'-')
        .map(str::to_string)
        .collect()
}

/// The first reply line on a fresh stream.
fn first_line(stream: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(stream.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read");
    line.trim_end().to_string()
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    // Loopback unlisted: outbound RCPTs are denied, inbound ones accepted.
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let (server, addr) = start(&db);

    let mut c = connect(addr);
    c.send(
        b"EHLO client.test\r\nMAIL FROM:<stranger@far.test>\r\n\
          RCPT TO:<one@example.com>\r\nRCPT TO:<two@example.com>\r\nDATA\r\n",
    );
    let ehlo = next(&mut c, "250-gw.example.com");
    assert!(ehlo.contains("250-PIPELINING"), "{ehlo}");
    next(&mut c, "250 2.1.0");
    next(&mut c, "250 2.1.5");
    next(&mut c, "250 2.1.5");
    next(&mut c, "354 ");
    // The body, the final dot and the next transaction in one write too,
    // with a denied RCPT in the middle of it.
    c.send(
        b"Subject: first\r\n\r\nhello\r\n.\r\n\
          MAIL FROM:<a@example.com>\r\nRCPT TO:<x@far.test>\r\n\
          RCPT TO:<three@example.com>\r\nDATA\r\n",
    );
    next(&mut c, "250 2.0.0 Ok: queued as ");
    next(&mut c, "250 2.1.0");
    next(&mut c, "554 5.7.1");
    next(&mut c, "250 2.1.5");
    next(&mut c, "354 ");
    c.send(b"Subject: second\r\n\r\nhello again\r\n.\r\nNOOP\r\nQUIT\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    assert_eq!(c.reply(), "250 2.0.0 Ok");
    next(&mut c, "221 2.0.0");
    assert_closed(&mut c);

    // Every RCPT denied: the pipelined DATA is refused and nothing starts.
    let mut c = session(addr);
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@far.test>\r\nDATA\r\nNOOP\r\n");
    next(&mut c, "250 2.1.0");
    next(&mut c, "554 5.7.1");
    next(&mut c, "503 5.5.1");
    assert_eq!(c.reply(), "250 2.0.0 Ok");

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 2);
    assert_eq!(
        recipients(&spool[0]),
        ["one@example.com", "two@example.com"]
    );
    assert!(body(&spool[0]).ends_with("Subject: first\r\n\r\nhello\r\n"));
    assert_eq!(recipients(&spool[1]), ["three@example.com"]);
    assert!(body(&spool[1]).ends_with("Subject: second\r\n\r\nhello again\r\n"));
}

#[test]
fn commands_out_of_sequence_unknown_and_informational() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-bad-commands", "100")]);
    let (server, addr) = start(&db);

    let mut c = connect(addr);
    // Before EHLO.
    c.expect("MAIL FROM:<a@example.com>", "503 5.5.1");
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("EHLO", "501 5.5.4");
    c.expect("HELO", "501 5.5.4");
    c.expect("EHLO client.test", "250");
    // Before MAIL.
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("FROB nicate", "500 5.5.2");
    c.expect("MAILFROM:<a@example.com>", "500 5.5.2");
    c.expect("MAIL FROM:<a@example.com> FROB=1", "555 5.5.4");
    c.expect("MAIL FROM:<a@example.com> SIZE=ten", "501 5.5.4");
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("MAIL FROM:<a@example.com>", "503 5.5.1");
    c.expect("RCPT TO:<b@example.com> XRCPT=1", "555 5.5.4");
    c.expect("RCPT TO:<>", "501 5.5.4");
    // No recipient accepted yet.
    c.expect("DATA", "503 5.5.1");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    // A new EHLO forgets the transaction.
    c.expect("EHLO again.test", "250");
    c.expect("DATA", "503 5.5.1");
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    // So does RSET.
    assert_eq!(c.cmd("RSET"), "250 2.0.0 Ok");
    c.expect("DATA", "503 5.5.1");
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    c.expect("RSET extra", "501 5.5.4");
    c.expect("VRFY", "501 5.5.4");
    c.expect("VRFY bob", "252 2.5.2");
    c.expect("HELP", "214 2.0.0");
    c.expect("HELP MAIL", "214 2.0.0");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    assert_eq!(c.cmd("noop with an argument"), "250 2.0.0 Ok");
    c.expect("QUIT", "221 2.0.0");
    assert_closed(&mut c);

    // QUIT with a command pipelined after it: the command is never run.
    let mut c = connect(addr);
    c.send(b"QUIT\r\nNOOP\r\n");
    next(&mut c, "221 2.0.0");
    assert_closed(&mut c);

    assert_eq!(server.terminate().code(), Some(0));
    assert!(spooled(&db).is_empty());
}

#[test]
fn overlong_command_lines_are_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-command-line", "512")]);
    let (server, addr) = start(&db);
    let mut c = session(addr);

    // Set to 512, the limit is 1,200 octets with the CRLF (the room DSN
    // and AUTH= parameters need); one more is too long.
    let at_limit = format!("NOOP {}", "x".repeat(1200 - 2 - 5));
    assert_eq!(c.cmd(&at_limit), "250 2.0.0 Ok");
    let over = format!("NOOP {}", "x".repeat(1200 - 2 - 4));
    c.expect(&over, "500 5.5.2");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");

    // A long MAIL arriving in pieces, none of them with a line end: one
    // 500 5.5.2 for the whole line, and the command is not run.
    let long = format!("MAIL FROM:<{}@example.com>\r\n", "a".repeat(5000));
    for piece in long.as_bytes().chunks(700) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(10));
    }
    next(&mut c, "500 5.5.2");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("QUIT", "221 2.0.0");
    assert_closed(&mut c);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn bad_bytes_in_commands_are_refused_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let (server, addr) = start(&db);
    let mut c = session(addr);

    let cases: &[&[u8]] = &[
        // NUL.
        b"NO\0OP\r\n",
        b"MAIL FROM:<a\0@example.com>\r\n",
        // A bare CR: neither NOOP nor RSET may run.
        b"NOOP\rRSET\r\n",
        // Invalid UTF-8.
        b"MAIL FROM:<\xff\xfe@example.com>\r\n",
        b"\xc3\x28\r\n",
        // Binary garbage, and a TLS ClientHello on the plaintext port.
        b"\x80\x81\x01\x02\x7f\xfe\x1b[2J\x00\x00\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
        // An empty line.
        b"\r\n",
    ];
    for bytes in cases {
        c.send(bytes);
        let r = c.reply();
        assert!(r.starts_with("500 5.5.2"), "{bytes:?} -> {r:?}");
        // Exactly one reply, and the session still answers.
        assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok", "after {bytes:?}");
    }
    // Garbage split by bare LFs is one bad line per LF.
    c.send(b"\x01\x02\n\xff\n");
    next(&mut c, "500 5.5.2");
    next(&mut c, "500 5.5.2");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    // A bare LF alone still ends a command line (as in Postfix).
    c.send(b"NOOP\n");
    assert_eq!(c.reply(), "250 2.0.0 Ok");
    // A NUL in the middle of a transaction does not disturb it.
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.send(b"RCPT TO:<b\0@example.com>\r\n");
    next(&mut c, "500 5.5.2");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: after garbage\r\n\r\nok\r\n.\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    c.expect("QUIT", "221 2.0.0");
    assert_closed(&mut c);

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1);
    assert_eq!(recipients(&spool[0]), ["b@example.com"]);
}

#[test]
fn too_many_bad_commands_close_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-bad-commands", "3")]);
    let (mut server, addr) = start(&db);

    let mut c = connect(addr);
    c.expect("FROB", "500 5.5.2");
    c.send(b"NO\0OP\r\n");
    next(&mut c, "500 5.5.2");
    c.expect("MAIL FROM:<a@example.com>", "503 5.5.1");
    // Good commands do not reset the count.
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    c.expect("FROB", "421 4.7.0 gw.example.com Error: too many errors");
    assert_closed(&mut c);

    // The count is per session; pipelined errors stop at the limit and
    // nothing after it runs.
    let mut c = session(addr);
    c.send(b"FROB\r\nFROB\r\nFROB\r\nFROB\r\nNOOP\r\n");
    next(&mut c, "500 5.5.2");
    next(&mut c, "500 5.5.2");
    next(&mut c, "500 5.5.2");
    next(&mut c, "421 4.7.0");
    assert_closed(&mut c);

    // Overlong lines count too.
    let mut c = session(addr);
    let long = format!("NOOP {}", "x".repeat(3000));
    for _ in 0..3 {
        c.expect(&long, "500 5.5.2");
    }
    c.expect(&long, "421 4.7.0");
    assert_closed(&mut c);

    // A client that pipelines far past the limit before it reads still
    // gets every reply and the 421, then the end of the connection: not a
    // reset that throws its unread replies away. The log says why.
    let mut raw = TcpStream::connect(addr).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    raw.write_all(format!("EHLO c.test\r\n{}", "FROB\r\n".repeat(5000)).as_bytes())
        .expect("pipeline");
    let mut got = Vec::new();
    let read = raw.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(read.is_ok(), "{read:?} after {got:?}");
    assert!(got.starts_with("220 ") && got.contains("250 "), "{got}");
    assert_eq!(got.matches("500 5.5.2").count(), 3, "{got}");
    assert!(
        got.trim_end()
            .ends_with("421 4.7.0 gw.example.com Error: too many errors"),
        "{got}"
    );
    server.wait_for(
        "too many bad commands (max-bad-commands)",
        Duration::from_secs(5),
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn auth_errors_and_success() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "wonderland\n",
    );
    let (mut server, addr) = start(&db);
    let good = plain("alice", "wonderland");

    let mut c = connect(addr);
    c.expect(&format!("AUTH PLAIN {good}"), "503 5.5.1");
    c.expect("HELO client.test", "250");
    // AUTH is an ESMTP extension: HELO is not enough.
    c.expect(&format!("AUTH PLAIN {good}"), "503 5.5.1");
    // Over loopback AUTH is offered without TLS.
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN") || ehlo.contains("250 AUTH PLAIN LOGIN"));
    c.expect("AUTH", "501 5.5.4");
    c.expect("AUTH PLAIN !!!not-base64!!!", "501 5.5.2");
    assert_eq!(c.cmd("AUTH PLAIN"), "334");
    c.expect("*", "501 5.0.0");
    assert_eq!(c.cmd("AUTH PLAIN"), "334");
    c.expect("%%%", "501 5.5.2");
    // The prompt is over: a command is a command again.
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")), "334 UGFzc3dvcmQ6");
    c.expect("*", "501 5.0.0");
    c.expect("AUTH CRAM-MD5", "504 5.5.4");
    c.expect("AUTH GSSAPI", "504 5.5.4");
    // PLAIN that is not authzid NUL authcid NUL password.
    c.expect(&format!("AUTH PLAIN {}", b64("alice")), "501 5.5.2");
    // Well-formed, asking to act as another user: refused as such, with
    // the right password, and no login.
    let other = base64::engine::general_purpose::STANDARD.encode(b"bob\0alice\0wonderland");
    c.expect(
        &format!("AUTH PLAIN {other}"),
        "535 5.7.8 Error: authentication failed: acting as another user",
    );
    c.expect(
        &format!("AUTH PLAIN {}", plain("alice", "looking-glass")),
        "535 5.7.8",
    );
    c.expect(
        &format!("AUTH PLAIN {}", plain("nobody", "wonderland")),
        "535 5.7.8",
    );
    // Blanks around the verb are allowed, as for every command.
    let leading = plain("alice", "leading-blank");
    c.expect(&format!(" AUTH PLAIN {leading}"), "535 5.7.8");
    let tab = plain("alice", "tab-separated");
    c.expect(&format!("AUTH\tPLAIN {tab}"), "535 5.7.8");
    assert_eq!(c.cmd("AUTH PLAIN"), "334");
    c.expect(&good, "235 2.7.0");
    // Twice.
    c.expect(&format!("AUTH PLAIN {good}"), "503 5.5.1");
    c.expect("AUTH LOGIN", "503 5.5.1");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    c.expect("QUIT", "221 2.0.0");
    server.wait_for("authenticated as alice", Duration::from_secs(5));

    // During a transaction.
    let mut c = session(addr);
    c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0");
    c.expect(&format!("AUTH PLAIN {good}"), "503 5.5.1");
    c.expect("RSET", "250 2.0.0");
    assert_eq!(c.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&b64("alice")), "334 UGFzc3dvcmQ6");
    c.expect(&b64("wonderland"), "235 2.7.0");
    c.expect("MAIL FROM:<alice@example.com>", "250 2.1.0");
    c.expect("QUIT", "221 2.0.0");

    // Commands are logged, credentials never, however the AUTH is spelt.
    server.wait_for("session 2 closed", Duration::from_secs(5));
    server.drain_log();
    assert!(server.log.iter().any(|l| l.contains("C: AUTH PLAIN ***")));
    for secret in [&good, &leading, &tab, &b64("wonderland")] {
        let leaked: Vec<&String> = server
            .log
            .iter()
            .filter(|l| l.contains(secret.as_str()))
            .collect();
        assert!(leaked.is_empty(), "credentials in the log: {leaked:?}");
    }
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn auth_lockout_after_repeated_failures() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("auth-max-failures", "3")]);
    cli_stdin(
        &db,
        &["user", "add", "alice", "--password-stdin"],
        "wonderland\n",
    );
    let (mut server, addr) = start(&db);
    let good = format!("AUTH PLAIN {}", plain("alice", "wonderland"));
    let bad = format!("AUTH PLAIN {}", plain("alice", "guess"));

    let mut c = session(addr);
    for _ in 0..3 {
        c.expect(&bad, "535 5.7.8");
    }
    // The fourth attempt is refused before the password is even looked at.
    c.expect(&good, "454 4.7.0");
    assert_eq!(
        c.cmd("AUTH PLAIN"),
        "454 4.7.0 Temporary authentication failure: too many failures, try again later"
    );
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    c.expect("QUIT", "221 2.0.0");

    // The lockout is per client address, not per session.
    let mut c = session(addr);
    c.expect(&format!(" {good}"), "454 4.7.0");
    c.expect(&good, "454 4.7.0");
    c.expect("AUTH LOGIN", "454 4.7.0");
    // Mail that needs no login still flows.
    c.expect("MAIL FROM:<stranger@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<bob@example.com>", "250 2.1.5");
    c.expect("QUIT", "221 2.0.0");
    server.wait_for("session 2 closed", Duration::from_secs(5));
    server.drain_log();
    assert!(
        !server
            .log
            .iter()
            .any(|l| l.contains("authenticated as alice"))
    );
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn message_size_limits() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-message-size", "2048")]);
    let (server, addr) = start(&db);
    let mut c = connect(addr);
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.contains("250-SIZE 2048"), "{ehlo}");

    // Declared too big: refused at MAIL.
    c.expect("MAIL FROM:<a@example.com> SIZE=2049", "552 5.3.4");
    c.expect("MAIL FROM:<a@example.com> SIZE=99999999999", "552 5.3.4");
    // Declared small, sent big: refused after the final dot.
    c.expect("MAIL FROM:<a@example.com> SIZE=1000", "250 2.1.0");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(format!("Subject: big\r\n\r\n{}", "0123456789abcde\r\n".repeat(200)).as_bytes());
    c.send(b".\r\n");
    next(&mut c, "552 5.3.4");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");
    // The transaction is over.
    c.expect("RCPT TO:<b@example.com>", "503 5.5.1");

    // Undeclared, far bigger, in pieces: read to its end and refused.
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    let line = "x".repeat(78) + "\r\n";
    for _ in 0..100 {
        c.send(line.repeat(10).as_bytes());
    }
    c.send(b".\r\n");
    next(&mut c, "552 5.3.4");
    assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok");

    // A small one goes through on the same session.
    c.expect("MAIL FROM:<a@example.com> SIZE=500", "250 2.1.0");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: small\r\n\r\nfits\r\n.\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    c.expect("QUIT", "221 2.0.0");

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1, "only the small message is spooled");
    assert!(body(&spool[0]).ends_with("Subject: small\r\n\r\nfits\r\n"));
}

#[test]
fn recipient_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-recipients", "3")]);
    let (server, addr) = start(&db);
    let mut c = session(addr);
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    for n in 1..=3 {
        c.expect(&format!("RCPT TO:<r{n}@example.com>"), "250 2.1.5");
    }
    c.expect("RCPT TO:<r4@example.com>", "452 4.5.3");
    c.expect("RCPT TO:<r5@example.com>", "452 4.5.3");
    c.expect("DATA", "354");
    c.send(b"Subject: three\r\n\r\nhi\r\n.\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    // The limit is per transaction.
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<r4@example.com>", "250 2.1.5");
    c.expect("QUIT", "221 2.0.0");

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1);
    assert_eq!(
        recipients(&spool[0]),
        ["r1@example.com", "r2@example.com", "r3@example.com"]
    );
}

#[test]
fn idle_clients_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[("command-timeout", "1"), ("data-timeout", "1")],
    );
    let (server, addr) = start(&db);

    // Both idle at once: one between commands, one inside DATA.
    let started = Instant::now();
    let mut idle = session(addr);
    let mut in_data = session(addr);
    in_data.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    in_data.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    in_data.expect("DATA", "354");
    in_data.send(b"Subject: slow\r\n\r\nhalf a messa");

    assert_eq!(
        idle.reply(),
        "421 4.4.2 gw.example.com Error: timeout exceeded"
    );
    assert_closed(&mut idle);
    next(&mut in_data, "421 4.4.2");
    assert_closed(&mut in_data);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "timed out after {took:?}");

    // Idle right after the greeting, too.
    let t = Instant::now();
    let mut silent = connect(addr);
    next(&mut silent, "421 4.4.2");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_closed(&mut silent);

    assert_eq!(server.terminate().code(), Some(0));
    assert!(spooled(&db).is_empty(), "the half message was spooled");
}

#[test]
fn clients_that_stop_reading_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(
        dir.path(),
        &[("command-timeout", "1"), ("max-sessions-per-ip", "1")],
    );
    let (server, addr) = start(&db);

    // Pipelines commands without ever reading a reply, until the socket
    // buffers are full both ways and the server cannot write.
    let mut deaf = session(addr);
    deaf.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let chunk = "NOOP\r\n".repeat(10_000);
    let t = Instant::now();
    while deaf.try_send(chunk.as_bytes()).is_ok() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the server reads for ever"
        );
    }
    // Its session ends within the command timeout, freeing its slot.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = Client::connect(addr);
        let r = c.reply();
        if r == GREETING {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deaf session is still held: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn relay_is_denied_from_unlisted_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    cli(&db, &["list", "add", "allow", "127.0.0.2"]);
    let (mut server, addr) = start(&db);

    // 127.0.0.1 is no longer listed.
    let mut c = session(addr);
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<x@far.test>", "554 5.7.1");
    c.expect("DATA", "503 5.5.1");
    c.expect("RSET", "250 2.0.0");
    // Inbound to a local domain is accepted from anywhere.
    c.expect("MAIL FROM:<stranger@far.test>", "250 2.1.0");
    c.expect("RCPT TO:<x@far.test>", "554 5.7.1");
    c.expect("RCPT TO:<bob@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: inbound\r\n\r\nhi\r\n.\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    c.expect("QUIT", "221 2.0.0");

    // 127.0.0.2 is listed: it may relay.
    let replies = converse(
        connect_from(Ipv4Addr::new(127, 0, 0, 2), addr),
        "EHLO listed.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<x@far.test>\r\nQUIT\r\n",
    );
    let wanted = [GREETING, "250 ", "250 2.1.0", "250 2.1.5", "221 2.0.0"];
    assert_eq!(replies.len(), wanted.len(), "{replies:?}");
    for (reply, want) in replies.iter().zip(wanted) {
        assert!(reply.starts_with(want), "{replies:?}");
    }
    server.wait_for("peer=127.0.0.2", Duration::from_secs(5));

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1);
    assert_eq!(recipients(&spool[0]), ["bob@example.com"]);
}

#[test]
fn bare_line_endings_never_end_a_message_and_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let (server, addr) = start(&db);
    let mut c = session(addr);

    // Each would end the message for a receiver that accepts a bare line
    // ending around the dot, and smuggle a second message in.
    for evil in ["\n.\n", "\r.\r", "\r\n.\n", "\n.\r\n", "\r\n.\r"] {
        c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
        c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
        c.expect("DATA", "354");
        c.send(
            format!(
                "Subject: smuggle\r\n\r\nbefore{evil}MAIL FROM:<evil@far.test>\r\n\
                 RCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"
            )
            .as_bytes(),
        );
        // One reply for the whole thing, at the real end: the default
        // refuses bare line endings (550 5.6.11).
        let r = c.reply();
        assert_eq!(
            r, "550 5.6.11 Error: bare <CR> or <LF> in message; lines must end with <CR><LF>",
            "{evil:?}"
        );
        assert_eq!(c.cmd("NOOP"), "250 2.0.0 Ok", "{evil:?}");
        // The transaction is over.
        c.expect("RCPT TO:<b@example.com>", "503 5.5.1");
    }

    // Only CRLF . CRLF ends a message; dot-stuffed lines are data.
    c.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    c.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    c.expect("DATA", "354");
    c.send(b"Subject: clean\r\n\r\n..\r\n...stuffed\r\n.x\r\nend\r\n.\r\nNOOP\r\n");
    next(&mut c, "250 2.0.0 Ok: queued as ");
    assert_eq!(c.reply(), "250 2.0.0 Ok");
    c.expect("QUIT", "221 2.0.0");

    assert_eq!(server.terminate().code(), Some(0));
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1, "exactly the clean message is spooled");
    assert_eq!(recipients(&spool[0]), ["b@example.com"]);
    let text = body(&spool[0]);
    assert!(
        text.ends_with("Subject: clean\r\n\r\n.\r\n..stuffed\r\nx\r\nend\r\n"),
        "{text:?}"
    );
    assert!(!text.contains("smuggled"));
}

mod tls {
    //! Just enough of a TLS client to look inside the session after
    //! STARTTLS; the server's certificate is self-signed.

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug)]
    struct AnyCertificate(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    pub struct Tls(rustls::StreamOwned<ClientConnection, TcpStream>);

    impl Tls {
        /// Runs the handshake over `tcp`.
        pub fn handshake(tcp: TcpStream) -> Tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            let name = ServerName::try_from("localhost").expect("name");
            let conn = ClientConnection::new(Arc::new(config), name).expect("client");
            let mut s = rustls::StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).expect("TLS handshake");
            }
            Tls(s)
        }

        /// One whole reply, lines joined with '\n'.
        pub fn reply(&mut self) -> String {
            let mut text = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                let n = self.0.read(&mut byte).expect("TLS read");
                if n == 0 {
                    break;
                }
                text.push(byte[0]);
                if text.ends_with(b"\r\n") {
                    let body = &text[..text.len() - 2];
                    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                    let line = &text[start..];
                    if line.len() < 4 || line[3] == b' ' {
                        break;
                    }
                }
            }
            String::from_utf8_lossy(&text)
                .trim_end()
                .replace("\r\n", "\n")
        }

        pub fn cmd(&mut self, line: &str) -> String {
            self.0
                .write_all(format!("{line}\r\n").as_bytes())
                .expect("TLS write");
            self.0.flush().expect("TLS flush");
            self.reply()
        }

        /// True if nothing arrives for `wait`.
        pub fn silent_for(&mut self, wait: Duration) -> bool {
            self.0.sock.set_read_timeout(Some(wait)).expect("timeout");
            let mut byte = [0u8; 1];
            let silent = matches!(
                self.0.read(&mut byte),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
            );
            self.0
                .sock
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            silent
        }
    }
}

#[test]
fn starttls_drops_commands_pipelined_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let (server, addr) = start(&db);
    let mut c = connect(addr);
    let ehlo = c.expect("EHLO client.test", "250");
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    c.expect("STARTTLS extra", "501 5.5.4");

    // CVE-2011-0411: a NOOP in the same write as STARTTLS must not run,
    // neither in plaintext nor once TLS is up.
    c.send(b"STARTTLS\r\nNOOP\r\n");
    assert_eq!(c.reply(), "220 2.0.0 Ready to start TLS");
    assert_silent(&mut c, Duration::from_millis(500));

    let mut t = tls::Tls::handshake(c.stream.try_clone().expect("clone"));
    assert!(
        t.silent_for(Duration::from_millis(500)),
        "a reply to the pipelined NOOP came inside TLS"
    );
    // The session starts over: EHLO first, no STARTTLS offered again.
    let r = t.cmd("MAIL FROM:<a@example.com>");
    assert!(r.starts_with("503 5.5.1"), "{r}");
    let ehlo = t.cmd("EHLO client.test");
    assert!(ehlo.starts_with("250-gw.example.com"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(t.cmd("STARTTLS"), "503 5.5.1 Error: TLS already active");
    assert_eq!(t.cmd("NOOP"), "250 2.0.0 Ok");
    assert!(t.cmd("QUIT").starts_with("221 2.0.0"));
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn sessions_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    // Loopback is on the allow list: without this switch it would be exempt.
    let db = test_db(
        dir.path(),
        &[
            ("max-sessions-per-ip", "2"),
            ("per-ip-exempt-listed", "off"),
        ],
    );
    let (server, addr) = start(&db);

    let first = connect(addr);
    let mut second = connect(addr);
    let mut third = Client::connect(addr);
    assert_eq!(
        third.reply(),
        "421 4.7.0 Error: too many sessions from your address, try again later"
    );
    assert_closed(&mut third);
    // Another address is not affected.
    let other = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr);
    assert_eq!(first_line(&other), GREETING);
    // The sessions admitted are not disturbed.
    assert_eq!(second.cmd("NOOP"), "250 2.0.0 Ok");

    // A slot frees up when a session ends.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut c = Client::connect(addr);
        let r = c.reply();
        if r == GREETING {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(other);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn sessions_in_total_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("max-sessions", "2")]);
    let (server, addr) = start(&db);

    let first = connect_from(Ipv4Addr::new(127, 0, 0, 2), addr);
    assert_eq!(first_line(&first), GREETING);
    let mut second = connect(addr);
    // A third address, and still refused.
    let third = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr);
    let replies = converse(third, "");
    assert_eq!(
        replies,
        ["421 4.7.0 Error: too many sessions, try again later"]
    );
    let mut fourth = Client::connect(addr);
    next(&mut fourth, "421 4.7.0");
    assert_closed(&mut fourth);
    assert_eq!(second.cmd("NOOP"), "250 2.0.0 Ok");
    drop(first);
    assert_eq!(server.terminate().code(), Some(0));
}

#[test]
fn graceful_shutdown_closes_idle_sessions_and_lets_data_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("shutdown-grace", "10")]);
    let (mut server, addr) = start(&db);

    let mut idle = session(addr);
    let mut sending = session(addr);
    sending.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    sending.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    sending.expect("DATA", "354");
    sending.send(b"Subject: drain\r\n\r\nfirst half\r\n");
    // Let the server take the first half before the signal.
    std::thread::sleep(Duration::from_millis(100));

    let signalled = Instant::now();
    common::signal(&server.child, "TERM");
    next(&mut idle, "421 4.3.2 gw.example.com Service shutting down");
    assert_closed(&mut idle);
    // No new sessions.
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The message in DATA may finish, and is acknowledged only once stored.
    sending.send(b"second half\r\n.\r\n");
    next(&mut sending, "250 2.0.0 Ok: queued as ");
    // Then that session is idle too: closed at once, not at the end of
    // the grace period.
    sending
        .stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    next(&mut sending, "421 4.3.2");
    assert_closed(&mut sending);

    let status = common::wait_exit(&mut server.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    let spool = spooled(&db);
    assert_eq!(spool.len(), 1);
    assert!(body(&spool[0]).ends_with("Subject: drain\r\n\r\nfirst half\r\nsecond half\r\n"));
}

#[test]
fn shutdown_grace_ends_a_message_that_does_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("shutdown-grace", "1")]);
    let (mut server, addr) = start(&db);

    let mut slow = session(addr);
    slow.expect("MAIL FROM:<a@example.com>", "250 2.1.0");
    slow.expect("RCPT TO:<b@example.com>", "250 2.1.5");
    slow.expect("DATA", "354");
    slow.send(b"Subject: never finished\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));

    let signalled = Instant::now();
    common::signal(&server.child, "TERM");
    next(&mut slow, "421 4.3.2");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}, the grace is 1 s"
    );
    assert_closed(&mut slow);
    let status = common::wait_exit(&mut server.child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(spooled(&db).is_empty());
}
