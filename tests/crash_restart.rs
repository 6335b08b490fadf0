//! A crash strands nothing: 16 clients send, the engine is killed with
//! SIGKILL mid-load, it restarts at once and 200 more messages arrive;
//! every acknowledged message, leftovers included, reaches the sink
//! promptly. Twenty times in a row.

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Server, cli, load_until_gone, test_db};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// The queue id our Received: header gave the message ("... id QUEUEID").
fn queue_id(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let header: String = text
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join(" ");
    let mut words = header.split_whitespace();
    while let Some(w) = words.next() {
        if w == "id" {
            return words.next().map(|id| id.trim_end_matches(';').to_string());
        }
    }
    None
}

fn body(n: usize) -> String {
    format!("Subject: {n}\r\nX-Test-Id: {n}\r\n\r\nhello\r\n.\r\n")
}

#[test]
fn twenty_crashes_in_a_row_strand_no_acknowledged_message() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::smarthost(&db, sink.addr());
    for round in 0..rounds {
        let mut server = Server::start(&db);
        let addr = server.addr();
        let (acked, threads) = load_until_gone(addr, 16, 40, body);
        let start = Instant::now();
        let target = sink.messages().len() + 40;
        while sink.messages().len() < target && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        server.kill();
        for t in threads {
            let _ = t.join();
        }
        let acked: Vec<String> = acked.lock().unwrap().keys().cloned().collect();
        // Restart at once; 200 more arrive.
        let mut server = Server::start(&db);
        let addr = server.addr();
        let (more, threads) = load_until_gone(addr, 4, 50, |n| body(n + 50_000));
        for t in threads {
            let _ = t.join();
        }
        let more: Vec<String> = more.lock().unwrap().keys().cloned().collect();
        assert_eq!(more.len(), 200, "round {round}: 200 more accepted");
        // Everything acknowledged arrives within 10 s of the restart.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: HashSet<String> = sink
                .messages()
                .iter()
                .filter_map(|m| queue_id(&m.body))
                .collect();
            let missing: Vec<&String> = acked
                .iter()
                .chain(&more)
                .filter(|id| !got.contains(*id))
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                let queue = cli(&db, &["queue", "show"]);
                server.drain_log();
                panic!(
                    "round {round}: {} acknowledged messages stranded: {missing:?}\nqueue:\n{queue}\nlog tail:\n{}",
                    missing.len(),
                    server
                        .log
                        .iter()
                        .rev()
                        .take(30)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(server.terminate().code(), Some(0));
    }
}
