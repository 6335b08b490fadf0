//! Screenshots of the real binary under live traffic, for the README:
//!
//!     cargo test --release --test console_screenshots -- --ignored
//!
//! Runs `relaygate` with its console in a 120x40 pseudo-terminal, sends it
//! real SMTP over loopback from several 127.0.0.x source addresses
//! (allowed and refused relays, an AUTH failure, a rule, mail delivered to
//! a local sink, mail queued behind a smarthost that is down, connections
//! left open), visits every panel, the `?` help and a connection's
//! dialogue, then shrinks the terminal to 80x24. Each screen is read with
//! vt100 and written as `screenshots/<name>.svg`: the cells' text with
//! their colors, bold and reverse video on a dark background, nothing
//! added or edited. With `rsvg-convert` (Debian: librsvg2-bin) on the PATH
//! a `<name>.png` is written beside each.
//!
//! Ignored by default: it writes into the source tree and takes about half
//! a minute.

mod common;

use common::cli;
use common::sink::{Sink, SinkMode, SinkOptions};
use portable_pty::{Child, MasterPty, PtySize, native_pty_system};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_relaygate");
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- terminal

/// The console running in a pseudo-terminal, its screen kept by vt100.
struct Console {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    output: mpsc::Receiver<Vec<u8>>,
    screen: vt100::Parser,
}

impl Console {
    fn start(db: &Path, rows: u16, cols: u16) -> Console {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = portable_pty::CommandBuilder::new(BIN);
        cmd.arg("--db");
        cmd.arg(db);
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
            master: pty.master,
            keys,
            output,
            screen: vt100::Parser::new(
                rows.try_into().expect("rows"),
                cols.try_into().expect("columns"),
                0,
            ),
        }
    }

    /// Takes in what the console drew; true if anything came.
    fn pump(&mut self, wait: Duration) -> bool {
        let mut got = false;
        if let Ok(bytes) = self.output.recv_timeout(wait) {
            self.screen.process(&bytes);
            got = true;
        }
        while let Ok(bytes) = self.output.try_recv() {
            self.screen.process(&bytes);
        }
        got
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
            assert!(
                Instant::now() < deadline,
                "the screen never showed {needles:?}; it shows:\n{text}"
            );
            self.pump(Duration::from_millis(50));
        }
    }

    /// Waits until the screen no longer shows `needle` (a popup closed):
    /// a key typed right after a lone Esc can be read with it as Alt+key.
    fn wait_gone(&mut self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while self.text().contains(needle) {
            assert!(Instant::now() < deadline, "{needle:?} never went away");
            self.pump(Duration::from_millis(100));
        }
    }

    /// Waits for a quiet moment (no drawing for 300 ms, at most 3 s), so
    /// a capture is a whole frame.
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && self.pump(Duration::from_millis(300)) {}
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).expect("type");
        self.keys.flush().expect("flush");
        self.pump(Duration::from_millis(150));
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.master
            .resize(PtySize {
                rows,
                cols,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("resize the pty");
        self.screen.screen_mut().set_size(
            rows.try_into().expect("rows"),
            cols.try_into().expect("columns"),
        );
    }

    fn wait_exit(&mut self) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            self.pump(Duration::from_millis(50));
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the console exited with {status:?}");
                return;
            }
        }
        panic!("the console did not exit");
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

// ------------------------------------------------------------------ client

/// A raw SMTP client connecting from a chosen loopback address (all of
/// 127.0.0.0/8 is this host), so the lists can tell clients apart.
struct Smtp {
    write: TcpStream,
    read: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(from: [u8; 4], server: SocketAddr) -> Smtp {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(from)), 0))
                .expect("bind the client address");
            let stream = socket.connect(server).await.expect("connect");
            stream.into_std().expect("std stream")
        });
        stream.set_nonblocking(false).expect("blocking");
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

    /// Sends a line; asserts the reply starts with `expect`; returns it.
    fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.write
            .write_all(format!("{line}\r\n").as_bytes())
            .expect("send");
        let reply = self.reply();
        assert!(reply.starts_with(expect), "{line} -> {reply}");
        reply
    }

    fn message(&mut self, subject: &str) {
        self.cmd("DATA", "354");
        self.cmd(
            &format!(
                "Subject: {subject}\r\nMessage-ID: <{}@screenshots.test>\r\n\r\n{subject}, sent for the console screenshots.\r\n.",
                subject.replace(' ', "-")
            ),
            "250",
        );
    }
}

/// Sends one message the way a mail program does: STARTTLS (the engine's
/// generated certificate is accepted as is), then AUTH, with lettre.
fn send_submission(server: SocketAddr, login: (&str, &str), from: &str, to: &str) {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tls = TlsParameters::builder("gw.example.com".into())
            .dangerous_accept_invalid_certs(true)
            .build_rustls()
            .expect("tls parameters");
        let mailer =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.ip().to_string())
                .port(server.port())
                .hello_name(ClientId::Domain("bob-laptop.example.com".into()))
                .tls(Tls::Required(tls))
                .credentials(Credentials::new(login.0.into(), login.1.into()))
                .timeout(Some(Duration::from_secs(10)))
                .build();
        let email = Message::builder()
            .from(from.parse().expect("from"))
            .to(to.parse().expect("to"))
            .subject("minutes")
            .body("The minutes of today's meeting.\n".to_string())
            .expect("message");
        mailer
            .send(email)
            .await
            .expect("send over STARTTLS with AUTH");
    });
}

fn plain_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// `preferred` if nothing listens there, else a free ephemeral port.
fn port(preferred: u16) -> u16 {
    let listener = std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a free port");
    listener.local_addr().expect("port").port()
}

// --------------------------------------------------------------------- svg

const CELL_W: f64 = 9.0;
const CELL_H: f64 = 17.5;
const FONT_SIZE: f64 = 15.0;
const PAD: f64 = 12.0;
const BACKGROUND: &str = "#0d1117";
const FOREGROUND: &str = "#c9d1d9";
/// The 16 named ANSI colors (GitHub's dark terminal palette).
const ANSI: [&str; 16] = [
    "#484f58", "#ff7b72", "#3fb950", "#d29922", "#58a6ff", "#bc8cff", "#39c5cf", "#b1bac4",
    "#6e7681", "#ffa198", "#56d364", "#e3b341", "#79c0ff", "#d2a8ff", "#56d4dd", "#f0f6fc",
];

fn color(c: vt100::Color, default: &str) -> String {
    match c {
        vt100::Color::Default => default.to_string(),
        vt100::Color::Idx(i) if i < 16 => ANSI[i as usize].to_string(),
        vt100::Color::Idx(i) if i >= 232 => {
            let v = 8 + (i - 232) * 10;
            format!("#{v:02x}{v:02x}{v:02x}")
        }
        vt100::Color::Idx(i) => {
            let level = |n: u8| if n == 0 { 0 } else { 55 + n * 40 };
            let i = i - 16;
            format!(
                "#{:02x}{:02x}{:02x}",
                level(i / 36),
                level((i / 6) % 6),
                level(i % 6)
            )
        }
        vt100::Color::Rgb(r, g, b) => format!("#{r:02x}{g:02x}{b:02x}"),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How one cell looks: (foreground, background, bold, italic, underline, dim).
type Look = (String, Option<String>, bool, bool, bool, bool);

fn look(cell: &vt100::Cell) -> Look {
    let (mut fg, mut bg) = (
        color(cell.fgcolor(), FOREGROUND),
        match cell.bgcolor() {
            vt100::Color::Default => None,
            c => Some(color(c, BACKGROUND)),
        },
    );
    if cell.inverse() {
        let new_bg = fg;
        fg = bg.unwrap_or_else(|| BACKGROUND.to_string());
        bg = Some(new_bg);
    }
    (
        fg,
        bg,
        cell.bold(),
        cell.italic(),
        cell.underline(),
        cell.dim(),
    )
}

/// The screen as an SVG image: background rectangles, then the text in
/// pieces that look the same, each placed at its own column and stretched
/// to exactly its cells' width, so the columns line up whatever monospace
/// font the viewer has. A piece ends at a style change or at two spaces.
fn svg(screen: &vt100::Screen) -> String {
    let (rows, cols) = screen.size();
    let (rows, cols) = (rows.get(), cols.get());
    let width = f64::from(cols) * CELL_W + 2.0 * PAD;
    let height = f64::from(rows) * CELL_H + 2.0 * PAD;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.1} {height:.1}">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" rx="6" fill="{BACKGROUND}"/>"#
    );
    let mut texts = String::new();
    for row in 0..rows {
        let y = PAD + f64::from(row) * CELL_H;
        // (first column, columns, text, look) of each piece of text.
        let mut pieces: Vec<(u16, u16, String, Look)> = Vec::new();
        // (first column, columns, color) of each background stretch.
        let mut fills: Vec<(u16, u16, String)> = Vec::new();
        let mut col = 0;
        while col < cols {
            let Some(cell) = screen.cell(row, col) else {
                break;
            };
            let span = if cell.is_wide() { 2 } else { 1 };
            let style = look(cell);
            if let Some(bg) = &style.1 {
                match fills.last_mut() {
                    Some((start, len, color)) if color == bg && *start + *len == col => {
                        *len += span
                    }
                    _ => fills.push((col, span, bg.clone())),
                }
            }
            let c = match cell.contents() {
                "" => " ",
                c => c,
            };
            let joins = pieces.last().is_some_and(|(start, len, text, l)| {
                *l == style && start + len == col && !(c == " " && text.ends_with(' '))
            });
            match pieces.last_mut() {
                Some((_, len, text, _)) if joins => {
                    *len += span;
                    text.push_str(c);
                }
                _ if c == " " => {}
                _ => pieces.push((col, span, c.to_string(), style)),
            }
            col += span;
        }
        for (start, len, color) in fills {
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{CELL_H}" fill="{color}"/>"#,
                PAD + f64::from(start) * CELL_W,
                f64::from(len) * CELL_W
            );
        }
        for (start, len, text, (fg, _, bold, italic, underline, dim)) in pieces {
            // A piece starts with a character; it may end with one space.
            let trimmed = text.trim_end();
            let len = len - (text.len() - trimmed.len()) as u16;
            let text = trimmed;
            let mut attrs = format!(r#" fill="{fg}""#);
            if bold {
                attrs.push_str(r#" font-weight="bold""#);
            }
            if italic {
                attrs.push_str(r#" font-style="italic""#);
            }
            if underline {
                attrs.push_str(r#" text-decoration="underline""#);
            }
            if dim {
                attrs.push_str(r#" fill-opacity="0.6""#);
            }
            let _ = writeln!(
                texts,
                r#"<text x="{:.1}" y="{:.1}" textLength="{:.1}" lengthAdjust="spacingAndGlyphs"{attrs}>{}</text>"#,
                PAD + f64::from(start) * CELL_W,
                y + CELL_H * 0.76,
                f64::from(len) * CELL_W,
                escape(text)
            );
        }
    }
    let _ = writeln!(
        out,
        r#"<g font-family="'DejaVu Sans Mono', 'SFMono-Regular', Menlo, Consolas, 'Liberation Mono', monospace" font-size="{FONT_SIZE}" xml:space="preserve">"#
    );
    out.push_str(&texts);
    out.push_str("</g>\n</svg>\n");
    out
}

fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("screenshots")
}

fn rsvg_convert() -> bool {
    Command::new("rsvg-convert")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes what the console shows now as `screenshots/<name>.svg` (+ png).
fn capture(console: &mut Console, name: &str) {
    console.settle();
    let dir = screenshots_dir();
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg(console.screen.screen())).expect("write the svg");
    if rsvg_convert() {
        let status = Command::new("rsvg-convert")
            .arg(&svg_path)
            .arg("-o")
            .arg(dir.join(format!("{name}.png")))
            .status()
            .expect("rsvg-convert");
        assert!(status.success(), "rsvg-convert {name}");
    }
    eprintln!("wrote {}", svg_path.display());
}

/// The row (0-based, below the header) of the first connection whose line
/// contains every one of `needles`, in the Live table on screen.
fn table_row(screen: &str, needles: &[&str]) -> usize {
    let lines: Vec<&str> = screen.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.contains("peer") && l.contains("mail from"))
        .expect("the connection table's header");
    lines[header + 1..]
        .iter()
        .position(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no connection row with {needles:?} in\n{screen}"))
}

// -------------------------------------------------------------------- test

#[test]
#[ignore = "writes screenshots/: cargo test --release --test console_screenshots -- --ignored"]
fn screenshots_of_every_panel_under_live_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relaygate.db");
    // example.com is delivered to a local sink; everything else goes to a
    // smarthost that is down, so it waits in the queue.
    let sink = Sink::start(SinkOptions {
        hostname: "mail.example.com".into(),
        ..SinkOptions::default()
    });
    let smarthost = Sink::start(SinkOptions::default());
    smarthost.set_mode(SinkMode::Down);
    let smtp_port = port(2525);
    let submission_port = port(5870);
    let server = SocketAddr::from(([127, 0, 0, 1], smtp_port));
    for args in [
        &["policy", "set", "hostname", "gw.example.com"][..],
        &["policy", "set", "dns-servers", "127.0.0.1:9"],
        &["bind", "remove", "127.0.0.1:2525"],
        &["bind", "add", &format!("127.0.0.1:{smtp_port}")],
        &[
            "bind",
            "add",
            &format!("127.0.0.1:{submission_port}"),
            "--kind",
            "submission",
        ],
        // Not an address of this host: the Bindings panel shows the OS error.
        &["bind", "add", "192.0.2.25:25"],
        &["domain", "add", "example.com"],
        &["domain", "add", "example.org"],
        &[
            "route",
            "add",
            "example.com",
            &sink.addr().to_string(),
            "--tls",
            "none",
        ],
        &[
            "route",
            "add",
            "*",
            &smarthost.addr().to_string(),
            "--tls",
            "none",
        ],
        &["list", "remove", "allow", "127.0.0.0/8"],
        &["list", "add", "allow", "127.0.0.1", "127.0.0.16/28"],
        &["list", "add", "deny", "127.0.0.66"],
        &[
            "rule",
            "add",
            "--sender",
            "noreply@example.com",
            "--destination",
            "external",
            "--reject",
            "noreply@ may not write outside",
        ],
        &["quota", "add", "login", "200/hour"],
        &["quota", "add", "login", "1000/day", "--suspend"],
        &["quota", "add", "ip/24", "2000/hour", "--recipients"],
        &[
            "ban",
            "add",
            "198.51.100.0/24",
            "--for",
            "2h",
            "--note",
            "botnet",
        ],
        &[
            "ban",
            "add",
            "203.0.113.9",
            "--for",
            "1d",
            "--note",
            "password guessing",
        ],
    ] {
        cli(&db, args);
    }
    common::cli_stdin(
        &db,
        &["user", "add", "--password-stdin", "carol"],
        "leaked\n",
    );
    cli(
        &db,
        &["user", "suspend", "carol", "--note", "password leaked"],
    );
    common::cli_stdin(
        &db,
        &["user", "add", "--password-stdin", "alice"],
        "correct horse\n",
    );
    common::cli_stdin(
        &db,
        &["user", "add", "--password-stdin", "bob"],
        "battery staple\n",
    );
    cli(
        &db,
        &[
            "user",
            "addresses",
            "alice",
            "alice@example.com",
            "@example.org",
        ],
    );

    let mut console = Console::start(&db, 40, 120);
    console.wait_for(&[&format!("listening 127.0.0.1:{smtp_port}")]);

    // A few seconds of steady traffic for the rate chart: a scanner in the
    // allowed range mailing the office, and an unlisted host trying to relay.
    let steady = std::thread::spawn(move || {
        let mut office = Smtp::connect([127, 0, 0, 20], server);
        office.cmd("EHLO scanner-2.example.com", "250");
        let mut stranger = Smtp::connect([127, 0, 0, 99], server);
        stranger.cmd("EHLO relay-probe.test", "250");
        for i in 0..24 {
            office.cmd("MAIL FROM:<scanner@example.com>", "250");
            office.cmd("RCPT TO:<archive@example.com>", "250");
            office.message(&format!("scan {i}"));
            if i % 3 == 0 {
                stranger.cmd("MAIL FROM:<promo@bulk-mail.test>", "250");
                stranger.cmd(&format!("RCPT TO:<user{i}@far.test>"), "554");
                stranger.cmd("RSET", "250");
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        office.cmd("QUIT", "221");
        stranger.cmd("QUIT", "221");
    });
    while !steady.is_finished() {
        console.pump(Duration::from_millis(100));
    }
    steady.join().expect("steady traffic");

    // Listed: an outbound message (the smarthost is down: it waits in the
    // queue) and an internal one (delivered to the sink).
    let mut s = Smtp::connect([127, 0, 0, 1], server);
    s.cmd("EHLO mail.example.com", "250");
    s.cmd("MAIL FROM:<carol@example.com>", "250");
    s.cmd("RCPT TO:<friend@far.test>", "250");
    s.cmd("RCPT TO:<bob@example.com>", "250");
    s.message("quarterly report");
    // A rule refuses this sender outside; example.org has no route: held.
    s.cmd("MAIL FROM:<noreply@example.com>", "250");
    s.cmd("RCPT TO:<customer@far.test>", "550");
    s.cmd("RSET", "250");
    s.cmd("MAIL FROM:<carol@example.com>", "250");
    s.cmd("RCPT TO:<team@example.org>", "250");
    s.message("team lunch");
    s.cmd("QUIT", "221");
    // On the deny list.
    let mut s = Smtp::connect([127, 0, 0, 66], server);
    s.cmd("EHLO known-bad.test", "250");
    s.cmd("MAIL FROM:<ceo@example.com>", "250");
    s.cmd("RCPT TO:<victim@far.test>", "554");
    s.cmd("QUIT", "221");
    // Unlisted: may not relay, may mail a local domain.
    let mut s = Smtp::connect([127, 0, 0, 99], server);
    s.cmd("EHLO spammer.test", "250");
    s.cmd("MAIL FROM:<offers@elsewhere.test>", "250");
    s.cmd("RCPT TO:<someone@far.test>", "554");
    s.cmd("RCPT TO:<alice@example.com>", "250");
    s.message("you have won");
    s.cmd("QUIT", "221");
    // A mail program on the submission port: STARTTLS, AUTH, delivered.
    send_submission(
        SocketAddr::from(([127, 0, 0, 1], submission_port)),
        ("bob", "battery staple"),
        "bob@example.com",
        "alice@example.com",
    );
    // Unlisted but authenticated, after one wrong password; left open.
    let mut roaming = Smtp::connect([127, 0, 0, 77], server);
    roaming.cmd("EHLO laptop.home.test", "250");
    roaming.cmd(
        &format!("AUTH PLAIN {}", plain_auth("alice", "wrong")),
        "535",
    );
    roaming.cmd(
        &format!("AUTH PLAIN {}", plain_auth("alice", "correct horse")),
        "235",
    );
    roaming.cmd("MAIL FROM:<alice@example.com>", "250");
    roaming.cmd("RCPT TO:<partner@far.test>", "250");
    roaming.message("contract draft");
    // Two more left open: one mid-transaction, one just greeted.
    let mut printer = Smtp::connect([127, 0, 0, 17], server);
    printer.cmd("EHLO printer-3f.example.com", "250");
    printer.cmd("MAIL FROM:<printer@example.com>", "250");
    let mut idle = Smtp::connect([127, 0, 0, 18], server);
    idle.cmd("EHLO nas.example.com", "250");

    // Delivered: 24 scans, bob, alice twice.
    sink.wait_for(27, WAIT);
    console.wait_for(&["deferred", "nas.example.com"]);

    // 1 Live.
    console.press("1");
    let live = console.wait_for(&["Connections:", "laptop.home.test"]);
    capture(&mut console, "live");

    // A connection's dialogue: the roaming laptop.
    let row = table_row(&live, &["127.0.0.77", "alice"]);
    console.press(&"j".repeat(row));
    console.press("\r");
    console.wait_for(&["from 127.0.0.77:", "AUTH failed", "authenticated as alice"]);
    capture(&mut console, "dialogue");
    console.press("\x1b");
    console.wait_gone("(Esc closes)");

    // 2 Log.
    console.press("2");
    console.wait_for(&["Log: all"]);
    capture(&mut console, "log");
    // The Log's search: the lines held and the whole event log, each
    // match picked out.
    console.press("/");
    console.wait_for(&["Search the log"]);
    console.press("far.test\r");
    console.wait_for(&["search \"far.test\"", "more in the older history"]);
    capture(&mut console, "log-search");

    // 3 Bindings.
    console.press("3");
    console.wait_for(&["192.0.2.25:25"]);
    capture(&mut console, "bindings");

    // 5 Auth & rules, 6 Users.
    console.press("5");
    console.wait_for(&["noreply@"]);
    capture(&mut console, "policy");
    console.press("6");
    console.wait_for(&["alice", "bob"]);
    capture(&mut console, "users");

    // 7 Queue: the message waiting for the smarthost and the held one.
    console.press("7");
    console.wait_for(&["friend@far.test", "team@example.org"]);
    capture(&mut console, "queue");
    // t: the selected message's story from the event log.
    console.press("t");
    console.wait_for(&["Trace: message", "(Esc closes)"]);
    capture(&mut console, "trace");
    console.press("\x1b");
    console.wait_gone("(Esc closes)");
    // Space marks a message, j moves on; the title counts the marks.
    console.press(" j ");
    console.wait_for(&["2 marked"]);
    capture(&mut console, "queue-marks");

    // 8 Quotas & bans.
    console.press("8");
    console.wait_for(&["Sending quotas (3)", "botnet", "password leaked"]);
    capture(&mut console, "limits");

    // 4 Relay lists, with the test box asking about the denied host.
    console.press("4");
    console.wait_for(&["Allow relay from"]);
    console.press("t");
    console.press("127.0.0.66");
    console.wait_for(&["deny entry 127.0.0.66"]);
    capture(&mut console, "lists");
    console.press("\x1b");
    console.wait_for(&["e edits both lists"]);

    // ? The keys.
    console.press("1");
    console.press("?");
    console.wait_for(&["Keys (Esc closes)"]);
    capture(&mut console, "help");
    console.press("\x1b");
    console.wait_gone("Keys (Esc closes)");

    // The same console at 80x24.
    console.resize(24, 80);
    console.press("1");
    console.wait_for(&["Connections:"]);
    capture(&mut console, "live-80x24");

    // One-process mode: q asks before stopping the engine.
    console.press("q");
    console.wait_for(&["Stop the engine?"]);
    console.press("y");
    console.wait_exit();
    drop((roaming, printer, idle));
}
