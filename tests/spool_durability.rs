//! Nothing acknowledged is ever lost: messages acknowledged with 250 are
//! all in the spool, whole, after the server is killed with SIGKILL in the
//! middle of a load.

mod common;

use common::{Client, Server, test_db};
use relaygate::spool::{read_spool, spool_path_for};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();

    let acked: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..8 {
        let (acked, count) = (Arc::clone(&acked), Arc::clone(&count));
        threads.push(std::thread::spawn(move || {
            // Every read and write may fail once the server is killed: stop quietly.
            let mut c = Client::connect(addr);
            if !c.try_reply().is_ok_and(|r| r.starts_with("220")) {
                return;
            }
            if c.try_send(b"EHLO loader.test\r\n").is_err() || c.try_reply().is_err() {
                return;
            }
            for i in 0..100 {
                let n = t * 1000 + i;
                // Pipelined transaction: MAIL, RCPT, DATA in one write.
                let pipelined =
                    format!("MAIL FROM:<a@example.com>\r\nRCPT TO:<r{n}@far.test>\r\nDATA\r\n");
                if c.try_send(pipelined.as_bytes()).is_err() {
                    return;
                }
                let replies: Vec<String> = (0..3).filter_map(|_| c.try_reply().ok()).collect();
                if replies.len() != 3 || !replies[2].starts_with("354") {
                    return;
                }
                let body = format!(
                    "Subject: message {n}\r\nX-Test-Id: {n}\r\n\r\n{}END-{n}\r\n.\r\n",
                    "line of text\r\n".repeat(20)
                );
                if c.try_send(body.as_bytes()).is_err() {
                    return;
                }
                let Ok(r) = c.try_reply() else { return };
                let Some(id) = r.strip_prefix("250 2.0.0 Ok: queued as ") else {
                    return;
                };
                acked.lock().unwrap().insert(id.trim().to_string(), n);
                count.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill it in the middle of the load.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < 300 {
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
