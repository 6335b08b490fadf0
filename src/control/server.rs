//! The engine's end of the control socket: a Unix socket beside the
//! database, owner-only (or 0660 for the console group), every peer
//! checked by its credentials before a byte is read from it.

use super::access::{self, Group};
use super::feed::Feed;
use super::protocol::{
    self, Access, ClientMessage, EngineStatus, PROTOCOL_VERSION, ServerMessage, encode,
};
use crate::engine::Shared;
use crate::events::Event;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// A console that cannot take a line for this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Events reach a console at least this often (batched in between).
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A client must say hello this soon.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request line.
const MAX_REQUEST: u64 = 64 * 1024;
/// Consoles attached at once, in all and per user: each holds a snapshot
/// and a buffer (about 1.5 MB at most), so a watcher cannot make the
/// engine grow, or use up its descriptors, by connecting over and over.
const MAX_CONSOLES: usize = 64;
const MAX_CONSOLES_PER_USER: usize = 8;
/// Connections that have not yet said what they are (a console, or a
/// one-shot question), in all and per user: each waits at most
/// `HELLO_TIMEOUT`, and holds no snapshot.
const MAX_WAITING: usize = 64;
const MAX_WAITING_PER_USER: usize = 8;

/// Why the socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path} exists and is not a socket; relaygate will not replace it")]
    NotASocket { path: PathBuf },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the socket's connections share.
struct Context {
    shared: Arc<Shared>,
    feed: Feed,
    retry_bindings: Arc<Notify>,
    own_uid: u32,
    /// Connections by user id: consoles attached, and connections not yet
    /// past their hello.
    places: std::sync::Mutex<std::collections::HashMap<u32, Places>>,
    /// Bumped when the console group changes: watchers are let go, to
    /// be decided again when they reconnect.
    group_changed: watch::Sender<u64>,
}

/// One user's connections, by what they are.
#[derive(Debug, Default, Clone, Copy)]
struct Places {
    consoles: usize,
    waiting: usize,
}

/// A connection's place under the caps: first among the waiting, then,
/// once it says it is a console, among the consoles (a one-shot question
/// never takes one). Given back when dropped.
struct Place {
    ctx: Arc<Context>,
    uid: u32,
    console: bool,
}

impl Place {
    /// A place for a new connection of `uid`'s, or why there is none.
    fn waiting(ctx: &Arc<Context>, uid: u32, access: Access) -> Result<Place, String> {
        let mut places = ctx
            .places
            .lock()
            .map_err(|_| "internal: lock poisoned".to_string())?;
        let total: usize = places.values().map(|p| p.waiting).sum();
        let mine = places.get(&uid).copied().unwrap_or_default();
        // The total caps watchers: the service user and root always get
        // in (within their own per-user cap).
        if (total >= MAX_WAITING && access == Access::Watch) || mine.waiting >= MAX_WAITING_PER_USER
        {
            return Err(format!(
                "too many connections opening at once ({}); try again in a few seconds",
                mine.waiting.max(total)
            ));
        }
        places.entry(uid).or_default().waiting += 1;
        Ok(Place {
            ctx: Arc::clone(ctx),
            uid,
            console: false,
        })
    }

    /// Turns a waiting place into a console's, or says why there is none.
    fn attach(&mut self, access: Access) -> Result<(), String> {
        let mut places = self
            .ctx
            .places
            .lock()
            .map_err(|_| "internal: lock poisoned".to_string())?;
        let total: usize = places.values().map(|p| p.consoles).sum();
        let mine = places.get(&self.uid).copied().unwrap_or_default();
        if total >= MAX_CONSOLES && access == Access::Watch {
            return Err(format!(
                "too many consoles attached ({total}); try again when one has gone"
            ));
        }
        if mine.consoles >= MAX_CONSOLES_PER_USER {
            return Err(format!(
                "too many consoles attached by this user ({}); close one first",
                mine.consoles
            ));
        }
        let p = places.entry(self.uid).or_default();
        p.waiting = p.waiting.saturating_sub(1);
        p.consoles += 1;
        self.console = true;
        Ok(())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut places) = self.ctx.places.lock()
            && let Some(p) = places.get_mut(&self.uid)
        {
            if self.console {
                p.consoles = p.consoles.saturating_sub(1);
            } else {
                p.waiting = p.waiting.saturating_sub(1);
            }
            if p.consoles == 0 && p.waiting == 0 {
                places.remove(&self.uid);
            }
        }
    }
}

/// Opens the socket (replacing one left by a crash: the caller holds the
/// engine lock, so no live engine owns it) and serves it until `stop`.
pub fn start(
    path: &Path,
    shared: Arc<Shared>,
    feed: Feed,
    retry_bindings: Arc<Notify>,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(io)?,
        Ok(_) => {
            return Err(ControlError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener =
        UnixListener::bind(super::SocketAddress::of(path).map_err(io)?.path()).map_err(io)?;
    let group = shared.snapshot().settings.console_group.clone();
    let ctx = Arc::new(Context {
        shared,
        feed,
        retry_bindings,
        own_uid: access::own_uid(),
        places: std::sync::Mutex::new(std::collections::HashMap::new()),
        group_changed: watch::Sender::new(0),
    });
    let applied = apply_mode(&ctx, path, group.as_deref());
    Ok(tokio::spawn(accept_loop(
        ctx,
        listener,
        path.to_path_buf(),
        applied,
        stop,
    )))
}

/// What setting the socket's mode came to.
struct Mode {
    /// The group in force (socket 0660 for it); none: owner only.
    group: Option<Group>,
    /// The group exists but could not be given the socket (the engine's
    /// user is not in it): said once, not tried again every second.
    failed: bool,
}

/// Sets the socket's mode for the console group setting: 0600, or 0660
/// with the group's ownership.
fn apply_mode(ctx: &Context, path: &Path, group: Option<&str>) -> Mode {
    let found = group.and_then(access::lookup_group);
    if let (Some(name), None) = (group, &found) {
        ctx.shared.events.emit(Event::Error {
            session: None,
            message: format!(
                "console-group {name}: no such group; the control socket stays owner-only"
            ),
        });
    }
    let result = match &found {
        Some(g) => std::os::unix::fs::chown(path, None, Some(g.gid))
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))),
        None => std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)),
    };
    if let Err(e) = result {
        let why = match (&found, e.kind()) {
            (Some(g), std::io::ErrorKind::PermissionDenied) => format!(
                "console-group {}: the engine's user is not in that group, so it cannot hand it the control socket; add it (usermod -aG {} USER) and restart the engine, or name a group it is in; the socket stays owner-only",
                g.name, g.name
            ),
            _ => format!("control socket {}: setting its mode: {e}", path.display()),
        };
        ctx.shared.events.emit(Event::Error {
            session: None,
            message: why,
        });
        // Whatever went wrong, nobody but the owner gets in.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        return Mode {
            group: None,
            // Only a refusal is for good; anything else is tried again.
            failed: found.is_some() && e.kind() == std::io::ErrorKind::PermissionDenied,
        };
    }
    Mode {
        group: found,
        failed: false,
    }
}

async fn accept_loop(
    ctx: Arc<Context>,
    listener: UnixListener,
    path: PathBuf,
    applied: Mode,
    mut stop: watch::Receiver<bool>,
) {
    let Mode {
        mut group,
        mut failed,
    } = applied;
    let mut setting = ctx.shared.snapshot().settings.console_group.clone();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut accept_errors = crate::engine::AcceptErrors::new("control socket accept");
    let mut refusals = Refusals::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = check.tick() => {
                let now = ctx.shared.snapshot().settings.console_group.clone();
                if now != setting {
                    Mode { group, failed } = apply_mode(&ctx, &path, now.as_deref());
                    setting = now;
                    ctx.group_changed.send_modify(|n| *n += 1);
                } else if group.is_none()
                    && !failed
                    && let Some(name) = setting.as_deref()
                    && access::lookup_group(name).is_some()
                {
                    // The group was created after the setting named it.
                    Mode { group, failed } = apply_mode(&ctx, &path, Some(name));
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Membership as /etc/group has it now, not as it was
                    // when the setting last changed; a group deleted
                    // meanwhile lets nobody in (the socket goes 0600).
                    if let Some(g) = &group {
                        group = match access::lookup_group(&g.name) {
                            Some(now) => Some(now),
                            None => {
                                let mode = apply_mode(&ctx, &path, setting.as_deref());
                                failed = mode.failed;
                                mode.group
                            }
                        };
                    }
                    let access = match stream.peer_cred() {
                        Ok(cred) => {
                            let peer = access::Peer {
                                uid: cred.uid(),
                                gid: cred.gid(),
                                groups: match &group {
                                    Some(_) => access::Peer::groups_of(cred.pid(), cred.uid()),
                                    None => Vec::new(),
                                },
                            };
                            match access::decide(&peer, ctx.own_uid, group.as_ref()) {
                                Some(a) => Ok((a, cred.uid())),
                                None => Err((cred.uid(), cred.pid())),
                            }
                        }
                        Err(_) => Err((u32::MAX, None)),
                    };
                    match access {
                        Ok((access, uid)) => match Place::waiting(&ctx, uid, access) {
                            Ok(place) => {
                                tokio::spawn(serve_client(Arc::clone(&ctx), stream, access, place));
                            }
                            Err(message) => {
                                tokio::spawn(refuse(stream, message));
                            }
                        },
                        Err((uid, pid)) => {
                            if let Some(repeated) = refusals.note(uid, Instant::now()) {
                                ctx.shared.events.emit(Event::ControlRefused { uid, pid, repeated });
                            }
                            tokio::spawn(refuse(
                                stream,
                                "not allowed: the console needs the service user, root, or the console group".into(),
                            ));
                        }
                    }
                }
                Err(e) => {
                    accept_errors.note(&ctx.shared, &e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // A clean shutdown leaves no socket behind.
    let _ = std::fs::remove_file(&path);
}

/// The refused clients said in the log: each user's first refusal of a
/// minute, then, a minute on, one line with how many followed. A local
/// user looping connect and close would otherwise write a log line and an
/// event-log row per connection, and push the mail history out of the
/// event log (it keeps its newest million rows).
#[derive(Debug, Default)]
struct Refusals {
    /// Per uid: when its last refusal was said, and how many were not.
    users: std::collections::HashMap<u32, (Instant, u64)>,
}

/// How often one user's refusals are said.
const REFUSALS_SAID_EVERY: Duration = Duration::from_secs(60);
/// Users remembered at most; past that, the memory starts again (each
/// user's next refusal is said at once).
const REFUSALS_USERS: usize = 1024;

impl Refusals {
    /// Notes a refusal of `uid`: `Some(n)` when it is to be said, with the
    /// `n` refusals since the last one said; `None` when it is counted.
    fn note(&mut self, uid: u32, now: Instant) -> Option<u64> {
        if self.users.len() >= REFUSALS_USERS && !self.users.contains_key(&uid) {
            self.users.clear();
        }
        match self.users.get_mut(&uid) {
            Some((said, unsaid)) if now.duration_since(*said) < REFUSALS_SAID_EVERY => {
                *unsaid += 1;
                None
            }
            Some((said, unsaid)) => {
                let repeated = *unsaid;
                (*said, *unsaid) = (now, 0);
                Some(repeated)
            }
            None => {
                self.users.insert(uid, (now, 0));
                Some(0)
            }
        }
    }
}

async fn refuse(mut stream: UnixStream, message: String) {
    let line = encode(&ServerMessage::Error { message });
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&line)).await;
}

/// Writes one message, or gives up on a console that does not read.
async fn send(
    writer: &mut BufWriter<tokio::net::unix::OwnedWriteHalf>,
    message: &ServerMessage,
    flush: bool,
) -> bool {
    let line = encode(message);
    let write = async {
        writer.write_all(&line).await?;
        if flush {
            writer.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

async fn serve_client(ctx: Arc<Context>, stream: UnixStream, access: Access, mut place: Place) {
    let mut group_changed = ctx.group_changed.subscribe();
    let (read, write) = stream.into_split();
    let mut writer = BufWriter::with_capacity(64 * 1024, write);
    let hello = ServerMessage::Hello {
        protocol: PROTOCOL_VERSION,
        engine: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        access,
    };
    if !send(&mut writer, &hello, true).await {
        return;
    }
    // Requests are read on their own task: a line read must not be cut
    // in half by the select below.
    let (requests_tx, mut requests) = mpsc::channel::<Result<ClientMessage, String>>(16);
    let reader = tokio::spawn(read_requests(read, requests_tx));
    let first = tokio::time::timeout(HELLO_TIMEOUT, requests.recv()).await;
    match first {
        Ok(Some(Ok(ClientMessage::Hello { .. }))) => {
            if let Err(message) = place.attach(access) {
                let _ = send(&mut writer, &ServerMessage::Error { message }, true).await;
                reader.abort();
                return;
            }
        }
        Ok(Some(Ok(ClientMessage::AskStatus { .. }))) => {
            let status = ctx.feed.status(0);
            let _ = send(&mut writer, &ServerMessage::Status { status }, true).await;
            reader.abort();
            return;
        }
        Ok(Some(Err(message))) => {
            let _ = send(&mut writer, &ServerMessage::Error { message }, true).await;
            reader.abort();
            return;
        }
        _ => {
            reader.abort();
            return;
        }
    }
    let Some(attachment) = ctx.feed.attach().await else {
        return;
    };
    let mut events = attachment.events;
    let skipped_at = attachment.skipped_at;
    let mut generation = attachment.snapshot.live.generation;
    if !send(
        &mut writer,
        &ServerMessage::Snapshot {
            snapshot: attachment.snapshot,
        },
        true,
    )
    .await
    {
        reader.abort();
        return;
    }
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let mut live_tick = tokio::time::interval(super::feed::TICK);
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    // After a quiet spell, no burst of overdue ticks (one flush per event).
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unflushed = false;
    let mut last_status: Option<EngineStatus> = None;
    let mut outbox = super::feed::Outbox::new(&ctx.feed, skipped_at);
    loop {
        let keep = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if outbox.admit(&event) {
                        // Written out with the next flush tick (or when the
                        // buffer fills): a console wakes a few times a
                        // second, not once per event.
                        unflushed = true;
                        send(&mut writer, &ServerMessage::Event { event }, false).await
                    } else {
                        true
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Skip ahead: say how much was missed, then start afresh.
                    let Some(again) = ctx.feed.attach().await else { break };
                    events = again.events;
                    outbox.restart_at(again.skipped_at);
                    generation = again.snapshot.live.generation;
                    let snapshot = again.snapshot;
                    send(&mut writer, &ServerMessage::Lagged { missed }, false).await
                        && send(&mut writer, &ServerMessage::Snapshot { snapshot }, true).await
                }
                Err(broadcast::error::RecvError::Closed) => false,
            },
            _ = flush_tick.tick(), if unflushed => {
                unflushed = false;
                matches!(
                    tokio::time::timeout(WRITE_TIMEOUT, writer.flush()).await,
                    Ok(Ok(()))
                )
            }
            _ = live_tick.tick() => {
                let skipped = outbox.take_skipped();
                let mut ok = skipped == 0
                    || send(&mut writer, &ServerMessage::Skipped { events: skipped }, true).await;
                match ctx.feed.tick(generation).await {
                    Some(tick) if tick.generation == generation => {}
                    Some(tick) => {
                        // The events this tick counts are in the channel
                        // already (the feed sends each as it takes it): they
                        // go first, so that the tick's counters, which
                        // replace the console's, come after them, and no
                        // event is counted twice.
                        match super::feed::take_waiting(&mut events, &outbox) {
                            Ok(waiting) => {
                                for event in waiting {
                                    ok = ok && send(&mut writer, &ServerMessage::Event { event }, false).await;
                                }
                                generation = tick.generation;
                                ok = ok && send(&mut writer, &ServerMessage::Tick { tick }, true).await;
                            }
                            Err(missed) => {
                                // As when the next event says so: afresh.
                                let Some(again) = ctx.feed.attach().await else { break };
                                events = again.events;
                                outbox.restart_at(again.skipped_at);
                                generation = again.snapshot.live.generation;
                                let snapshot = again.snapshot;
                                ok = ok
                                    && send(&mut writer, &ServerMessage::Lagged { missed }, false).await
                                    && send(&mut writer, &ServerMessage::Snapshot { snapshot }, true).await;
                            }
                        }
                    }
                    None => {
                        // Too far behind to catch up by changes: start afresh.
                        let Some(again) = ctx.feed.attach().await else { break };
                        events = again.events;
                        outbox.restart_at(again.skipped_at);
                        generation = again.snapshot.live.generation;
                        ok = ok && send(&mut writer, &ServerMessage::Snapshot { snapshot: again.snapshot }, true).await;
                    }
                }
                ok
            }
            request = requests.recv() => match request {
                Some(Ok(ClientMessage::Unfollow)) => {
                    outbox.follow(None);
                    true
                }
                Some(Ok(ClientMessage::Dialogue { session })) => {
                    outbox.follow(Some(session));
                    answer(&ctx, &mut writer, access, ClientMessage::Dialogue { session }).await
                }
                Some(Ok(request)) => answer(&ctx, &mut writer, access, request).await,
                Some(Err(message)) => send(&mut writer, &ServerMessage::Error { message }, true).await,
                None => false,
            },
            _ = group_changed.changed(), if access == Access::Watch => {
                let message = "the console group changed: reconnect to be let in again".to_string();
                let _ = send(&mut writer, &ServerMessage::Error { message }, true).await;
                false
            }
            _ = status_tick.tick() => {
                let status = ctx.feed.status(0);
                if last_status.as_ref() != Some(&status) {
                    last_status = Some(status.clone());
                    send(&mut writer, &ServerMessage::Status { status }, true).await
                } else {
                    true
                }
            }
        };
        if !keep {
            break;
        }
    }
    reader.abort();
}

async fn answer(
    ctx: &Context,
    writer: &mut BufWriter<tokio::net::unix::OwnedWriteHalf>,
    access: Access,
    request: ClientMessage,
) -> bool {
    let reply = match request {
        ClientMessage::Hello { .. } | ClientMessage::AskStatus { .. } => ServerMessage::Error {
            message: "hello twice".into(),
        },
        ClientMessage::Dialogue { session } => ServerMessage::Dialogue {
            session,
            events: ctx.feed.dialogue(session).await,
        },
        ClientMessage::RetryBindings if access == Access::Admin => {
            ctx.retry_bindings.notify_one();
            // The engine retries on its configuration task; give it a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            ServerMessage::BindingsRetried {
                listeners: ctx.feed.listeners(),
            }
        }
        ClientMessage::RetryBindings => ServerMessage::Error {
            message: "retrying bindings needs the service user".into(),
        },
        ClientMessage::Unfollow => return true,
    };
    send(writer, &reply, true).await
}

async fn read_requests(
    read: tokio::net::unix::OwnedReadHalf,
    out: mpsc::Sender<Result<ClientMessage, String>>,
) {
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let mut hello_seen = false;
    loop {
        line.clear();
        let n = match tokio::io::AsyncReadExt::take(&mut reader, MAX_REQUEST)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if line.last() != Some(&b'\n') {
            let why = if (n as u64) < MAX_REQUEST {
                "the connection closed in the middle of a request (no end of line)".to_string()
            } else {
                format!("request longer than {MAX_REQUEST} bytes")
            };
            let _ = out.send(Err(why)).await;
            return;
        }
        let first = !hello_seen;
        let parsed = if hello_seen {
            protocol::decode_client(&line).map_err(|e| e.to_string())
        } else {
            hello_seen = true;
            protocol::check_client_hello(&line).map_err(|e| e.to_string())
        };
        let fatal = parsed.is_err() && first;
        if out.send(parsed).await.is_err() || fatal {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_refusals_are_said_once_a_minute_with_their_count() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.note(5003, t0), Some(0));
        for k in 1..=1000u64 {
            assert_eq!(r.note(5003, t0 + Duration::from_millis(k)), None);
        }
        // Another user is said at once.
        assert_eq!(r.note(5004, t0 + Duration::from_secs(1)), Some(0));
        // A minute on: said again, with the thousand not said.
        assert_eq!(r.note(5003, t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(r.note(5003, t0 + Duration::from_secs(61)), None);
        assert_eq!(r.note(5003, t0 + Duration::from_secs(121)), Some(1));
        // Bounded: many users start the memory again.
        for uid in 0..(REFUSALS_USERS as u32 + 10) {
            r.note(100_000 + uid, t0);
        }
        assert!(r.users.len() <= REFUSALS_USERS);
    }
}
