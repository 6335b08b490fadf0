//! The console's only contact with the store, the spool and files: it runs
//! the app's [`Effect`]s through the same `Store` and `Spool` methods the
//! CLI uses (same validation, same transactions) and answers each with an
//! [`Action`].

use super::action::{Action, Effect, PasswordWrite, QueueOp, TraceAsk};
use super::app::{App, WATCH_ONLY};
use super::traffic::{LogLine, epoch_ms};
use crate::bindings::Binding;
use crate::control::protocol::ClientMessage;
use crate::decision_log::{DecisionLog, log_path_for};
use crate::policy::ip_lists::ListKind;
use crate::policy::rules::Rule;
use crate::policy::settings::{AuthMode, Switches};
use crate::policy::{Login, Policy, PolicyConfig};
use crate::queue_admin::plural;
use crate::spool::{Spool, SpoolReader, spool_path_for};
use crate::store::{Store, StoreError, UserInfo};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The configuration as the panels show it, read in one go.
#[derive(Debug, Clone, Default)]
pub struct ConfigView {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub domains: Vec<String>,
    /// Local domains with no delivery route: their mail is held.
    pub unrouted_domains: Vec<String>,
    pub users: Vec<UserInfo>,
    pub auth_mode: AuthMode,
    pub specified_user: Option<String>,
    pub switches: Switches,
    pub plaintext_auth: bool,
    /// `verify-recipients`: local recipients are asked about at their route.
    pub verify_recipients: bool,
    /// `delivery off`: nothing is sent (the queue only grows).
    pub delivery_off: bool,
    pub rules: Vec<Rule>,
    pub bindings: Vec<Binding>,
    /// The stored configuration, for the test box's "edited" policy.
    pub policy_config: PolicyConfig,
    /// The saved policy, compiled: what the engine has in force.
    pub policy: Arc<Policy>,
    pub quotas: Vec<crate::abuse::quota::Quota>,
    /// The keys nearest their quota, as the engine last saved them.
    pub quota_usage: Vec<crate::abuse::quota::QuotaUse>,
    /// Bans in force, newest first.
    pub bans: Vec<crate::abuse::bans::Ban>,
}

/// The store, the spool and the file system, as the console uses them.
pub struct ConsoleIo {
    /// `None` for a console that watches only (no access to the database).
    store: Option<Store>,
    /// Requests to the engine (in this process or over the socket).
    control: Option<tokio::sync::mpsc::UnboundedSender<ClientMessage>>,
    db: PathBuf,
    spool_path: PathBuf,
    spool: Option<Spool>,
    last_version: Option<i64>,
    /// Where slow reads send their answer, so that the screen keeps
    /// answering keys meanwhile (the real console); `None` reads inline
    /// (tests, benchmarks).
    background: Option<std::sync::mpsc::SyncSender<super::event::ConsoleEvent>>,
    /// A queue read is under way on its own thread.
    reading_queue: Arc<std::sync::atomic::AtomicBool>,
}

impl ConsoleIo {
    /// Opens the store; `spool` is the engine's handle when one runs in
    /// this process (else the spool is opened when first needed).
    pub fn open(db: &Path, spool: Option<Spool>) -> Result<ConsoleIo, StoreError> {
        let store = Store::open(db)?;
        Ok(ConsoleIo {
            db: db.to_path_buf(),
            spool_path: spool_path_for(db),
            store: Some(store),
            control: None,
            spool,
            last_version: None,
            background: None,
            reading_queue: Default::default(),
        })
    }

    /// For a console that may only watch: no store, no spool.
    pub fn watching(db: &Path) -> ConsoleIo {
        ConsoleIo {
            db: db.to_path_buf(),
            spool_path: spool_path_for(db),
            store: None,
            control: None,
            spool: None,
            last_version: None,
            background: None,
            reading_queue: Default::default(),
        }
    }

    /// Where requests to the engine go.
    pub fn set_control(&mut self, control: tokio::sync::mpsc::UnboundedSender<ClientMessage>) {
        self.control = Some(control);
    }

    /// Reads the queue, searches the event log and hashes passwords on
    /// threads of their own from now on, answering through `events` (a
    /// queue of 100,000 messages takes a good part of a second to read,
    /// an argon2 hash about as long).
    pub fn read_in_background(
        &mut self,
        events: std::sync::mpsc::SyncSender<super::event::ConsoleEvent>,
    ) {
        self.background = Some(events);
    }

    fn store(&mut self) -> Result<&mut Store, String> {
        self.store.as_mut().ok_or_else(|| WATCH_ONLY.to_string())
    }

    /// Reads everything the panels show.
    pub fn load_config(&mut self) -> Result<ConfigView, StoreError> {
        let Some(store) = self.store.as_mut() else {
            return Err(StoreError::Invalid(WATCH_ONLY.into()));
        };
        self.last_version = Some(store.data_version()?);
        let policy_config = store.load_config()?;
        let policy =
            Policy::compile(&policy_config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (auth_mode, specified_user) = store.auth_mode()?;
        let settings = store.server_settings()?;
        Ok(ConfigView {
            allow: store.list_entries(ListKind::Allow)?,
            deny: store.list_entries(ListKind::Deny)?,
            domains: store.domains()?,
            unrouted_domains: store.local_domains_without_route()?,
            users: store.users()?,
            auth_mode,
            specified_user,
            switches: policy_config.switches,
            plaintext_auth: settings.plaintext_auth,
            verify_recipients: settings.verify_recipients,
            delivery_off: !settings.delivery,
            rules: store.rules()?,
            bindings: store.bindings()?,
            policy_config,
            policy: Arc::new(policy),
            quota_usage: {
                let mut table = crate::abuse::quota::QuotaTable::default();
                table.set_quotas(store.quotas()?);
                table.restore(store.quota_counts()?);
                let mut usage = table.usage(crate::abuse::now_ms());
                usage.truncate(30);
                usage
            },
            quotas: store.quotas()?,
            bans: {
                let now = crate::abuse::now_ms();
                // Newest first, as stored.
                store
                    .bans()?
                    .into_iter()
                    .filter(|b| b.active(now))
                    .collect()
            },
        })
    }

    fn reload(&mut self) -> Vec<Action> {
        match self.load_config() {
            Ok(view) => vec![Action::ConfigLoaded(Box::new(view))],
            Err(e) => vec![Action::Done(Err(format!(
                "could not read the configuration: {e}"
            )))],
        }
    }

    /// The newest persisted log lines written before `before` (this run's
    /// own events arrive live), oldest first; empty if there is no log.
    pub fn history(&self, limit: usize, before: SystemTime) -> Vec<LogLine> {
        let before_ms = epoch_ms(before);
        let Ok(log) = DecisionLog::open_read_only(&log_path_for(&self.db)) else {
            return Vec::new();
        };
        log.recent(limit)
            .unwrap_or_default()
            .into_iter()
            .filter_map(super::traffic::history_line)
            .filter(|l| l.at_ms < before_ms)
            .collect()
    }

    /// A trace from the event log, as lines (the same as `relaygate
    /// trace` prints). A search over a million events takes milliseconds;
    /// what can take longer is the log catching up with the screen, so
    /// with a background it runs on its own thread.
    fn trace(&self, ask: TraceAsk) -> Vec<Action> {
        let (db, spool_path) = (self.db.clone(), self.spool_path.clone());
        let find = move || Action::Traced(trace_lines(&db, &spool_path, &ask, TRACE_CATCH_UP));
        match self.background.clone() {
            None => vec![find()],
            Some(events) => {
                let spawned = std::thread::Builder::new()
                    .name("console-trace".into())
                    .spawn(move || {
                        let _ = events.send(super::event::ConsoleEvent::Done(Box::new(find())));
                    });
                match spawned {
                    Ok(_) => Vec::new(),
                    Err(e) => vec![Action::Traced(Err(format!("cannot trace: {e}")))],
                }
            }
        }
    }

    fn spool(&mut self) -> Result<&Spool, String> {
        if self.spool.is_none() {
            self.spool = Some(Spool::open(&self.spool_path).map_err(|e| e.to_string())?);
        }
        self.spool
            .as_ref()
            .ok_or_else(|| "the spool is not open".to_string())
    }

    /// Runs one effect; the actions say how it went.
    pub fn run(&mut self, effect: Effect) -> Vec<Action> {
        let (result, reload) = match effect {
            Effect::PollStore => {
                let changed = match self.store.as_ref().map(|s| s.data_version()) {
                    Some(Ok(v)) => self.last_version != Some(v),
                    _ => false,
                };
                return if changed { self.reload() } else { Vec::new() };
            }
            Effect::Trace(ask) => return self.trace(ask),
            Effect::LoadQueue => {
                let read = |path: &Path| {
                    SpoolReader::open(path)
                        .and_then(|r| r.listing())
                        .map_err(|e| format!("cannot read the queue: {e}"))
                };
                let Some(events) = self.background.clone() else {
                    return vec![Action::QueueLoaded(read(&self.spool_path))];
                };
                use std::sync::atomic::Ordering;
                // One read at a time: a slow read is not piled on.
                if self.reading_queue.swap(true, Ordering::AcqRel) {
                    return Vec::new();
                }
                let (path, busy) = (self.spool_path.clone(), Arc::clone(&self.reading_queue));
                let spawned = std::thread::Builder::new()
                    .name("console-queue".into())
                    .spawn(move || {
                        let started = std::time::Instant::now();
                        let listing = read(&path);
                        let took = started.elapsed();
                        let _ = events.send(super::event::ConsoleEvent::Done(Box::new(
                            Action::QueueLoaded(listing),
                        )));
                        // A big queue is read at most a quarter of the
                        // time (100,000 messages: about every 2 s).
                        std::thread::sleep(took * 3);
                        busy.store(false, Ordering::Release);
                    });
                if let Err(e) = spawned {
                    self.reading_queue.store(false, Ordering::Release);
                    return vec![Action::QueueLoaded(Err(format!(
                        "cannot read the queue: {e}"
                    )))];
                }
                return Vec::new();
            }
            Effect::ReadImportFile { list, path } => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"));
                return vec![Action::ImportRead { list, path, text }];
            }
            Effect::Queue(op) => (self.queue(op), false),
            Effect::Control(request) => {
                if let Some(control) = &self.control {
                    let _ = control.send(request);
                }
                return Vec::new();
            }
            Effect::SearchHistory(search) => {
                let path = log_path_for(&self.db);
                let find = move || {
                    let found = DecisionLog::open_read_only(&path)
                        .and_then(|log| log.search(&search, super::HISTORY_LINES))
                        .map(|records| {
                            records
                                .into_iter()
                                .filter_map(super::traffic::history_line)
                                .collect()
                        })
                        .map_err(|e| format!("cannot search the event log: {e}"));
                    Action::HistoryFound { search, found }
                };
                return match self.background.clone() {
                    None => vec![find()],
                    Some(events) => {
                        let spawned = std::thread::Builder::new()
                            .name("console-search".into())
                            .spawn(move || {
                                let _ =
                                    events.send(super::event::ConsoleEvent::Done(Box::new(find())));
                            });
                        match spawned {
                            Ok(_) => Vec::new(),
                            Err(e) => vec![Action::Done(Err(format!("cannot search: {e}")))],
                        }
                    }
                };
            }
            Effect::HashPassword {
                ticket,
                write,
                password,
            } => {
                let hash = move || Action::PasswordHashed {
                    ticket,
                    write,
                    hash: crate::credentials::hash_password(&password).map_err(|e| e.to_string()),
                };
                return match self.background.clone() {
                    None => vec![hash()],
                    Some(events) => {
                        let spawned = std::thread::Builder::new()
                            .name("console-hash".into())
                            .spawn(move || {
                                let _ =
                                    events.send(super::event::ConsoleEvent::Done(Box::new(hash())));
                            });
                        match spawned {
                            Ok(_) => Vec::new(),
                            Err(e) => vec![Action::Done(Err(format!(
                                "not saved: cannot hash the password: {e}"
                            )))],
                        }
                    }
                };
            }
            Effect::LoadHistory { before } => {
                return vec![Action::History(self.history(super::HISTORY_LINES, before))];
            }
            Effect::CountQueue => {
                let queued = SpoolReader::open(&self.spool_path)
                    .and_then(|r| r.listing())
                    .map(|l| l.len())
                    .map_err(|e| e.to_string());
                return vec![Action::QuitQuestion { queued }];
            }
            other => (self.write_config(other), true),
        };
        let mut actions = vec![Action::Done(result)];
        if reload {
            actions.extend(self.reload());
        }
        actions
    }

    fn write_config(&mut self, effect: Effect) -> Result<String, String> {
        let store = self.store()?;
        let e = |e: StoreError| format!("not saved: {e}");
        match effect {
            Effect::SaveLists(edits) => save_lists(store, &edits),
            Effect::AddQuota {
                scope,
                unit,
                rate,
                suspend,
            } => store
                .add_quota(scope, unit, rate, suspend)
                .map(|q| format!("saved: quota {q}"))
                .map_err(e),
            Effect::RemoveQuota(id) => store
                .remove_quota(id)
                .map(|q| format!("removed quota {q}"))
                .map_err(e),
            Effect::AddBan { net, time, note } => {
                let now = crate::abuse::now_ms();
                store
                    .bans()
                    .map_err(|x| x.to_string())
                    .and_then(|stored| {
                        crate::abuse::bans::manual_ban(&net, &time, &note, &stored, now)
                    })
                    .and_then(|ban| {
                        store.put_ban(&ban).map_err(|x| x.to_string())?;
                        Ok(format!(
                            "banned {} until {}",
                            ban.net,
                            crate::abuse::bans::until_text(ban.until, now)
                        ))
                    })
            }
            Effect::LiftBan(net) => match store.remove_ban(&net) {
                Ok(true) => Ok(format!("lifted the ban of {net}")),
                Ok(false) => Err(format!("{net} was not banned")),
                Err(x) => Err(x.to_string()),
            },
            Effect::Unsuspend(name) => store
                .set_suspended(&name, None)
                .map(|()| format!("lifted the suspension of {name}"))
                .map_err(e),
            Effect::AddDomain(name) => store
                .add_domain(&name)
                .map(|d| format!("saved: {d} is a local domain"))
                .map_err(e),
            Effect::RemoveDomain(name) => store
                .remove_domain(&name)
                .map(|d| format!("saved: {d} is no longer a local domain"))
                .map_err(e),
            Effect::SavePassword { write, hash } => match write {
                PasswordWrite::AddUser { name } => store
                    .add_user(&name, &hash)
                    .map(|()| format!("saved: user {name} added"))
                    .map_err(e),
                PasswordWrite::SetPassword { name } => store
                    .set_password(&name, &hash)
                    .map(|()| format!("saved: new password for {name}"))
                    .map_err(e),
                PasswordWrite::SpecifiedLogin { name } => {
                    let login = Login {
                        name,
                        password_hash: hash,
                    };
                    store
                        .set_auth_mode(AuthMode::Specified, Some(&login))
                        .map(|()| format!("saved: auth mode {}", AuthMode::Specified))
                        .map_err(e)
                }
            },
            Effect::RemoveUser(name) => store
                .remove_user(&name)
                .map(|()| format!("saved: user {name} removed"))
                .map_err(e),
            Effect::SetSenderAddresses {
                name,
                base,
                addresses,
            } => store
                .edit_sender_addresses(&name, &base, &addresses)
                .map(|edited| {
                    let mut said = format!(
                        "saved: {name} may send as {}",
                        if edited.now.is_empty() {
                            "no address".to_string()
                        } else {
                            edited.now.join(", ")
                        }
                    );
                    if let Some(kept) =
                        changed_elsewhere(&edited.added_elsewhere, &edited.removed_elsewhere)
                    {
                        said.push_str(&format!(
                            " (kept what was changed elsewhere while you edited: {kept})"
                        ));
                    }
                    said
                })
                .map_err(e),
            Effect::SetAuthMode { mode } => store
                .set_auth_mode(mode, None)
                .map(|()| format!("saved: auth mode {mode}"))
                .map_err(e),
            Effect::SetSwitch { key, on } => store
                .set_switch(&key, on)
                .map(|()| format!("saved: {key} {}", if on { "on" } else { "off" }))
                .map_err(e),
            Effect::SetServerSetting { key, value } => store
                .set_server_setting(&key, &value)
                .map(|v| format!("saved: {key} {v}"))
                .map_err(e),
            Effect::AddRule { rule, at } => store
                .add_rule(&rule, at)
                .map(|n| format!("saved: rule #{n}: {rule}"))
                .map_err(e),
            Effect::RemoveRule(n) => store
                .remove_rule(n)
                .map(|r| format!("saved: removed rule #{n}: {r}"))
                .map_err(e),
            Effect::PutBinding { old, new } => put_binding(store, old, new),
            Effect::RemoveBinding(addr) => store
                .remove_binding(addr)
                .map(|()| format!("saved: no longer listening on {addr}"))
                .map_err(e),
            Effect::Queue(_)
            | Effect::PollStore
            | Effect::LoadQueue
            | Effect::Trace(_)
            | Effect::Control(_)
            | Effect::LoadHistory { .. }
            | Effect::SearchHistory(_)
            | Effect::CountQueue
            | Effect::HashPassword { .. }
            | Effect::ReadImportFile { .. } => Err("internal: not a configuration change".into()),
        }
    }

    fn queue(&mut self, op: QueueOp) -> Result<String, String> {
        let settings = self.store()?.server_settings().map_err(|e| e.to_string())?;
        let reader = SpoolReader::open(&self.spool_path).map_err(|e| e.to_string())?;
        let spool = self.spool()?;
        crate::queue_admin::apply(
            spool, &reader, &settings, op.action, &op.ids, &op.busy, op.named,
        )
        .map(|applied| applied.summary(op.action, op.named))
        .map_err(|e| e.to_string())
    }
}

/// What another admin changed while an edit was open, as a save says it
/// ("added a, b; removed c"); `None` when nothing.
fn changed_elsewhere(added: &[String], removed: &[String]) -> Option<String> {
    let parts: Vec<String> = [("added", added), ("removed", removed)]
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(what, list)| format!("{what} {}", list.join(", ")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Saves the edited lists, both in one transaction (the engine sees the
/// old lists or the new ones, never one of each), keeping what was changed
/// elsewhere meanwhile and saying so.
fn save_lists(store: &mut Store, edits: &[crate::store::ListEdit]) -> Result<String, String> {
    if edits.is_empty() {
        return Ok("nothing to save: the lists are as stored".into());
    }
    let saved = store
        .save_list_edits(edits)
        .map_err(|e| format!("not saved: {e}"))?;
    let parts: Vec<String> = saved
        .iter()
        .map(|l| {
            format!(
                "{} list ({})",
                l.list,
                plural(l.entries, "entry", "entries")
            )
        })
        .collect();
    let mut said = format!("saved the {}", parts.join(" and the "));
    for l in &saved {
        if let Some(kept) = changed_elsewhere(&l.added_elsewhere, &l.removed_elsewhere) {
            said.push_str(&format!(
                "; kept what was changed in the {} list elsewhere while you edited ({kept})",
                l.list
            ));
        }
    }
    said.push_str("; the engine applies it within a second");
    Ok(said)
}

/// Adds a binding or moves one to a new address or kind. When the address
/// changes, the new one is added first and the old one removed; if the
/// removal fails the new one is taken out again.
fn put_binding(
    store: &mut Store,
    old: Option<std::net::SocketAddr>,
    new: Binding,
) -> Result<String, String> {
    let existed = store
        .bindings()
        .map_err(|e| format!("not saved: {e}"))?
        .iter()
        .any(|b| b.addr == new.addr);
    if existed && old != Some(new.addr) {
        return Err(format!("not saved: {} is already a binding", new.addr));
    }
    store
        .add_binding(new)
        .map_err(|e| format!("not saved: {e}"))?;
    if let Some(old) = old.filter(|o| *o != new.addr)
        && let Err(err) = store.remove_binding(old)
    {
        let _ = store.remove_binding(new.addr);
        return Err(format!("not saved: {err}"));
    }
    Ok(match old {
        Some(o) if o != new.addr => format!("saved: {o} is now {} ({})", new.addr, new.kind),
        Some(_) => format!("saved: {} is now {}", new.addr, new.kind),
        // Whether it listens is the engine's to say, within a second.
        None => format!(
            "saved: {} ({}); the engine opens it now",
            new.addr, new.kind
        ),
    })
}

/// Runs an action and every effect it leads to, in order.
pub fn dispatch(app: &mut App, io: &mut ConsoleIo, action: Action) {
    let mut pending = VecDeque::from([action]);
    while let Some(action) = pending.pop_front() {
        for effect in app.update(action) {
            pending.extend(io.run(effect));
        }
    }
}

/// How long a trace waits for the event log to hold what the screen
/// showed. The writer commits every quarter second; seconds are a
/// machine under load.
const TRACE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// A trace's lines: the stories the event log holds for `ask`, each with
/// its messages' state in the queue now. When the screen has shown an
/// event newer than any the log holds yet, looks again until it has (for
/// `catch_up` at most), then says the story may lack its newest part.
fn trace_lines(
    db: &Path,
    spool_path: &Path,
    ask: &TraceAsk,
    catch_up: std::time::Duration,
) -> Result<Vec<String>, String> {
    let started = std::time::Instant::now();
    let stories = loop {
        let log = DecisionLog::open_read_only(&log_path_for(db))
            .map_err(|e| format!("cannot read the event log: {e}"))?;
        let stories = log.trace(&ask.query).map_err(|e| e.to_string())?;
        let caught_up = match ask.shown_ms {
            None => true,
            Some(shown) => newest_ms(&stories).is_some_and(|n| n >= shown),
        };
        if caught_up || started.elapsed() >= catch_up {
            break stories;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if stories.is_empty() {
        return Err("nothing in the event log matches".into());
    }
    let reader = SpoolReader::open(spool_path).ok();
    let now = epoch_ms(SystemTime::now()) / 1000;
    let mut lines = Vec::new();
    for story in &stories {
        let queue = crate::trace::queue_states(story, reader.as_ref(), now);
        lines.extend(crate::trace::render(story, &queue));
        lines.push(String::new());
    }
    if let (Some(shown), Some(newest)) = (ask.shown_ms, newest_ms(&stories))
        && newest < shown
    {
        lines.push(
            "(the event log has not caught up with the screen yet: its newest part may be \
             missing; press t again in a moment)"
                .into(),
        );
    }
    Ok(lines)
}

/// The time of the newest event in these stories.
fn newest_ms(stories: &[crate::trace::Story]) -> Option<i64> {
    stories
        .iter()
        .flat_map(|s| s.events.iter())
        .map(|e| epoch_ms(e.at))
        .max()
}
