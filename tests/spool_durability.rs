//! Nothing acknowledged is ever lost: messages acknowledged with 250 are
//! all in the spool, whole, after the server is killed with SIGKILL in the
//! middle of a load.

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Server, load_until_gone, test_db};
use relaygate::spool::{read_spool, spool_path_for};
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();

    let (acked, threads) = load_until_gone(addr, 8, 100, |n| {
        format!(
            "Subject: message {n}\r\nX-Test-Id: {n}\r\n\r\n{}END-{n}\r\n.\r\n",
            "line of text\r\n".repeat(20)
        )
    });
    let count = || acked.lock().map_or(0, |a| a.len());
    // Kill it in the middle of the load.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count() < 300 {
        assert!(
            std::time::Instant::now() < deadline,
            "load did not get going"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    server.kill();
    for t in threads {
        let _ = t.join();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300 && acked.len() < 800,
        "killed too late: {} acknowledged",
        acked.len()
    );

    let stored: HashMap<String, Vec<u8>> = read_spool(&spool_path_for(&db))
        .expect("spool readable after SIGKILL")
        .into_iter()
        .map(|m| (m.id, m.message.body))
        .collect();
    for (id, n) in &acked {
        let body = stored
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged message {id} (#{n}) lost"));
        let text = String::from_utf8_lossy(body);
        assert!(
            text.contains(&format!("X-Test-Id: {n}\r\n")),
            "{id} is not message {n}"
        );
        assert!(text.ends_with(&format!("END-{n}\r\n")), "{id} is truncated");
    }
    println!(
        "{} acknowledged, {} in the spool, none lost",
        acked.len(),
        stored.len()
    );
}

/// The engine under `strace -f -y`, tracing fsyncs: killed (the engine
/// first, then strace) when dropped.
struct Traced {
    strace: std::process::Child,
    addr: std::net::SocketAddr,
    trace: std::path::PathBuf,
}

impl Traced {
    /// `None` (said) when strace is not installed.
    fn start(db: &std::path::Path, trace: std::path::PathBuf) -> Option<Traced> {
        use std::process::Command;
        if Command::new("strace").arg("-V").output().is_err() {
            eprintln!("skipped: strace is not installed (apt-get install strace)");
            return None;
        }
        let mut strace = Command::new("strace");
        strace
            .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
            .arg(&trace)
            .arg(common::BIN)
            .arg("--db")
            .arg(db)
            .args(["serve", "--headless"]);
        let (strace, addr) = common::spawn_engine(strace);
        Some(Traced {
            strace,
            addr,
            trace,
        })
    }

    /// fsyncs so far of files whose name contains `needle`, each counted
    /// once it has returned. One that another thread's sync interrupted
    /// in strace's output (`PID fsync(7</x/spool.db-wal> <unfinished
    /// ...>`, later `PID <... fsync resumed>) = 0`, without the name)
    /// counts at its resumption.
    fn syncs(&self, needle: &str) -> usize {
        let trace = std::fs::read_to_string(&self.trace).unwrap_or_default();
        let mut waiting = std::collections::HashSet::new();
        let mut done = 0;
        for line in trace.lines() {
            let pid = line.split_whitespace().next().unwrap_or_default();
            if line.contains("unfinished") {
                if line.contains(needle) {
                    waiting.insert(pid.to_string());
                }
            } else if line.contains("resumed>") {
                if waiting.remove(pid) {
                    done += 1;
                }
            } else if line.contains(needle) {
                done += 1;
            }
        }
        done
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Killing strace alone would leave the engine it traces running,
        // detached: its child goes first.
        let pid = self.strace.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for engine in children.split_whitespace() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", engine])
                .status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

/// SIGKILL keeps the page cache, so the test above would pass with the
/// fsync skipped. This one watches the system calls: every acknowledged
/// message is preceded by an fsync of the spool.
#[test]
fn each_acknowledgement_waits_for_an_fsync_of_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("delivery", "off")]);
    let Some(traced) = Traced::start(&db, dir.path().join("trace")) else {
        return;
    };
    let before = traced.syncs("spool.db");
    // One message at a time: each commit is its own group.
    for n in 0..10 {
        let r = common::send_message(
            traced.addr,
            "a@example.com",
            &["b@example.com"],
            &format!("Subject: {n}\r\n\r\nx\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let during = traced.syncs("spool.db") - before;
    drop(traced);
    assert!(
        during >= 10,
        "{during} fsyncs of the spool for 10 acknowledged messages"
    );
}

/// A delivery's outcome is committed without an fsync, but an idle engine
/// syncs it within a second: after the next hop has the message, the
/// spool's WAL is synced once more, with nothing else going on.
#[test]
fn an_outcome_reaches_the_disk_within_a_second_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::smarthost(&db, sink.addr());
    let Some(traced) = Traced::start(&db, dir.path().join("trace")) else {
        return;
    };
    let r = common::send_message(
        traced.addr,
        "a@example.com",
        &["b@far.test"],
        "Subject: once\r\n\r\nx\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(sink.wait_for(1, Duration::from_secs(15)).len(), 1);
    // The outcome is committed after the next hop's 250, so any sync of
    // the WAL from here on is of it (the message's own came before).
    let at_delivery = traced.syncs("spool.db-wal");
    let start = std::time::Instant::now();
    while traced.syncs("spool.db-wal") == at_delivery {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no sync of the spool's WAL after the outcome ({at_delivery} before it)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
