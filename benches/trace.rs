//! Message trace over a large event log: fills a log with 1,000,000
//! events (250,000 sessions: opened, decision, accepted or denied, closed;
//! deliveries for the accepted ones), then times searches by queue id,
//! sender, recipient, client address and login.
//!
//!     cargo bench --bench trace            (EVENTS=1000000 by default)

use relaygate::decision_log::DecisionLog;
use relaygate::events::{DeliveryOutcome, Event, Stamped};
use relaygate::policy::Envelope;
use relaygate::policy::address::{parse_forward_path, parse_reverse_path};
use relaygate::trace::TraceQuery;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

fn main() {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("relaygate.log.db");
    let mut log = DecisionLog::open(&path).expect("open log");
    // The real policy of a fresh install: 10.x clients may relay, the rest
    // are denied, so the log holds both kinds of decision.
    let mut store = relaygate::store::Store::open(&dir.path().join("relaygate.db")).expect("store");
    let policy = store.load_policy().expect("policy");
    let local: std::net::SocketAddr = "127.0.0.1:25".parse().expect("addr");
    let start = SystemTime::now() - Duration::from_secs(86_400);
    let mut batch: Vec<Stamped> = Vec::with_capacity(5_000);
    let mut written = 0usize;
    let fill = Instant::now();
    let mut appending = Duration::ZERO;
    let mut session = 0u64;
    while written < events {
        session += 1;
        let s = session;
        let ip: std::net::IpAddr = format!("10.0.{}.{}", s % 1000 / 250, s % 250)
            .parse()
            .expect("ip");
        let at = start + Duration::from_millis(s * 300);
        let sender = format!("user{}@example.com", s % 50_000);
        let recipient = format!("rcpt{}@far{}.test", s % 97_003, s % 500);
        let id = format!("1A{s:017X}");
        let ip = if s.is_multiple_of(3) {
            format!("192.0.2.{}", s % 250).parse().expect("ip")
        } else {
            ip
        };
        let from = parse_reverse_path(&format!("<{sender}>")).expect("sender");
        let rcpt = parse_forward_path(&format!("<{recipient}>")).expect("recipient");
        let decision = policy.decide(
            &Envelope {
                peer: ip,
                login: None,
                sender: from.as_ref(),
            },
            &rcpt,
        );
        let mut push = |e: Event| {
            batch.push(Stamped {
                at,
                event: Arc::new(e),
            })
        };
        push(Event::SessionOpened {
            session: s,
            peer: std::net::SocketAddr::new(ip, 40_000),
            local,
            kind: relaygate::bindings::BindKind::Smtp,
            tls: false,
            via: None,
        });
        push(Event::Decision {
            session: s,
            peer: ip,
            login: None,
            sender: sender.clone(),
            recipient: recipient.clone(),
            decision: Box::new(decision),
        });
        if !s.is_multiple_of(3) {
            push(Event::MessageAccepted {
                session: s,
                id: id.clone(),
                size: 2048,
                recipients: 1,
            });
            push(Event::Delivery {
                message_id: id.clone(),
                recipient: recipient.clone(),
                host: "mx.far.test".into(),
                outcome: DeliveryOutcome::Delivered,
                reply: "250 2.0.0 ok".into(),
            });
        }
        push(Event::SessionClosed {
            session: s,
            why: "closed".into(),
        });
        if batch.len() >= 4_000 {
            written += batch.len();
            let t = Instant::now();
            log.append(&batch.iter().collect::<Vec<_>>())
                .expect("append");
            appending += t.elapsed();
            batch.clear();
        }
    }
    let fill = fill.elapsed();
    println!(
        "filled {written} events ({session} sessions) in {:.1} s; writing them took {:.2} us per event",
        fill.as_secs_f64(),
        appending.as_secs_f64() * 1e6 / written as f64
    );
    drop(log);
    let reader = DecisionLog::open_read_only(&path).expect("reader");
    // A session that was let through (every third is denied).
    let mid = session / 2 / 3 * 3 + 1;
    let queries: Vec<(&str, TraceQuery)> = vec![
        (
            "by queue id",
            TraceQuery {
                any: Some(format!("1A{mid:017X}")),
                ..Default::default()
            },
        ),
        (
            "by sender (about 5 sessions)",
            TraceQuery {
                any: Some(format!("USER{}@example.com", mid % 50_000)),
                ..Default::default()
            },
        ),
        (
            "by recipient --to",
            TraceQuery {
                to: Some(format!("rcpt{}@far{}.test", mid % 97_003, mid % 500)),
                ..Default::default()
            },
        ),
        (
            "by client address (1 of 1,000 clients; the newest 200 stories)",
            TraceQuery {
                ip: Some(format!("10.0.{}.{}", mid % 1000 / 250, mid % 250)),
                ..Default::default()
            },
        ),
        (
            "nothing matches",
            TraceQuery {
                any: Some("nobody@nowhere.test".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, q) in queries {
        let mut times = Vec::new();
        let mut stories = 0;
        for _ in 0..5 {
            let t = Instant::now();
            stories = reader.trace(&q).expect("trace").len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "trace {name}: {stories} stories, median {:.1} ms (min {:.1}, max {:.1}) over {written} events",
            times[2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[4].as_secs_f64() * 1e3
        );
    }
}
