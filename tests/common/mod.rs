//! Shared harness for the end-to-end tests: a temporary database, the real
//! binary running `serve --headless` on an ephemeral loopback port, and a
//! tiny raw SMTP client.
#![allow(dead_code)]

pub mod dns;
pub mod sink;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_relaygate");

/// Whether the tests run as root (some run a client as `nobody`).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Starts `cmd` (the engine, under `sh -c 'umask ..; exec'` or strace)
/// with its stderr read, and waits for its first listener's address.
pub fn spawn_engine(mut cmd: Command) -> (Child, SocketAddr) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the engine");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the engine starts");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .expect("an address");
        }
    };
    (child, addr)
}

/// The resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs a CLI command against `db`, panicking unless it exits 0.
/// Routes all mail (`*`) to `addr`, without TLS: a test's smarthost.
pub fn smarthost(db: &Path, addr: SocketAddr) {
    route(db, "*", addr);
}

/// Routes a domain pattern's mail to `addr`, without TLS.
pub fn route(db: &Path, domain: &str, addr: SocketAddr) {
    cli(
        db,
        &["route", "add", domain, &addr.to_string(), "--tls", "none"],
    );
}

pub fn cli(db: &Path, args: &[&str]) -> String {
    cli_stdin(db, args, "")
}

pub fn cli_stdin(db: &Path, args: &[&str], stdin: &str) -> String {
    let out = run_cli(db, args, stdin);
    assert!(out.code == 0, "relaygate {args:?} failed: {}", out.stderr);
    out.stdout
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `--db db`, feeding `stdin`, whatever its exit code.
pub fn run_cli(db: &Path, args: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relaygate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .or_else(|e| match e.kind() {
            // The command may exit (refusing its arguments) before reading.
            std::io::ErrorKind::BrokenPipe => Ok(()),
            _ => Err(e),
        })
        .expect("stdin write");
    let out = child.wait_with_output().expect("wait");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh database whose one binding is 127.0.0.1:0 (an ephemeral port),
/// with example.com local. Settings are `(key, value)` for `policy set`.
pub fn test_db(dir: &Path, settings: &[(&str, &str)]) -> PathBuf {
    let db = dir.join("relaygate.db");
    cli(&db, &["bind", "remove", "127.0.0.1:2525"]);
    cli(&db, &["bind", "add", "127.0.0.1:0"]);
    cli(&db, &["domain", "add", "example.com"]);
    cli(&db, &["policy", "set", "hostname", "gw.example.com"]);
    // Delivery must never ask a real DNS server: MX lookups go to a dead
    // loopback port unless a test points them at its own DNS server.
    cli(&db, &["policy", "set", "dns-servers", "127.0.0.1:9"]);
    for (k, v) in settings {
        cli(&db, &["policy", "set", k, v]);
    }
    db
}

/// The binary running `serve --headless`, with its stderr collected.
pub struct Server {
    pub child: Child,
    pub db: PathBuf,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Server {
    pub fn start(db: &Path) -> Server {
        let mut child = Command::new(BIN)
            .arg("--db")
            .arg(db)
            .args(["serve", "--headless"])
            .env("RELAYGATE_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            db: db.to_path_buf(),
            lines: rx,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`, returning it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits until `count` log lines so far contain `needle` (the third
    /// reload, say).
    pub fn wait_for_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log.iter().filter(|l| l.contains(needle)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "not {count} log lines with {needle:?} within {timeout:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Drains what the server logged so far.
    pub fn drain_log(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
    }

    /// The address of the first listener to come up.
    pub fn addr(&mut self) -> SocketAddr {
        let line = self.wait_for("listening on ", Duration::from_secs(20));
        let tail = line.split("listening on ").nth(1).expect("address");
        let addr = tail.split(' ').next().expect("address");
        addr.parse().expect("socket address")
    }

    /// SIGTERM, then wait for the process to exit (at most 20 s).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        signal(&self.child, "TERM");
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    /// SIGKILL, now.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
}

pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A raw SMTP client line by line, for exact replies.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    /// Connects from a chosen loopback address (any 127.x.y.z).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let stream = runtime
            .block_on(async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(addr).await
            })
            .expect("connect from a chosen address");
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { stream, reader }
    }

    /// Reads one whole reply (all its lines), joined with '\n'.
    pub fn reply(&mut self) -> String {
        match self.try_reply() {
            Ok(r) => r,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Reads one whole reply; an I/O error (a reset, a timeout) is returned.
    pub fn try_reply(&mut self) -> std::io::Result<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                break;
            }
            let done = line.len() < 4 || line.as_bytes()[3] != b'-';
            lines.push(line.trim_end().to_string());
            if done {
                break;
            }
        }
        Ok(lines.join("\n"))
    }

    /// Writes without panicking (the server may be gone).
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends a command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Sends a command and asserts the reply starts with `expect`.
    pub fn expect(&mut self, line: &str, expect: &str) -> String {
        let r = self.cmd(line);
        assert!(
            r.starts_with(expect),
            "{line:?} -> {r:?}, wanted {expect:?}"
        );
        r
    }

    /// True once the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// Sends one whole message over a fresh connection; returns the final reply.
pub fn send_message(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let mut c = Client::connect(addr);
    let greeting = c.reply();
    assert!(greeting.starts_with("220"), "{greeting}");
    c.expect("EHLO client.test", "250");
    c.expect(&format!("MAIL FROM:<{from}>"), "250");
    for r in to {
        c.expect(&format!("RCPT TO:<{r}>"), "250");
    }
    c.expect("DATA", "354");
    c.send(body.as_bytes());
    c.send(b"\r\n.\r\n");
    let r = c.reply();
    c.cmd("QUIT");
    r
}

/// Sends one message and returns its queue id (panics unless queued).
pub fn send_queued(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let r = send_message(addr, from, to, body);
    r.strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not queued: {r}"))
        .trim()
        .to_string()
}

/// Queue ids of acknowledged messages, with the number of each.
pub type Acked = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>;

/// Loads a server from `threads` connections, `per_thread` pipelined
/// messages each, with bodies from `body(n)` (`n` = thread * 1000 + i),
/// recording `n` by queue id for every message the server acknowledged.
/// Stops quietly when the server goes away (crash tests kill it).
pub fn load_until_gone(
    addr: SocketAddr,
    threads: usize,
    per_thread: usize,
    body: fn(usize) -> String,
) -> (Acked, Vec<std::thread::JoinHandle<()>>) {
    let acked: Acked = Default::default();
    let handles = (0..threads)
        .map(|t| {
            let acked = std::sync::Arc::clone(&acked);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                if !c.try_reply().is_ok_and(|r| r.starts_with("220")) {
                    return;
                }
                if c.try_send(b"EHLO loader.test\r\n").is_err() || c.try_reply().is_err() {
                    return;
                }
                for i in 0..per_thread {
                    let n = t * 1000 + i;
                    let pipelined =
                        format!("MAIL FROM:<a@example.com>\r\nRCPT TO:<r{n}@far.test>\r\nDATA\r\n");
                    if c.try_send(pipelined.as_bytes()).is_err() {
                        return;
                    }
                    let replies: Vec<String> = (0..3).filter_map(|_| c.try_reply().ok()).collect();
                    if replies.len() != 3 || !replies[2].starts_with("354") {
                        return;
                    }
                    if c.try_send(body(n).as_bytes()).is_err() {
                        return;
                    }
                    let Ok(r) = c.try_reply() else { return };
                    let Some(id) = r.strip_prefix("250 2.0.0 Ok: queued as ") else {
                        return;
                    };
                    if let Ok(mut a) = acked.lock() {
                        a.insert(id.trim().to_string(), n);
                    }
                }
            })
        })
        .collect();
    (acked, handles)
}

/// An AUTH PLAIN argument for these credentials.
pub fn plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}
