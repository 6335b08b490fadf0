//! Nothing acknowledged is ever lost: messages acknowledged with 250 are
//! all in the spool, whole, after the server is killed with SIGKILL in the
//! middle of a load.

mod common;

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

/// SIGKILL keeps the page cache, so the test above would pass with the
/// fsync skipped. This one watches the system calls: every acknowledged
/// message is preceded by an fsync of the spool.
#[test]
fn each_acknowledgement_waits_for_an_fsync_of_the_spool() {
    use std::process::Command;
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("skipped: strace is not installed (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[("delivery", "off")]);
    let trace = dir.path().join("trace");
    let mut strace = Command::new("strace");
    strace
        .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(common::BIN)
        .arg("--db")
        .arg(&db)
        .args(["serve", "--headless"]);
    let (child, addr) = common::spawn_engine(strace);
    // Killing strace alone would leave the engine it traces running,
    // detached: the guard kills the engine (strace's child) first.
    struct Traced(std::process::Child);
    impl Drop for Traced {
        fn drop(&mut self) {
            let pid = self.0.id();
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            for engine in children.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", engine]).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let traced = Traced(child);
    let spool_syncs = || {
        std::fs::read_to_string(&trace)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("spool.db") && !l.contains("unfinished"))
            .count()
    };
    let before = spool_syncs();
    // One message at a time: each commit is its own group.
    for n in 0..10 {
        let r = common::send_message(
            addr,
            "a@example.com",
            &["b@example.com"],
            &format!("Subject: {n}\r\n\r\nx\r\n"),
        );
        assert!(r.starts_with("250"), "{r}");
    }
    let during = spool_syncs() - before;
    drop(traced);
    assert!(
        during >= 10,
        "{during} fsyncs of the spool for 10 acknowledged messages"
    );
}
