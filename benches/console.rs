//! The console's own costs, without a terminal: one frame of the Live panel
//! at 200x60 with 10,000 open connections, one frame of the Log panel with
//! 100,000 lines, one frame of the Queue panel with 100,000 queued messages
//! (and the work of taking a new listing in: filter, marks and the qshape
//! summary), and taking one engine event into the state.
//!
//!     cargo bench --bench console
//!
//! Frames are drawn into ratatui's TestBackend (the buffer diff included,
//! the terminal write not) from fixed data at a fixed clock, in color. The
//! end-to-end figures (the real binary in a pseudo-terminal under load) are
//! `bash benches/console-load.sh`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use relaygate::bindings::BindKind;
use relaygate::console::action::{Action, Command, Panel};
use relaygate::console::app::App;
use relaygate::console::render;
use relaygate::console::theme::Theme;
use relaygate::console::traffic::{LogFilter, LogLine, epoch_ms};
use relaygate::events::{Event, Stamped};
use relaygate::policy::address::parse_mailbox;
use relaygate::policy::{Envelope, Policy};
use relaygate::store::Store;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const OPEN_CONNECTIONS: u64 = 10_000;
const LOG_LINES: usize = 100_000;
const WIDTH: u16 = 200;
const HEIGHT: u16 = 60;

/// Every frame is drawn at this instant (2023-11-14 22:13:20 UTC).
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// The default policy (127.0.0.0/8 may relay, everything else is denied),
/// as a fresh store compiles it.
fn default_policy() -> Policy {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = Store::open(&dir.path().join("relaygate.db")).expect("store");
    store.load_policy().expect("policy")
}

/// The peer of session `i`: one in eight outside the allow list.
fn peer(i: u64) -> SocketAddr {
    let ip: IpAddr = if i.is_multiple_of(8) {
        [203, 0, 113, (i % 250) as u8].into()
    } else {
        [127, 0, (i >> 8) as u8, i as u8].into()
    };
    SocketAddr::new(ip, 40_000 + (i % 20_000) as u16)
}

/// The events of session `i` up to its decision: opened, EHLO, MAIL, RCPT
/// and the decision for the recipient.
fn session_events(policy: &Policy, i: u64, at: SystemTime) -> Vec<Stamped> {
    let peer = peer(i);
    let from = format!("user{}@example.com", i % 500);
    let to = format!("rcpt{}@far{}.test", i % 97, i % 13);
    let decision = policy.decide(
        &Envelope {
            peer: peer.ip(),
            login: None,
            sender: Some(&parse_mailbox(&from).expect("sender")),
        },
        &parse_mailbox(&to).expect("recipient"),
    );
    let events = vec![
        Event::SessionOpened {
            session: i,
            peer,
            local: "127.0.0.1:2525".parse().expect("local"),
            kind: BindKind::Smtp,
            tls: i.is_multiple_of(3),
            via: None,
        },
        Event::Command {
            session: i,
            line: format!("EHLO host{i}.clients.test"),
            reply: "250 SIZE 26214400".into(),
        },
        Event::Command {
            session: i,
            line: format!("MAIL FROM:<{from}> SIZE=2048"),
            reply: "250 2.1.0 Ok".into(),
        },
        Event::Command {
            session: i,
            line: format!("RCPT TO:<{to}>"),
            reply: decision.reply.to_string(),
        },
        Event::Decision {
            session: i,
            peer: peer.ip(),
            login: None,
            sender: from,
            recipient: to,
            decision: Box::new(decision),
        },
    ];
    events
        .into_iter()
        .map(|event| Stamped {
            at,
            event: Arc::new(event),
        })
        .collect()
}

/// A console that has seen 10,000 sessions open (none closed) within the
/// last three minutes, their log lines included.
fn busy_app(policy: &Policy) -> App {
    let mut app = App::new(t0());
    for i in 0..OPEN_CONNECTIONS {
        let at = t0() - Duration::from_millis(180_000 - i * 18);
        for e in session_events(policy, i, at) {
            app.update(Action::Engine(e));
        }
    }
    assert_eq!(app.traffic.open, OPEN_CONNECTIONS as usize);
    app
}

/// 100,000 log lines, one in ten denied and one in a thousand an error.
/// The console itself keeps the newest 20,000; the lines are put in
/// directly here to see whether drawing depends on the log's length.
fn long_log(app: &mut App) {
    let lines = &mut app.traffic.log.lines;
    lines.clear();
    let start = epoch_ms(t0()) - LOG_LINES as i64 * 10;
    for i in 0..LOG_LINES {
        let (kind, verdict, text) = match i % 1000 {
            0 => (
                "error",
                None,
                format!("session {i}: connection reset by peer"),
            ),
            n if n % 10 == 0 => (
                "decision",
                Some("denied"),
                format!(
                    "<rcpt{i}@far.test> from 203.0.113.{} 554 outbound from unlisted 203.0.113.{}; deny entry *.*.*.*",
                    i % 250,
                    i % 250
                ),
            ),
            n if n % 2 == 0 => (
                "decision",
                Some("allowed"),
                format!(
                    "<rcpt{i}@far.test> 250 127.0.0.{} matches allow entry 127.0.0.0/8",
                    i % 250
                ),
            ),
            _ => (
                "session",
                Some("accepted"),
                format!("session {i} message 18F0{i:012X} accepted: 2048 bytes, 1 recipients"),
            ),
        };
        lines.push_back(LogLine {
            at_ms: start + i as i64 * 10,
            kind: relaygate::events::EventKind::parse(kind),
            verdict: verdict.and_then(relaygate::events::Outcome::parse),
            text,
            detail: None,
            trace: None,
            session: None,
        });
    }
}

fn terminal() -> Terminal<TestBackend> {
    Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("terminal")
}

fn bench_frames(c: &mut Criterion) {
    let policy = default_policy();
    let theme = Theme::color();
    let mut app = busy_app(&policy);
    let mut group = c.benchmark_group("frame 200x60");

    let mut term = terminal();
    app.live.selected = 0;
    group.bench_function("Live, 10,000 open connections, first row selected", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    app.live.selected = OPEN_CONNECTIONS as usize - 1;
    group.bench_function("Live, 10,000 open connections, last row selected", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });

    long_log(&mut app);
    app.panel = Panel::Log;
    let mut term = terminal();
    group.bench_function("Log, 100,000 lines, following", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    app.log.filter = LogFilter::Errors;
    group.bench_function("Log, 100,000 lines, errors filter (1 in 1,000)", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    app.log.filter = LogFilter::All;
    app.log.search = Some("203.0.113.7 ".into());
    group.bench_function("Log, 100,000 lines, search matching 1 in 2,500", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    // What the console really holds: it keeps the newest 20,000 lines.
    let full = app.traffic.log.lines.clone();
    let keep = relaygate::console::traffic::LOG_LINES;
    app.traffic.log.lines.drain(..LOG_LINES - keep);
    group.bench_function("Log, 20,000 lines (the kept maximum), same search", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    app.traffic.log.lines = full;
    app.log.search = None;
    app.update(Action::Command(Command::Top));
    group.bench_function("Log, 100,000 lines, scrolled to the oldest", |b| {
        b.iter(|| {
            term.draw(|f| render::draw(f, black_box(&app), &theme))
                .expect("draw");
        })
    });
    group.finish();
}

fn bench_ingest(c: &mut Criterion) {
    let policy = default_policy();
    let mut app = busy_app(&policy);
    // Fill the log to its cap so every new line also drops the oldest.
    let filler = session_events(&policy, 1, t0());
    while app.traffic.log.lines.len() < relaygate::console::traffic::LOG_LINES {
        app.update(Action::Engine(filler[4].clone()));
    }
    let events = session_events(&policy, 4242, t0());
    let (command, decision) = (events[3].clone(), events[4].clone());
    let accepted = Stamped {
        at: t0(),
        event: Arc::new(Event::MessageAccepted {
            session: 4242,
            id: "18F0A1B2C3D4E5F6".into(),
            size: 2048,
            recipients: 1,
        }),
    };
    let mut group = c.benchmark_group("ingest one event (10,000 open, log full)");
    for (name, event) in [
        ("command", command),
        ("decision", decision),
        ("message accepted", accepted),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || event.clone(),
                |e| app.update(Action::Engine(black_box(e))),
                BatchSize::SmallInput,
            )
        });
    }
    // A whole short session: opened, four lines, the decision, closed
    // (the closed one joins the kept 50 and the oldest of those goes).
    let mut next = OPEN_CONNECTIONS;
    group.throughput(Throughput::Elements(6));
    group.bench_function("a whole session: 6 events, opened..closed", |b| {
        b.iter_batched(
            || {
                next += 1;
                let mut all = session_events(&policy, next, t0());
                all.push(Stamped {
                    at: t0(),
                    event: Arc::new(Event::SessionClosed {
                        session: next,
                        why: "client quit".into(),
                    }),
                });
                all
            },
            |all| {
                for e in all {
                    app.update(Action::Engine(e));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

const QUEUED: usize = 100_000;

/// 100,000 queued messages to 50 domains, 1-3 recipients each, ages up to
/// two days, a third with a last error.
fn big_queue() -> Vec<relaygate::spool::QueueEntry> {
    let now = epoch_ms(t0()) / 1000;
    (0..QUEUED)
        .map(|i| relaygate::spool::QueueEntry {
            id: format!("18F{i:013X}"),
            received_at: now - (i as i64 * 7919) % 172_800,
            sender: format!("user{}@example.com", i % 977),
            size: 2048,
            held: i % 50 == 0,
            recipients: (0..1 + i % 3)
                .map(|r| relaygate::spool::RecipientState {
                    address: format!("rcpt{r}@domain{}.test", (i + r) % 50),
                    state: "queued".into(),
                    attempts: (i % 7) as i64,
                    next_attempt: now + 600,
                    last_error: (i % 3 == 0)
                        .then(|| "451 4.4.1 no answer from mx.domain.test".to_string()),
                    notify: None,
                })
                .collect(),
        })
        .collect()
}

fn bench_queue(c: &mut Criterion) {
    let theme = Theme::color();
    let queue = big_queue();
    let mut app = App::new(t0());
    app.panel = Panel::Queue;
    let mut group = c.benchmark_group("Queue panel, 100,000 messages");
    group.sample_size(20);
    group.bench_function("take a new listing (filter, marks, qshape)", |b| {
        b.iter_batched(
            || queue.clone(),
            |q| app.update(Action::QueueLoaded(Ok(black_box(q)))),
            BatchSize::LargeInput,
        )
    });
    // Reading the listing from a spool of 100,000 messages (on the
    // console's reader thread).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("spool.db");
    let spool = relaygate::spool::Spool::open(&path).expect("spool");
    let ops = (0..QUEUED)
        .map(|i| {
            relaygate::spool::SpoolOp::Insert(relaygate::spool::NewMessage {
                dsn: Default::default(),
                spilled: None,
                smtputf8: false,
                id: spool.next_id(),
                sender: format!("user{}@example.com", i % 977),
                recipients: (0..1 + i % 3)
                    .map(|r| relaygate::spool::SpoolRecipient {
                        dsn: Default::default(),
                        address: format!("rcpt{r}@domain{}.test", (i + r) % 50),
                        class: "outbound".into(),
                        reason: "bench".into(),
                    })
                    .collect(),
                login: None,
                peer: "127.0.0.1".into(),
                client_listed: Some(false),
                helo: "client.test".into(),
                body: vec![b'x'; 2048],
            })
        })
        .collect();
    spool
        .apply_blocking(relaygate::spool::SpoolOp::All(ops))
        .expect("fill the spool");
    group.bench_function("read the listing from the spool", |b| {
        b.iter(|| {
            relaygate::spool::SpoolReader::open(&path)
                .and_then(|r| r.listing())
                .expect("listing")
                .len()
        })
    });
    app.update(Action::QueueLoaded(Ok(queue.clone())));
    for (w, h) in [(80u16, 24u16), (120, 40)] {
        let mut term = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        app.update(Action::Command(Command::Top));
        group.bench_function(format!("frame {w}x{h}, first message selected"), |b| {
            b.iter(|| {
                term.draw(|f| render::draw(f, black_box(&app), &theme))
                    .expect("draw");
            })
        });
        app.update(Action::Command(Command::Bottom));
        group.bench_function(format!("frame {w}x{h}, last message selected"), |b| {
            b.iter(|| {
                term.draw(|f| render::draw(f, black_box(&app), &theme))
                    .expect("draw");
            })
        });
    }
}

criterion_group!(benches, bench_frames, bench_ingest, bench_queue);
criterion_main!(benches);
