//! The console without a terminal: every panel rendered with ratatui's
//! TestBackend at 80x24 and 120x40 against insta snapshots (fixed data and
//! a fixed clock), and the app driven by key presses against a real
//! temporary SQLite store, checking what the store and the compiled policy
//! hold afterwards.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use relaygate::bindings::{BindKind, Binding};
use relaygate::console::action::{Action, Panel};
use relaygate::console::app::{App, Mode};
use relaygate::console::io::{ConsoleIo, dispatch};
use relaygate::console::render;
use relaygate::console::theme::Theme;
use relaygate::engine::ListenerStatus;
use relaygate::events::{Event, Stamped};
use relaygate::policy::Envelope;
use relaygate::policy::address::parse_mailbox;
use relaygate::policy::ip_lists::{ListKind, ListVerdict};
use relaygate::policy::rules::Rule;
use relaygate::spool::{QueueEntry, RecipientState};
use relaygate::store::Store;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2023-11-14 22:13:20 UTC: every snapshot is drawn at this instant.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// An app over a real store in a temporary directory.
struct Harness {
    app: App,
    io: ConsoleIo,
    db: PathBuf,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(prepare: impl FnOnce(&mut Store)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("relaygate.db");
        {
            let mut store = Store::open(&db).expect("store");
            prepare(&mut store);
        }
        let mut io = ConsoleIo::open(&db, None).expect("console io");
        let mut app = App::new(t0());
        let config = io.load_config().expect("config");
        dispatch(&mut app, &mut io, Action::ConfigLoaded(Box::new(config)));
        Harness {
            app,
            io,
            db,
            _dir: dir,
        }
    }

    fn act(&mut self, action: Action) {
        dispatch(&mut self.app, &mut self.io, action);
    }

    fn key_event(&mut self, key: KeyEvent) {
        if let Some(action) = self.app.key_action(key) {
            self.act(action);
        }
    }

    fn key(&mut self, code: KeyCode) {
        self.key_event(KeyEvent::new(code, KeyModifiers::NONE));
    }

    fn ctrl(&mut self, c: char) {
        self.key_event(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL));
    }

    /// Types text, one key press per character (`\n` is Enter).
    fn typed(&mut self, text: &str) {
        for c in text.chars() {
            match c {
                '\n' => self.key(KeyCode::Enter),
                c => self.key(KeyCode::Char(c)),
            }
        }
    }

    fn store(&self) -> Store {
        Store::open(&self.db).expect("store")
    }

    fn status(&self) -> String {
        self.app
            .status
            .as_ref()
            .map(|s| s.text.clone())
            .unwrap_or_default()
    }

    fn screen(&self, width: u16, height: u16) -> Terminal<TestBackend> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("terminal");
        terminal
            .draw(|f| render::draw(f, &self.app, &Theme::monochrome()))
            .expect("draw");
        terminal
    }
}

fn stamped(offset_ms: u64, event: Event) -> Action {
    Action::Engine(Stamped {
        at: t0() - Duration::from_secs(30) + Duration::from_millis(offset_ms),
        event: Arc::new(event),
    })
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// A console with a bit of everything: users, domains, a rule, two
/// bindings (one failed), three connections, decisions both ways, a queue.
fn populated() -> Harness {
    let mut h = Harness::new(|store| {
        store.add_domain("example.com").expect("domain");
        store.add_user("alice", "$argon2id$fake").expect("user");
        store.add_user("bob", "$argon2id$fake").expect("user");
        store
            .set_sender_addresses(
                "alice",
                &["alice@example.com".into(), "@example.org".into()],
            )
            .expect("addresses");
        store
            .add_rule(
                &Rule::new(
                    "!*@example.com",
                    "*",
                    "external",
                    Some("Use your example.com address"),
                )
                .expect("rule"),
                None,
            )
            .expect("rule");
        store
            .add_binding(Binding {
                addr: addr("0.0.0.0:587"),
                kind: BindKind::Submission,
            })
            .expect("binding");
    });
    h.act(Action::Listeners(vec![
        ListenerStatus {
            binding: Binding {
                addr: addr("0.0.0.0:587"),
                kind: BindKind::Submission,
            },
            bound: Err("Permission denied (os error 13)".into()),
        },
        ListenerStatus {
            binding: Binding {
                addr: addr("127.0.0.1:2525"),
                kind: BindKind::Smtp,
            },
            bound: Ok(addr("127.0.0.1:2525")),
        },
    ]));
    let policy = Arc::clone(&h.app.config.policy);
    let local = addr("127.0.0.1:2525");
    let sessions = [
        (
            1,
            "192.168.1.20:50001",
            "lan-pc.example.com",
            "carol@example.com",
            "friend@far.test",
        ),
        (
            2,
            "203.0.113.9:41000",
            "spammer.test",
            "spam@elsewhere.test",
            "victim@far.test",
        ),
        (
            3,
            "10.0.0.5:52000",
            "printer",
            "scanner@example.com",
            "alice@example.com",
        ),
    ];
    let mut t = 0;
    for (id, peer, helo, from, to) in sessions {
        t += 1000;
        let peer: SocketAddr = addr(peer);
        h.act(stamped(
            t,
            Event::SessionOpened {
                session: id,
                peer,
                local,
                kind: BindKind::Smtp,
                tls: id == 1,
                via: None,
            },
        ));
        h.act(stamped(
            t + 10,
            Event::Command {
                session: id,
                line: format!("EHLO {helo}"),
                reply: "250 SIZE 26214400".into(),
            },
        ));
        h.act(stamped(
            t + 20,
            Event::Command {
                session: id,
                line: format!("MAIL FROM:<{from}>"),
                reply: "250 2.1.0 Ok".into(),
            },
        ));
        let sender = parse_mailbox(from).expect("sender");
        let recipient = parse_mailbox(to).expect("recipient");
        let decision = policy.decide(
            &Envelope {
                peer: peer.ip(),
                login: None,
                sender: Some(&sender),
            },
            &recipient,
        );
        let reply = decision.reply.to_string();
        h.act(stamped(
            t + 30,
            Event::Command {
                session: id,
                line: format!("RCPT TO:<{to}>"),
                reply,
            },
        ));
        h.act(stamped(
            t + 31,
            Event::Decision {
                session: id,
                peer: peer.ip(),
                login: None,
                sender: from.into(),
                recipient: to.into(),
                decision: Box::new(decision),
            },
        ));
    }
    h.act(stamped(
        t + 100,
        Event::MessageAccepted {
            session: 1,
            id: "18F0A1B2C3D4E5F6".into(),
            size: 2048,
            recipients: 1,
        },
    ));
    h.act(stamped(
        t + 200,
        Event::SessionClosed {
            session: 2,
            why: "client quit".into(),
        },
    ));
    h.act(stamped(
        t + 300,
        Event::AuthFailed {
            session: 3,
            peer: IpAddr::from([10, 0, 0, 5]),
            login: Some("printer".into()),
        },
    ));
    h.act(stamped(
        t + 400,
        Event::Delivery {
            message_id: "18F0A1B2C3D4E5F6".into(),
            recipient: "friend@far.test".into(),
            host: "mx.far.test:25".into(),
            outcome: relaygate::events::DeliveryOutcome::Deferred,
            reply: "451 4.3.0 try again later".into(),
        },
    ));
    h.act(stamped(
        t + 500,
        Event::Error {
            session: None,
            message: "TLS disabled: no certificate".into(),
        },
    ));
    h.act(Action::QueueLoaded(Ok(vec![
        QueueEntry {
            id: "18F0A1B2C3D4E5F6".into(),
            received_at: 1_699_999_900,
            sender: "carol@example.com".into(),
            size: 2048,
            held: false,
            recipients: vec![RecipientState {
                address: "friend@far.test".into(),
                state: "queued".into(),
                attempts: 2,
                next_attempt: 1_700_000_120,
                last_error: Some("451 4.3.0 try again later (mx.far.test)".into()),
                notify: None,
            }],
        },
        QueueEntry {
            id: "18F0A1B2C3D4E5F7".into(),
            received_at: 1_699_990_000,
            sender: String::new(),
            size: 911,
            held: true,
            recipients: vec![
                RecipientState {
                    address: "bob@example.com".into(),
                    state: "delivered".into(),
                    attempts: 1,
                    next_attempt: 0,
                    last_error: None,
                    notify: None,
                },
                RecipientState {
                    address: "ghost@far.test".into(),
                    state: "queued".into(),
                    attempts: 0,
                    next_attempt: 1_699_990_000,
                    last_error: None,
                    notify: None,
                },
            ],
        },
    ])));
    h
}

// ----- rendering -----

#[test]
fn every_panel_at_80x24_and_120x40() {
    let mut h = populated();
    for panel in Panel::ALL {
        h.app.panel = panel;
        for (w, hgt) in [(80, 24), (120, 40)] {
            let name = format!("{}_{w}x{hgt}", panel.title().replace([' ', '&'], "_"));
            insta::assert_snapshot!(name, h.screen(w, hgt).backend());
        }
    }
}

#[test]
fn popups_and_editing_at_80x24() {
    let mut h = populated();
    h.app.panel = Panel::Lists;
    h.typed("e");
    h.typed("\n300.1.1.1\n10.9.8.7");
    h.key(KeyCode::Tab);
    h.key(KeyCode::Tab);
    h.typed("10.9.8.7");
    insta::assert_snapshot!("lists_editing_invalid_80x24", h.screen(80, 24).backend());
    h.ctrl('s');
    insta::assert_snapshot!("lists_save_refused_80x24", h.screen(80, 24).backend());
    h.key(KeyCode::Esc);
    insta::assert_snapshot!("lists_discard_question_80x24", h.screen(80, 24).backend());
    h.typed("y");

    h.typed("6a");
    h.typed("carol\nsecret");
    insta::assert_snapshot!("users_add_form_80x24", h.screen(80, 24).backend());
    h.key(KeyCode::Esc);

    h.typed("1");
    h.key(KeyCode::Down);
    h.key(KeyCode::Enter);
    insta::assert_snapshot!("live_dialogue_80x24", h.screen(80, 24).backend());
    h.key(KeyCode::Esc);

    h.typed("7d");
    insta::assert_snapshot!("queue_delete_question_80x24", h.screen(80, 24).backend());
    h.key(KeyCode::Esc);

    h.typed("?");
    insta::assert_snapshot!("help_80x24", h.screen(80, 24).backend());
}

#[test]
fn ten_thousand_connections_render_only_the_visible_rows() {
    let mut h = Harness::new(|_| {});
    let local = addr("127.0.0.1:2525");
    for id in 0..10_000u64 {
        let peer = SocketAddr::from(([10, (id >> 16) as u8, (id >> 8) as u8, id as u8], 40_000));
        h.act(stamped(
            id,
            Event::SessionOpened {
                session: id,
                peer,
                local,
                kind: BindKind::Smtp,
                tls: false,
                via: None,
            },
        ));
    }
    assert_eq!(h.app.traffic.open, 10_000);
    h.key(KeyCode::End);
    let started = std::time::Instant::now();
    let terminal = h.screen(200, 60);
    let took = started.elapsed();
    let text = format!("{}", terminal.backend());
    assert!(
        text.contains("10.0.39.15:40000"),
        "the last connection is shown at the end:\n{text}"
    );
    // Not a timed test (see the README for the measured figure); this only
    // catches a render that walks every row.
    assert!(took < Duration::from_secs(2), "one frame took {took:?}");
}

// ----- behaviour -----

#[test]
fn an_allow_entry_typed_and_saved_is_stored_and_in_the_policy() {
    let mut h = Harness::new(|_| {});
    h.typed("4e");
    assert!(h.app.editing_lists());
    h.typed("\n203.0.113.7");
    assert!(h.app.lists.is_dirty());
    h.ctrl('s');
    assert!(
        h.status().starts_with("saved the allow list"),
        "{}",
        h.status()
    );
    assert!(!h.app.editing_lists());
    let mut store = h.store();
    let allow = store.list_entries(ListKind::Allow).expect("allow");
    assert_eq!(allow.last().map(String::as_str), Some("203.0.113.7"));
    let policy = store.load_policy().expect("policy");
    match policy.lists().check("203.0.113.7".parse().expect("ip")) {
        ListVerdict::Allowed { entry, .. } => assert_eq!(&*entry.text, "203.0.113.7"),
        other => panic!("203.0.113.7 is not allowed: {other:?}"),
    }
    // The deny list was not touched, and the editor shows what is stored.
    assert_eq!(
        store.list_entries(ListKind::Deny).expect("deny"),
        ["*.*.*.*", "::/0"]
    );
    assert_eq!(
        h.app
            .lists
            .lines(ListKind::Allow)
            .last()
            .map(String::as_str),
        Some("203.0.113.7")
    );
}

/// Another admin changes the lists (here: the CLI's store) while an edit
/// is open: the save keeps their changes and adds only this edit's, on
/// either list, whether or not the console reloaded meanwhile, and says
/// what it kept.
#[test]
fn a_save_keeps_what_another_admin_changed_while_the_lists_were_edited() {
    for reload_meanwhile in [false, true] {
        let mut h = Harness::new(|_| {});
        h.typed("4e\n203.0.113.50");
        assert!(h.app.lists.is_dirty());
        {
            let mut other = h.store();
            let parse = |t: &str| relaygate::policy::list_text::parse_list_text(t).entries;
            other
                .add_entries(ListKind::Allow, &parse("203.0.113.60"))
                .expect("add allow");
            other
                .add_entries(ListKind::Deny, &parse("203.0.113.66"))
                .expect("add deny");
        }
        if reload_meanwhile {
            let config = h.io.load_config().expect("config");
            h.act(Action::ConfigLoaded(Box::new(config)));
            assert!(h.app.lists.is_dirty(), "the edit survives the reload");
        }
        h.ctrl('s');
        let said = h.status();
        assert!(said.starts_with("saved the allow list"), "{said}");
        assert!(
            said.contains("kept what was changed in the allow list elsewhere while you edited (added 203.0.113.60)"),
            "{said}"
        );
        let store = h.store();
        let allow = store.list_entries(ListKind::Allow).expect("allow");
        assert!(
            allow.iter().any(|e| e == "203.0.113.50") && allow.iter().any(|e| e == "203.0.113.60"),
            "{allow:?}"
        );
        // The deny list was not edited here: the other admin's entry stays.
        assert_eq!(
            store.list_entries(ListKind::Deny).expect("deny"),
            ["*.*.*.*", "::/0", "203.0.113.66"]
        );
    }
}

/// The same for a user's sender addresses: the form's save adds and
/// removes only what it changed.
#[test]
fn saving_sender_addresses_keeps_an_address_added_meanwhile() {
    let mut h = Harness::new(|store| {
        store.add_user("alice", "$argon2id$fake").expect("user");
        store
            .set_sender_addresses(
                "alice",
                &["alice@example.com".into(), "@example.org".into()],
            )
            .expect("addresses");
    });
    h.typed("6s");
    assert!(matches!(h.app.mode, Mode::Form(_)), "no form open");
    h.store()
        .set_sender_addresses(
            "alice",
            &[
                "alice@example.com".into(),
                "@example.org".into(),
                "boss@example.com".into(),
            ],
        )
        .expect("addresses elsewhere");
    h.typed(" al@example.com\n");
    let said = h.status();
    assert!(said.contains("added boss@example.com"), "{said}");
    let mut now = h.store().sender_addresses("alice").expect("addresses");
    now.sort();
    assert_eq!(
        now,
        [
            "@example.org",
            "al@example.com",
            "alice@example.com",
            "boss@example.com"
        ]
    );
}

#[test]
fn an_invalid_entry_is_refused_with_its_reason_and_nothing_is_saved() {
    let mut h = Harness::new(|_| {});
    let store = h.store();
    let before = (
        store.list_entries(ListKind::Allow).expect("allow"),
        store.list_entries(ListKind::Deny).expect("deny"),
    );
    h.typed("4e\n10.1.1.1\n300.1.1.1");
    h.key(KeyCode::Tab);
    h.typed("\n192.0.2.1");
    let check = h.app.lists.check(ListKind::Allow);
    let reason = check
        .invalid
        .get(&7)
        .expect("line 7 is marked invalid while typing");
    assert!(reason.contains("300.1.1.1"), "{reason}");
    h.ctrl('s');
    let status = h.status();
    assert!(status.starts_with("not saved"), "{status}");
    assert!(
        status.contains("allow line 7") && status.contains("300.1.1.1"),
        "{status}"
    );
    assert!(h.app.editing_lists(), "the edit stays open to be fixed");
    let after = (
        store.list_entries(ListKind::Allow).expect("allow"),
        store.list_entries(ListKind::Deny).expect("deny"),
    );
    assert_eq!(before, after, "neither list was written");
    // Fixing the line makes the save go through, both lists at once.
    h.key(KeyCode::BackTab);
    for _ in 0..9 {
        h.key(KeyCode::Backspace);
    }
    h.ctrl('s');
    assert!(
        h.status().contains("allow list") && h.status().contains("deny list"),
        "{}",
        h.status()
    );
    let allow = store.list_entries(ListKind::Allow).expect("allow");
    assert!(allow.contains(&"10.1.1.1".to_string()) && !allow.iter().any(|e| e.contains("300")));
    assert!(
        store
            .list_entries(ListKind::Deny)
            .expect("deny")
            .contains(&"192.0.2.1".to_string())
    );
}

#[test]
fn cancel_leaves_everything_as_it_was() {
    let mut h = Harness::new(|_| {});
    let store = h.store();
    let before = store.list_entries(ListKind::Allow).expect("allow");
    h.typed("4e\n198.51.100.1");
    h.key(KeyCode::Esc);
    assert!(
        matches!(h.app.mode, Mode::Confirm(_)),
        "dropping edits asks first"
    );
    h.typed("n");
    assert!(h.app.lists.is_dirty(), "no keeps the edit");
    h.key(KeyCode::Esc);
    h.typed("y");
    assert!(!h.app.editing_lists());
    assert!(!h.app.lists.is_dirty());
    assert_eq!(h.app.lists.lines(ListKind::Allow), before.as_slice());
    assert_eq!(store.list_entries(ListKind::Allow).expect("allow"), before);

    // A form cancelled with Esc saves nothing either.
    h.typed("5a");
    h.typed("cancelled.example");
    h.key(KeyCode::Esc);
    assert!(matches!(h.app.mode, Mode::Normal));
    assert!(store.domains().expect("domains").is_empty());
    // And q outside an edit quits; inside an edit it is just a letter.
    h.typed("4e");
    h.typed("q");
    assert!(!h.app.quit);
    assert!(
        h.app
            .lists
            .lines(ListKind::Allow)
            .iter()
            .any(|l| l.ends_with('q'))
    );
}

#[test]
fn quitting_with_unsaved_edits_asks() {
    let mut h = Harness::new(|_| {});
    h.typed("4e\n10.2.3.4");
    // Leave the edit without saving: not possible without Esc, which asks.
    h.key(KeyCode::Esc);
    h.typed("n");
    assert!(h.app.editing_lists());
    h.app.lists.end();
    h.typed("q");
    assert!(!h.app.quit, "unsaved edits: q asks");
    assert!(matches!(h.app.mode, Mode::Confirm(_)));
    h.typed("y");
    assert!(h.app.quit);
}

#[test]
fn a_local_domain_added_through_the_keys_is_stored() {
    let mut h = Harness::new(|_| {});
    h.typed("5a");
    h.typed("Example.ORG\n");
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    assert_eq!(h.status(), "saved: example.org is a local domain");
    assert_eq!(h.store().domains().expect("domains"), ["example.org"]);
    // A bad name is refused in the form, with the store's reason.
    h.typed("a");
    h.typed("bad domain\n");
    match &h.app.mode {
        Mode::Form(f) => assert!(
            f.error.as_deref().unwrap_or("").contains("invalid domain"),
            "{:?}",
            f.error
        ),
        other => panic!("the form should stay open: {other:?}"),
    }
    h.key(KeyCode::Esc);
    assert_eq!(h.store().domains().expect("domains"), ["example.org"]);
    // And removed again, after a confirmation.
    let rows = h.app.policy_rows().len();
    for _ in 0..rows {
        h.key(KeyCode::Down);
    }
    h.typed("x");
    h.typed("y");
    assert!(h.store().domains().expect("domains").is_empty());
}

#[test]
fn a_user_added_through_the_keys_can_log_in() {
    let mut h = Harness::new(|_| {});
    h.typed("6a");
    h.typed("carol\nfirst\nsecond\n");
    match &h.app.mode {
        Mode::Form(f) => assert_eq!(
            f.error.as_deref(),
            Some("not saved: the two passwords differ")
        ),
        other => panic!("mismatched passwords must be refused: {other:?}"),
    }
    assert!(h.store().users().expect("users").is_empty());
    for _ in 0..6 {
        h.key(KeyCode::Backspace);
    }
    h.typed("first\n");
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    let config = h.store().load_config().expect("config");
    let carol = config
        .users
        .iter()
        .find(|u| u.name == "carol")
        .expect("carol stored");
    assert!(relaygate::credentials::verify_password(
        Some(&carol.password_hash),
        "first"
    ));
    assert!(!carol.password_hash.contains("first"));
    // Sender addresses through the keys.
    h.typed("s");
    h.typed("carol@example.com @example.net\n");
    assert_eq!(
        h.store().sender_addresses("carol").expect("addresses"),
        ["@example.net", "carol@example.com"]
    );
}

#[test]
fn a_change_by_another_process_shows_up_on_the_next_tick() {
    let mut h = Harness::new(|_| {});
    assert!(h.app.config.domains.is_empty());
    let mut other = h.store();
    other.add_domain("elsewhere.example").expect("domain");
    h.act(Action::Tick(t0()));
    assert_eq!(h.app.config.domains, ["elsewhere.example"]);
}

#[test]
fn bindings_are_added_edited_and_removed_through_the_keys() {
    let mut h = Harness::new(|_| {});
    h.typed("3a");
    h.typed("not an address\n");
    assert!(matches!(h.app.mode, Mode::Form(_)));
    h.key(KeyCode::Esc);
    h.typed("a");
    h.typed("127.0.0.1:2526\n");
    // Now on the kind field, which says smtp.
    for _ in 0..4 {
        h.key(KeyCode::Backspace);
    }
    h.typed("submission\n");
    let bindings = h.store().bindings().expect("bindings");
    assert!(
        bindings.contains(&Binding {
            addr: addr("127.0.0.1:2526"),
            kind: BindKind::Submission
        }),
        "{bindings:?}"
    );
    h.typed("x");
    h.typed("y");
    assert_eq!(h.store().bindings().expect("bindings").len(), 1);
}

#[test]
fn the_test_box_decides_with_saved_and_edited_lists() {
    let mut h = Harness::new(|store| {
        store.add_domain("example.com").expect("domain");
    });
    h.typed("4t");
    h.typed("203.0.113.50");
    h.key(KeyCode::Down);
    h.typed("a@example.com");
    let saved = h.app.lists.test.saved.clone().expect("a decision");
    assert_eq!(
        saved.verdict,
        Some(relaygate::policy::decision::Verdict::Deny)
    );
    assert!(
        saved.text.starts_with("554 denied:") && saved.text.contains("deny entry *.*.*.*"),
        "{}",
        saved.text
    );
    assert!(h.app.lists.test.edited.is_none());
    h.key(KeyCode::Tab); // to the allow list
    h.typed("\n203.0.113.0/24");
    let edited = h.app.lists.test.edited.clone().expect("a decision");
    assert_eq!(
        edited.verdict,
        Some(relaygate::policy::decision::Verdict::Allow)
    );
    assert!(
        edited.text.starts_with("250 allowed:") && edited.text.contains("203.0.113.0/24"),
        "{}",
        edited.text
    );
}

#[test]
fn switches_and_the_auth_mode_change_through_the_keys() {
    let mut h = Harness::new(|_| {});
    h.typed("5");
    // Rows: auth mode, then the switches in the order of `policy show`.
    for _ in 0..6 {
        h.key(KeyCode::Down);
    }
    h.key(KeyCode::Enter);
    assert_eq!(h.status(), "saved: relay.auth on");
    assert!(h.store().switches().expect("switches").relay.auth);
    h.typed(" ");
    assert!(!h.store().switches().expect("switches").relay.auth);
    // The auth mode is picked from its three: specified needs the one
    // login, typed twice.
    h.key(KeyCode::Home);
    h.key(KeyCode::Enter);
    assert!(matches!(h.app.mode, Mode::Confirm(_)));
    h.typed("s");
    assert!(matches!(h.app.mode, Mode::Form(_)));
    h.typed("gateway\npw\npw\n");
    let (mode, user) = h.store().auth_mode().expect("auth mode");
    assert_eq!(
        (mode.as_str(), user.as_deref()),
        ("specified", Some("gateway"))
    );
    // Straight to none, no form on the way; Esc keeps the mode.
    h.key(KeyCode::Enter);
    h.typed("n");
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    assert_eq!(h.store().auth_mode().expect("auth mode").0.as_str(), "none");
    h.key(KeyCode::Enter);
    h.key(KeyCode::Esc);
    assert_eq!(h.store().auth_mode().expect("auth mode").0.as_str(), "none");
    h.key(KeyCode::Enter);
    h.typed("a");
    assert_eq!(
        h.store().auth_mode().expect("auth mode").0.as_str(),
        "any-user"
    );
    // Back to specified: the stored login is kept, no form.
    h.key(KeyCode::Enter);
    h.typed("s");
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    let (mode, user) = h.store().auth_mode().expect("auth mode");
    assert_eq!(
        (mode.as_str(), user.as_deref()),
        ("specified", Some("gateway"))
    );
}

/// Queues one message from `sender` to `to`; its id.
fn queue_message(spool: &relaygate::spool::Spool, sender: &str, to: &str) -> String {
    use relaygate::spool::{NewMessage, SpoolOp, SpoolRecipient};
    let id = spool.next_id();
    spool
        .apply_blocking(SpoolOp::Insert(NewMessage {
            dsn: Default::default(),
            spilled: None,
            smtputf8: false,
            id: id.clone(),
            sender: sender.into(),
            recipients: vec![SpoolRecipient {
                dsn: Default::default(),
                address: to.into(),
                class: "outbound".into(),
                reason: "test".into(),
            }],
            login: None,
            peer: "127.0.0.1".into(),
            client_listed: Some(false),
            helo: "client.test".into(),
            body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        }))
        .expect("insert");
    id
}

#[test]
fn queued_messages_are_held_released_and_deleted_through_the_keys() {
    use relaygate::spool::{Spool, spool_path_for};
    let mut h = Harness::new(|_| {});
    let spool = Spool::open(&spool_path_for(&h.db)).expect("spool");
    let id = queue_message(&spool, "a@example.com", "b@far.test");
    h.typed("7");
    assert_eq!(h.app.queue.entries().len(), 1);
    h.typed("h");
    assert_eq!(h.status(), format!("{id} held"));
    assert!(h.app.queue.entries()[0].held);
    h.typed("u");
    assert!(!h.app.queue.entries()[0].held);
    h.typed("d");
    h.typed("n");
    assert_eq!(h.app.queue.entries().len(), 1, "n keeps the message");
    h.typed("ds");
    assert_eq!(h.status(), format!("{id} deleted silently"));
    assert!(h.app.queue.entries().is_empty());
}

/// The Queue panel's filter, marks and bulk actions: afterwards the spool
/// holds exactly what the action said, and nothing else changed.
#[test]
fn marked_messages_are_held_and_deleted_in_one_action_after_a_question() {
    use relaygate::spool::{Spool, SpoolReader, spool_path_for};
    let mut h = Harness::new(|_| {});
    let path = spool_path_for(&h.db);
    let spool = Spool::open(&path).expect("spool");
    let ids: Vec<String> = [
        ("a@example.com", "x@stuck.test"),
        ("b@example.com", "y@fine.test"),
        ("c@example.com", "z@STUCK.test"),
        ("d@example.com", "w@fine.test"),
    ]
    .into_iter()
    .map(|(sender, to)| queue_message(&spool, sender, to))
    .collect();
    let held = || -> Vec<String> {
        SpoolReader::open(&path)
            .expect("reader")
            .listing()
            .expect("listing")
            .into_iter()
            .filter(|e| e.held)
            .map(|e| e.id)
            .collect()
    };
    h.typed("7");
    assert_eq!(h.app.queue.entries().len(), 4);
    // The shape: 4 queued recipients, 2 to each domain.
    let screen = h.screen(120, 40).backend().to_string();
    assert!(screen.contains("stuck.test"), "{screen}");
    // Filter by domain, mark everything shown.
    h.typed("/stuck.test\n");
    assert_eq!(h.app.queue.shown_len(), 2);
    assert!(
        h.screen(120, 40)
            .backend()
            .to_string()
            .contains("2 of 4 messages match")
    );
    h.typed("*");
    assert_eq!(h.status(), "2 messages marked");
    // Hold asks first, with the count; n changes nothing.
    h.typed("h");
    let Mode::Confirm(c) = &h.app.mode else {
        panic!("no question: {:?}", h.app.mode)
    };
    assert!(c.question.contains("2 messages marked"), "{}", c.question);
    h.typed("n");
    assert!(held().is_empty());
    h.typed("hy");
    assert_eq!(h.status(), "2 messages held");
    assert_eq!(held(), vec![ids[0].clone(), ids[2].clone()]);
    assert!(
        h.app.queue.marked.is_empty(),
        "the action uses the marks up"
    );
    // Space marks one; clearing the filter keeps it; delete with a bounce.
    h.typed("/");
    for _ in "stuck.test".chars() {
        h.key(KeyCode::Backspace);
    }
    h.typed("\n");
    assert_eq!(h.app.queue.shown_len(), 4);
    h.typed(" ");
    h.key(KeyCode::Down);
    h.typed(" ");
    h.typed("d");
    h.typed("b");
    assert_eq!(h.status(), "2 messages deleted, 2 bounces queued");
    let left: Vec<String> = SpoolReader::open(&path)
        .expect("reader")
        .listing()
        .expect("listing")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(
        !left.contains(&ids[0]) && !left.contains(&ids[1]),
        "{left:?}"
    );
    assert!(left.contains(&ids[2]) && left.contains(&ids[3]), "{left:?}");
    // The two bounces are queued to the senders.
    assert_eq!(left.len(), 4, "{left:?}");
    assert_eq!(held(), vec![ids[2].clone()]);
}

/// Prints the keymap as Markdown for the README's "Console keys" section:
/// `cargo test --test console_app print_keymap -- --ignored --nocapture`.
#[test]
#[ignore = "prints the README's key table; run by hand"]
fn print_keymap() {
    print!("{}", relaygate::console::keymap::markdown());
}

/// The README's key table is the keymap's own: it cannot drift.
#[test]
fn readme_key_table_matches_the_keymap() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let table = relaygate::console::keymap::markdown();
    assert!(
        readme.contains(&table),
        "README.md's key table differs from the keymap; regenerate it with\n  cargo test --test console_app print_keymap -- --ignored --nocapture"
    );
}

#[test]
fn statuses_go_after_a_while_errors_later_and_a_binding_that_cannot_open_is_said() {
    let mut h = Harness::new(|_| {});
    let shows = |h: &Harness, text: &str| h.screen(120, 40).backend().to_string().contains(text);
    h.act(Action::Tick(t0()));
    h.typed("5a");
    h.typed("example.net\n");
    assert_eq!(h.status(), "saved: example.net is a local domain");
    assert!(shows(&h, "saved: example.net is a local domain"));
    h.act(Action::Tick(t0() + Duration::from_secs(4)));
    assert!(shows(&h, "saved: example.net"), "still there after 4 s");
    h.act(Action::Tick(t0() + Duration::from_secs(6)));
    assert!(!shows(&h, "saved: example.net"), "gone after 6 s");

    // The engine reports its listeners; then one that fails to open.
    let listening = |port: u16| ListenerStatus {
        binding: Binding {
            addr: addr(&format!("127.0.0.1:{port}")),
            kind: BindKind::Smtp,
        },
        bound: Ok(addr(&format!("127.0.0.1:{port}"))),
    };
    h.act(Action::Listeners(vec![listening(2525)]));
    assert!(!h.status().contains("cannot listen"));
    let busy = ListenerStatus {
        binding: Binding {
            addr: addr("127.0.0.1:2626"),
            kind: BindKind::Smtp,
        },
        bound: Err("Address already in use (os error 98)".into()),
    };
    h.act(Action::Listeners(vec![listening(2525), busy.clone()]));
    assert_eq!(
        h.status(),
        "cannot listen on 127.0.0.1:2626: Address already in use (os error 98) (retried; r on Bindings retries now)"
    );
    // Said once, not every second while it stays down.
    h.act(Action::Tick(t0() + Duration::from_secs(20)));
    h.act(Action::Listeners(vec![listening(2525), busy]));
    assert!(
        !shows(&h, "cannot listen"),
        "an error goes after 12 s and is not said again"
    );
}

/// `t` on a Log line opens the whole story of its message from the event
/// log: the session's connection and decision, the acceptance, the
/// delivery; `t` on a line of no story says so.
#[test]
fn t_on_a_log_line_opens_its_message_s_story_from_the_event_log() {
    let mut h = Harness::new(|_| {});
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let events = vec![
        Event::SessionOpened {
            session: 3,
            peer,
            local: "127.0.0.1:25".parse().unwrap(),
            kind: BindKind::Smtp,
            tls: false,
            via: None,
        },
        Event::MessageAccepted {
            session: 3,
            id: "1A0000000000000001".into(),
            size: 100,
            recipients: 1,
        },
        Event::Delivery {
            message_id: "1A0000000000000001".into(),
            recipient: "bob@far.test".into(),
            host: "mx.far.test".into(),
            outcome: relaygate::events::DeliveryOutcome::Delivered,
            reply: "250 2.0.0 taken".into(),
        },
        Event::SessionClosed {
            session: 3,
            why: "closed".into(),
        },
        Event::PolicyReloaded { allow: 1, deny: 1 },
    ];
    let stamped: Vec<Stamped> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| Stamped {
            at: t0() + Duration::from_millis(i as u64),
            event: Arc::new(e),
        })
        .collect();
    // The engine wrote them to its log; the console got them live.
    let mut log =
        relaygate::decision_log::DecisionLog::open(&relaygate::decision_log::log_path_for(&h.db))
            .unwrap();
    log.append(&stamped.iter().collect::<Vec<_>>()).unwrap();
    for s in &stamped {
        h.act(Action::Engine(s.clone()));
    }
    h.typed("2");
    // The newest line (the reload) belongs to no story.
    h.typed("t");
    assert!(matches!(h.app.mode, Mode::Normal));
    assert!(
        h.status().contains("no session or message"),
        "{}",
        h.status()
    );
    // Up to the delivery line: its message's story.
    h.typed("kk");
    h.typed("t");
    let Mode::Viewer {
        source: relaygate::console::app::ViewerSource::Text { title, lines },
        ..
    } = &h.app.mode
    else {
        panic!("no trace opened: {:?} / {}", h.app.mode, h.status());
    };
    assert_eq!(title, "Trace: message 1A0000000000000001");
    let text = lines.join("\n");
    for want in [
        "== session 3 · message 1A0000000000000001",
        "opened from 192.0.2.7:40000",
        "accepted",
        "to=<bob@far.test>",
        "closed",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("reloaded"), "{text}");
}

/// A watcher's console cannot read the database: its Bindings panel
/// shows what the engine listens on instead of nothing.
#[test]
fn a_watcher_sees_the_engine_s_listeners_as_bindings() {
    let mut h = Harness::new(|_| {});
    h.app.config.bindings.clear();
    h.act(Action::Listeners(vec![ListenerStatus {
        binding: Binding {
            addr: addr("127.0.0.1:2626"),
            kind: BindKind::Submission,
        },
        bound: Ok(addr("127.0.0.1:2626")),
    }]));
    h.typed("3");
    let screen = h.screen(120, 40).backend().to_string();
    assert!(screen.contains("127.0.0.1:2626"), "{screen}");
    assert!(screen.contains("submission"), "{screen}");
}

/// A filtered Log says how many of the lines held it shows.
#[test]
fn a_filtered_log_counts_the_lines_it_shows() {
    let mut h = Harness::new(|_| {});
    let delivery = |n: u8| Event::Delivery {
        message_id: format!("1A000000000000000{n}"),
        recipient: "bob@far.test".into(),
        host: "mx.far.test".into(),
        outcome: relaygate::events::DeliveryOutcome::Delivered,
        reply: "250 2.0.0 taken".into(),
    };
    for (i, e) in [
        delivery(1),
        Event::PolicyReloaded { allow: 1, deny: 1 },
        delivery(2),
    ]
    .into_iter()
    .enumerate()
    {
        h.act(Action::Engine(Stamped {
            at: t0() + Duration::from_millis(i as u64),
            event: Arc::new(e),
        }));
    }
    h.typed("2");
    let title = |h: &Harness| {
        let screen = h.screen(120, 40).backend().to_string();
        screen
            .lines()
            .find(|l| l.contains("Log:"))
            .unwrap_or_default()
            .to_string()
    };
    assert!(title(&h).contains("Log: all, 3 lines"), "{}", title(&h));
    // all → allowed → denied → errors → auth → delivery.
    h.typed("fffff");
    assert!(
        title(&h).contains("Log: delivery, 2 of 3 lines"),
        "{}",
        title(&h)
    );
    h.typed("f");
    assert!(title(&h).contains("Log: all, 3 lines"), "{}", title(&h));
}

/// The screen shows an event a moment before the engine's log writer
/// commits it (seconds on a loaded machine): `t` on that line waits for
/// the log to catch up and tells the story with it, not without.
#[test]
fn a_trace_waits_for_the_event_log_to_catch_up_with_the_screen() {
    let mut h = Harness::new(|_| {});
    let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let id = "1A0000000000000002";
    let stamp = |ms: u64, e: Event| Stamped {
        at: t0() + Duration::from_millis(ms),
        event: Arc::new(e),
    };
    let written = [
        stamp(
            0,
            Event::SessionOpened {
                session: 4,
                peer,
                local: "127.0.0.1:25".parse().unwrap(),
                kind: BindKind::Smtp,
                tls: false,
                via: None,
            },
        ),
        stamp(
            1,
            Event::MessageAccepted {
                session: 4,
                id: id.into(),
                size: 100,
                recipients: 1,
            },
        ),
    ];
    let late = stamp(
        2,
        Event::Delivery {
            message_id: id.into(),
            recipient: "bob@far.test".into(),
            host: "mx.far.test".into(),
            outcome: relaygate::events::DeliveryOutcome::Deferred,
            reply: "451 4.3.0 try later".into(),
        },
    );
    let path = relaygate::decision_log::log_path_for(&h.db);
    let mut log = relaygate::decision_log::DecisionLog::open(&path).unwrap();
    log.append(&written.iter().collect::<Vec<_>>()).unwrap();
    for s in written.iter().chain([&late]) {
        h.act(Action::Engine(s.clone()));
    }
    // The delivery line is on screen; the log gets it 400 ms later.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        log.append(&[&late]).unwrap();
    });
    h.typed("2");
    h.typed("t");
    writer.join().unwrap();
    let Mode::Viewer {
        source: relaygate::console::app::ViewerSource::Text { lines, .. },
        ..
    } = &h.app.mode
    else {
        panic!("no trace opened: {:?} / {}", h.app.mode, h.status());
    };
    let text = lines.join("\n");
    assert!(text.contains("accepted"), "{text}");
    assert!(text.contains("451 4.3.0 try later"), "{text}");
    assert!(!text.contains("not caught up"), "{text}");
}

/// In an editor `q` is text and ^C cancels the edit (as the help says);
/// outside one, ^C quits.
#[test]
fn q_and_ctrl_c_in_editors_do_what_the_help_says() {
    let mut h = Harness::new(|_| {});
    // A form: q is typed, ^C cancels and saves nothing.
    h.typed("5a");
    assert!(matches!(h.app.mode, Mode::Form(_)));
    h.typed("q");
    assert!(!h.app.quit);
    h.ctrl('c');
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    assert!(!h.app.quit);
    assert!(h.store().domains().expect("domains").is_empty());
    // The list editor: q is text; ^C asks before dropping the edit.
    h.typed("4e");
    assert!(h.app.editing_lists());
    h.typed("q");
    assert!(!h.app.quit);
    assert!(h.app.lists.is_dirty());
    h.ctrl('c');
    assert!(matches!(h.app.mode, Mode::Confirm(_)), "{:?}", h.app.mode);
    h.typed("y");
    assert!(!h.app.editing_lists());
    assert!(!h.app.quit);
    // Outside an editor, ^C quits (in one-process mode, asking first).
    h.ctrl('c');
    assert!(matches!(h.app.mode, Mode::Confirm(_)), "{:?}", h.app.mode);
    h.typed("y");
    assert!(h.app.quit);
}

/// The last message's every line can be brought into view, not only its
/// first: a long message at the bottom of the queue, selected, shows its
/// last recipient at 80x24.
#[test]
fn the_selected_message_shows_whole_at_the_bottom_of_the_queue() {
    let mut h = Harness::new(|_| {});
    let message = |n: usize, rcpts: usize| QueueEntry {
        id: format!("1A{n:017X}"),
        received_at: 1_699_999_000,
        sender: "carol@example.com".into(),
        size: 1000,
        held: false,
        recipients: (0..rcpts)
            .map(|r| RecipientState {
                address: format!("r{r}-of-{n}@far.test"),
                state: "queued".into(),
                attempts: 1,
                next_attempt: 1_700_000_600,
                last_error: Some("451 4.3.0 later".into()),
                notify: None,
            })
            .collect(),
    };
    let mut queue: Vec<QueueEntry> = (0..5).map(|n| message(n, 1)).collect();
    queue.push(message(5, 6));
    h.typed("7");
    h.act(Action::QueueLoaded(Ok(queue)));
    h.key(KeyCode::End);
    let screen = h.screen(80, 24).backend().to_string();
    assert!(screen.contains(&format!("1A{:017X}", 5)), "{screen}");
    assert!(screen.contains("r5-of-5@far.test"), "{screen}");
}

/// Live shows every connection, the open ones or those with a denied
/// recipient (`f`), sorted by any column (`s`, `S` turns it round); Enter
/// opens the dialogue of the row shown.
/// `/` on Live, Bindings and Users keeps the rows with the text; the
/// keys then act on the row shown, and an empty filter shows all again.
#[test]
fn slash_filters_live_bindings_and_users() {
    let mut h = populated();
    let clear = |h: &mut Harness, panel: &str| {
        h.typed(panel);
        h.typed("/");
        for _ in 0..40 {
            h.key(KeyCode::Backspace);
        }
        h.typed("\n");
    };
    // Live: by address.
    h.typed("1");
    let all = h.app.live_rows().len();
    h.typed("/203.0.113\n");
    let shown: Vec<String> = h
        .app
        .live_rows()
        .iter()
        .map(|c| c.peer.ip().to_string())
        .collect();
    assert!(!shown.is_empty() && shown.len() < all, "{shown:?}");
    assert!(
        shown.iter().all(|p| p.starts_with("203.0.113")),
        "{shown:?}"
    );
    assert!(
        h.screen(120, 40)
            .backend()
            .to_string()
            .contains("matching \"203.0.113\""),
        "the title says the filter"
    );
    clear(&mut h, "1");
    assert_eq!(h.app.live_rows().len(), all);
    // Users: by a sender address; Del then removes the user shown.
    h.typed("6");
    h.typed("/example.org\n");
    let names: Vec<&str> = h.app.user_rows().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice"]);
    h.typed("/nobody\n");
    assert!(h.app.user_rows().is_empty());
    clear(&mut h, "6");
    assert_eq!(h.app.user_rows().len(), 2);
    h.typed("/BOB\n");
    h.key(KeyCode::Delete);
    h.typed("y");
    let left: Vec<String> = h
        .store()
        .users()
        .expect("users")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(left, ["alice"], "the user shown was removed, not the first");
    // Bindings: by kind.
    h.typed("3");
    let total = h.app.binding_rows().len();
    h.typed("/submission\n");
    let kinds: Vec<String> = h
        .app
        .binding_rows()
        .iter()
        .map(|b| b.kind.to_string())
        .collect();
    assert!(!kinds.is_empty() && kinds.len() < total, "{kinds:?}");
    assert!(kinds.iter().all(|k| k == "submission"), "{kinds:?}");
}

/// The Log panel's `/` searches the lines held here and the whole event
/// log on disk: an event older than anything held is found, counted in
/// the title, picked out, and `n` selects it.
#[test]
fn the_log_search_reaches_the_whole_history() {
    let mut h = Harness::new(|_| {});
    {
        let mut log = relaygate::decision_log::DecisionLog::open(
            &relaygate::decision_log::log_path_for(&h.db),
        )
        .expect("log");
        let events: Vec<relaygate::events::Stamped> = (0..6_000u64)
            .map(|i| relaygate::events::Stamped {
                at: t0() - Duration::from_secs(86_400) + Duration::from_millis(i),
                event: Arc::new(Event::MessageAccepted {
                    session: i,
                    id: if i == 3 {
                        "NEEDLE0000000003".into()
                    } else {
                        format!("18F{i:013X}")
                    },
                    size: 100,
                    recipients: 1,
                }),
            })
            .collect();
        log.append(&events.iter().collect::<Vec<_>>())
            .expect("append");
    }
    // The newest 5,000 lines are held here; line 3 is not among them.
    let held = h.io.history(5_000, t0());
    h.act(Action::History(held));
    assert_eq!(h.app.traffic.log.lines.len(), 5_000);
    h.typed("2");
    h.typed("/needle\n");
    assert_eq!(h.app.log_matching(), 1);
    let screen = h.screen(160, 30).backend().to_string();
    assert!(
        screen.contains("0 of 5000 lines here match, 1 more in the older history"),
        "{screen}"
    );
    assert!(screen.contains("NEEDLE0000000003"), "{screen}");
    h.typed("n");
    assert!(
        h.app
            .selected_log_line()
            .is_some_and(|l| l.text.contains("NEEDLE0000000003"))
    );
    // Picked out: the match has the highlight style (monochrome here:
    // bold and underlined).
    let buffer = h.screen(160, 30);
    let cells = buffer.backend().buffer();
    let highlighted = (0..cells.area.height).any(|y| {
        (0..cells.area.width).any(|x| {
            let c = &cells[(x, y)];
            c.symbol() == "N" && c.modifier.contains(ratatui::style::Modifier::UNDERLINED)
        })
    });
    assert!(highlighted, "the match is highlighted");
    // A search that finds nothing anywhere.
    h.typed("/");
    for _ in 0..10 {
        h.key(KeyCode::Backspace);
    }
    h.typed("no such text\n");
    assert_eq!(h.app.log_matching(), 0);
}

#[test]
fn live_filters_and_sorts_and_opens_the_row_shown() {
    let mut h = populated();
    h.typed("1");
    let peers = |h: &Harness| -> Vec<String> {
        h.app
            .live_rows()
            .iter()
            .map(|c| c.peer.ip().to_string())
            .collect()
    };
    let all = peers(&h);
    assert_eq!(all.len(), h.app.traffic.connections.len());
    assert!(all.len() >= 3, "{all:?}");
    h.typed("f");
    let open: Vec<bool> = h
        .app
        .live_rows()
        .iter()
        .map(|c| c.closed.is_none())
        .collect();
    assert!(open.iter().all(|o| *o), "open only");
    assert_eq!(
        open.len(),
        h.app
            .traffic
            .connections
            .values()
            .filter(|c| c.closed.is_none())
            .count()
    );
    h.typed("f");
    assert!(h.app.live_rows().iter().all(|c| c.rcpt_denied > 0));
    assert!(
        peers(&h).contains(&"203.0.113.9".to_string()),
        "{:?}",
        peers(&h)
    );
    let screen = h.screen(120, 40).backend().to_string();
    assert!(
        screen.contains("with a denied recipient by opened"),
        "{screen}"
    );
    h.typed("f");
    // Sorted by peer, then the other way round.
    h.typed("s");
    let mut sorted: Vec<std::net::SocketAddr> = h.app.live_rows().iter().map(|c| c.peer).collect();
    let mut expected = sorted.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    h.typed("S");
    sorted = h.app.live_rows().iter().map(|c| c.peer).collect();
    expected.reverse();
    assert_eq!(sorted, expected);
    // The clients with the most open connections are named.
    let local: SocketAddr = addr("127.0.0.1:2525");
    for session in [90, 91, 92] {
        h.act(stamped(
            9_000 + session,
            Event::SessionOpened {
                session,
                peer: addr(&format!("198.51.100.4:{}", 40_000 + session)),
                local,
                kind: BindKind::Smtp,
                tls: false,
                via: None,
            },
        ));
    }
    assert_eq!(
        relaygate::console::panels::live::busiest_clients(&h.app.traffic, 3),
        " · most open: 198.51.100.4 ×3"
    );
    // Enter opens the selected row as shown.
    let first = h.app.live_rows()[0].session;
    h.key(KeyCode::Home);
    h.key(KeyCode::Enter);
    assert!(
        matches!(
            &h.app.mode,
            Mode::Viewer {
                source: relaygate::console::app::ViewerSource::Connection(id),
                ..
            } if *id == first
        ),
        "{:?}",
        h.app.mode
    );
}

#[test]
fn the_live_selection_stays_on_the_rows_a_filter_shows() {
    let mut h = populated();
    h.typed("1");
    // Only the connections with a denied recipient: fewer than all.
    h.typed("ff");
    let shown = h.app.live_rows().len();
    assert!(shown >= 1 && shown < h.app.traffic.connections.len());
    let last = h.app.live_rows()[shown - 1].session;
    for _ in 0..h.app.traffic.connections.len() + 3 {
        h.key(KeyCode::Down);
    }
    assert_eq!(h.app.live.selected, shown - 1);
    h.key(KeyCode::Enter);
    assert!(
        matches!(
            &h.app.mode,
            Mode::Viewer {
                source: relaygate::console::app::ViewerSource::Connection(id),
                ..
            } if *id == last
        ),
        "{:?}",
        h.app.mode
    );
}

#[test]
fn a_password_is_hashed_off_the_screen_s_thread_and_a_cancelled_one_saves_nothing() {
    let mut h = Harness::new(|_| {});
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    h.io.read_in_background(tx);
    h.typed("6a");
    h.typed("dave\nsecret\nsecret\n");
    // The form waits, the status line says why, nothing is stored yet.
    assert!(matches!(h.app.mode, Mode::Form(_)), "{:?}", h.app.mode);
    assert!(
        h.status().contains("hashing the password"),
        "{}",
        h.status()
    );
    assert!(h.store().users().expect("users").is_empty());
    // Enter again while it hashes does not ask twice.
    h.key(KeyCode::Enter);
    let hashed = rx.recv_timeout(Duration::from_secs(60)).expect("hashed");
    let action = hashed.action(&h.app).expect("an action");
    h.act(action);
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    assert_eq!(h.status(), "saved: user dave added");
    let config = h.store().load_config().expect("config");
    let dave = config
        .users
        .iter()
        .find(|u| u.name == "dave")
        .expect("dave stored");
    assert!(relaygate::credentials::verify_password(
        Some(&dave.password_hash),
        "secret"
    ));
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "hashed once"
    );
    // Esc while hashing: the hash that comes later saves nothing.
    h.typed("a");
    h.typed("erin\npw\npw\n");
    h.key(KeyCode::Esc);
    let hashed = rx.recv_timeout(Duration::from_secs(60)).expect("hashed");
    let action = hashed.action(&h.app).expect("an action");
    h.act(action);
    assert_eq!(h.status(), "cancelled: nothing was saved");
    let users = h.store().users().expect("users");
    assert!(users.iter().all(|u| u.name != "erin"), "{users:?}");
}

/// The screen's cells, row by row.
fn cells(terminal: &Terminal<TestBackend>) -> Vec<Vec<String>> {
    let buffer = terminal.backend().buffer();
    (0..buffer.area.height)
        .map(|y| {
            (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect()
        })
        .collect()
}

/// Where `needle` starts in a row of cells (one character a cell).
fn find_in(row: &[String], needle: &str) -> Option<usize> {
    let text: Vec<char> = row
        .iter()
        .map(|c| c.chars().next().unwrap_or(' '))
        .collect();
    let needle: Vec<char> = needle.chars().collect();
    text.windows(needle.len())
        .position(|w| w == needle.as_slice())
}

#[test]
fn at_80x24_and_60x24_counters_tabs_and_footer_show_whole_and_apart() {
    let mut h = populated();
    h.app.traffic.counters.sessions = 1_234_567;
    h.app.traffic.counters.messages = 98_765;
    h.app.traffic.counters.auth_failures = 4_321;
    h.app.traffic.counters.refused_sessions = 55_555;
    let counters = "sessions 1234567  msgs 98765  AUTH fail 4321  refused 55555";
    let bars = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    for (w, hgt) in [(80u16, 24u16), (60, 24)] {
        for panel in Panel::ALL {
            h.app.panel = panel;
            let screen = cells(&h.screen(w, hgt));
            // Every tab's name shows whole, and the link's label too.
            for (i, p) in Panel::ALL.iter().enumerate() {
                let label = if w < 70 {
                    format!("{}{}", i + 1, p.tiny_title())
                } else {
                    format!("{} {}", i + 1, p.short_title())
                };
                assert!(
                    find_in(&screen[0], &label).is_some(),
                    "{w}x{hgt}: tab {label} in {:?}",
                    screen[0].concat()
                );
            }
            let top = screen[0].concat();
            assert!(
                top.trim_end().ends_with(" local") || top.trim_end().ends_with(" one process"),
                "{w}x{hgt}: the link's label cut: {top:?}"
            );
            // The footer ends with a whole hint.
            let footer = screen[hgt as usize - 1].concat();
            let hints = relaygate::console::keymap::footer(&h.app.contexts());
            assert!(
                hints
                    .iter()
                    .any(|(k, hint)| footer.trim_end().ends_with(&format!("{k} {hint}"))),
                "{w}x{hgt} {panel:?}: footer cut: {footer:?}"
            );
        }
        h.app.panel = Panel::Live;
        let screen = cells(&h.screen(w, hgt));
        let y = screen
            .iter()
            .position(|r| find_in(r, "sessions").is_some())
            .expect("the counters");
        let start = find_in(&screen[y], counters)
            .unwrap_or_else(|| panic!("{w}x{hgt}: counters cut: {:?}", screen[y].concat()));
        let end = start + counters.chars().count();
        // Two blank columns at least before the chart's label, and no bar
        // left of them on the chart's rows.
        assert!(
            screen[y].iter().skip(end).take(2).all(|c| c == " "),
            "{w}x{hgt}: {:?}",
            screen[y].concat()
        );
        for row in &screen[y..y + 4] {
            for (x, cell) in row.iter().enumerate() {
                if cell.chars().next().is_some_and(|c| bars.contains(&c)) {
                    assert!(x > end + 1, "{w}x{hgt}: a bar at {x}: {:?}", row.concat());
                }
            }
        }
        if w == 80 {
            assert!(
                find_in(&screen[y], "allowed").is_some_and(|x| x > end + 1),
                "the chart stays at 80 columns: {:?}",
                screen[y].concat()
            );
        }
    }
}

/// The text inside the reading popup (its borders and what is around it
/// left out), without whitespace, so that wrapped text reads as one.
fn popup_text(terminal: &Terminal<TestBackend>) -> String {
    let screen = cells(terminal);
    let (h, w) = (screen.len(), screen[0].len());
    screen[3..h - 3]
        .iter()
        .flat_map(|row| row[3..w - 3].iter())
        .flat_map(|c| c.chars())
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[test]
fn a_long_reason_wraps_in_the_dialogue_the_detail_and_the_trace_views() {
    let mut h = populated();
    let rule = format!(
        "sender *@{}example.com recipient * reject {}",
        "a-rather-long-subdomain.".repeat(4),
        "this sender may not relay through this gateway, ask the postmaster. ".repeat(4)
    );
    assert!(rule.len() >= 300, "{}", rule.len());
    let sender = parse_mailbox("spam@elsewhere.test").expect("sender");
    let recipient = parse_mailbox("victim@far.test").expect("recipient");
    let mut decision = h.app.config.policy.decide(
        &Envelope {
            peer: "203.0.113.9".parse().expect("ip"),
            login: None,
            sender: Some(&sender),
        },
        &recipient,
    );
    decision.reason = relaygate::policy::decision::Reason::RuleRejected {
        number: 7,
        rule: rule.clone(),
    };
    h.act(stamped(
        20_000,
        Event::Decision {
            session: 2,
            peer: "203.0.113.9".parse().expect("ip"),
            login: None,
            sender: "spam@elsewhere.test".into(),
            recipient: "victim@far.test".into(),
            decision: Box::new(decision),
        },
    ));
    let whole: String = format!("rule #7: {rule}")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    // The dialogue of session 2 (the second row).
    h.typed("1");
    h.key(KeyCode::Home);
    h.key(KeyCode::Down);
    h.key(KeyCode::Enter);
    assert!(
        matches!(h.app.mode, Mode::Viewer { .. }),
        "{:?}",
        h.app.mode
    );
    for (w, hgt) in [(80, 24), (120, 40)] {
        let text = popup_text(&h.screen(w, hgt));
        assert!(text.contains(&whole), "{w}x{hgt} dialogue: {text}");
    }
    h.key(KeyCode::Esc);
    // The Log's detail of the decision's line (the newest).
    h.typed("2");
    h.key(KeyCode::Up);
    h.key(KeyCode::Down);
    h.key(KeyCode::Enter);
    let text = popup_text(&h.screen(80, 24));
    assert!(text.contains(&whole), "detail: {text}");
    h.key(KeyCode::Esc);
    // A trace's story.
    h.act(Action::Traced(Ok(vec![
        "session 2 from 203.0.113.9".into(),
        format!("  RCPT TO:<victim@far.test> denied: rule #7: {rule}"),
    ])));
    let text = popup_text(&h.screen(80, 24));
    assert!(text.contains(&whole), "trace: {text}");
}

#[test]
fn quotas_bans_and_suspensions_through_the_keys() {
    let mut h = Harness::new(|s| {
        s.add_user(
            "dave",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        )
        .expect("user");
        s.set_suspended("dave", Some("quota #9 reached"))
            .expect("suspend");
    });
    h.typed("8");
    assert_eq!(h.app.panel, Panel::Limits);
    let screen = h.screen(100, 30).backend().to_string();
    assert!(screen.contains("Sending quotas (0)"), "{screen}");
    assert!(
        screen.contains("dave") && screen.contains("quota #9 reached"),
        "{screen}"
    );
    // A quota: per login, 2/hour, counting messages, suspending.
    h.typed("a");
    h.typed("\n2/hour\n\n");
    h.key(KeyCode::Backspace);
    h.key(KeyCode::Backspace);
    h.typed("yes\n");
    assert!(matches!(h.app.mode, Mode::Normal), "{:?}", h.app.mode);
    let quotas = h.store().quotas().expect("quotas");
    assert_eq!(quotas.len(), 1);
    assert!(quotas[0].suspend && quotas[0].rate.count == 2, "{quotas:?}");
    // A bad rate is refused in the form, nothing saved.
    h.typed("a");
    h.typed("\n2/fortnight\n\n\n");
    match &h.app.mode {
        Mode::Form(f) => assert!(
            f.error.as_deref().unwrap_or("").contains("is not a rate"),
            "{f:?}"
        ),
        other => panic!("a bad rate must be refused: {other:?}"),
    }
    h.key(KeyCode::Esc);
    assert_eq!(h.store().quotas().expect("quotas").len(), 1);
    // A ban by hand.
    h.typed("b");
    h.typed("198.51.100.0/24\n");
    h.typed("\nbotnet\n");
    let bans = h.store().bans().expect("bans");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].net.to_string(), "198.51.100.0/24");
    h.act(Action::Tick(t0()));
    let screen = h.screen(100, 30).backend().to_string();
    assert!(
        screen.contains("Bans in force (1)") && screen.contains("botnet"),
        "{screen}"
    );
    // Rows: the quota, the ban, dave's suspension. Lift the suspension.
    h.typed("G");
    h.typed("x");
    assert!(matches!(h.app.mode, Mode::Confirm(_)), "{:?}", h.app.mode);
    h.typed("y");
    let dave = h
        .store()
        .users()
        .expect("users")
        .into_iter()
        .find(|u| u.name == "dave");
    assert_eq!(dave.expect("dave").suspended, None);
    // Lift the ban (now the last row), then remove the quota.
    h.act(Action::Tick(t0()));
    h.typed("G");
    h.typed("xy");
    assert!(h.store().bans().expect("bans").is_empty());
    h.typed("gxy");
    assert!(h.store().quotas().expect("quotas").is_empty());
}

#[test]
fn recipient_verification_is_turned_on_from_the_auth_panel() {
    let mut h = Harness::new(|s| {
        s.add_domain("unrouted.example").expect("domain");
    });
    h.typed("5");
    // Rows: auth mode, the switches, plaintext-auth, verify-recipients.
    for _ in 0..relaygate::policy::settings::SWITCH_KEYS.len() + 2 {
        h.key(KeyCode::Down);
    }
    h.key(KeyCode::Enter);
    assert_eq!(h.status(), "saved: verify-recipients on");
    assert!(
        h.store()
            .server_settings()
            .expect("settings")
            .verify_recipients
    );
    let screen = h.screen(120, 40).backend().to_string();
    assert!(screen.contains("[x] verify-recipients"), "{screen}");
    assert!(
        screen.contains("unrouted.example  (no route: its mail is held, unverified)"),
        "{screen}"
    );
    h.typed(" ");
    assert!(
        !h.store()
            .server_settings()
            .expect("settings")
            .verify_recipients
    );
}

#[test]
fn the_auth_panel_names_the_specified_login_and_says_policy_show_s_notes() {
    let mut h = Harness::new(|s| {
        s.set_switch("relay.auth", true).expect("switch");
        s.set_switch("relay.listed-ip", true).expect("switch");
        s.set_auth_mode(
            relaygate::policy::settings::AuthMode::Specified,
            Some(&relaygate::policy::Login {
                name: "gateway".into(),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
                    .into(),
            }),
        )
        .expect("auth mode");
    });
    h.typed("5");
    let screen = h.screen(120, 40).backend().to_string();
    assert!(screen.contains("specified  login gateway"), "{screen}");
    assert!(
        screen.contains("note: relay.auth and relay.listed-ip are both on"),
        "{screen}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relaygate"))
        .arg("--db")
        .arg(&h.db)
        .args(["policy", "show"])
        .output()
        .expect("policy show");
    let cli = String::from_utf8_lossy(&out.stdout);
    assert!(
        cli.contains("note: relay.auth and relay.listed-ip are both on"),
        "{cli}"
    );
}

/// The engine's status says the spool's disk is short of room: the status
/// line says so, with the figures, on every panel, until the disk has
/// room again.
#[test]
fn a_spool_disk_short_of_room_shows_on_the_status_line() {
    use relaygate::control::protocol::EngineStatus;
    use relaygate::spool_space::SpoolRoom;
    let mut h = populated();
    let status = |free: u64| {
        Action::Status(EngineStatus {
            listeners: Vec::new(),
            dropped: 0,
            in_flight: Vec::new(),
            spool: Some(SpoolRoom {
                free,
                needed: 75 << 19,
            }),
        })
    };
    let shown = |h: &Harness| {
        cells(&h.screen(120, 40))
            .iter()
            .map(|row| row.concat())
            .find(|line| line.contains("SPOOL DISK SHORT OF ROOM"))
    };
    h.act(status(30 << 20));
    let line = shown(&h).expect("a warning on the status line");
    assert!(
        line.contains("30.0 MiB free, 37.5 MiB needed; MAIL refused (452 4.3.1)"),
        "{line}"
    );
    h.key(KeyCode::Tab);
    assert!(shown(&h).is_some(), "the warning stays on every panel");
    h.act(status(2 << 30));
    assert_eq!(shown(&h), None);
}

/// A key press that would make the gateway an open relay asks first, and
/// while it is open every panel's header says so.
#[test]
fn opening_the_relay_from_the_console_asks_first_and_the_header_says_so() {
    let mut h = Harness::new(|s| {
        s.set_switch("relay.listed-ip", true).expect("switch");
        s.set_switch("relay.auth", false).expect("switch");
        s.set_switch("domain-restrict-send", false).expect("switch");
    });
    h.typed("5");
    for _ in 0..5 {
        h.key(KeyCode::Down);
    }
    h.key(KeyCode::Char(' '));
    match &h.app.mode {
        Mode::Confirm(c) => assert!(
            c.question
                .starts_with("Turn relay.listed-ip off? Then relaygate is an OPEN RELAY"),
            "{}",
            c.question
        ),
        other => panic!("no question: {other:?}"),
    }
    // The whole warning shows, to its last words.
    let screen = h.screen(120, 40).backend().to_string();
    assert!(
        screen.contains("Are you sure?") && screen.contains("listed-ip on)"),
        "{screen}"
    );
    assert_eq!(
        h.store()
            .switches()
            .expect("switches")
            .get("relay.listed-ip"),
        Some(true),
        "nothing changes before the answer"
    );
    h.typed("y");
    assert_eq!(
        h.store()
            .switches()
            .expect("switches")
            .get("relay.listed-ip"),
        Some(false)
    );
    let config = h.io.load_config().expect("config");
    h.act(Action::ConfigLoaded(Box::new(config)));
    for panel in ["1", "7"] {
        h.typed(panel);
        let screen = h.screen(160, 30).backend().to_string();
        assert!(
            screen.lines().next().unwrap_or("").contains("OPEN RELAY"),
            "{screen}"
        );
    }
    // Closing it again needs no question, and the header is quiet.
    h.typed("5");
    h.key(KeyCode::Char(' '));
    assert!(matches!(h.app.mode, Mode::Normal));
    let config = h.io.load_config().expect("config");
    h.act(Action::ConfigLoaded(Box::new(config)));
    let screen = h.screen(160, 30).backend().to_string();
    assert!(!screen.contains("OPEN RELAY"), "{screen}");
}

/// With the engine gone, the Bindings panel does not go on saying its
/// listeners listen.
#[test]
fn bindings_are_not_said_to_listen_while_the_engine_is_gone() {
    let mut h = Harness::new(|_| {});
    let default = addr("127.0.0.1:2525");
    h.act(Action::Listeners(vec![ListenerStatus {
        binding: Binding {
            addr: default,
            kind: BindKind::Smtp,
        },
        bound: Ok(default),
    }]));
    h.typed("3");
    let screen = h.screen(120, 30).backend().to_string();
    assert!(screen.contains("listening on 127.0.0.1:2525"), "{screen}");
    h.act(Action::Detached {
        reason: "the engine closed the connection".into(),
        refused: false,
    });
    let screen = h.screen(120, 30).backend().to_string();
    assert!(!screen.contains("listening on"), "{screen}");
    assert!(
        screen.contains("unknown: the engine is not reachable"),
        "{screen}"
    );
}

/// With delivery off, the Queue panel says so above its "next in" times.
#[test]
fn the_queue_panel_says_when_delivery_is_off() {
    let mut h = Harness::new(|s| {
        s.set_server_setting("delivery", "off").expect("setting");
    });
    h.typed("7");
    let screen = h.screen(160, 30).backend().to_string();
    assert!(
        screen.contains("delivery is off: nothing is sent"),
        "{screen}"
    );
    h.store()
        .set_server_setting("delivery", "on")
        .expect("setting");
    let config = h.io.load_config().expect("config");
    h.act(Action::ConfigLoaded(Box::new(config)));
    let screen = h.screen(160, 30).backend().to_string();
    assert!(!screen.contains("delivery is off"), "{screen}");
}
