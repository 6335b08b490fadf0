//! `relaygate trace`: a message's story from the event log, with the real
//! binary, a real sink and a real client; across an engine restart.

mod common;

use common::sink::{Sink, SinkOptions};
use common::{Client, Server, cli, run_cli, send_queued, test_db};
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `relaygate trace ARGS` until `ok` accepts its output (the event
/// log is written in batches) or 15 s pass.
fn trace_until(db: &Path, args: &[&str], ok: impl Fn(&str) -> bool) -> String {
    let mut full = vec!["trace"];
    full.extend_from_slice(args);
    let start = Instant::now();
    loop {
        let out = run_cli(db, &full, "");
        if out.code == 0 && ok(&out.stdout) {
            return out.stdout;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "trace {args:?}: exit {}, {}{}",
            out.code,
            out.stdout,
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn trace_tells_a_message_s_story_by_any_of_its_keys_and_keeps_runs_apart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(SinkOptions::default());
    let db = test_db(dir.path(), &[]);
    common::smarthost(&db, sink.addr());
    cli(&db, &["list", "add", "deny", "127.0.0.9"]);
    let mut server = Server::start(&db);
    let addr = server.addr();

    let id = send_queued(
        addr,
        "Alice@Example.com",
        &["bob@far.test"],
        "Subject: trace me\r\n\r\nhello\r\n",
    );
    sink.wait_for(1, Duration::from_secs(15));
    // A client on the deny list tries to relay.
    let mut c = Client::connect_from(addr, "127.0.0.9".parse().unwrap());
    c.reply();
    c.expect("EHLO evil.test", "250");
    c.expect("MAIL FROM:<mallory@evil.test>", "250");
    c.expect("RCPT TO:<victim@far.test>", "554");
    c.expect("QUIT", "221");

    // By queue id: the whole story, in order.
    let story = trace_until(&db, &[&id], |o| {
        o.contains("delivery") && o.contains("closed")
    });
    let at = |needle: &str| {
        story
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{story}"))
    };
    assert!(story.starts_with("== session "), "{story}");
    assert!(story.contains(&format!("message {id}")), "{story}");
    let opened = at("opened from 127.0.0.1");
    let decided = at("to=<bob@far.test>");
    let accepted = at(&format!("message {id} accepted"));
    let delivered = at("delivery");
    assert!(
        opened < decided && decided < accepted && accepted < delivered,
        "{story}"
    );
    assert!(
        !story.contains("mallory"),
        "another session's story: {story}"
    );
    assert!(
        !story.contains("now:"),
        "delivered, so no longer queued: {story}"
    );

    // The same story by sender (any case), by recipient, by IP.
    for args in [
        vec!["alice@example.COM"],
        vec!["--from", "<alice@example.com>"],
        vec!["--to", "bob@far.test"],
        vec!["--ip", "127.0.0.1", "--to", "bob@far.test"],
    ] {
        let out = trace_until(&db, &args, |o| o.contains("delivery"));
        assert!(
            out.contains(&format!("message {id} accepted")),
            "{args:?}: {out}"
        );
    }
    // The denied client's session: its reason, no message.
    let denied = trace_until(&db, &["127.0.0.9"], |o| o.contains("closed"));
    assert!(denied.contains("no message accepted"), "{denied}");
    assert!(
        denied.contains("to=<victim@far.test>") && denied.contains("554"),
        "{denied}"
    );
    assert!(!denied.contains("bob@far.test"), "{denied}");

    // JSON: one object per story, its events typed.
    let json = trace_until(&db, &["--json", &id], |o| o.contains("delivery"));
    let stories: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(stories.len(), 1);
    let types: Vec<&str> = stories[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    let pos = |t: &str| types.iter().position(|x| *x == t).unwrap_or(usize::MAX);
    assert!(
        pos("session_opened") < pos("decision")
            && pos("decision") < pos("message_accepted")
            && pos("message_accepted") < pos("delivery")
            && pos("delivery") != usize::MAX,
        "{types:?}"
    );

    // Nothing matches: exit 1. Bad input: exit 2, said plainly.
    let none = run_cli(&db, &["trace", "nobody@nowhere.test"], "");
    assert_eq!(none.code, 1, "{}", none.stderr);
    let empty = run_cli(&db, &["trace"], "");
    assert_eq!(empty.code, 2);
    assert!(
        empty.stderr.contains("say what to trace"),
        "{}",
        empty.stderr
    );
    let bad = run_cli(&db, &["trace", "x", "--since", "yesterday"], "");
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("neither an age"), "{}", bad.stderr);
    let bad_ip = run_cli(&db, &["trace", "--ip", "1.2.3.999"], "");
    assert_eq!(bad_ip.code, 2);
    assert!(
        bad_ip.stderr.contains("not an IP address"),
        "{}",
        bad_ip.stderr
    );
    let a_v6 = run_cli(&db, &["trace", "--ip", "2001:DB8::1"], "");
    assert_eq!(
        a_v6.code, 1,
        "a valid address that matches nothing: {}",
        a_v6.stderr
    );
    // A time range that excludes it.
    let later = run_cli(&db, &["trace", &id, "--since", "2999-01-01"], "");
    assert_eq!(later.code, 1);

    // After a restart session numbers start again: the new session is a
    // story of its own, never merged with the old one of the same number.
    assert_eq!(server.terminate().code(), Some(0));
    let mut server = Server::start(&db);
    let addr = server.addr();
    let second = send_queued(
        addr,
        "alice@example.com",
        &["carol@far.test"],
        "Subject: 2\r\n\r\nx\r\n",
    );
    sink.wait_for(2, Duration::from_secs(15));
    let both = trace_until(&db, &["alice@example.com"], |o| {
        o.matches("== session").count() == 2 && o.matches("delivery").count() == 2
    });
    let parts: Vec<&str> = both.split("== session").skip(1).collect();
    assert!(
        parts[0].contains(&id) && !parts[0].contains(&second),
        "{both}"
    );
    assert!(
        parts[1].contains(&second) && !parts[1].contains(&id),
        "{both}"
    );
    drop(server);
}

/// A client refused at connect (banned) had no session, and is a story
/// all the same: `trace IP` shows the ban and the refusal, each on its
/// own, instead of "nothing matches".
#[test]
fn refusals_at_connect_and_bans_are_traced_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_db(dir.path(), &[]);
    let mut server = Server::start(&db);
    let addr = server.addr();
    cli(&db, &["ban", "add", "127.0.0.6", "--for", "1h"]);
    // The engine takes the ban up within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect_from(addr, "127.0.0.6".parse().unwrap());
        let greeting = c.reply();
        if greeting.starts_with("554 5.7.1") {
            assert!(greeting.contains("banned"), "{greeting}");
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {greeting}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let story = trace_until(&db, &["127.0.0.6"], |o| o.contains("refused 127.0.0.6"));
    assert!(
        story.contains("== no session (refused before the greeting, or a ban)"),
        "{story}"
    );
    assert!(story.contains("banned until"), "{story}");
    // Another address's refusals are not in it.
    let none = run_cli(&db, &["trace", "127.0.0.7"], "");
    assert_eq!(none.code, 1, "{none:?}");
    server.drain_log();
}
