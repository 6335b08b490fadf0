//! The terminal end of `benches/console-load.sh`: runs the real binary with
//! its console in a pseudo-terminal and reads everything it draws into a
//! vt100 screen, as a terminal emulator would, so the console really draws
//! (and is never blocked by a full pty buffer).
//!
//!     console_load --bin target/release/relaygate --db DB --size 200x60 --screen FILE
//!
//! Prints `pid=N` (the console's process) once it runs. Every 100 ms while
//! the console's screen is up, replaces FILE with one line `bytes=B
//! frames=F` (bytes drawn; synchronized updates begun, so frames) followed
//! by the screen's text. Exits with the console's status; stop the console
//! with SIGTERM to its pid (FILE keeps its last screen).

use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The escape a synchronized update (one frame) begins with.
const FRAME_START: &[u8] = b"\x1b[?2026h";
const WRITE_EVERY: Duration = Duration::from_millis(100);

struct Args {
    bin: PathBuf,
    db: PathBuf,
    cols: NonZeroU16,
    rows: NonZeroU16,
    screen: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let (mut bin, mut db, mut size, mut screen) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--bin" => bin = Some(PathBuf::from(value("--bin")?)),
            "--db" => db = Some(PathBuf::from(value("--db")?)),
            "--size" => size = Some(value("--size")?),
            "--screen" => screen = Some(PathBuf::from(value("--screen")?)),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let size = size.unwrap_or_else(|| "200x60".into());
    let (cols, rows) = size
        .split_once('x')
        .and_then(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)))
        .ok_or(format!("--size {size}: expected COLSxROWS, e.g. 200x60"))?;
    Ok(Args {
        bin: bin.ok_or("--bin is required")?,
        db: db.ok_or("--db is required")?,
        cols,
        rows,
        screen: screen.ok_or("--screen is required")?,
    })
}

/// Counts frame starts in a byte stream read in arbitrary pieces.
#[derive(Default)]
struct FrameCounter {
    carry: Vec<u8>,
    frames: u64,
}

impl FrameCounter {
    fn feed(&mut self, bytes: &[u8]) {
        self.carry.extend_from_slice(bytes);
        self.frames += self
            .carry
            .windows(FRAME_START.len())
            .filter(|w| *w == FRAME_START)
            .count() as u64;
        // Keep only a tail too short to hold a whole marker.
        let keep = FRAME_START.len() - 1;
        let cut = self.carry.len().saturating_sub(keep);
        self.carry.drain(..cut);
    }
}

fn write_screen(path: &PathBuf, bytes: u64, frames: u64, screen: &vt100::Screen) {
    // Once the console has restored the terminal, its screen is gone.
    if !screen.alternate_screen() {
        return;
    }
    let tmp = path.with_extension("tmp");
    let text = format!("bytes={bytes} frames={frames}\n{}\n", screen.contents());
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn run(args: Args) -> Result<i32, String> {
    let pty = native_pty_system()
        .openpty(PtySize {
            rows: args.rows.get(),
            cols: args.cols.get(),
            pixel_width: 0,
            pixel_height: 0,
        })
        .map_err(|e| format!("openpty: {e}"))?;
    // The pty spawner looks a relative path up in PATH: make it absolute.
    let bin =
        std::fs::canonicalize(&args.bin).map_err(|e| format!("{}: {e}", args.bin.display()))?;
    let mut cmd = CommandBuilder::new(&bin);
    cmd.arg("--db");
    cmd.arg(&args.db);
    cmd.env("TERM", "xterm-256color");
    cmd.env_remove("NO_COLOR");
    let mut child = pty
        .slave
        .spawn_command(cmd)
        .map_err(|e| format!("starting {} in the pty: {e}", bin.display()))?;
    drop(pty.slave);
    println!("pid={}", child.process_id().unwrap_or(0));
    let _ = std::io::stdout().flush();
    let mut reader = pty
        .master
        .try_clone_reader()
        .map_err(|e| format!("pty reader: {e}"))?;
    // Held so the console's input stays open; nothing is typed.
    let _keys = pty
        .master
        .take_writer()
        .map_err(|e| format!("pty writer: {e}"))?;
    let (tx, output) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut parser = vt100::Parser::new(args.rows, args.cols, 0);
    let mut frames = FrameCounter::default();
    let mut bytes = 0u64;
    let mut last_write = Instant::now();
    let status = loop {
        match output.recv_timeout(WRITE_EVERY) {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                frames.feed(&chunk);
                parser.process(&chunk);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The pty closed: the console is gone (or going).
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break child.wait().map_err(|e| format!("waiting: {e}"))?;
            }
        }
        if last_write.elapsed() >= WRITE_EVERY {
            write_screen(&args.screen, bytes, frames.frames, parser.screen());
            last_write = Instant::now();
        }
        if let Ok(Some(status)) = child.try_wait() {
            while let Ok(chunk) = output.recv_timeout(Duration::from_millis(200)) {
                bytes += chunk.len() as u64;
                frames.feed(&chunk);
                parser.process(&chunk);
            }
            break status;
        }
    };
    write_screen(&args.screen, bytes, frames.frames, parser.screen());
    Ok(i32::try_from(status.exit_code()).unwrap_or(1))
}

fn main() {
    let code = match parse_args().and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("console_load: {e}");
            2
        }
    };
    std::process::exit(code);
}
