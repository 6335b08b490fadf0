//! The persisted event log: decisions with their reasons survive a restart.

mod common;

use common::{Client, Server, cli, test_db};
use relaygate::decision_log::{DecisionLog, log_path_for};
use std::time::Duration;

#[test]
fn decisions_are_kept_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    cli(&db, &["list", "remove", "allow", "127.0.0.0/8"]);
    let mut server = Server::start(&db);
    let mut c = Client::connect(server.addr());
    c.reply();
    c.expect("EHLO client.test", "250");
    c.expect("MAIL FROM:<a@example.com>", "250");
    c.expect("RCPT TO:<x@far.test>", "554 5.7.1");
    c.expect("QUIT", "221");
    server.wait_for("decision session=1", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.terminate().code(), Some(0));

    let log = DecisionLog::open(&log_path_for(&db)).expect("log opens");
    let records = log.recent(100).expect("records");
    let decision = records
        .iter()
        .find(|r| r.kind == "decision")
        .unwrap_or_else(|| panic!("no decision in {records:?}"));
    assert_eq!(decision.verdict.as_deref(), Some("denied"));
    assert!(
        decision.text.contains("to=<x@far.test>")
            && decision
                .text
                .contains("outbound from unlisted 127.0.0.1; deny entry *.*.*.*"),
        "{}",
        decision.text
    );
    assert!(
        records.iter().all(|r| r.kind != "command"),
        "commands are not kept"
    );
    assert!(
        records
            .iter()
            .any(|r| r.text.contains("listening on 127.0.0.1:"))
    );
}
