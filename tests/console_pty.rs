//! The real binary with its console in a pseudo-terminal, the screen read
//! with vt100: traffic shows up on the Live panel, an allow entry typed
//! into the Relay lists panel lets a refused client through, and the
//! terminal is restored on quit and on SIGTERM.

mod common;

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relaygate");
const ROWS: NonZeroU16 = NonZeroU16::new(40).expect("rows");
const COLS: NonZeroU16 = NonZeroU16::new(120).expect("columns");
const WAIT: Duration = Duration::from_secs(20);

fn cli(db: &Path, args: &[&str]) {
    let out = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run relaygate");
    assert!(
        out.status.success(),
        "relaygate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database listening on 127.0.0.1:0, example.com local, no delivery,
/// and 127.0.0.0/8 off the allow list: loopback clients may not relay.
fn refusing_db(dir: &Path) -> PathBuf {
    let db = dir.join("relaygate.db");
    cli(&db, &["bind", "remove", "127.0.0.1:2525"]);
    cli(&db, &["bind", "add", "127.0.0.1:0"]);
    cli(&db, &["domain", "add", "example.com"]);
    cli(&db, &["policy", "set", "hostname", "gw.example.com"]);
    cli(&db, &["policy", "set", "dns-servers", "127.0.0.1:9"]);
    cli(&db, &["policy", "set", "delivery", "off"]);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    db
}

/// The console running in a pseudo-terminal.
struct Console {
    child: Box<dyn Child + Send + Sync>,
    _master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    output: mpsc::Receiver<Vec<u8>>,
    screen: vt100::Parser,
    /// The status lines seen so far (they go after seconds): what a
    /// failed wait reports besides the last screen.
    said: Vec<String>,
}

impl Console {
    fn start(db: &Path) -> Console {
        let mut cmd = CommandBuilder::new(BIN);
        cmd.arg("--db");
        cmd.arg(db);
        Console::spawn(cmd)
    }

    fn spawn(mut cmd: CommandBuilder) -> Console {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS.get(),
                cols: COLS.get(),
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("NO_COLOR");
        let child = pty.slave.spawn_command(cmd).expect("spawn in the pty");
        drop(pty.slave);
        let mut reader = pty.master.try_clone_reader().expect("pty reader");
        let keys = pty.master.take_writer().expect("pty writer");
        let (tx, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Console {
            child,
            _master: pty.master,
            keys,
            output,
            screen: vt100::Parser::new(ROWS, COLS, 0),
            said: Vec::new(),
        }
    }

    fn pump(&mut self, wait: Duration) {
        if let Ok(bytes) = self.output.recv_timeout(wait) {
            self.screen.process(&bytes);
        }
        while let Ok(bytes) = self.output.try_recv() {
            self.screen.process(&bytes);
        }
        // The status line is the one above the key hints.
        let text = self.text();
        let status = text.lines().rev().nth(1).unwrap_or_default().trim();
        if !status.is_empty() && self.said.last().map(String::as_str) != Some(status) {
            self.said.push(status.to_string());
        }
    }

    fn text(&self) -> String {
        self.screen.screen().contents()
    }

    /// Waits until the screen shows every one of `needles`; returns it.
    fn wait_for(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.text();
            if needles.iter().all(|n| text.contains(n)) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "the screen never showed {needles:?}; it shows:\n{text}\n\
                     status lines seen: {:?}",
                    self.said
                );
            }
            self.pump(Duration::from_millis(50));
        }
    }

    /// Waits until `needle` is off the screen (a popup closed): a key
    /// typed right after an Esc could otherwise be read with it as Alt+key.
    fn wait_gone(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while self.text().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} stays on the screen");
            self.pump(Duration::from_millis(50));
        }
    }

    fn press(&mut self, bytes: &str) {
        self.keys.write_all(bytes.as_bytes()).expect("type");
        self.keys.flush().expect("flush");
        // Let the console take each burst in before the next.
        self.pump(Duration::from_millis(100));
    }

    /// Waits for the process to end, reading the screen until then.
    fn wait_exit(&mut self) -> portable_pty::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            self.pump(Duration::from_millis(50));
            if let Ok(Some(status)) = self.child.try_wait() {
                self.pump(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the console did not exit:\n{}",
                self.text()
            );
        }
    }

    /// The port the Live header says the engine listens on.
    fn port(&mut self) -> u16 {
        let text = self.wait_for(&["listening 127.0.0.1:"]);
        let tail = text
            .split("listening 127.0.0.1:")
            .nth(1)
            .expect("address on screen");
        let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("port number")
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A tiny SMTP client; returns the reply to each command.
struct Smtp {
    write: TcpStream,
    read: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(port: u16) -> Smtp {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut s = Smtp {
            write: stream.try_clone().expect("clone"),
            read: BufReader::new(stream),
        };
        let greeting = s.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        s
    }

    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            self.read.read_line(&mut line).expect("reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
        self.reply()
    }
}

#[test]
fn traffic_shows_live_and_an_allow_entry_typed_in_the_console_lets_a_client_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = refusing_db(dir.path());
    let mut console = Console::start(&db);
    let port = console.port();

    // Refused: 127.0.0.1 is on no allow list, the deny list has *.*.*.*.
    let mut smtp = Smtp::connect(port);
    smtp.cmd("EHLO client.test");
    assert!(smtp.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    let refused = smtp.cmd("RCPT TO:<b@far.test>");
    assert!(refused.starts_with("554"), "{refused}");
    smtp.cmd("QUIT");
    console.wait_for(&[
        "client.test",
        "a@example.com",
        "denied",
        "<b@far.test> 554 outbound from 127.0.0.1, not on the allow list; deny entry *.*.*.* applies",
    ]);

    // Add 127.0.0.1 to the allow list through the keys, and save.
    console.press("4");
    console.wait_for(&["Allow relay from"]);
    console.press("e");
    console.wait_for(&["EDITING"]);
    console.press("\r127.0.0.1");
    console.wait_for(&["127.0.0.1", "EDITING, unsaved"]);
    console.press("\x13"); // Ctrl-S
    console.wait_for(&["in force: the engine reloaded"]);

    // The same client now gets through, and the Live panel says so.
    console.press("1");
    let mut smtp = Smtp::connect(port);
    smtp.cmd("EHLO client.test");
    smtp.cmd("MAIL FROM:<a@example.com>");
    let allowed = smtp.cmd("RCPT TO:<c@far.test>");
    assert!(allowed.starts_with("250"), "{allowed}");
    assert!(smtp.cmd("DATA").starts_with("354"));
    let queued = smtp.cmd("Subject: hello\r\n\r\nthrough the console\r\n.");
    assert!(queued.starts_with("250"), "{queued}");
    smtp.cmd("QUIT");
    console.wait_for(&[
        "<c@far.test> 250 127.0.0.1 matches allow entry 127.0.0.1",
        "accepted",
    ]);
    let stored = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["list", "show", "allow"])
        .output()
        .expect("list show");
    assert!(String::from_utf8_lossy(&stored.stdout).contains("127.0.0.1"));

    // In one-process mode q asks first, with what is at stake; n keeps
    // the engine running, y stops it and the terminal is back to normal.
    console.press("q");
    console.wait_for(&["Stop the engine?", "0 open session(s)", "queued message(s)"]);
    console.press("n");
    let mut still = Smtp::connect(port);
    assert!(
        still.cmd("QUIT").starts_with("221"),
        "the engine still serves"
    );
    console.press("q");
    console.wait_for(&["Stop the engine?"]);
    console.press("y");
    let status = console.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !console.screen.screen().alternate_screen(),
        "still on the alternate screen"
    );
    assert!(
        !console.screen.screen().hide_cursor(),
        "the cursor is still hidden"
    );
}

#[test]
fn sigterm_restores_the_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = refusing_db(dir.path());
    let mut console = Console::start(&db);
    console.port();
    assert!(console.screen.screen().alternate_screen());
    let pid = console.child.process_id().expect("pid");
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = console.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(!console.screen.screen().alternate_screen());
    assert!(!console.screen.screen().hide_cursor());
}

/// A refused session: EHLO with `helo`, a relay attempt, QUIT.
fn refused_session(port: u16, helo: &str) {
    let mut smtp = Smtp::connect(port);
    smtp.cmd(&format!("EHLO {helo}"));
    assert!(smtp.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(smtp.cmd("RCPT TO:<b@far.test>").starts_with("554"));
    smtp.cmd("QUIT");
}

#[test]
fn relaygate_attaches_to_the_running_service_follows_it_across_a_restart_and_leaves_it_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = refusing_db(dir.path());
    let mut daemon = common::Server::start(&db);
    let port = daemon.addr().port();
    let pid = daemon.child.id();

    // `relaygate` on a terminal, with an engine running: it attaches.
    let mut console = Console::start(&db);
    console.wait_for(&[
        &format!("attached to pid {pid}"),
        &format!("listening 127.0.0.1:{port}"),
        // q leaves the engine running: the footer says detach, not quit.
        " detach ",
    ]);
    refused_session(port, "first.test");
    console.wait_for(&["first.test", "denied  outbound 1"]);

    // The service restarts: the console says so, then follows the new one.
    assert_eq!(daemon.terminate().code(), Some(0));
    // What the panel still shows is said to be the last picture.
    console.wait_for(&["engine gone, reconnecting", "as last seen, not now"]);
    let mut daemon = common::Server::start(&db);
    let port = daemon.addr().port();
    let pid = daemon.child.id();
    console.wait_for(&[
        &format!("attached to pid {pid}"),
        &format!("listening 127.0.0.1:{port}"),
    ]);
    refused_session(port, "second.test");
    console.wait_for(&["second.test"]);

    // Quitting an attached console asks nothing and stops nothing.
    console.press("q");
    let status = console.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let mut smtp = Smtp::connect(port);
    assert!(
        smtp.cmd("QUIT").starts_with("221"),
        "the service still serves"
    );
    assert!(daemon.child.try_wait().expect("wait").is_none());
}

#[test]
fn a_console_group_member_watches_and_is_told_how_to_edit() {
    let root = common::is_root();
    if !root || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run the console as nobody");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = refusing_db(dir.path());
    cli(&db, &["policy", "set", "console-group", "nogroup"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let mut daemon = common::Server::start(&db);
    let port = daemon.addr().port();
    let pid = daemon.child.id();
    let mut cmd = CommandBuilder::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        BIN,
        "--db",
    ]);
    cmd.arg(&db);
    cmd.arg("console");
    let mut console = Console::spawn(cmd);
    console.wait_for(&[&format!("attached to pid {pid}, watching")]);
    refused_session(port, "watched.test");
    console.wait_for(&["watched.test"]);
    // An edit key on the Users panel says who may edit instead of failing.
    console.press("6");
    console.press("a");
    console.wait_for(&["watching only: editing needs the service user"]);
    console.press("q");
    assert!(console.wait_exit().success());
}

/// The real binary in a pseudo-terminal: a message comes in and is
/// deferred (its next hop is down); from the Log panel, `t` on its
/// delivery line opens its whole story from the event log.
#[test]
fn a_message_is_traced_end_to_end_from_the_log_panel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relaygate.db");
    cli(&db, &["bind", "remove", "127.0.0.1:2525"]);
    cli(&db, &["bind", "add", "127.0.0.1:0"]);
    cli(&db, &["domain", "add", "example.com"]);
    cli(&db, &["policy", "set", "dns-servers", "127.0.0.1:9"]);
    cli(&db, &["route", "add", "*", "127.0.0.1:9", "--tls", "none"]);
    let mut console = Console::start(&db);
    let port = console.port();
    let mut smtp = Smtp::connect(port);
    smtp.cmd("EHLO traced.test");
    smtp.cmd("MAIL FROM:<alice@example.com>");
    assert!(smtp.cmd("RCPT TO:<bob@far.test>").starts_with("250"));
    assert!(smtp.cmd("DATA").starts_with("354"));
    let queued = smtp.cmd("Subject: trace me\r\n\r\nhello\r\n.");
    assert!(queued.starts_with("250"), "{queued}");
    let id = queued.rsplit(' ').next().unwrap_or_default().to_string();
    smtp.cmd("QUIT");

    console.press("2");
    console.wait_for(&["deferred"]);
    // Only delivery lines: all, allowed, denied, errors, auth, delivery.
    console.press("fffff");
    console.wait_for(&["Log: delivery"]);
    console.press("t");
    console.wait_for(&[
        &format!("Trace: message {id}"),
        "opened from 127.0.0.1",
        "to=<bob@far.test>",
        &format!("message {id} accepted"),
        "deferred",
        &format!("now: {id} in the queue"),
    ]);
    // The Queue panel (read on its own thread) shows it; held by its
    // domain with a mark and a question.
    console.press("\x1b");
    console.wait_gone("Trace: message");
    console.press("7");
    console.wait_for(&[&id, "queued to", "far.test"]);
    console.press("/far.test\r");
    console.wait_for(&["1 of 1 messages match"]);
    console.press("*h");
    console.wait_for(&["Hold the 1 message marked?"]);
    console.press("y");
    console.wait_for(&["1 message held", "HELD"]);
}
