//! Crash safety of delivery: SIGKILL the engine while it delivers, start it
//! again, and every message it acknowledged with 250 reaches the sink at
//! least once. Duplicates are counted and printed.

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Server, load_until_gone, test_db};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

fn test_id(body: &[u8]) -> Option<usize> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| l.starts_with("X-Test-Id: "))?;
    line["X-Test-Id: ".len()..].trim().parse().ok()
}

#[test]
fn acknowledged_mail_reaches_the_sink_across_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::smarthost(&db, sink.addr());
    let mut server = Server::start(&db);
    let addr = server.addr();

    let (acked, threads) = load_until_gone(addr, 6, 50, |n| {
        format!(
            "Subject: {n}\r\nX-Test-Id: {n}\r\n\r\n{}.\r\n",
            "text\r\n".repeat(30)
        )
    });
    // Kill it while it is delivering.
    let start = Instant::now();
    while sink.messages().len() < 60 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "delivery did not get going"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill();
    for t in threads {
        let _ = t.join();
    }
    let acked: HashSet<usize> = acked.lock().unwrap().values().copied().collect();
    let at_kill = sink.messages().len();

    // Start again: everything acknowledged must arrive.
    let mut server = Server::start(&db);
    server.addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<usize> = sink
            .messages()
            .iter()
            .filter_map(|m| test_id(&m.body))
            .collect();
        let missing: Vec<&usize> = acked.iter().filter(|n| !got.contains(n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never arrived: {missing:?}",
            missing.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for m in sink.messages() {
        if let Some(n) = test_id(&m.body) {
            *counts.entry(n).or_default() += 1;
        }
    }
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "{} acknowledged, {} at the sink when killed, {} delivered in all, {duplicates} duplicates",
        acked.len(),
        at_kill,
        counts.len()
    );
    assert!(acked.len() >= 60);
    assert!(duplicates <= 50, "too many duplicates: {duplicates}");
    assert_eq!(server.terminate().code(), Some(0));
}
