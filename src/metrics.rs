//! Prometheus metrics at `/metrics` on `metrics-listen` (off until set;
//! loopback is the intended place). The numbers come from the same typed
//! events as the log and the console: a subscriber of the event bus counts
//! them on its own task, so the engine never waits for it, and a scrape
//! only encodes what is counted (the queue's depth is read from the spool
//! at most once a second, off the async threads).

use crate::engine::Shared;
use crate::events::{Event, Stamped};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    class: String,
    verdict: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoticeLabels {
    /// `delayed` or `relayed`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlocklistLabels {
    /// The zone, or `resolver`.
    zone: String,
    /// `error_code`, `no_answer` or `failed`.
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    /// `known`, `unknown` or `unreachable`.
    answer: String,
    /// `asked` (a question to the route) or `remembered`.
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    route: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Every metric relaygate serves.
struct Counted {
    registry: Registry,
    sessions_open: Family<ListenerLabels, Gauge>,
    sessions: Family<ListenerLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    accepted: Counter,
    accepted_bytes: Counter,
    deliveries: Family<DeliveryLabels, Counter>,
    bounces: Counter,
    notices: Family<NoticeLabels, Counter>,
    queue_messages: Gauge,
    queue_oldest_age: Gauge,
    transactions_open: Gauge,
    spool_free: Gauge,
    auth_failures: Counter,
    bans: Counter,
    quota_refusals: Counter,
    verifications: Family<VerificationLabels, Counter>,
    blocklist_troubles: Family<BlocklistLabels, Counter>,
    suspensions: Counter,
    dropped_events: Gauge,
    reloads: Counter,
    reload_failures: Counter,
}

impl Counted {
    fn new() -> Counted {
        let mut registry = Registry::with_prefix("relaygate");
        macro_rules! reg {
            ($name:expr, $help:expr, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
        }
        Counted {
            sessions_open: reg!(
                "sessions_open",
                "SMTP sessions open now, by listener",
                Family::default()
            ),
            sessions: reg!(
                "sessions",
                "SMTP sessions opened, by listener",
                Family::default()
            ),
            refused: reg!(
                "sessions_refused",
                "connections refused before a session (limits, bans, PROXY)",
                Family::default()
            ),
            decisions: reg!(
                "decisions",
                "recipient decisions by class, verdict and kind of reason",
                Family::default()
            ),
            accepted: reg!(
                "messages_accepted",
                "messages accepted (250 after DATA)",
                Counter::default()
            ),
            accepted_bytes: reg!(
                "messages_accepted_bytes",
                "bytes of the messages accepted",
                Counter::default()
            ),
            deliveries: reg!(
                "deliveries",
                "delivery outcomes per recipient, by route and result",
                Family::default()
            ),
            bounces: reg!("bounces", "bounces queued to senders", Counter::default()),
            notices: reg!(
                "notices",
                "notices without failures queued to senders: delay warnings (delayed), DSN success reports (relayed)",
                Family::default()
            ),
            queue_messages: reg!("queue_messages", "messages in the queue", Gauge::default()),
            transactions_open: reg!(
                "transactions_open",
                "SMTP transactions under way now (MAIL given, the message not yet stored)",
                Gauge::default()
            ),
            spool_free: reg!(
                "spool_free_bytes",
                "bytes free on the spool's disk (MAIL gets 452 4.3.1 below 1.5 x max-message-size or spool-min-free); -1 before it is measured",
                Gauge::default()
            ),
            queue_oldest_age: reg!(
                "queue_oldest_age_seconds",
                "age of the oldest queued message",
                Gauge::default()
            ),
            auth_failures: reg!("auth_failures", "failed AUTH attempts", Counter::default()),
            bans: reg!("bans", "addresses banned", Counter::default()),
            quota_refusals: reg!(
                "quota_refusals",
                "recipients deferred by a sending quota",
                Counter::default()
            ),
            verifications: reg!(
                "recipient_verifications",
                "recipients of local domains checked at their route (verify-recipients), by answer and whether the route was asked or the answer remembered",
                Family::default()
            ),
            blocklist_troubles: reg!(
                "dnsbl_unusable",
                "DNS blocklist zones found unusable (error code, no answer, failure; zone \"resolver\": dns-servers), said at most once per zone every 10 minutes",
                Family::default()
            ),
            suspensions: reg!(
                "login_suspensions",
                "logins suspended by a quota",
                Counter::default()
            ),
            dropped_events: reg!(
                "events_dropped",
                "events a full subscriber could not take",
                Gauge::default()
            ),
            reloads: reg!(
                "policy_reloads",
                "configurations put in force",
                Counter::default()
            ),
            reload_failures: reg!(
                "policy_reload_failures",
                "configurations refused (the previous one stays)",
                Counter::default()
            ),
            registry,
        }
    }
}

/// The metrics, counted from the events.
pub struct Metrics {
    counted: Counted,
    /// Open sessions and their listener (closing events do not name it).
    open: HashMap<u64, String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            counted: Counted::new(),
            open: HashMap::new(),
        }
    }
}

impl Metrics {
    /// Counts one event. `route_of` names the route a recipient's mail
    /// goes by (`*`, `example.com`, `mx`), so delivery labels stay few.
    pub fn count(&mut self, event: &Event, route_of: &dyn Fn(&str) -> String) {
        let c = &self.counted;
        match event {
            Event::SessionOpened {
                session,
                local,
                via,
                ..
            } => {
                // Behind a load balancer, `local` is what the PROXY header
                // claims: the binding keeps the labels few and true.
                let listener = via.map_or(*local, |v| v.binding);
                let l = ListenerLabels {
                    listener: listener.to_string(),
                };
                c.sessions.get_or_create(&l).inc();
                c.sessions_open.get_or_create(&l).inc();
                self.open.insert(*session, l.listener);
            }
            Event::SessionClosed { session, .. } => {
                if let Some(listener) = self.open.remove(session) {
                    c.sessions_open
                        .get_or_create(&ListenerLabels { listener })
                        .dec();
                }
            }
            Event::SessionRefused { cause, .. } => {
                c.refused
                    .get_or_create(&ReasonLabels {
                        reason: cause.as_str().into(),
                    })
                    .inc();
            }
            Event::BlocklistUnusable { zone, trouble, .. } => {
                c.blocklist_troubles
                    .get_or_create(&BlocklistLabels {
                        zone: zone.clone().unwrap_or_else(|| "resolver".into()),
                        kind: trouble.kind().into(),
                    })
                    .inc();
            }
            Event::ProxyRefused { .. } => {
                c.refused
                    .get_or_create(&ReasonLabels {
                        reason: "proxy".into(),
                    })
                    .inc();
            }
            Event::Decision { decision, .. } => {
                let verdict = if decision.is_allowed() {
                    "allow"
                } else if decision.is_deferral() {
                    "defer"
                } else {
                    "deny"
                };
                if matches!(
                    decision.reason,
                    crate::policy::decision::Reason::QuotaReached { .. }
                ) {
                    c.quota_refusals.inc();
                }
                if let Some((answer, remembered)) = verification_answer(decision) {
                    c.verifications
                        .get_or_create(&VerificationLabels {
                            answer: answer.into(),
                            source: if remembered { "remembered" } else { "asked" }.into(),
                        })
                        .inc();
                }
                c.decisions
                    .get_or_create(&DecisionLabels {
                        class: decision.class.as_str().into(),
                        verdict: verdict.into(),
                        reason: reason_kind(&decision.reason).into(),
                    })
                    .inc();
            }
            Event::MessageAccepted { size, .. } => {
                c.accepted.inc();
                c.accepted_bytes.inc_by(*size as u64);
            }
            Event::Delivery {
                recipient, outcome, ..
            } => {
                let result = serde_json::to_value(outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                c.deliveries
                    .get_or_create(&DeliveryLabels {
                        route: route_of(recipient),
                        result,
                    })
                    .inc();
            }
            Event::Bounced { .. } => {
                c.bounces.inc();
            }
            Event::NoticeSent {
                delayed, relayed, ..
            } => {
                for (kind, n) in [("delayed", delayed), ("relayed", relayed)] {
                    if *n > 0 {
                        c.notices
                            .get_or_create(&NoticeLabels { kind: kind.into() })
                            .inc();
                    }
                }
            }
            Event::AuthFailed { .. } => {
                c.auth_failures.inc();
            }
            Event::ClientBanned { .. } => {
                c.bans.inc();
            }
            Event::LoginSuspended { .. } => {
                c.suspensions.inc();
            }
            Event::PolicyReloaded { .. } => {
                c.reloads.inc();
            }
            Event::ConfigRejected { .. } => {
                c.reload_failures.inc();
            }
            _ => {}
        }
    }

    /// The queue's depth and its oldest message's age; events dropped.
    pub fn set_levels(&self, queued: u64, oldest_age_secs: i64, dropped: u64) {
        let c = &self.counted;
        c.queue_messages.set(queued as i64);
        c.queue_oldest_age.set(oldest_age_secs.max(0));
        c.dropped_events.set(dropped as i64);
    }

    /// SMTP transactions under way and the spool disk's free bytes (read
    /// at every scrape: atomics).
    pub fn set_open_and_free(&self, open: usize, spool_free: Option<u64>) {
        self.counted.transactions_open.set(open as i64);
        self.counted
            .spool_free
            .set(spool_free.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    }

    /// The OpenMetrics text Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.counted.registry);
        out
    }
}

/// The kind of a decision's reason, as a label.
fn reason_kind(reason: &crate::policy::decision::Reason) -> &'static str {
    use crate::policy::decision::Reason as R;
    match reason {
        R::InboundToLocal { .. } => "inbound_to_local",
        R::Unrestricted { .. } => "unrestricted",
        R::Authenticated { .. } => "authenticated",
        R::IpAllowed { .. } => "ip_allowed",
        R::IpDenied { .. } => "ip_denied",
        R::IpUnlisted { .. } => "ip_unlisted",
        R::AuthRequired { .. } => "auth_required",
        R::DomainRestrictSend { .. } => "domain_restrict_send",
        R::NullSenderRelayed { .. } => "null_sender_relayed",
        R::UserRestrictSend { .. } => "user_restrict_send",
        R::SenderLoginMismatch { .. } => "sender_login_match",
        R::RuleRejected { .. } => "rule",
        R::QuotaReached { .. } => "quota",
        R::RecipientUnknown { .. } => "recipient_unknown",
        R::Blocklisted { .. } => "dnsbl",
        R::RecipientUnverified { .. } => "recipient_unverified",
    }
}

/// What recipient verification found for a decision, if it was asked:
/// the answer and whether it was remembered.
fn verification_answer(d: &crate::policy::decision::Decision) -> Option<(&'static str, bool)> {
    use crate::policy::decision::{Reason, Verification};
    match (&d.verification, &d.reason) {
        (Some(Verification::Known { check }), _) => Some(("known", check.remembered)),
        (Some(Verification::Unreachable { check }), _) => Some(("unreachable", check.remembered)),
        (None, Reason::RecipientUnknown { check }) => Some(("unknown", check.remembered)),
        (None, Reason::RecipientUnverified { check }) => Some(("unreachable", check.remembered)),
        _ => None,
    }
}

/// The route a recipient's mail takes, for the delivery label.
fn route_label(shared: &Shared, recipient: &str) -> String {
    let domain = recipient
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
        .unwrap_or_default();
    let snapshot = shared.snapshot();
    let local = crate::policy::address::normalize_domain(&domain)
        .map(|d| {
            snapshot
                .policy
                .is_local_domain(&crate::policy::address::Domain::Name(d))
        })
        .unwrap_or(false);
    match crate::delivery::router::next_hop(&domain, &snapshot.routes, local) {
        crate::delivery::router::NextHop::Route(r) => r.domain.clone(),
        crate::delivery::router::NextHop::Mx(_) => "mx".into(),
        crate::delivery::router::NextHop::Hold(_) => "held".into(),
    }
}

/// Counts events and serves `/metrics` while `metrics-listen` is set;
/// follows the setting live. The event subscription exists only while
/// metrics are on, so they cost nothing when off (turned on again, the
/// counters start from zero, which Prometheus reads as a restart).
pub async fn run(shared: Arc<Shared>, spool: PathBuf) {
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let mut events: Option<mpsc::Receiver<Stamped>> = None;
    let levels: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut serving: Option<(SocketAddr, tokio::task::JoinHandle<()>)> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = shared.snapshot().settings.metrics_listen;
        if serving.as_ref().map(|(a, _)| *a) != wanted {
            if let Some((_, task)) = serving.take() {
                task.abort();
            }
            events = None;
            if let Some(addr) = wanted {
                if let Ok(mut m) = metrics.lock() {
                    *m = Metrics::default();
                }
                events = Some(shared.events.subscribe_without_commands(65_536));
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(listener) => {
                        let task = tokio::spawn(serve(
                            listener,
                            Arc::clone(&metrics),
                            Arc::clone(&shared),
                            spool.clone(),
                            Arc::clone(&levels),
                        ));
                        serving = Some((addr, task));
                    }
                    Err(e) => {
                        shared.events.emit(Event::Error {
                            session: None,
                            message: format!("metrics: cannot listen on {addr}: {e}"),
                        });
                        // Tried again when the setting changes.
                        serving = Some((addr, tokio::spawn(async {})));
                    }
                }
            }
        }
        let Some(rx) = events.as_mut() else {
            continue;
        };
        let Ok(mut m) = metrics.lock() else { return };
        loop {
            match rx.try_recv() {
                Ok(stamped) => {
                    m.count(&stamped.event, &|r| route_label(&shared, r));
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
    }
}

/// Answers scrapes: `GET /metrics`, anything else 404.
async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Mutex<Metrics>>,
    shared: Arc<Shared>,
    spool: PathBuf,
    levels: Arc<Mutex<Option<Instant>>>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off, never spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let shared = Arc::clone(&shared);
        let spool = spool.clone();
        let levels = Arc::clone(&levels);
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            // The request head, within 5 s and 8 KiB.
            let head = tokio::time::timeout(Duration::from_secs(5), async {
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(head, Ok(true)) {
                return;
            }
            let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
            let wanted = line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?");
            let (status, kind, body) = if wanted {
                refresh_levels(&metrics, &shared, &spool, &levels).await;
                let open = shared.spool.open_transactions();
                let free = shared.spool_space.free();
                let body = metrics
                    .lock()
                    .map(|m| {
                        m.set_open_and_free(open, free);
                        m.encode()
                    })
                    .unwrap_or_default();
                (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            // A scraper that does not read is dropped after 10 s.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        });
    }
}

/// The queue's depth, read at most once a second (off the async threads).
async fn refresh_levels(
    metrics: &Arc<Mutex<Metrics>>,
    shared: &Arc<Shared>,
    spool: &std::path::Path,
    levels: &Arc<Mutex<Option<Instant>>>,
) {
    let due = levels
        .lock()
        .map(|l| l.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)))
        .unwrap_or(false);
    if !due {
        return;
    }
    if let Ok(mut l) = levels.lock() {
        *l = Some(Instant::now());
    }
    let path = spool.to_path_buf();
    let depth = tokio::task::spawn_blocking(move || {
        crate::spool::SpoolReader::open(&path).and_then(|r| r.depth())
    })
    .await;
    if let Ok(Ok((queued, oldest))) = depth {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let age = oldest.map_or(0, |o| now - o);
        if let Ok(m) = metrics.lock() {
            m.set_levels(queued, age, shared.events.dropped());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{BlocklistTrouble, RefusalCause};

    /// Refused connections are counted by their typed cause (never by
    /// their reply's words), and unusable blocklist zones by zone and kind.
    #[test]
    fn refusals_and_blocklist_troubles_are_counted_by_their_kind() {
        let mut m = Metrics::default();
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let none = |_: &str| String::new();
        for (cause, reply) in [
            (RefusalCause::Ban, "421 4.7.1 not now"),
            (RefusalCause::Limit, "421 4.7.0 you were banned once"),
            (RefusalCause::Limit, "421 4.7.0 too many sessions"),
        ] {
            let event = Event::SessionRefused {
                peer,
                reply: reply.into(),
                cause,
            };
            m.count(&event, &none);
        }
        for (zone, trouble) in [
            (
                Some("zen.test"),
                BlocklistTrouble::ErrorCode {
                    answer: std::net::Ipv4Addr::new(127, 255, 255, 254),
                },
            ),
            (None, BlocklistTrouble::Failed { error: "x".into() }),
        ] {
            let event = Event::BlocklistUnusable {
                session: None,
                zone: zone.map(str::to_string),
                trouble,
            };
            m.count(&event, &none);
        }
        let text = m.encode();
        for line in [
            "relaygate_sessions_refused_total{reason=\"ban\"} 1",
            "relaygate_sessions_refused_total{reason=\"limit\"} 2",
            "relaygate_dnsbl_unusable_total{zone=\"zen.test\",kind=\"error_code\"} 1",
            "relaygate_dnsbl_unusable_total{zone=\"resolver\",kind=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
