//! The engine: owns the listeners, the policy snapshot, the spool and the
//! event bus. `relaygate serve --headless` and the console both run this
//! one type.
//!
//! One engine per data directory: it holds the directory's lock for its
//! whole life, and serves its control socket for consoles to attach.
//!
//! Configuration is polled from the database (`PRAGMA data_version`, four
//! times a second): a change made by any other process (the CLI, the
//! console) is read in one read transaction, validated, compiled (TLS
//! included) and swapped in whole; sessions take one snapshot per
//! transaction and never see half an edit. A configuration the engine
//! refuses leaves the old snapshot in force and is reported as a typed
//! [`ConfigError`].

use crate::bindings::{BindKind, Binding};
use crate::control::feed::Feed;
use crate::data_dir::{DataDir, EngineLock, LockError};
use crate::events::{ConfigError, Event, EventBus, Stamped};
use crate::policy::Policy;
use crate::server_settings::ServerSettings;
use crate::session_board::SessionBoards;
use crate::smtp::server::{ConnectionContext, serve_connection};
use crate::spool::Spool;
use crate::store::Store;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What a session reads at the start of each transaction: everything the
/// engine runs on, from one read of the store.
pub struct Snapshot {
    pub policy: Arc<Policy>,
    pub settings: Arc<ServerSettings>,
    /// Delivery routes, the default `*` last.
    pub routes: Arc<Vec<crate::delivery::Route>>,
    /// STARTTLS and implicit TLS; built with the settings it came from.
    pub tls: Option<TlsAcceptor>,
    /// Logins that may not authenticate (suspended), lower-cased.
    pub suspended: Arc<std::collections::HashSet<String>>,
    /// Bindings that require the PROXY protocol, and from whom.
    pub proxied: Arc<HashMap<SocketAddr, Vec<ipnet::IpNet>>>,
    /// DKIM signers by domain (lower case).
    pub dkim: Arc<HashMap<String, crate::dkim::DkimSigner>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("settings", &self.settings)
            .field("routes", &self.routes.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The engine's lifecycle as sessions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Stop accepting; idle sessions get 421 now, messages in DATA may finish.
    Draining,
    /// The grace period is over: everyone gets 421.
    Aborting,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
    #[error(transparent)]
    Locked(#[from] LockError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Control(#[from] crate::control::server::ControlError),
}

/// Per client IP: concurrent sessions, AUTH checks under way, recent AUTH
/// failures.
#[derive(Debug, Default)]
struct ClientState {
    sessions: usize,
    /// Password checks reserved and not yet judged: they count against
    /// `auth-max-failures` from the moment they start, so parallel sessions
    /// cannot guess more than the limit.
    auth_in_flight: usize,
    auth_failures: Vec<Instant>,
    locked_until: Option<Instant>,
}

impl ClientState {
    /// Nothing to remember about this client any more.
    fn forgettable(&self, now: Instant, window: Duration) -> bool {
        self.sessions == 0
            && self.auth_in_flight == 0
            && self.locked_until.is_none_or(|u| u <= now)
            && self
                .auth_failures
                .iter()
                .all(|t| now.duration_since(*t) >= window)
    }
}

/// The key clients are counted under: an IPv4 address (an IPv4-mapped
/// IPv6 one as IPv4), or an IPv6 /64, which one host or one site
/// usually gets whole: one key per /64, or an attacker with a /64 would
/// get a new AUTH budget and session cap per address.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::policy::ip_pattern::effective_ip(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The most client addresses remembered (sessions, AUTH failures); past
/// it, those with nothing current are forgotten first.
const CLIENTS_KEPT: usize = 100_000;

/// Why a password check was not reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// The address has used its guesses (or is locked out).
    LockedOut,
    /// As many checks from this address are under way as it has guesses
    /// left: one must finish first.
    Busy,
}

/// A password check a client may make: it counts against the client's
/// failures until it is judged. Dropped unjudged (the session ended, the
/// checker was busy), it counts for nothing.
pub struct AuthTicket {
    shared: Arc<Shared>,
    ip: IpAddr,
    judged: bool,
}

impl AuthTicket {
    /// Records the verdict; returns true if the client is now locked out.
    pub fn judged(mut self, ok: bool, settings: &ServerSettings) -> bool {
        self.judged = true;
        let Ok(mut clients) = self.shared.clients.lock() else {
            return false;
        };
        let c = clients.entry(self.ip).or_default();
        c.auth_in_flight = c.auth_in_flight.saturating_sub(1);
        if ok {
            return false;
        }
        let now = Instant::now();
        c.auth_failures.push(now);
        if c.auth_failures.len() >= settings.auth_max_failures {
            let lockout = Duration::from_secs(settings.auth_lockout_secs);
            c.locked_until = Some(now + lockout);
            let until = std::time::SystemTime::now() + lockout;
            let ms = until
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(u64::MAX, |d| d.as_millis() as u64);
            self.shared.lockouts_until.fetch_max(ms, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

impl Drop for AuthTicket {
    fn drop(&mut self) {
        if !self.judged
            && let Ok(mut clients) = self.shared.clients.lock()
            && let Some(c) = clients.get_mut(&self.ip)
        {
            c.auth_in_flight = c.auth_in_flight.saturating_sub(1);
        }
    }
}

/// State shared by the engine and every session.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    pub events: Arc<EventBus>,
    pub spool: Spool,
    clients: Mutex<HashMap<IpAddr, ClientState>>,
    /// Until when (ms since the epoch) some address may be locked out:
    /// before that moment, sessions ask; after it, nobody is.
    lockouts_until: AtomicU64,
    /// Delivery attempts under way, for the queue views.
    pub in_flight: crate::delivery::InFlightTable,
    /// What each session is doing, for the Live table and the dialogues.
    pub boards: Arc<SessionBoards>,
    /// Where large message bodies are written while they arrive.
    pub spill_dir: PathBuf,
    /// Logins verified in the last few minutes (keyed hashes, never the
    /// passwords).
    pub logins: crate::credentials::LoginCache,
    /// Password checks, on a few threads with bounded memory.
    pub passwords: crate::credentials::PasswordChecker,
    total_sessions: AtomicU64,
    next_session: AtomicU64,
    state: watch::Sender<RunState>,
    /// Hands each newly spooled message to delivery at once; when full,
    /// the spool scan picks the message up instead.
    pub delivery_queue: mpsc::Sender<crate::delivery::scheduler::NewWork>,
    /// Quotas, bans and suspensions.
    pub abuse: crate::abuse::AbuseGuard,
    /// Free space on the spool's disk, measured each second; sessions
    /// refuse MAIL while it is short of room for a message.
    pub spool_space: crate::spool_space::SpoolSpace,
    /// Connections to next hops, idle ones kept for the next delivery or
    /// recipient verification.
    pub next_hops: Arc<crate::delivery::client::ConnectionPool>,
    /// Asks local domains' routes about recipients (`verify-recipients`).
    pub verifier: crate::delivery::recipient_verify::RecipientVerifier,
    /// Looks clients up on the DNS blocklists (`dnsbl`).
    pub dnsbl: crate::abuse::dnsbl::DnsblChecker,
}

/// Counts a session against the limits until dropped.
pub struct SessionSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.shared.total_sessions.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut clients) = self.shared.clients.lock()
            && let Some(c) = clients.get_mut(&self.ip)
        {
            c.sessions = c.sessions.saturating_sub(1);
            if c.sessions == 0
                && c.auth_in_flight == 0
                && c.auth_failures.is_empty()
                && c.locked_until.is_none()
            {
                clients.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// The snapshot in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => Arc::clone(&s),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn tls(&self) -> Option<TlsAcceptor> {
        self.snapshot().tls.clone()
    }

    pub fn run_state(&self) -> watch::Receiver<RunState> {
        self.state.subscribe()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Takes a session slot, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &ServerSettings,
    ) -> Result<SessionSlot, &'static str> {
        let peer = ip;
        let ip = client_key(ip);
        let total = self.total_sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = SessionSlot {
            shared: Arc::clone(self),
            ip,
        };
        let per_ip = {
            let mut clients = self.clients.lock().map_err(|_| "internal error")?;
            if clients.len() >= CLIENTS_KEPT && !clients.contains_key(&ip) {
                let now = Instant::now();
                let window = Duration::from_secs(settings.auth_failure_window_secs);
                clients.retain(|_, c| !c.forgettable(now, window));
                // Still full: forget failures that did not lock anyone
                // out; a lockout in force is never forgotten early.
                if clients.len() >= CLIENTS_KEPT {
                    clients.retain(|_, c| {
                        c.sessions > 0
                            || c.auth_in_flight > 0
                            || c.locked_until.is_some_and(|u| u > now)
                    });
                }
            }
            let c = clients.entry(ip).or_default();
            c.sessions += 1;
            c.sessions
        };
        if total as usize > settings.max_sessions {
            return Err("Error: too many sessions, try again later");
        }
        if per_ip > settings.max_sessions_per_ip {
            // A LAN mail server or a NAT the lists allow is not one client
            // among many (Postfix exempts mynetworks too); the total cap
            // still applies.
            let exempt = settings.listed_ip_exempt && self.snapshot().policy.lists().allows(peer);
            if !exempt {
                return Err("Error: too many sessions from your address, try again later");
            }
        }
        Ok(slot)
    }

    /// Whether AUTH is locked out for this address now. Cheap when no
    /// address is locked out, which is almost always.
    pub fn auth_locked_out(&self, ip: IpAddr) -> bool {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if now_ms > self.lockouts_until.load(Ordering::Relaxed) {
            return false;
        }
        let ip = client_key(ip);
        self.clients
            .lock()
            .ok()
            .and_then(|c| c.get(&ip).and_then(|c| c.locked_until))
            .is_some_and(|until| Instant::now() < until)
    }

    /// Reserves one password check for this client. Refused when its
    /// failures in the window reach `auth-max-failures` or it is locked out
    /// ([`AuthRefusal::LockedOut`]), or when checks under way would take
    /// its remaining guesses ([`AuthRefusal::Busy`]).
    pub fn reserve_auth(
        self: &Arc<Self>,
        ip: IpAddr,
        settings: &ServerSettings,
    ) -> Result<AuthTicket, AuthRefusal> {
        let ip = client_key(ip);
        let mut clients = self.clients.lock().map_err(|_| AuthRefusal::Busy)?;
        let now = Instant::now();
        let c = clients.entry(ip).or_default();
        match c.locked_until {
            Some(until) if now < until => return Err(AuthRefusal::LockedOut),
            Some(_) => {
                c.locked_until = None;
                c.auth_failures.clear();
            }
            None => {}
        }
        let window = Duration::from_secs(settings.auth_failure_window_secs);
        c.auth_failures.retain(|t| now.duration_since(*t) < window);
        if c.auth_failures.len() >= settings.auth_max_failures {
            return Err(AuthRefusal::LockedOut);
        }
        if c.auth_failures.len() + c.auth_in_flight >= settings.auth_max_failures {
            // Not failures (yet): checks under way that could all fail.
            return Err(AuthRefusal::Busy);
        }
        c.auth_in_flight += 1;
        Ok(AuthTicket {
            shared: Arc::clone(self),
            ip,
            judged: false,
        })
    }
}

/// A listener the engine runs, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListenerStatus {
    pub binding: Binding,
    /// The address actually bound (differs for port 0), or the OS error.
    pub bound: Result<SocketAddr, String>,
}

/// A binding that could not be opened is tried again after this, doubling
/// up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

struct Listener {
    status: ListenerStatus,
    stop: Option<watch::Sender<bool>>,
    /// The binding's kind, changed in place (smtp, submission...): the
    /// socket stays open, the next connection gets the new kind.
    kind: Option<watch::Sender<BindKind>>,
    task: Option<JoinHandle<()>>,
    /// For a failed binding: when to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
}

type ListenerTable = Arc<Mutex<HashMap<SocketAddr, Listener>>>;

#[cfg(test)]
mod listen_tests {
    /// Sessions write each reply once; with Nagle on, a reply after an
    /// unacknowledged one would wait for the client's delayed ACK.
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}

#[cfg(test)]
mod client_key_tests {
    use super::client_key;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a = client_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client_key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = client_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap()),
            client_key("192.0.2.7".parse().unwrap())
        );
    }
}

fn listener_statuses(listeners: &ListenerTable) -> Vec<ListenerStatus> {
    let mut v: Vec<ListenerStatus> = listeners
        .lock()
        .map(|l| l.values().map(|l| l.status.clone()).collect())
        .unwrap_or_default();
    v.sort_by_key(|s| s.binding.addr);
    v
}

/// Asks the running engine to do something outside its schedule.
#[derive(Debug, Default)]
pub struct Nudges {
    /// Try the failed bindings again now.
    pub retry_bindings: Arc<tokio::sync::Notify>,
    /// Read the TLS certificate files again (SIGHUP).
    pub reload_tls: Arc<tokio::sync::Notify>,
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
    dir: DataDir,
    listeners: ListenerTable,
    sessions_done: mpsc::Receiver<()>,
    session_token: Option<mpsc::Sender<()>>,
    reload: Option<JoinHandle<()>>,
    /// Counts events and serves `/metrics` (when `metrics-listen` is set).
    metrics: Option<JoinHandle<()>>,
    /// Measures the spool's disk each second.
    space_watch: Option<JoinHandle<()>>,
    delivery: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    control: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    feed: Feed,
    nudges: Arc<Nudges>,
    /// The event log's writer: told to write what is left at the stop.
    log_writer: Option<crate::decision_log::LogWriter>,
    /// Held until the engine is dropped: no second engine on this data.
    lock: Option<EngineLock>,
}

/// Builds the TLS acceptor the settings ask for.
fn build_tls(db: &Path, settings: &ServerSettings) -> Result<TlsAcceptor, ConfigError> {
    let configured = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(c), Some(k)) => Some((Path::new(c.as_str()), Path::new(k.as_str()))),
        _ => None,
    };
    crate::tls::server_config(configured, db, &settings.hostname)
        .map(TlsAcceptor::from)
        .map_err(|e| {
            let (cert, key) = match configured {
                Some((c, k)) => (c.to_path_buf(), k.to_path_buf()),
                None => crate::tls::generated_paths(db),
            };
            ConfigError::Tls {
                cert: cert.display().to_string(),
                key: key.display().to_string(),
                detail: e.to_string(),
            }
        })
}

/// Reads the whole configuration in one transaction and builds the
/// snapshot from it. TLS is rebuilt when its settings changed or `tls` is
/// forced; otherwise the previous acceptor is kept.
/// What a configuration read gives besides the snapshot: the bindings, and
/// the quotas and bans the engine keeps live state for.
struct LoadedConfig {
    bindings: Vec<Binding>,
    quotas: Vec<crate::abuse::quota::Quota>,
    bans: Vec<crate::abuse::bans::Ban>,
    /// The TLS files did not load (reported once the snapshot is in force).
    tls_refused: Option<TlsRefused>,
    /// DKIM keys that cannot sign, with why (`dkim add` checks them, so
    /// only a database edited by other means has one).
    dkim_refused: Vec<String>,
}

impl LoadedConfig {
    /// Hands the quotas and bans to the live tables; forgets suspensions
    /// made here that the snapshot now holds.
    fn apply(
        self,
        shared: &Shared,
        previous: Option<&Snapshot>,
        snapshot: &Snapshot,
    ) -> Vec<Binding> {
        if let Some(refused) = self.tls_refused {
            shared.events.emit(refused.event());
        }
        for message in self.dkim_refused {
            shared.events.emit(Event::Error {
                session: None,
                message,
            });
        }
        shared.abuse.set_quotas(self.quotas);
        shared.abuse.replace_bans(self.bans);
        shared.abuse.suspensions_reloaded();
        // A login let back in starts its quotas from zero (or the next
        // message would suspend it again).
        if let Some(previous) = previous {
            for lifted in previous.suspended.difference(&snapshot.suspended) {
                let key = crate::abuse::quota::QuotaKey::Login(lifted.as_str().into());
                shared.abuse.with_quotas(|q| q.forget_key(&key));
            }
        }
        self.bindings
    }
}

fn load_snapshot(
    store: &mut Store,
    db: &Path,
    previous: Option<&Snapshot>,
    reload_tls: bool,
) -> Result<(Snapshot, LoadedConfig), ConfigError> {
    let config = store.engine_config().map_err(|e| ConfigError::Store {
        detail: e.to_string(),
    })?;
    let tls_changed = |p: &Snapshot| {
        p.settings.tls_cert_file != config.settings.tls_cert_file
            || p.settings.tls_key_file != config.settings.tls_key_file
            || p.settings.hostname != config.settings.hostname
    };
    // TLS files that do not load never hold the rest back: a renewal gone
    // wrong must not keep a removed user or a new deny entry out of force.
    // The previous certificate stays (at start: no TLS) and it is reported.
    let mut tls_refused = None;
    let mut dkim_refused = Vec::new();
    let tls = match previous {
        Some(p) if !reload_tls && !tls_changed(p) => p.tls.clone(),
        _ => match build_tls(db, &config.settings) {
            Ok(tls) => Some(tls),
            Err(error) => {
                let kept = previous.and_then(|p| p.tls.clone());
                tls_refused = Some(TlsRefused {
                    error,
                    kept: kept.is_some(),
                });
                kept
            }
        },
    };
    Ok((
        Snapshot {
            policy: Arc::new(config.policy),
            settings: Arc::new(config.settings),
            routes: Arc::new(config.routes),
            tls,
            suspended: Arc::new(config.suspended.into_iter().collect()),
            proxied: Arc::new(config.proxied),
            dkim: Arc::new(dkim_signers(previous, config.dkim_keys, &mut dkim_refused)),
        },
        LoadedConfig {
            bindings: config.bindings,
            quotas: config.quotas,
            bans: config.bans,
            tls_refused,
            dkim_refused,
        },
    ))
}

/// The DKIM signers; a key parsed before is reused (parsing an RSA key
/// costs milliseconds). A key that does not parse (`dkim add` checks
/// them) signs nothing, and `dkim show` says so.
fn dkim_signers(
    previous: Option<&Snapshot>,
    keys: Vec<crate::store::DkimKeyRow>,
    refused: &mut Vec<String>,
) -> HashMap<String, crate::dkim::DkimSigner> {
    let mut signers = HashMap::new();
    for crate::store::DkimKeyRow {
        domain,
        selector,
        pem,
    } in keys
    {
        // Keyed and signed by its DNS form (a key stored before keys were
        // kept so may be a U-label).
        let domain = crate::policy::address::ascii_domain(&domain).unwrap_or(domain);
        let kept = previous
            .and_then(|p| p.dkim.get(&domain))
            .filter(|s| s.selector == selector && s.pem_digest == crate::dkim::digest(&pem));
        let signer = match kept {
            Some(s) => s.clone(),
            None => match crate::dkim::DkimKey::from_pem(&pem) {
                Ok(key) => crate::dkim::DkimSigner {
                    domain: domain.clone(),
                    selector,
                    pem_digest: crate::dkim::digest(&pem),
                    key: Arc::new(key),
                },
                Err(e) => {
                    refused.push(format!(
                        "DKIM key for {domain} cannot sign, its mail goes unsigned: {e} (relaygate dkim add {domain} ... replaces it)"
                    ));
                    continue;
                }
            },
        };
        signers.insert(domain, signer);
    }
    signers
}

/// TLS files that did not load, and whether a previous certificate stays.
struct TlsRefused {
    error: ConfigError,
    kept: bool,
}

impl TlsRefused {
    fn event(self) -> Event {
        let stays = if self.kept {
            "the previous certificate stays in use"
        } else {
            "STARTTLS and implicit TLS are off until they load"
        };
        Event::Error {
            session: None,
            message: format!(
                "TLS files refused, {stays}; every other setting is applied: {}",
                self.error
            ),
        }
    }
}

impl Engine {
    /// Takes the data directory's lock, opens the database and the spool,
    /// binds every stored listener (one that fails is reported, retried,
    /// and the others run), opens the control socket and starts watching
    /// the configuration. Events go to `events`, which the caller has
    /// subscribed to first so that nothing (listener failures included) is
    /// missed. Must run inside a tokio runtime.
    pub async fn start(db: &Path, events: Arc<EventBus>) -> Result<Engine, EngineError> {
        let dir = DataDir::for_db(db);
        let lock = EngineLock::acquire(&dir)?;
        // Started on a full disk: the reserve goes first, or the databases
        // could not even be opened (SQLite makes its -wal and -shm files).
        if crate::spool_space::measure(db).is_ok_and(|free| free < crate::spool_space::NEARLY_FULL)
            && crate::spool_space::release_reserve(&dir.spool)
        {
            events.emit(Event::Error {
                session: None,
                message: format!(
                    "the disk is full at start: gave up the {} reserve beside the spool so that the engine can open its databases; free room on the disk",
                    crate::spool_space::size_text(crate::spool_space::RESERVE)
                ),
            });
        }
        let (store, snapshot, loaded, counts) = {
            let db = dir.db.clone();
            tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
                let mut store = Store::open(&db)?;
                let (snapshot, loaded) = load_snapshot(&mut store, &db, None, true)?;
                let counts = store.quota_counts()?;
                Ok((store, snapshot, loaded, counts))
            })
            .await
            .map_err(|e| EngineError::Store(crate::store::StoreError::Invalid(e.to_string())))??
        };
        let spool = Spool::open(&dir.spool)?;
        // Bodies left half-received by a crash: never acknowledged, so
        // never the spool's; the clients will send them again.
        let _ = std::fs::remove_dir_all(&dir.spill);
        crate::data_dir::ensure_private_dir(&dir.spill).map_err(|e| {
            EngineError::Spool(crate::spool::SpoolError::Write(format!(
                "{}: {e}",
                dir.spill.display()
            )))
        })?;
        let log_events = events.subscribe_without_commands(65_536);
        let (delivery_queue, fresh_work) = mpsc::channel(8192);
        let (state, _) = watch::channel(RunState::Running);
        let listeners: ListenerTable = Arc::new(Mutex::new(HashMap::new()));
        let in_flight: crate::delivery::InFlightTable = Default::default();
        let boards: Arc<SessionBoards> = Default::default();
        let spool_space = crate::spool_space::SpoolSpace::default();
        let feed = {
            let listeners = Arc::clone(&listeners);
            Feed::start(
                Arc::clone(&events),
                Arc::clone(&boards),
                Arc::new(move || listener_statuses(&listeners)),
                Arc::clone(&in_flight),
                spool_space.clone(),
            )
        };
        let snapshot = Arc::new(snapshot);
        let next_hops = Arc::new(crate::delivery::client::ConnectionPool::default());
        let shared = Arc::new(Shared {
            verifier: crate::delivery::recipient_verify::RecipientVerifier::new(Arc::clone(
                &next_hops,
            )),
            next_hops,
            dnsbl: Default::default(),
            snapshot: RwLock::new(Arc::clone(&snapshot)),
            events,
            spool,
            clients: Mutex::new(HashMap::new()),
            passwords: crate::credentials::PasswordChecker::for_this_machine(),
            logins: crate::credentials::LoginCache::new(Duration::from_secs(300)),
            lockouts_until: AtomicU64::new(0),
            spill_dir: dir.spill.clone(),
            in_flight,
            boards,
            total_sessions: AtomicU64::new(0),
            // Numbered on from the history's last session: a restart never
            // reuses a number the log and the trace already hold.
            next_session: AtomicU64::new(
                crate::decision_log::DecisionLog::open_read_only(&dir.log)
                    .map_or(0, |log| log.last_session()),
            ),
            state,
            delivery_queue,
            abuse: Default::default(),
            spool_space,
        });
        let bindings = loaded.apply(&shared, None, &snapshot);
        shared.abuse.with_quotas(|q| q.restore(counts));
        let (token, sessions_done) = mpsc::channel(1);
        let mut engine = Engine {
            shared,
            dir,
            listeners,
            sessions_done,
            session_token: Some(token),
            reload: None,
            metrics: None,
            space_watch: None,
            delivery: None,
            control: None,
            feed,
            nudges: Arc::new(Nudges::default()),
            log_writer: None,
            lock: Some(lock),
        };
        let for_log = Arc::clone(&engine.shared);
        let space = engine.shared.spool_space.clone();
        let log_writer = crate::decision_log::spawn_writer(
            &engine.dir.log,
            log_events,
            move || {
                let s = for_log.snapshot();
                crate::decision_log::Retention {
                    max_age: Duration::from_secs(s.settings.log_retention_days * 86_400),
                    max_rows: s.settings.log_max_rows,
                }
            },
            move || space.room().is_some_and(|r| r.is_short()),
        );
        let log_writer = log_writer.map(|w| engine.log_writer = Some(w));
        if let Err(e) = log_writer {
            engine.shared.events.emit(Event::Error {
                session: None,
                message: format!("event log disabled: {e}"),
            });
        }
        engine.shared.events.emit(Event::EngineStarted {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        let (stop_control, control_stopped) = watch::channel(false);
        match crate::control::server::start(
            &engine.dir.socket,
            Arc::clone(&engine.shared),
            engine.feed.clone(),
            Arc::clone(&engine.nudges.retry_bindings),
            control_stopped,
        ) {
            Ok(control) => engine.control = Some((stop_control, control)),
            // A socket file name too long even through its directory
            // (see `SocketAddress`): mail goes on; only the console cannot
            // attach.
            Err(crate::control::server::ControlError::Io { path, source })
                if source.kind() == std::io::ErrorKind::InvalidInput =>
            {
                engine.shared.events.emit(Event::Error {
                    session: None,
                    message: format!(
                        "control socket {}: {source}; the engine runs without it, so no console can attach (give the database a shorter path)",
                        path.display()
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        engine.reconcile_listeners(&bindings).await;
        let (stop_delivery, stopped) = watch::channel(false);
        engine.delivery = Some((
            stop_delivery,
            tokio::spawn(crate::delivery::scheduler::run(
                Arc::clone(&engine.shared),
                engine.dir.spool.clone(),
                fresh_work,
                stopped,
            )),
        ));
        engine.space_watch = Some(tokio::spawn(crate::spool_space::watch(
            Arc::clone(&engine.shared),
            // The real file: a spool linked to another disk is measured,
            // and keeps its reserve, there.
            std::fs::canonicalize(&engine.dir.spool).unwrap_or_else(|_| engine.dir.spool.clone()),
        )));
        engine.metrics = Some(tokio::spawn(crate::metrics::run(
            Arc::clone(&engine.shared),
            engine.dir.spool.clone(),
        )));
        engine.reload = Some(tokio::spawn(watch_config(
            store,
            Arc::clone(&engine.shared),
            engine.dir.db.clone(),
            Arc::clone(&engine.listeners),
            engine.session_token.clone(),
            Arc::clone(&engine.nudges),
            bindings,
        )));
        Ok(engine)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The live feed consoles attach to.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// The engine's paths.
    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// Ways to ask the engine for a retry or a TLS reload.
    pub fn nudges(&self) -> &Arc<Nudges> {
        &self.nudges
    }

    /// A new event subscriber.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.shared.events.subscribe(capacity)
    }

    /// Every configured listener and how it stands.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        listener_statuses(&self.listeners)
    }

    /// Whether every configured listener is listening.
    pub fn all_listening(&self) -> bool {
        self.listeners().iter().all(|l| l.bound.is_ok())
    }

    async fn reconcile_listeners(&self, bindings: &[Binding]) {
        if let Some(token) = &self.session_token {
            reconcile(&self.shared, &self.listeners, bindings, token, false).await;
        }
    }

    /// Stops accepting, lets messages in DATA finish for the grace period,
    /// then closes every session with 421 and waits for them all. The
    /// control socket is removed and the lock released last.
    pub async fn shutdown(mut self) {
        self.shared.events.emit(Event::EngineStopping {
            pid: std::process::id(),
            grace_secs: self.shared.snapshot().settings.shutdown_grace_secs,
        });
        if let Some(metrics) = self.metrics.take() {
            metrics.abort();
        }
        if let Some(watch) = self.space_watch.take() {
            watch.abort();
        }
        if let Some(reload) = self.reload.take() {
            reload.abort();
            let _ = reload.await;
        }
        // Delivery stops picking up work; attempts in flight are cut off
        // with the process and, never recorded, simply run again next time.
        if let Some((stop, task)) = self.delivery.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let grace = Duration::from_secs(self.shared.snapshot().settings.shutdown_grace_secs);
        self.shared.state.send_replace(RunState::Draining);
        let listeners: Vec<Listener> = self
            .listeners
            .lock()
            .map(|mut l| l.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for mut l in listeners {
            if let Some(stop) = l.stop.take() {
                let _ = stop.send(true);
            }
            if let Some(task) = l.task.take() {
                let _ = task.await;
            }
        }
        self.session_token.take();
        if tokio::time::timeout(grace, self.sessions_done.recv())
            .await
            .is_err()
        {
            self.shared.state.send_replace(RunState::Aborting);
            let _ = tokio::time::timeout(Duration::from_secs(5), self.sessions_done.recv()).await;
        }
        if let Some((stop, task)) = self.control.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let shared = Arc::clone(&self.shared);
        let db = self.dir.db.clone();
        let _ = tokio::task::spawn_blocking(move || save_abuse_state_at_exit(&db, &shared)).await;
        // Last: the events of the stop itself are in the log.
        if let Some(writer) = self.log_writer.take() {
            let _ =
                tokio::task::spawn_blocking(move || writer.finish(Duration::from_secs(5))).await;
        }
        self.lock.take();
    }
}

/// Opens listeners for new bindings, closes those no longer wanted, and
/// tries failed ones again when their back-off is over (or now, if
/// `retry_now`). A failure is reported once; the success after it too.
async fn reconcile(
    shared: &Arc<Shared>,
    listeners: &ListenerTable,
    bindings: &[Binding],
    token: &mpsc::Sender<()>,
    retry_now: bool,
) {
    let wanted: HashMap<SocketAddr, BindKind> = bindings.iter().map(|b| (b.addr, b.kind)).collect();
    let to_stop: Vec<Listener> = match listeners.lock() {
        Ok(mut map) => {
            // Only the kind changed on an open listener: changed in place,
            // no moment without a socket.
            for (addr, l) in map.iter_mut() {
                if let (Some(&kind), Some(tx)) = (wanted.get(addr), &l.kind)
                    && kind != l.status.binding.kind
                {
                    tx.send_replace(kind);
                    l.status.binding.kind = kind;
                    if let Ok(bound) = l.status.bound {
                        let proxied = shared.snapshot().proxied.contains_key(addr);
                        shared.events.emit(Event::ListenerUp {
                            addr: bound,
                            kind,
                            proxied,
                        });
                    }
                }
            }
            let gone: Vec<SocketAddr> = map
                .iter()
                .filter(|(addr, l)| wanted.get(*addr) != Some(&l.status.binding.kind))
                .map(|(addr, _)| *addr)
                .collect();
            gone.iter().filter_map(|a| map.remove(a)).collect()
        }
        Err(_) => Vec::new(),
    };
    for mut l in to_stop {
        let was_up = l.status.bound.is_ok();
        if let Some(stop) = l.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = l.task.take() {
            let _ = task.await;
        }
        if was_up {
            shared.events.emit(Event::ListenerDown {
                addr: l.status.binding.addr,
            });
        }
    }
    let now = Instant::now();
    for binding in bindings {
        let previous_retry = match listeners.lock() {
            Ok(m) => match m.get(&binding.addr) {
                None => None,
                Some(l) => match l.retry {
                    Some((due, wait)) if retry_now || now >= due => Some(wait),
                    _ => continue,
                },
            },
            Err(_) => continue,
        };
        let listener = open_listener(shared, *binding, token.clone(), previous_retry).await;
        if let Ok(mut map) = listeners.lock() {
            map.insert(binding.addr, listener);
        }
    }
}

/// A listening socket whose connections have Nagle off from the start:
/// on Linux an accepted socket inherits TCP_NODELAY from its listener, so
/// no system call per connection sets it.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn open_listener(
    shared: &Arc<Shared>,
    binding: Binding,
    token: mpsc::Sender<()>,
    previous_retry: Option<Duration>,
) -> Listener {
    match listen(binding.addr) {
        Ok(tcp) => {
            let bound = tcp.local_addr().unwrap_or(binding.addr);
            shared.events.emit(Event::ListenerUp {
                addr: bound,
                kind: binding.kind,
                proxied: shared.snapshot().proxied.contains_key(&binding.addr),
            });
            let (stop, stopped) = watch::channel(false);
            let (kind, kinds) = watch::channel(binding.kind);
            let task = tokio::spawn(accept_loop(
                Arc::clone(shared),
                tcp,
                binding,
                kinds,
                stopped,
                token,
            ));
            Listener {
                status: ListenerStatus {
                    binding,
                    bound: Ok(bound),
                },
                stop: Some(stop),
                kind: Some(kind),
                task: Some(task),
                retry: None,
            }
        }
        Err(e) => {
            let error = e.to_string();
            // Reported once; the retries are quiet until one succeeds.
            if previous_retry.is_none() {
                shared.events.emit(Event::ListenerFailed {
                    addr: binding.addr,
                    kind: binding.kind,
                    error: error.clone(),
                });
            }
            let wait = previous_retry.map_or(RETRY_FIRST, |w| (w * 2).min(RETRY_MAX));
            Listener {
                status: ListenerStatus {
                    binding,
                    bound: Err(error),
                },
                stop: None,
                kind: None,
                task: None,
                retry: Some((Instant::now() + wait, wait)),
            }
        }
    }
}

/// Failed accepts (out of file descriptors, mostly), said once a minute
/// with how many there were, not ten times a second while they last.
pub struct AcceptErrors {
    what: String,
    last_said: Option<std::time::Instant>,
    unsaid: u64,
}

impl AcceptErrors {
    pub fn new(what: impl Into<String>) -> AcceptErrors {
        AcceptErrors {
            what: what.into(),
            last_said: None,
            unsaid: 0,
        }
    }

    pub fn note(&mut self, shared: &Shared, e: &std::io::Error) {
        const EVERY: Duration = Duration::from_secs(60);
        if self.last_said.is_some_and(|at| at.elapsed() < EVERY) {
            self.unsaid += 1;
            return;
        }
        let more = match self.unsaid {
            0 => String::new(),
            n => format!(" ({n} more since the last report)"),
        };
        shared.events.emit(Event::Error {
            session: None,
            message: format!("{}: {e}{more}; said at most once a minute", self.what),
        });
        self.last_said = Some(std::time::Instant::now());
        self.unsaid = 0;
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    tcp: TcpListener,
    binding: Binding,
    kind: watch::Receiver<BindKind>,
    mut stopped: watch::Receiver<bool>,
    token: mpsc::Sender<()>,
) {
    // A listener on one address is every connection's local address: no
    // getsockname per connection.
    let bound = tcp.local_addr().ok().filter(|a| !a.ip().is_unspecified());
    let mut errors = AcceptErrors::new(format!(
        "accept on {}",
        tcp.local_addr().map(|a| a.to_string()).unwrap_or_default()
    ));
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Inherited from the listener on Linux (see `listen`).
                    #[cfg(not(target_os = "linux"))]
                    let _ = stream.set_nodelay(true);
                    let local = match bound {
                        Some(a) => a,
                        None => stream.local_addr().unwrap_or(peer),
                    };
                    let ctx = ConnectionContext {
                        shared: Arc::clone(&shared),
                        peer,
                        local,
                        kind: *kind.borrow(),
                        binding: binding.addr,
                        proxy: None,
                        _done: token.clone(),
                    };
                    // Boxed: the task then moves a pointer, not the
                    // session's 3.7 KB state, on spawn and on each stage.
                    tokio::spawn(Box::pin(serve_connection(ctx, stream)));
                }
                Err(e) => {
                    // Out of file descriptors and the like: report, back off.
                    errors.note(&shared, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Polls the database for changes and swaps in the new configuration;
/// retries failed bindings; reloads TLS when asked (SIGHUP).
async fn watch_config(
    store: Store,
    shared: Arc<Shared>,
    db: PathBuf,
    listeners: ListenerTable,
    token: Option<mpsc::Sender<()>>,
    nudges: Arc<Nudges>,
    mut bindings: Vec<Binding>,
) {
    let Some(token) = token else { return };
    let store = Arc::new(Mutex::new(store));
    let mut last_version: Option<i64> = None;
    let mut first = true;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut ticks: u64 = 0;
    loop {
        let mut reload_tls = false;
        let mut retry_now = false;
        tokio::select! {
            _ = tick.tick() => {}
            _ = nudges.reload_tls.notified() => reload_tls = true,
            _ = nudges.retry_bindings.notified() => retry_now = true,
        }
        let store2 = Arc::clone(&store);
        let previous = shared.snapshot();
        let db2 = db.clone();
        ticks += 1;
        // Quota counts are saved every 10 s; bans and suspensions made
        // here at the next tick.
        let counts_due = ticks.is_multiple_of(40);
        let shared2 = Arc::clone(&shared);
        let loaded = tokio::task::spawn_blocking(move || {
            let mut store = store2.lock().map_err(|_| ConfigError::Store {
                detail: "store lock poisoned".into(),
            })?;
            let saved = save_abuse_state(&mut store, &shared2, counts_due);
            let version = store.data_version().map_err(|e| ConfigError::Store {
                detail: e.to_string(),
            })?;
            let must_reload = saved?;
            if last_version == Some(version) && !reload_tls && !must_reload {
                return Ok(None);
            }
            let result = load_snapshot(&mut store, &db2, Some(&previous), reload_tls);
            Ok(Some((version, result)))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError::Store {
                detail: e.to_string(),
            })
        });
        match loaded {
            Ok(None) => {}
            Err(error) => shared.events.emit(Event::ConfigRejected { error }),
            Ok(Some((version, result))) => {
                last_version = Some(version);
                match result {
                    Ok((snapshot, loaded)) => {
                        let (allow, deny) = count_lists(&snapshot.policy);
                        let snapshot = Arc::new(snapshot);
                        let before = shared.snapshot();
                        // The new snapshot first: the suspensions made here
                        // are forgotten only once it holds them.
                        if let Ok(mut snap) = shared.snapshot.write() {
                            *snap = Arc::clone(&snapshot);
                        }
                        // A route, local domain or setting edited: what the
                        // routes said of recipients, and the blocklists of
                        // clients, may no longer hold. (Not for a ban or a
                        // suspension saved: those reload too, and under
                        // attack would empty both memories at every ban.)
                        if before.routes != snapshot.routes
                            || before.settings != snapshot.settings
                            || before.policy.local_domains() != snapshot.policy.local_domains()
                        {
                            shared.verifier.forget_all();
                            shared.dnsbl.forget_all();
                        }
                        let new_bindings = loaded.apply(&shared, Some(&before), &snapshot);
                        // The first read repeats the one made at start.
                        if !first || reload_tls {
                            shared.events.emit(Event::PolicyReloaded { allow, deny });
                        }
                        // Said at start and at each change of the switches
                        // (not at every ban saved), while it lasts.
                        if first || before.policy.switches() != snapshot.policy.switches() {
                            for class in snapshot.policy.switches().open_to_anyone() {
                                shared.events.emit(Event::OpenToAnyone { class });
                            }
                        }
                        first = false;
                        bindings = new_bindings;
                    }
                    Err(error) => shared.events.emit(Event::ConfigRejected { error }),
                }
            }
        }
        reconcile(&shared, &listeners, &bindings, &token, retry_now).await;
    }
}

/// Writes what the engine itself decided (bans, suspensions, and when
/// `counts` is set the quota counts) through its own connection, which
/// does not wake its own reload; true if a reload must follow (a ban or
/// suspension is now in the database).
fn save_abuse_state(store: &mut Store, shared: &Shared, counts: bool) -> Result<bool, ConfigError> {
    let now = crate::abuse::now_ms();
    let bans = shared.abuse.take_unsaved_bans();
    let suspensions = shared.abuse.take_unsaved_suspensions();
    let counts = if counts {
        shared
            .abuse
            .with_quotas(|q| {
                q.forget_spent(now);
                q.take_dirty()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if bans.is_empty() && suspensions.is_empty() && counts.is_empty() {
        return Ok(false);
    }
    if let Err(e) = store.save_abuse_state(&counts, &bans, &suspensions, now) {
        // Kept, and tried again at the next tick (counts are approximate
        // anyway; they are taken again when they next change).
        shared.abuse.save_failed(bans, &suspensions);
        return Err(ConfigError::Store {
            detail: format!("saving bans and suspensions (tried again): {e}"),
        });
    }
    Ok(!bans.is_empty() || !suspensions.is_empty())
}

/// The engine's last save at shutdown: quota counts, bans, suspensions.
fn save_abuse_state_at_exit(db: &Path, shared: &Shared) {
    if let Ok(mut store) = Store::open(db) {
        shared.abuse.with_quotas(|q| {
            // Everything, not only what changed since the last save.
            q.mark_all_dirty();
        });
        if let Err(e) = save_abuse_state(&mut store, shared, true) {
            shared.events.emit(Event::ConfigRejected { error: e });
        }
    }
}

fn count_lists(policy: &Policy) -> (usize, usize) {
    let allow = policy
        .lists()
        .entries()
        .iter()
        .filter(|e| e.list == crate::policy::ip_lists::ListKind::Allow)
        .count();
    (allow, policy.lists().len() - allow)
}
