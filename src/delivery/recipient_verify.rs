//! Recipient verification: before relaygate takes mail for a recipient in
//! a local domain, it asks the server that holds the domain's mailboxes
//! (the domain's route) with `MAIL FROM:<>` and `RCPT TO`, as Postfix's
//! `reject_unverified_recipient` does. Mail for a user that server does
//! not know is then refused at RCPT, to the sending server, instead of
//! being taken and bounced later to a sender who is usually forged
//! (backscatter, which gets a gateway blocklisted).
//!
//! Answers are remembered for a while (a known recipient for
//! `verify-known-ttl`, an unknown one for `verify-unknown-ttl`); what an
//! unreachable server did not say is not. Sessions asking about the same
//! address at the same time share one question, at most [`PROBES`]
//! questions are open at once, and each has [`DEADLINE`]. The memory is
//! bounded ([`MAX_REMEMBERED`]) and emptied whenever the configuration
//! changes, so a route or domain edited never keeps an old answer.

use super::Route;
use super::client::{ClientConfig, ConnectError, ConnectionPool, ProbeAnswer, Target};
use crate::answer_memory::AnswerMemory;
use crate::policy::address::{Domain, MailAddress};
use crate::policy::decision::{HopCheck, Reason, Verification};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};

/// Questions open at once, over all routes: a flood of made-up addresses
/// waits here rather than opening connections to the internal server.
pub const PROBES: usize = 32;
/// The longest a recipient waits for its answer, the wait for a free
/// question included; then it counts as unreachable.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// A connection or command to the next hop gets at most this long (less
/// if the delivery timeouts say so).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a hop that could not be reached is taken as down.
pub const DOWN_FOR: Duration = Duration::from_secs(30);
/// Open questions kept track of before abandoned ones are swept.
const MAX_ASKING: usize = 1024;
/// Answers remembered at most (see [`AnswerMemory`]).
pub const MAX_REMEMBERED: usize = 100_000;

/// What asking found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    /// 2xx to RCPT.
    Known(String),
    /// 5xx to RCPT.
    Unknown(String),
    /// No answer about the recipient: the server could not be reached,
    /// put the question off (4xx), or refused the null sender.
    Unreachable(String),
}

/// The settings verification runs with.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    pub client: ClientConfig,
    pub known_ttl: Duration,
    pub unknown_ttl: Duration,
    /// Take a recipient whose server cannot be asked (else 450 4.4.1).
    pub accept_unreachable: bool,
    /// Questions at once to one route without a `--concurrency` of its
    /// own (`destination-concurrency`, as for deliveries).
    pub per_hop: usize,
}

impl VerifyConfig {
    pub fn from_settings(settings: &crate::server_settings::ServerSettings) -> VerifyConfig {
        let mut client = super::scheduler::client_config(settings);
        client.connect_timeout = client.connect_timeout.min(STEP_TIMEOUT);
        client.command_timeout = client.command_timeout.min(STEP_TIMEOUT);
        VerifyConfig {
            client,
            known_ttl: Duration::from_secs(settings.verify_known_ttl_secs),
            unknown_ttl: Duration::from_secs(settings.verify_unknown_ttl_secs),
            accept_unreachable: settings.verify_accept_unreachable,
            per_hop: settings.destination_concurrency,
        }
    }
}

/// Asks routes about recipients, and remembers what they said.
pub struct RecipientVerifier {
    pool: Arc<ConnectionPool>,
    /// By "hop\naddress".
    remembered: AnswerMemory<String, Found>,
    /// Questions being asked now, by the same key: later askers wait for
    /// the same answer.
    asking: Mutex<HashMap<String, Arc<OnceCell<Found>>>>,
    probes: Semaphore,
    /// Per route: its `--concurrency`, or `per_hop`; an internal server
    /// that limits connections is not sent more by questions than by
    /// deliveries. Rebuilt when the limit changes.
    per_route: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// Counts [`forget_all`](Self::forget_all) calls: an answer to a
    /// question asked before the last one is not remembered.
    generation: std::sync::atomic::AtomicU64,
    /// Hops that could not be reached a moment ago, with why: while one
    /// is down, its recipients are answered at once, not each after its
    /// own connection attempt (up to [`DEADLINE`]).
    down: AnswerMemory<String, String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub use crate::policy::worth_verifying;

/// A route's next hop as the reasons name it.
pub fn hop_name(route: &Route) -> String {
    if route.host.contains(':') {
        format!("[{}]:{}", route.host, route.port)
    } else {
        format!("{}:{}", route.host, route.port)
    }
}

impl RecipientVerifier {
    /// Connections are taken from, and given back to, `pool` (the one
    /// delivery uses, which closes idle ones).
    pub fn new(pool: Arc<ConnectionPool>) -> RecipientVerifier {
        RecipientVerifier {
            pool,
            remembered: AnswerMemory::new(MAX_REMEMBERED),
            asking: Mutex::new(HashMap::new()),
            probes: Semaphore::new(PROBES),
            per_route: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            down: AnswerMemory::new(1024),
        }
    }

    /// Forgets every answer (the configuration changed).
    pub fn forget_all(&self) {
        use std::sync::atomic::Ordering;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.remembered.forget_all();
        self.down.forget_all();
        // Questions under way go on for those waiting on them; a session
        // asking from now on asks anew (the route may have changed).
        lock(&self.asking).clear();
    }

    /// Answers remembered now, expired ones included until they are swept.
    pub fn remembered(&self) -> usize {
        self.remembered.len()
    }

    /// Asks the route of a local recipient's domain about it. None when
    /// the domain has no route of its own: there is no one to ask, and
    /// its mail is held at delivery until a route is added.
    pub async fn verify_local(
        &self,
        config: &VerifyConfig,
        routes: &[Route],
        recipient: &MailAddress,
    ) -> Option<Result<Verification, Reason>> {
        use super::router::{NextHop, next_hop};
        let Domain::Name(domain) = &recipient.domain else {
            return None;
        };
        let NextHop::Route(route) = next_hop(domain, routes, true) else {
            return None;
        };
        Some(self.verify(config, route, &recipient.to_string()).await)
    }

    /// Whether `route` takes mail for `recipient`: `Ok` keeps the
    /// recipient (known, or unreachable under `verify-unreachable
    /// accept`), `Err` is the reason to refuse it.
    pub async fn verify(
        &self,
        config: &VerifyConfig,
        route: &Route,
        recipient: &str,
    ) -> Result<Verification, Reason> {
        let hop = hop_name(route);
        let key = format!("{hop}\n{recipient}");
        if let Some(found) = self.recall(&key) {
            return judge(found, hop, true, config.accept_unreachable);
        }
        if let Some(why) = self.down.recall(&hop) {
            let found =
                Found::Unreachable(format!("{why} (less than {} s ago)", DOWN_FOR.as_secs()));
            return judge(found, hop, true, config.accept_unreachable);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let question = {
            let mut asking = lock(&self.asking);
            if asking.len() >= MAX_ASKING {
                // Questions nobody waits for any more (their sessions
                // ended while asking).
                asking.retain(|_, q| Arc::strong_count(q) > 1);
            }
            Arc::clone(asking.entry(key.clone()).or_default())
        };
        let found = question
            .get_or_init(|| self.ask(config, route, recipient))
            .await
            .clone();
        {
            let mut asking = lock(&self.asking);
            if asking.get(&key).is_some_and(|q| Arc::ptr_eq(q, &question)) {
                asking.remove(&key);
                // Asked under a configuration since replaced: not kept.
                if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
                    self.remember(key, &found, config);
                }
            }
        }
        judge(found, hop, false, config.accept_unreachable)
    }

    fn recall(&self, key: &str) -> Option<Found> {
        self.remembered.recall(&key.to_string())
    }

    fn remember(&self, key: String, found: &Found, config: &VerifyConfig) {
        let ttl = match found {
            Found::Known(_) => config.known_ttl,
            Found::Unknown(_) => config.unknown_ttl,
            Found::Unreachable(_) => return,
        };
        self.remembered.remember(key, found.clone(), ttl);
    }

    /// One question to the route's hosts, in order, until one answers.
    async fn ask(&self, config: &VerifyConfig, route: &Route, recipient: &str) -> Found {
        let work = async {
            let limit = route.concurrency.unwrap_or(config.per_hop).max(1);
            let route_permits = {
                let mut per_route = lock(&self.per_route);
                let entry = per_route
                    .entry(hop_name(route))
                    .or_insert_with(|| (limit, Arc::new(Semaphore::new(limit))));
                if entry.0 != limit {
                    *entry = (limit, Arc::new(Semaphore::new(limit)));
                }
                Arc::clone(&entry.1)
            };
            let (Ok(_route_permit), Ok(_permit)) =
                (route_permits.acquire().await, self.probes.acquire().await)
            else {
                return Found::Unreachable("relaygate is stopping".into());
            };
            let targets = match Target::of_route(route).await {
                Ok(t) if !t.is_empty() => t,
                Ok(_) => return Found::Unreachable(format!("{} has no address", route.host)),
                Err(e) => return Found::Unreachable(e),
            };
            let mut last = String::new();
            for target in &targets {
                match self.pool.probe(&config.client, target, recipient).await {
                    Ok(answer) => return found(answer),
                    Err(ConnectError(e)) => last = e,
                }
            }
            self.down.remember(hop_name(route), last.clone(), DOWN_FOR);
            Found::Unreachable(last)
        };
        match tokio::time::timeout(DEADLINE, work).await {
            Ok(found) => found,
            Err(_) => {
                let why = format!("no answer within {} s", DEADLINE.as_secs());
                self.down.remember(hop_name(route), why.clone(), DOWN_FOR);
                Found::Unreachable(why)
            }
        }
    }
}

/// What a host's answer says about the recipient.
fn found(answer: ProbeAnswer) -> Found {
    match answer {
        // Only a refusal of the mailbox itself (5.1.x, or 550/551/553
        // without an enhanced code) says the recipient is unknown. Another
        // 5xx (530 authentication required, 554 5.7.1 relay denied) is the
        // server refusing relaygate, which must not bounce every
        // recipient: as Postfix, that is "could not verify" (450).
        ProbeAnswer::Rcpt(r) if r.class() == 5 && mailbox_refused(&r) => {
            Found::Unknown(r.one_line())
        }
        ProbeAnswer::Rcpt(r) if r.class() == 5 => Found::Unreachable(format!(
            "it refused the question, not the mailbox: {}",
            r.one_line()
        )),
        ProbeAnswer::Rcpt(r) if r.class() == 2 => Found::Known(r.one_line()),
        ProbeAnswer::Rcpt(r) => Found::Unreachable(format!("RCPT TO put off: {}", r.one_line())),
        ProbeAnswer::MailRefused(r) => {
            Found::Unreachable(format!("MAIL FROM:<> refused: {}", r.one_line()))
        }
        ProbeAnswer::NoSmtpUtf8 => Found::Unreachable(
            "it does not offer SMTPUTF8, which this address needs (RFC 6531)".into(),
        ),
    }
}

/// Whether a 5xx to RCPT refuses the mailbox (RFC 3463 X.1.x), rather
/// than the client asking.
fn mailbox_refused(r: &crate::delivery::reply::Reply) -> bool {
    let text = r.one_line();
    match crate::delivery::client::enhanced_status_of(&text) {
        Some(status) => status.starts_with("5.1."),
        None => matches!(r.code, 550 | 551 | 553),
    }
}

/// The finding as the decision takes it.
fn judge(
    found: Found,
    hop: String,
    remembered: bool,
    accept_unreachable: bool,
) -> Result<Verification, Reason> {
    let check = |said: String| HopCheck {
        hop,
        said,
        remembered,
    };
    match found {
        Found::Known(said) => Ok(Verification::Known { check: check(said) }),
        Found::Unknown(said) => Err(Reason::RecipientUnknown { check: check(said) }),
        Found::Unreachable(said) if accept_unreachable => {
            Ok(Verification::Unreachable { check: check(said) })
        }
        Found::Unreachable(said) => Err(Reason::RecipientUnverified { check: check(said) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::reply::Reply;

    fn reply(code: u16, text: &str) -> Reply {
        Reply {
            code,
            lines: vec![text.into()],
        }
    }

    #[test]
    fn answers_are_read_as_rfc_5321_means_them() {
        assert_eq!(
            found(ProbeAnswer::Rcpt(reply(250, "2.1.5 Ok"))),
            Found::Known("250 2.1.5 Ok".into())
        );
        assert_eq!(
            found(ProbeAnswer::Rcpt(reply(550, "5.1.1 no such user"))),
            Found::Unknown("550 5.1.1 no such user".into())
        );
        assert_eq!(
            found(ProbeAnswer::Rcpt(reply(550, "no such user"))),
            Found::Unknown("550 no such user".into())
        );
        // The server refusing relaygate, not the mailbox: not "unknown".
        for refusal in [
            reply(554, "5.7.1 Relay access denied"),
            reply(530, "5.7.0 Authentication required"),
            reply(550, "5.7.1 Client host rejected"),
        ] {
            assert!(
                matches!(found(ProbeAnswer::Rcpt(refusal.clone())), Found::Unreachable(w) if w.contains("not the mailbox")),
                "{refusal:?}"
            );
        }
        for put_off in [450, 451, 452, 421, 552] {
            assert!(
                matches!(
                    found(ProbeAnswer::Rcpt(reply(put_off, "x"))),
                    Found::Unreachable(_)
                ),
                "{put_off}"
            );
        }
        assert!(matches!(
            found(ProbeAnswer::MailRefused(reply(550, "no null sender"))),
            Found::Unreachable(w) if w.contains("MAIL FROM:<> refused")
        ));
    }

    #[test]
    fn an_unreachable_server_defers_unless_told_to_accept() {
        let un = || Found::Unreachable("connection refused".into());
        assert!(matches!(
            judge(un(), "h:25".into(), false, false),
            Err(Reason::RecipientUnverified { .. })
        ));
        assert!(matches!(
            judge(un(), "h:25".into(), false, true),
            Ok(Verification::Unreachable { .. })
        ));
        // A refusal is a refusal whatever verify-unreachable says.
        assert!(matches!(
            judge(Found::Unknown("550".into()), "h:25".into(), true, true),
            Err(Reason::RecipientUnknown { check }) if check.remembered
        ));
    }

    fn config(known: u64, unknown: u64) -> VerifyConfig {
        VerifyConfig {
            client: crate::delivery::scheduler::client_config(
                &crate::server_settings::ServerSettings::default(),
            ),
            known_ttl: Duration::from_secs(known),
            unknown_ttl: Duration::from_secs(unknown),
            accept_unreachable: false,
            per_hop: 20,
        }
    }

    #[test]
    fn known_and_unknown_are_remembered_for_their_time_unreachable_never() {
        let v = RecipientVerifier::new(Arc::default());
        let c = config(60, 0);
        v.remember("a".into(), &Found::Known("250".into()), &c);
        v.remember("b".into(), &Found::Unknown("550".into()), &c);
        v.remember("c".into(), &Found::Unreachable("down".into()), &c);
        assert_eq!(v.recall("a"), Some(Found::Known("250".into())));
        assert_eq!(v.recall("b"), None, "a ttl of 0 remembers nothing");
        assert_eq!(v.recall("c"), None);
        v.forget_all();
        assert_eq!(v.recall("a"), None);
    }

    /// A real SMTP server on loopback: `greeting` first, then 250 to
    /// everything but RCPT, which `rcpt` answers (after `delay`), counting
    /// the RCPTs it gets.
    async fn scripted_server(
        greeting: &'static [u8],
        delay: Duration,
        rcpt: fn(&str) -> &'static [u8],
    ) -> (
        Route,
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rcpts = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rcpts);
        let accepted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(greeting).await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                        let answer: &[u8] = match verb.as_str() {
                            "EHLO" => b"250 scripted.test\r\n",
                            "RCPT" => {
                                counted.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(delay).await;
                                rcpt(&line)
                            }
                            "QUIT" => b"221 bye\r\n",
                            _ => b"250 Ok\r\n",
                        };
                        let _ = w.write_all(answer).await;
                    }
                });
            }
        });
        let route = Route {
            domain: "example.test".into(),
            host: "127.0.0.1".into(),
            port,
            tls: crate::delivery::TlsMode::None,
            auth: None,
            rate: None,
            concurrency: None,
        };
        (route, rcpts, connections)
    }

    /// Takes 300 ms to answer RCPT, and knows everyone.
    async fn slow_server() -> (Route, Arc<std::sync::atomic::AtomicUsize>) {
        let (route, rcpts, _) =
            scripted_server(b"220 slow.test\r\n", Duration::from_millis(300), |_| {
                b"250 2.1.5 Ok\r\n"
            })
            .await;
        (route, rcpts)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_route_gets_no_more_questions_at_once_than_its_concurrency() {
        use std::sync::atomic::Ordering;
        let (mut route, rcpts, connections) =
            scripted_server(b"220 slow.test\r\n", Duration::from_millis(100), |_| {
                b"250 2.1.5 Ok\r\n"
            })
            .await;
        route.concurrency = Some(1);
        let c = Arc::new(config(0, 0));
        let v = Arc::new(RecipientVerifier::new(Arc::default()));
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..4 {
            let (v, c, route) = (Arc::clone(&v), Arc::clone(&c), route.clone());
            asks.spawn(async move { v.verify(&c, &route, &format!("u{i}@example.test")).await });
        }
        while let Some(answer) = asks.join_next().await {
            assert!(
                matches!(answer, Ok(Ok(Verification::Known { .. }))),
                "{answer:?}"
            );
        }
        assert_eq!(rcpts.load(Ordering::SeqCst), 4);
        // One at a time: each question reuses the one connection.
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_out_of_step_never_makes_an_unknown_recipient_known() {
        let c = config(0, 0);
        let v = RecipientVerifier::new(Arc::default());
        // Two greetings: every reply after would answer the command before.
        let (route, _, _) =
            scripted_server(b"220 one.test\r\n220 two.test\r\n", Duration::ZERO, |_| {
                b"550 5.1.1 no such user\r\n"
            })
            .await;
        let found = v.verify(&c, &route, "nobody@example.test").await;
        assert!(
            matches!(&found, Err(Reason::RecipientUnverified { check }) if check.said.contains("out of step")),
            "{found:?}"
        );
        // Two replies to one RCPT: the first is judged, and the
        // connection, with a reply nobody asked for, is not used again.
        let (route, rcpts, _) = scripted_server(b"220 two.test\r\n", Duration::ZERO, |_| {
            b"550 5.1.1 no such user\r\n250 2.1.5 bonus\r\n"
        })
        .await;
        for address in ["nobody@example.test", "nobody2@example.test"] {
            let found = v.verify(&c, &route, address).await;
            assert!(
                matches!(&found, Err(Reason::RecipientUnknown { .. })),
                "{address}: {found:?}"
            );
        }
        assert_eq!(rcpts.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_asking_about_one_address_at_once_share_one_question() {
        use std::sync::atomic::Ordering;
        let (route, rcpts) = slow_server().await;
        // Nothing remembered: only the sharing can spare questions.
        let c = Arc::new(config(0, 0));
        let v = Arc::new(RecipientVerifier::new(Arc::default()));
        let mut asks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let (v, c, route) = (Arc::clone(&v), Arc::clone(&c), route.clone());
            asks.spawn(async move { v.verify(&c, &route, "bob@example.test").await });
        }
        while let Some(answer) = asks.join_next().await {
            assert!(
                matches!(answer, Ok(Ok(Verification::Known { .. }))),
                "{answer:?}"
            );
        }
        assert_eq!(rcpts.load(Ordering::SeqCst), 1);
        // Another address is another question; and once answered, a
        // question is asked anew (nothing is remembered here).
        let other = v.verify(&c, &route, "carol@example.test").await;
        assert!(matches!(other, Ok(Verification::Known { .. })));
        let again = v.verify(&c, &route, "bob@example.test").await;
        assert!(matches!(again, Ok(Verification::Known { check }) if !check.remembered));
        assert_eq!(rcpts.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_memory_is_bounded() {
        let v = RecipientVerifier::new(Arc::default());
        let c = config(60, 60);
        for i in 0..MAX_REMEMBERED + 10 {
            v.remember(format!("k{i}"), &Found::Known("250".into()), &c);
        }
        assert!(v.remembered() <= MAX_REMEMBERED);
        assert!(v.remembered() >= MAX_REMEMBERED / 2);
        assert!(v.recall(&format!("k{}", MAX_REMEMBERED + 9)).is_some());
    }
}
