//! The persisted event log: decisions with their reasons survive a restart,
//! and a clean stop writes the events of the stop itself.

mod common;

use common::{Client, Server, cli, test_db};
use relaygate::decision_log::{DecisionLog, LogRecord, log_path_for};
use relaygate::events::Event;
use relaygate::policy::decision::{Reason, Verdict};
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
    // Stopped at once, the session still open: the stop closes it, and
    // the writer is told to write what is left before the process ends.
    server.wait_for("decision session=1", Duration::from_secs(5));
    assert_eq!(server.terminate().code(), Some(0));

    let log = DecisionLog::open(&log_path_for(&db)).expect("log opens");
    let records = log.recent(100).expect("records");
    // The log keeps the engine's own typed events, not text.
    let events: Vec<&Event> = records
        .iter()
        .map(|r| match r {
            LogRecord::Event(stamped) => stamped.event.as_ref(),
            LogRecord::Legacy { text, .. } => panic!("an untyped row: {text}"),
        })
        .collect();
    let (recipient, decision) = events
        .iter()
        .find_map(|e| match e {
            Event::Decision {
                recipient,
                decision,
                ..
            } => Some((recipient, decision)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no decision in {events:?}"));
    assert_eq!(recipient, "x@far.test");
    assert_eq!(decision.verdict, Verdict::Deny);
    assert!(
        matches!(
            &decision.reason,
            Reason::IpDenied { entry, .. } if &*entry.text == "*.*.*.*"
        ),
        "{:?}",
        decision.reason
    );
    assert!(
        events.iter().all(|e| !matches!(e, Event::Command { .. })),
        "commands are not kept"
    );
    assert!(events.iter().any(|e| matches!(e, Event::ListenerUp { .. })));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SessionClosed { session: 1, .. })),
        "the session the stop closed: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::EngineStarted { .. }))
    );
}

/// The history says when the engine stopped, and a restarted engine
/// numbers its sessions on from the last one it holds: a log line or a
/// trace never shows two sessions under one number.
#[test]
fn a_restart_is_in_the_history_and_session_numbers_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    for expected in [1u64, 2, 3] {
        let mut server = Server::start(&db);
        let mut c = Client::connect(server.addr());
        c.reply();
        c.expect("QUIT", "221");
        server.wait_for(
            &format!("session {expected} closed: the client said QUIT"),
            Duration::from_secs(5),
        );
        assert_eq!(server.terminate().code(), Some(0));
    }
    let log = DecisionLog::open(&log_path_for(&db)).expect("log opens");
    let events: Vec<Event> = log
        .recent(1000)
        .expect("records")
        .into_iter()
        .filter_map(|r| match r {
            LogRecord::Event(stamped) => Some((*stamped.event).clone()),
            LogRecord::Legacy { .. } => None,
        })
        .collect();
    let opened: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::SessionOpened { session, .. } => Some(*session),
            _ => None,
        })
        .collect();
    assert_eq!(opened, [1, 2, 3]);
    let stops = events
        .iter()
        .filter(|e| matches!(e, Event::EngineStopping { .. }))
        .count();
    assert_eq!(stops, 3, "{events:?}");
}
