//! The engine: owns the listeners, the policy snapshot, the spool and the
//! event bus. `relaygate serve --headless` and the console both run this
//! one type.
//!
//! Configuration is polled from the database (`PRAGMA data_version`, four
//! times a second): a change made by any other process (the CLI, the
//! console) is validated, compiled, and swapped in whole; sessions take one
//! snapshot per transaction and never see half an edit. A configuration
//! that does not compile leaves the old snapshot in force.

use crate::bindings::{BindKind, Binding};
use crate::events::{Event, EventBus, Stamped};
use crate::policy::Policy;
use crate::server_settings::ServerSettings;
use crate::smtp::server::{ConnectionContext, serve_connection};
use crate::spool::{Spool, spool_path_for};
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

/// What a session reads at the start of each transaction.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Arc<Policy>,
    pub settings: Arc<ServerSettings>,
    /// Delivery routes, the default `*` last.
    pub routes: Arc<Vec<crate::delivery::Route>>,
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
}

/// Per client IP: concurrent sessions and recent AUTH failures.
#[derive(Debug, Default)]
struct ClientState {
    sessions: usize,
    auth_failures: Vec<Instant>,
    locked_until: Option<Instant>,
}

/// State shared by the engine and every session.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    tls: RwLock<Option<TlsAcceptor>>,
    pub events: Arc<EventBus>,
    pub spool: Spool,
    clients: Mutex<HashMap<IpAddr, ClientState>>,
    total_sessions: AtomicU64,
    next_session: AtomicU64,
    state: watch::Sender<RunState>,
    /// Hands each newly spooled message to delivery at once; when full,
    /// the spool scan picks the message up instead.
    pub delivery_queue: mpsc::Sender<crate::delivery::scheduler::NewWork>,
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
            if c.sessions == 0 && c.auth_failures.is_empty() && c.locked_until.is_none() {
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
        self.tls.read().ok().and_then(|t| t.clone())
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
        let total = self.total_sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = SessionSlot {
            shared: Arc::clone(self),
            ip,
        };
        let per_ip = {
            let mut clients = self.clients.lock().map_err(|_| "internal error")?;
            let c = clients.entry(ip).or_default();
            c.sessions += 1;
            c.sessions
        };
        if total as usize > settings.max_sessions {
            return Err("Error: too many sessions, try again later");
        }
        if per_ip > settings.max_sessions_per_ip {
            return Err("Error: too many sessions from your address, try again later");
        }
        Ok(slot)
    }

    /// Whether AUTH is locked out for this client IP now.
    pub fn auth_locked_out(&self, ip: IpAddr) -> bool {
        let Ok(mut clients) = self.clients.lock() else {
            return false;
        };
        let Some(c) = clients.get_mut(&ip) else {
            return false;
        };
        match c.locked_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                c.locked_until = None;
                c.auth_failures.clear();
                false
            }
            None => false,
        }
    }

    /// Records an AUTH failure; returns true if the client is now locked out.
    pub fn record_auth_failure(&self, ip: IpAddr, settings: &ServerSettings) -> bool {
        let Ok(mut clients) = self.clients.lock() else {
            return false;
        };
        let c = clients.entry(ip).or_default();
        let now = Instant::now();
        let window = Duration::from_secs(settings.auth_failure_window_secs);
        c.auth_failures.retain(|t| now.duration_since(*t) < window);
        c.auth_failures.push(now);
        if c.auth_failures.len() >= settings.auth_max_failures {
            c.locked_until = Some(now + Duration::from_secs(settings.auth_lockout_secs));
            true
        } else {
            false
        }
    }
}

/// A listener the engine runs, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub binding: Binding,
    /// The address actually bound (differs for port 0), or the OS error.
    pub bound: Result<SocketAddr, String>,
}

struct Listener {
    status: ListenerStatus,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

/// The running engine.
pub struct Engine {
    shared: Arc<Shared>,
    db: PathBuf,
    listeners: Arc<Mutex<HashMap<SocketAddr, Listener>>>,
    sessions_done: mpsc::Receiver<()>,
    session_token: Option<mpsc::Sender<()>>,
    reload: Option<JoinHandle<()>>,
    delivery: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Engine {
    /// Opens the database and the spool, binds every stored listener
    /// (one that fails is reported and the others run) and starts watching
    /// the configuration. Events go to `events`, which the caller has
    /// subscribed to first so that nothing (listener failures included) is
    /// missed. Must run inside a tokio runtime.
    pub async fn start(db: &Path, events: Arc<EventBus>) -> Result<Engine, EngineError> {
        let db = db.to_path_buf();
        let (store, policy, settings, bindings, routes) = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
                let mut store = Store::open(&db)?;
                let policy = store.load_policy()?;
                let settings = store.server_settings()?;
                let bindings = store.bindings()?;
                let routes = store.routes()?;
                Ok((store, policy, settings, bindings, routes))
            })
            .await
            .map_err(|e| EngineError::Store(crate::store::StoreError::Invalid(e.to_string())))??
        };
        let spool = Spool::open(&spool_path_for(&db))?;
        let log_events = events.subscribe_without_commands(65_536);
        let (delivery_queue, fresh_work) = mpsc::channel(8192);
        let (state, _) = watch::channel(RunState::Running);
        let shared = Arc::new(Shared {
            snapshot: RwLock::new(Arc::new(Snapshot {
                policy: Arc::new(policy),
                settings: Arc::new(settings.clone()),
                routes: Arc::new(routes),
            })),
            tls: RwLock::new(None),
            events,
            spool,
            clients: Mutex::new(HashMap::new()),
            total_sessions: AtomicU64::new(0),
            next_session: AtomicU64::new(0),
            state,
            delivery_queue,
        });
        let (token, sessions_done) = mpsc::channel(1);
        let mut engine = Engine {
            shared,
            db,
            listeners: Arc::new(Mutex::new(HashMap::new())),
            sessions_done,
            session_token: Some(token),
            reload: None,
            delivery: None,
        };
        let for_log = Arc::clone(&engine.shared);
        let log_writer = crate::decision_log::spawn_writer(
            &crate::decision_log::log_path_for(&engine.db),
            log_events,
            move || {
                let s = for_log.snapshot();
                crate::decision_log::Retention {
                    max_age: Duration::from_secs(s.settings.log_retention_days * 86_400),
                    max_rows: s.settings.log_max_rows,
                }
            },
        );
        if let Err(e) = log_writer {
            engine.shared.events.emit(Event::Error {
                session: None,
                message: format!("event log disabled: {e}"),
            });
        }
        engine.load_tls(&settings);
        engine.reconcile_listeners(&bindings).await;
        let (stop_delivery, stopped) = watch::channel(false);
        engine.delivery = Some((
            stop_delivery,
            tokio::spawn(crate::delivery::scheduler::run(
                Arc::clone(&engine.shared),
                spool_path_for(&engine.db),
                fresh_work,
                stopped,
            )),
        ));
        engine.reload = Some(tokio::spawn(watch_config(
            store,
            Arc::clone(&engine.shared),
            engine.db.clone(),
            Arc::clone(&engine.listeners),
            engine.session_token.clone(),
            settings,
        )));
        Ok(engine)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// A new event subscriber.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.shared.events.subscribe(capacity)
    }

    /// Every configured listener and how it stands.
    pub fn listeners(&self) -> Vec<ListenerStatus> {
        let mut v: Vec<ListenerStatus> = self
            .listeners
            .lock()
            .map(|l| l.values().map(|l| l.status.clone()).collect())
            .unwrap_or_default();
        v.sort_by_key(|s| s.binding.addr);
        v
    }

    fn load_tls(&self, settings: &ServerSettings) {
        load_tls(&self.shared, &self.db, settings);
    }

    async fn reconcile_listeners(&self, bindings: &[Binding]) {
        if let Some(token) = &self.session_token {
            reconcile(&self.shared, &self.listeners, bindings, token).await;
        }
    }

    /// Stops accepting, lets messages in DATA finish for the grace period,
    /// then closes every session with 421 and waits for them all.
    pub async fn shutdown(mut self) {
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
    }
}

fn load_tls(shared: &Shared, db: &Path, settings: &ServerSettings) {
    let configured = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(c), Some(k)) => Some((Path::new(c.as_str()), Path::new(k.as_str()))),
        _ => None,
    };
    let acceptor = match crate::tls::server_config(configured, db, &settings.hostname) {
        Ok(config) => Some(TlsAcceptor::from(config)),
        Err(e) => {
            shared.events.emit(Event::Error {
                session: None,
                message: format!("TLS disabled: {e}"),
            });
            None
        }
    };
    if let Ok(mut tls) = shared.tls.write() {
        *tls = acceptor;
    }
}

/// Opens listeners for new bindings and closes those no longer wanted.
async fn reconcile(
    shared: &Arc<Shared>,
    listeners: &Arc<Mutex<HashMap<SocketAddr, Listener>>>,
    bindings: &[Binding],
    token: &mpsc::Sender<()>,
) {
    let wanted: HashMap<SocketAddr, BindKind> = bindings.iter().map(|b| (b.addr, b.kind)).collect();
    let to_stop: Vec<Listener> = match listeners.lock() {
        Ok(mut map) => {
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
        if let Some(stop) = l.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = l.task.take() {
            let _ = task.await;
        }
        shared.events.emit(Event::ListenerDown {
            addr: l.status.binding.addr,
        });
    }
    for binding in bindings {
        let present = listeners
            .lock()
            .map(|m| m.contains_key(&binding.addr))
            .unwrap_or(true);
        if present {
            continue;
        }
        let listener = open_listener(shared, *binding, token.clone()).await;
        if let Ok(mut map) = listeners.lock() {
            map.insert(binding.addr, listener);
        }
    }
}

async fn open_listener(
    shared: &Arc<Shared>,
    binding: Binding,
    token: mpsc::Sender<()>,
) -> Listener {
    match TcpListener::bind(binding.addr).await {
        Ok(tcp) => {
            let bound = tcp.local_addr().unwrap_or(binding.addr);
            shared.events.emit(Event::ListenerUp {
                addr: bound,
                kind: binding.kind,
            });
            let (stop, stopped) = watch::channel(false);
            let task = tokio::spawn(accept_loop(
                Arc::clone(shared),
                tcp,
                binding.kind,
                stopped,
                token,
            ));
            Listener {
                status: ListenerStatus {
                    binding,
                    bound: Ok(bound),
                },
                stop: Some(stop),
                task: Some(task),
            }
        }
        Err(e) => {
            let error = e.to_string();
            shared.events.emit(Event::ListenerFailed {
                addr: binding.addr,
                kind: binding.kind,
                error: error.clone(),
            });
            Listener {
                status: ListenerStatus {
                    binding,
                    bound: Err(error),
                },
                stop: None,
                task: None,
            }
        }
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    tcp: TcpListener,
    kind: BindKind,
    mut stopped: watch::Receiver<bool>,
    token: mpsc::Sender<()>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().unwrap_or(peer);
                    let ctx = ConnectionContext {
                        shared: Arc::clone(&shared),
                        peer,
                        local,
                        kind,
                        _done: token.clone(),
                    };
                    tokio::spawn(serve_connection(ctx, stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: report, back off.
                    shared.events.emit(Event::Error { session: None, message: format!("accept on {}: {e}", tcp.local_addr().map(|a| a.to_string()).unwrap_or_default()) });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Polls the database for changes and swaps in the new configuration.
async fn watch_config(
    store: Store,
    shared: Arc<Shared>,
    db: PathBuf,
    listeners: Arc<Mutex<HashMap<SocketAddr, Listener>>>,
    token: Option<mpsc::Sender<()>>,
    mut settings: ServerSettings,
) {
    let Some(token) = token else { return };
    let store = Arc::new(Mutex::new(store));
    let mut last_version: Option<i64> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let store2 = Arc::clone(&store);
        let loaded = tokio::task::spawn_blocking(move || {
            let mut store = store2
                .lock()
                .map_err(|_| "store lock poisoned".to_string())?;
            let version = store.data_version().map_err(|e| e.to_string())?;
            if last_version == Some(version) {
                return Ok(None);
            }
            let result = (|| {
                Ok::<_, crate::store::StoreError>((
                    store.load_policy()?,
                    store.server_settings()?,
                    store.bindings()?,
                    store.routes()?,
                ))
            })();
            Ok(Some((version, result.map_err(|e| e.to_string()))))
        })
        .await;
        let (version, result) = match loaded {
            Ok(Ok(Some(v))) => v,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                shared.events.emit(Event::ConfigRejected { error: e });
                continue;
            }
            Err(e) => {
                shared.events.emit(Event::ConfigRejected {
                    error: e.to_string(),
                });
                continue;
            }
        };
        let first = last_version.is_none();
        last_version = Some(version);
        match result {
            Ok((policy, new_settings, bindings, routes)) => {
                let (allow, deny) = count_lists(&policy);
                if new_settings.tls_cert_file != settings.tls_cert_file
                    || new_settings.tls_key_file != settings.tls_key_file
                    || new_settings.hostname != settings.hostname
                {
                    load_tls(&shared, &db, &new_settings);
                }
                settings = new_settings.clone();
                if let Ok(mut snap) = shared.snapshot.write() {
                    *snap = Arc::new(Snapshot {
                        policy: Arc::new(policy),
                        settings: Arc::new(new_settings),
                        routes: Arc::new(routes),
                    });
                }
                if !first {
                    shared.events.emit(Event::PolicyReloaded { allow, deny });
                }
                reconcile(&shared, &listeners, &bindings, &token).await;
            }
            Err(error) => shared.events.emit(Event::ConfigRejected { error }),
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
