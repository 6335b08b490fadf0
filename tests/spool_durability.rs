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
