//! The delivery loop: finds due recipients in the spool, groups each
//! message's recipients by next hop, delivers every group on its own (a
//! slow domain never holds back the others), and records each recipient's
//! outcome, with the report it owes the sender, in one spool commit; once
//! every group is recorded, the reports of all of them go out in one
//! notice, stored in the commit that clears them.
//!
//! Delivery is at least once: an outcome is recorded only after the next
//! hop answered, so after a crash the few messages in flight are sent
//! again, and nothing is lost.

use super::client::{ClientConfig, ConnectionPool, Outcome, Target};
use super::dsn::{self, BounceInput, DsnAction, ReportedRecipient};
use super::mx::MxResolver;
use super::router::{NextHop, next_hop};
use crate::engine::{Shared, Snapshot};
use crate::events::{DeliveryOutcome, Event};
use crate::policy::address::{Domain, parse_forward_path};
use crate::server_settings::ServerSettings;
use crate::smtp::dsn_params::{Notify, RecipientDsn};
use crate::spool::{
    NewMessage, RecipientUpdate, SpoolOp, SpoolReader, SpoolReaderThread, SpoolRecipient,
    StoredMessage,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What the delivery tasks share.
struct Delivery {
    shared: Arc<Shared>,
    /// Reads of the spool, one at a time on the reader's own thread.
    reader: SpoolReaderThread,
    pool: Arc<ConnectionPool>,
    global: Mutex<Arc<Semaphore>>,
    /// The global semaphore's size now (`delivery-concurrency`, live).
    global_size: std::sync::atomic::AtomicUsize,
    /// Per next hop, with the `destination-concurrency` it was made with.
    per_hop: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// Attempts under way (shared with the engine, which shows them).
    in_flight: super::InFlightTable,
    resolver: Mutex<Option<(Vec<SocketAddr>, Arc<MxResolver>)>>,
    /// A message finished: the loop may take more from the spool.
    slot_freed: tokio::sync::Notify,
    /// Routes with a send rate: when each may send next.
    rates: Mutex<RateSchedules>,
    /// Memory for message bodies read back from the spool, in KiB (see
    /// [`BODY_BUDGET_KIB`]).
    body_budget: Arc<Semaphore>,
    /// Outcomes the spool could not record (a full disk): written again
    /// every second, in order. While any waits, no delivery starts: a
    /// message whose outcome is not on disk would be found due and sent
    /// again, and again.
    unrecorded: Mutex<Vec<SpoolOp>>,
    /// Reports to senders may be recorded and not sent (at start, after
    /// outcomes were written late, after a notice could not be stored):
    /// the next scan looks for them ([`sweep_reports`]).
    reports_left: std::sync::atomic::AtomicBool,
}

/// What the bodies of the deliveries under way may take at once, in KiB:
/// 128 MiB. A delivery holds several times its message while it sends
/// (SQLite's copy as it is read, the body, its dot-stuffed text, the
/// client's buffer), so without a bound 100 deliveries of 25 MB messages
/// would take gigabytes; past the budget, a delivery waits for memory as
/// it waits for a slot.
pub const BODY_BUDGET_KIB: u32 = 128 * 1024;

/// The budget a message of `size` bytes takes while it is delivered:
/// five times its size, and never more than the whole budget (so the
/// largest message still goes, alone).
pub fn body_permits(size: u64) -> u32 {
    let kib = size.div_ceil(1024).saturating_mul(5).max(1);
    u32::try_from(kib).unwrap_or(u32::MAX).min(BODY_BUDGET_KIB)
}

/// Per rate-limited route, the send times handed out, and the slot each
/// waiting message was given (so it is not given another when it comes
/// due).
#[derive(Default)]
struct RateSchedules {
    routes: HashMap<String, crate::abuse::rate::SendSchedule>,
    /// (route, message id) -> slot, ms since the epoch.
    reserved: HashMap<(String, String), u64>,
}

impl RateSchedules {
    /// `None`: send now; `Some(ms)`: wait until then.
    fn take(
        &mut self,
        route: &super::Route,
        rate: crate::abuse::rate::Rate,
        message: &str,
        now: u64,
    ) -> Option<u64> {
        let key = (route.domain.clone(), message.to_string());
        let schedule = self.routes.entry(route.domain.clone()).or_default();
        let slot = match self.reserved.get(&key).copied() {
            // Not due yet (the scan runs once a second, the spool keeps
            // seconds).
            Some(slot) if slot > now + 1000 => return Some(slot),
            // Due: it goes if the sends that really happened allow it
            // (those before it may have gone later than their slots).
            Some(_) => match schedule.may_send(rate, now) {
                None => {
                    self.reserved.remove(&key);
                    schedule.sent(rate, now);
                    return None;
                }
                Some(later) => later,
            },
            None => {
                let slot = schedule
                    .next_slot(rate, now)
                    .max(schedule.may_send(rate, now).unwrap_or(now));
                if slot <= now {
                    schedule.sent(rate, now);
                    return None;
                }
                slot
            }
        };
        // Slots of messages gone meanwhile (deleted, delivered elsewhere)
        // are forgotten a period after they passed.
        let stale = now.saturating_sub(rate.period_ms());
        self.reserved.retain(|_, at| *at > stale);
        self.reserved.insert(key, slot);
        Some(slot)
    }
}

/// New work handed over by the SMTP engine: a message just spooled and
/// its recipients. It spares the queue a database scan per message.
/// A message the SMTP engine has just spooled, for delivery at once.
#[derive(Debug)]
pub struct NewWork {
    pub id: String,
    pub recipients: Vec<String>,
    /// The message itself, when small: delivery need not read it back
    /// from the spool.
    pub message: Option<Arc<StoredMessage>>,
}

/// Messages up to this size are handed to delivery with their body.
pub const HANDED_BODY_MAX: usize = 64 * 1024;
/// ... while fewer than this many wait in the hand-over channel (which
/// bounds what bodies waiting there can take: 256 x 64 KiB = 16 MiB).
pub const HANDED_WAITING_MAX: usize = 256;

/// Runs until `stop` turns true. Fresh messages arrive on `fresh`; the
/// spool is scanned once a second (retries, `queue retry`, messages from
/// before a restart, and whatever did not fit in flight). In-flight
/// deliveries are left to finish or be cut off with the process: their
/// recipients are still queued, so they run again.
pub async fn run(
    shared: Arc<Shared>,
    spool_path: PathBuf,
    mut fresh: mpsc::Receiver<NewWork>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = tokio::task::spawn_blocking(move || SpoolReaderThread::open(&spool_path)).await;
    let reader = match opened
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            shared.events.emit(Event::Error {
                session: None,
                message: format!("delivery disabled: {e}"),
            });
            return;
        }
    };
    let settings = Arc::clone(&shared.snapshot().settings);
    let in_flight_for = |concurrency: usize| concurrency.saturating_mul(4).max(16);
    let mut max_in_flight = in_flight_for(settings.delivery_concurrency);
    let d = Arc::new(Delivery {
        shared: Arc::clone(&shared),
        reader,
        pool: Arc::clone(&shared.next_hops),
        global: Mutex::new(Arc::new(Semaphore::new(settings.delivery_concurrency))),
        global_size: std::sync::atomic::AtomicUsize::new(settings.delivery_concurrency),
        per_hop: Mutex::new(HashMap::new()),
        in_flight: Arc::clone(&shared.in_flight),
        resolver: Mutex::new(None),
        slot_freed: tokio::sync::Notify::new(),
        rates: Mutex::new(RateSchedules::default()),
        body_budget: Arc::new(Semaphore::new(BODY_BUDGET_KIB as usize)),
        unrecorded: Mutex::new(Vec::new()),
        reports_left: std::sync::atomic::AtomicBool::new(true),
    });
    // More is waiting in the spool than is in flight.
    let mut backlog = true;
    let mut next_scan = tokio::time::Instant::now();
    loop {
        let mut scan = false;
        tokio::select! {
            _ = stop.changed() => return last_records(&d).await,
            work = fresh.recv() => {
                let Some(first) = work else { return };
                let snapshot = shared.snapshot();
                let mut batch = vec![first];
                while let Ok(more) = fresh.try_recv() {
                    batch.push(more);
                }
                if !snapshot.settings.delivery || has_unrecorded(&d) {
                    backlog = true;
                    continue;
                }
                for work in batch {
                    let attempts = work.recipients.into_iter().map(|r| (r, 0)).collect();
                    let fresh = Tried {
                        attempts,
                        delay_warned: false,
                    };
                    if !start(&d, &snapshot, work.id, fresh, work.message, max_in_flight) {
                        backlog = true;
                    }
                }
            }
            _ = tokio::time::sleep_until(next_scan) => scan = true,
            _ = d.slot_freed.notified() => scan = backlog && in_flight(&d) < max_in_flight / 2,
        }
        if *stop.borrow() {
            return last_records(&d).await;
        }
        let concurrency = shared.snapshot().settings.delivery_concurrency;
        resize_global(&d, concurrency);
        max_in_flight = in_flight_for(concurrency);
        if !scan {
            continue;
        }
        next_scan = tokio::time::Instant::now() + Duration::from_secs(1);
        d.pool.sweep();
        if has_unrecorded(&d) && !record_again(&d).await {
            backlog = true;
            continue;
        }
        sweep_reports(&d, max_in_flight).await;
        let snapshot = shared.snapshot();
        if !snapshot.settings.delivery {
            continue;
        }
        let want = max_in_flight.saturating_sub(in_flight(&d));
        if want == 0 {
            backlog = true;
            continue;
        }
        // In-flight recipients are still queued: ask for enough to skip them.
        let limit = want + in_flight(&d) * 8;
        let due = match d.reader.read(move |r| r.due(now_secs(), limit)).await {
            Ok(due) => due,
            Err(e) => {
                shared.events.emit(Event::Error {
                    session: None,
                    message: format!("reading the queue: {e}"),
                });
                continue;
            }
        };
        let full = due.len() >= limit;
        let mut by_message: HashMap<String, Tried> = HashMap::new();
        for r in due {
            let tried = by_message.entry(r.message_id).or_insert_with(|| Tried {
                attempts: HashMap::new(),
                delay_warned: r.delay_warned,
            });
            tried.attempts.insert(r.address, r.attempts);
        }
        backlog = full;
        for (id, tried) in by_message {
            if !start(&d, &snapshot, id, tried, None, max_in_flight) {
                backlog = true;
                break;
            }
        }
    }
}

/// At a stop: one last try at the outcomes not yet on disk. Those still
/// unwritten are said: their messages will be sent again after the
/// restart (at least once, never lost).
async fn last_records(d: &Delivery) {
    if !has_unrecorded(d) || record_again(d).await {
        return;
    }
    let left = d.unrecorded.lock().map_or(0, |u| u.len());
    d.shared.events.emit(Event::Error {
        session: None,
        message: format!(
            "stopping with {left} delivery outcomes the spool could not record: \
             those messages will be delivered again after the restart"
        ),
    });
}

/// Gives up the disk's reserve so that delivery outcomes can be written
/// (each delivered message then frees its room); said in the log.
fn release_reserve(d: &Delivery) -> bool {
    let spool = d.shared.spool.path();
    let released = crate::spool_space::release_reserve(spool);
    if released {
        d.shared.events.emit(Event::Error {
            session: None,
            message: format!(
                "spool disk full: gave up the {} reserve ({}) so that delivery outcomes can be written; it is made again once there is room",
                crate::spool_space::size_text(crate::spool_space::RESERVE),
                crate::spool_space::reserve_path(spool).display()
            ),
        });
    }
    released
}

fn has_unrecorded(d: &Delivery) -> bool {
    d.unrecorded.lock().map_or(true, |u| !u.is_empty())
}

/// Writes the outcomes the spool could not record, oldest first; true
/// when all are on disk (and delivery may go on).
async fn record_again(d: &Delivery) -> bool {
    let waiting = match d.unrecorded.lock() {
        Ok(mut u) => std::mem::take(&mut *u),
        Err(_) => return false,
    };
    let mut left = waiting.into_iter();
    while let Some(op) = left.next() {
        let mut result = d.shared.spool.apply(op.clone()).await;
        if matches!(result, Err(crate::spool::SpoolError::Full(_))) && release_reserve(d) {
            result = d.shared.spool.apply(op.clone()).await;
        }
        if result.is_err() {
            if let Ok(mut u) = d.unrecorded.lock() {
                let mut rest = vec![op];
                rest.extend(left);
                rest.append(&mut u);
                *u = rest;
            }
            return false;
        }
        // Its reports are in the spool now, and their attempt is over.
        d.reports_left.store(true, Ordering::Relaxed);
    }
    true
}

/// Sends the reports recorded and not sent: those a stop or a crash came
/// between (found at start), and those whose attempt could not send them.
/// Each message is taken as an attempt is (in flight while its reports
/// are folded), so no attempt of it runs at the same time.
async fn sweep_reports(d: &Arc<Delivery>, max_in_flight: usize) {
    if !d.reports_left.swap(false, Ordering::Relaxed) {
        return;
    }
    let ids = match d.reader.read(|r| r.messages_with_reports()).await {
        Ok(ids) => ids,
        Err(e) => {
            d.reports_left.store(true, Ordering::Relaxed);
            d.shared.events.emit(Event::Error {
                session: None,
                message: format!("reading the reports to send from the spool: {e}"),
            });
            return;
        }
    };
    for id in ids {
        let taken = d.in_flight.lock().is_ok_and(|mut f| {
            // As many as attempts may be under way; the rest next time.
            if f.contains_key(&id) || f.len() >= max_in_flight {
                return false;
            }
            f.insert(id.clone(), super::InFlightAttempt::starting(&id));
            true
        });
        if !taken {
            // Its attempt under way sends them, or the next sweep does.
            d.reports_left.store(true, Ordering::Relaxed);
            continue;
        }
        let place = InFlightPlace {
            d: Arc::clone(d),
            id,
            finished: false,
        };
        tokio::spawn(async move {
            let (d, id) = (&place.d, &place.id);
            let settings = Arc::clone(&d.shared.snapshot().settings);
            // Sent meanwhile (by the attempt that recorded them): nothing
            // to read the message for.
            if read_spool(d, id, |r, id| r.reports(id))
                .await
                .is_ok_and(|rows| rows.is_empty())
            {
                place.done();
                return;
            }
            // The message (its body is returned in the notice) is read
            // within the memory budget, as a delivery reads it.
            let budget = Arc::clone(&d.body_budget);
            let read = match read_spool(d, id, move |r, id| BodyRead::first(r, id, budget)).await {
                Ok(BodyRead::Whole(m, permit)) => Ok(m.map(|m| (m, Some(permit)))),
                Ok(BodyRead::WaitFor(size)) => {
                    let budget = Arc::clone(&d.body_budget);
                    let permit = budget.acquire_many_owned(body_permits(size)).await.ok();
                    read_spool(d, id, |r, id| r.message(id).map(|m| m.map(Arc::new)))
                        .await
                        .map(|m| m.map(|m| (m, permit)))
                }
                Ok(BodyRead::Gone) => Ok(None),
                Err(e) => Err(e),
            };
            match read {
                Ok(Some((message, _permit))) => send_reports(d, &settings, &message).await,
                Ok(None) => {}
                Err(e) => {
                    d.reports_left.store(true, Ordering::Relaxed);
                    d.shared.events.emit(Event::Error {
                        session: None,
                        message: format!("reports on {id}: cannot read it from the spool: {e}"),
                    });
                }
            }
            place.done();
        });
    }
}

/// Folds every report recorded for a message (failures and "relayed"
/// notices, from all its next hops) into one notice to its sender, stored
/// in the commit that clears them. A notice that cannot be stored now is
/// left to the next sweep.
async fn send_reports(d: &Arc<Delivery>, settings: &ServerSettings, message: &StoredMessage) {
    let rows = match read_spool(d, &message.id, |r, id| r.reports(id)).await {
        Ok(rows) if !rows.is_empty() => rows,
        Ok(_) => return,
        Err(_) => {
            d.reports_left.store(true, Ordering::Relaxed);
            return;
        }
    };
    let asked = message.message.dsn_asked();
    let recipients: Vec<String> = rows.iter().map(|(a, _)| a.clone()).collect();
    let reported = stored_reports(rows, &asked);
    let notice = bounce_for(settings, message, &reported);
    let event = notice.as_ref().map(|b| {
        let to = message.message.sender.clone();
        let count = |a: DsnAction| reported.iter().filter(|r| r.action == a).count();
        if count(DsnAction::Failed) > 0 {
            Event::Bounced {
                message_id: message.id.clone(),
                bounce_id: b.id.clone(),
                to,
            }
        } else {
            Event::NoticeSent {
                message_id: message.id.clone(),
                notice_id: b.id.clone(),
                to,
                delayed: 0,
                relayed: count(DsnAction::Relayed),
            }
        }
    });
    let op = SpoolOp::Report {
        message_id: message.id.clone(),
        recipients,
        notice,
    };
    match d.shared.spool.apply(op).await {
        Ok(1..) => {
            if let Some(event) = event {
                d.shared.events.emit(event);
            }
        }
        Ok(0) => {}
        Err(e) => {
            d.reports_left.store(true, Ordering::Relaxed);
            d.shared.events.emit(Event::Error {
                session: None,
                message: format!(
                    "storing the notice for {}: {e}; tried again in a second",
                    message.id
                ),
            });
        }
    }
}

fn in_flight(d: &Delivery) -> usize {
    d.in_flight.lock().map_or(usize::MAX, |f| f.len())
}

/// A message's place in the in-flight table, given up when its task ends,
/// a panic included (its reports are then swept again): a message left
/// "in flight" would never be tried or reported again until a restart.
struct InFlightPlace {
    d: Arc<Delivery>,
    id: String,
    finished: bool,
}

impl InFlightPlace {
    fn done(mut self) {
        self.finished = true;
    }
}

impl Drop for InFlightPlace {
    fn drop(&mut self) {
        if !self.finished {
            self.d.reports_left.store(true, Ordering::Relaxed);
        }
        if let Ok(mut f) = self.d.in_flight.lock() {
            f.remove(&self.id);
        }
        self.d.slot_freed.notify_one();
    }
}

/// Starts delivering a message unless it is already in flight. `false`
/// when there is no room for more work in flight.
fn start(
    d: &Arc<Delivery>,
    snapshot: &Arc<Snapshot>,
    id: String,
    tried: Tried,
    handed: Option<Arc<StoredMessage>>,
    max_in_flight: usize,
) -> bool {
    {
        let Ok(mut f) = d.in_flight.lock() else {
            return false;
        };
        if f.contains_key(&id) {
            return true;
        }
        if f.len() >= max_in_flight {
            return false;
        }
        f.insert(id.clone(), super::InFlightAttempt::starting(&id));
    }
    let place = InFlightPlace {
        d: Arc::clone(d),
        id,
        finished: false,
    };
    let snapshot = Arc::clone(snapshot);
    tokio::spawn(async move {
        deliver_message(&place.d, &snapshot, &place.id, tried, handed).await;
        place.done();
    });
    true
}

/// Runs `read` about message `id` on the spool reader's thread.
async fn read_spool<T: Send + 'static>(
    d: &Arc<Delivery>,
    id: &str,
    read: impl FnOnce(&SpoolReader, &str) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    let id = id.to_string();
    d.reader.read(move |r| read(r, &id)).await
}

/// A message's id alone, for recording outcomes that need nothing else
/// of it (a wait, a spool that could not be read): never bounced from.
fn stub_message(id: &str) -> StoredMessage {
    StoredMessage {
        id: id.to_string(),
        received_at: now_secs(),
        message: crate::spool::NewMessage {
            dsn: Default::default(),
            id: id.to_string(),
            sender: String::new(),
            recipients: Vec::new(),
            login: None,
            peer: String::new(),
            client_listed: Some(false),
            helo: String::new(),
            body: Vec::new(),
            spilled: None,
            smtputf8: false,
        },
    }
}

/// A spooled message's first read for delivery.
enum BodyRead {
    /// Delivered or deleted meanwhile.
    Gone,
    /// Read, with the memory it takes while it is delivered.
    Whole(
        Option<Arc<StoredMessage>>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    /// Its size: the memory for it is not free yet.
    WaitFor(u64),
}

impl BodyRead {
    /// Reads message `id`'s size and, if `budget` has the memory for it
    /// free at once, the message with it.
    fn first(r: &SpoolReader, id: &str, budget: Arc<Semaphore>) -> rusqlite::Result<BodyRead> {
        let Some(size) = r.message_size(id)? else {
            return Ok(BodyRead::Gone);
        };
        Ok(match budget.try_acquire_many_owned(body_permits(size)) {
            Ok(permit) => BodyRead::Whole(r.message(id)?.map(Arc::new), permit),
            Err(_) => BodyRead::WaitFor(size),
        })
    }
}

/// One message: its due recipients, grouped by next hop, each group
/// delivered concurrently; then every outcome in one spool commit.
async fn deliver_message(
    d: &Arc<Delivery>,
    snapshot: &Arc<Snapshot>,
    id: &str,
    tried: Tried,
    handed: Option<Arc<StoredMessage>>,
) {
    // From here: a delivery that waits (for memory, the spool reader, a
    // slot, DNS) asks the spool again before it sends.
    let started = std::time::Instant::now();
    let Tried {
        attempts,
        delay_warned,
    } = tried;
    let rcpts: Vec<String> = attempts.keys().cloned().collect();
    // Each recipient's next hop, worked out once.
    let plans: Vec<(String, HopPlan)> = rcpts
        .iter()
        .map(|r| (r.clone(), plan_for(snapshot, r)))
        .collect();
    // Held recipients only (local domains without a route): looked at
    // again without reading the body or taking memory for it.
    let holds: Vec<_> = plans
        .iter()
        .filter_map(|(r, plan)| match plan {
            HopPlan::Hold(reason) => Some((r.clone(), held(reason.clone()), None)),
            _ => None,
        })
        .collect();
    if !holds.is_empty() && holds.len() == plans.len() {
        let none = HashMap::new();
        record(
            d,
            &snapshot.settings,
            &stub_message(id),
            &attempts,
            &none,
            true,
            holds,
        )
        .await;
        return;
    }
    // Memory for the body before it is read (a handed message is small
    // and already in memory): held until every group is done.
    let mut held_budget = None;
    let message = match handed {
        Some(m) => Ok(Some(m)),
        // Its size, and the message too in the same read when the memory
        // for it is free at once (a drain's usual case: one read).
        None => match read_spool(d, id, {
            let budget = Arc::clone(&d.body_budget);
            move |r, id| BodyRead::first(r, id, budget)
        })
        .await
        {
            Ok(BodyRead::Gone) => Ok(None),
            Ok(BodyRead::Whole(message, permit)) => {
                held_budget = Some(permit);
                Ok(message)
            }
            Ok(BodyRead::WaitFor(size)) => {
                let budget = Arc::clone(&d.body_budget);
                held_budget = budget.acquire_many_owned(body_permits(size)).await.ok();
                read_spool(d, id, |r, id| r.message(id).map(|m| m.map(Arc::new))).await
            }
            Err(e) => Err(e),
        },
    };
    let message = match message {
        Ok(Some(m)) => m,
        Ok(None) => {
            // Delivered by an attempt that ended meanwhile (a spool scan
            // can list a message just before), or deleted from the queue:
            // nothing left to do, and nothing wrong.
            return;
        }
        Err(e) => {
            // Every attempt ends in an outcome: this one is retried later.
            d.shared.events.emit(Event::Error {
                session: None,
                message: format!("delivery of {id}: cannot read it from the spool: {e}"),
            });
            let stub = stub_message(id);
            let results = rcpts
                .into_iter()
                .map(|r| {
                    (
                        r,
                        Outcome::Temporary {
                            reply: format!("4.3.0 the spool could not be read: {e}"),
                        },
                        None,
                    )
                })
                .collect();
            record(
                d,
                &snapshot.settings,
                &stub,
                &attempts,
                &HashMap::new(),
                true,
                results,
            )
            .await;
            return;
        }
    };
    let settings = &snapshot.settings;

    let hops = dsn::count_received(&message.message.body);
    if hops > settings.max_hops {
        let loop_failure = Outcome::Permanent {
            reply: format!(
                "5.4.6 mail loop: {hops} Received: headers (max-hops is {})",
                settings.max_hops
            ),
            status: "5.4.6".into(),
        };
        let results = rcpts
            .into_iter()
            .map(|r| (r, loop_failure.clone(), None))
            .collect();
        let asked = message.message.dsn_asked();
        if record(d, settings, &message, &attempts, &asked, true, results)
            .await
            .reported
        {
            send_reports(d, settings, &message).await;
        }
        return;
    }
    // Group by next hop; each group is delivered and recorded on its own,
    // so a slow next hop delays neither the others nor their records.
    let mut groups: HashMap<String, (HopPlan, Vec<String>)> = HashMap::new();
    for (r, plan) in plans {
        groups
            .entry(plan.key())
            .or_insert_with(|| (plan, Vec::new()))
            .1
            .push(r);
    }
    let attempts = Arc::new(attempts);
    // What each recipient asked to be told (RFC 3461), worked out once.
    let asked = Arc::new(message.message.dsn_asked());
    let mut set = JoinSet::new();
    for (_, (plan, group)) in groups {
        let d = Arc::clone(d);
        let message = Arc::clone(&message);
        let settings = Arc::clone(settings);
        let attempts = Arc::clone(&attempts);
        let asked = Arc::clone(&asked);
        set.spawn(async move {
            let results =
                deliver_group(&d, &settings, &message, &asked, plan, group, started).await;
            record(
                &d,
                &settings,
                &message,
                &attempts,
                &asked,
                delay_warned,
                results,
            )
            .await
        });
    }
    // The message's next hops are recorded side by side; its sender hears
    // of their failures in one notice and of their delays in one warning,
    // once all are recorded.
    let mut delayed = Vec::new();
    let mut reported = false;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(recorded) => {
                delayed.extend(recorded.delayed);
                reported |= recorded.reported;
            }
            // A group that failed may have stored reports: swept later.
            Err(_) => d.reports_left.store(true, Ordering::Relaxed),
        }
    }
    if reported {
        send_reports(d, settings, &message).await;
    }
    warn_of_delay(d, settings, &message, &asked, delayed).await;
    drop(held_budget);
}

/// Where a recipient's domain goes, as data the tasks can own.
#[derive(Debug, Clone)]
enum HopPlan {
    Route(super::Route),
    Mx(String),
    Hold(String),
    Invalid(String),
}

impl HopPlan {
    fn key(&self) -> String {
        match self {
            HopPlan::Route(r) => format!("route {}:{}", r.host, r.port),
            HopPlan::Mx(d) => format!("mx {d}"),
            HopPlan::Hold(reason) => format!("hold {reason}"),
            HopPlan::Invalid(e) => format!("invalid {e}"),
        }
    }
}

fn plan_for(snapshot: &Snapshot, rcpt: &str) -> HopPlan {
    let addr = match parse_forward_path(rcpt) {
        Ok(a) => a,
        Err(e) => return HopPlan::Invalid(e.to_string()),
    };
    let is_local = snapshot.policy.is_local_domain(&addr.domain);
    let domain = match &addr.domain {
        Domain::Name(n) => n.clone(),
        Domain::Postmaster => {
            return HopPlan::Hold(
                "postmaster: add a route for a local domain to deliver it".into(),
            );
        }
        Domain::Literal(ip) => {
            // An address literal is its own next hop, on the MX port.
            return HopPlan::Route(super::Route {
                domain: format!("[{ip}]"),
                host: ip.to_string(),
                port: snapshot.settings.mx_port,
                tls: super::TlsMode::Opportunistic,
                auth: None,
                rate: None,
                concurrency: None,
            });
        }
    };
    match next_hop(&domain, &snapshot.routes, is_local) {
        NextHop::Route(r) => HopPlan::Route(r.clone()),
        NextHop::Mx(d) => HopPlan::Mx(d),
        NextHop::Hold(reason) => HopPlan::Hold(reason),
    }
}

/// Who signs a message (DKIM): the key of its `From:` domain, if the mail
/// came from relaygate's own users (a client that authenticated, or that
/// the allow list allows) and its envelope sender is in that same domain
/// (so a user cannot have mail signed for a domain merely by writing it in
/// `From:`; with `sender-login-match` the envelope sender is the login's
/// own). Mail from anyone else, or with more than one `From:`, is never
/// signed, nor are relaygate's own notices.
fn dkim_signer<'a>(
    snapshot: &'a Snapshot,
    message: &NewMessage,
) -> Option<&'a crate::dkim::DkimSigner> {
    if snapshot.dkim.is_empty() {
        return None;
    }
    // Whether the client was listed is as it was at acceptance; for a
    // message queued by a relaygate that did not keep it, as it is now.
    let listed = || {
        message.client_listed.unwrap_or_else(|| {
            message
                .peer
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| snapshot.policy.lists().allows(ip))
        })
    };
    let ours = message.login.is_some() || listed();
    if !ours || message.sender.is_empty() {
        return None;
    }
    // Compared, and looked up, in their DNS form: a U-label and its
    // A-label are one domain.
    let from = crate::policy::address::ascii_domain(&crate::dkim::from_domain(&message.body)?)?;
    let (_, envelope) = message.sender.rsplit_once('@')?;
    if crate::policy::address::ascii_domain(envelope)? != from {
        return None;
    }
    snapshot.dkim.get(&from)
}

pub(super) fn client_config(settings: &ServerSettings) -> ClientConfig {
    ClientConfig {
        hello_name: settings.hostname.clone(),
        connect_timeout: Duration::from_secs(settings.delivery_connect_timeout_secs),
        command_timeout: Duration::from_secs(settings.delivery_command_timeout_secs),
        extra_roots: settings
            .delivery_ca_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .into_iter()
            .collect(),
    }
}

fn resolver(d: &Delivery, servers: &[SocketAddr]) -> Result<Arc<MxResolver>, String> {
    let mut slot = d
        .resolver
        .lock()
        .map_err(|_| "resolver lock poisoned".to_string())?;
    if let Some((s, r)) = slot.as_ref()
        && s == servers
    {
        return Ok(Arc::clone(r));
    }
    let r = Arc::new(MxResolver::new(servers).map_err(|e| e.to_string())?);
    *slot = Some((servers.to_vec(), Arc::clone(&r)));
    Ok(r)
}

/// How often a held recipient (a local domain without a route) is looked
/// at again.
const HOLD_RECHECK_SECS: i64 = 60;

/// A held recipient's outcome: it waits, as for a send rate.
fn held(reason: String) -> Outcome {
    Outcome::Waiting {
        until: now_secs() + HOLD_RECHECK_SECS,
        reply: reason,
    }
}

/// The hosts to try for a plan, in order, or an outcome for everyone.
async fn targets(
    d: &Delivery,
    settings: &ServerSettings,
    plan: &HopPlan,
) -> Result<Vec<Target>, Outcome> {
    match plan {
        // Held, not failing: no attempt counted, no back-off, never
        // expired or bounced; looked at again in a minute (at once after
        // `queue retry`), so a route added meanwhile is taken up.
        HopPlan::Hold(reason) => Err(held(reason.clone())),
        HopPlan::Invalid(e) => Err(Outcome::Permanent {
            reply: e.clone(),
            status: "5.1.3".into(),
        }),
        HopPlan::Route(r) => Target::of_route(r)
            .await
            .map_err(|reply| Outcome::Temporary { reply }),
        HopPlan::Mx(domain) => {
            let resolver = resolver(d, &settings.dns_servers).map_err(|e| Outcome::Temporary {
                reply: format!("DNS resolver: {e}"),
            })?;
            match resolver.resolve(domain).await {
                Ok(hosts) => Ok(hosts
                    .into_iter()
                    .flat_map(|h| {
                        let name = h.name.clone();
                        h.addrs.into_iter().map(move |ip| Target {
                            addr: SocketAddr::new(ip, settings.mx_port),
                            tls_name: name.clone(),
                            tls: super::TlsMode::Opportunistic,
                            auth: None,
                        })
                    })
                    .collect()),
                Err(e) if e.is_permanent() => Err(Outcome::Permanent {
                    reply: format!("{} {domain}: {e}", e.enhanced_status()),
                    status: e.enhanced_status().to_string(),
                }),
                Err(e) => Err(Outcome::Temporary {
                    reply: format!("MX lookup for {domain}: {e}"),
                }),
            }
        }
    }
}

/// One group of recipients with the same next hop: try its hosts in order
/// until one answers.
async fn deliver_group(
    d: &Arc<Delivery>,
    settings: &ServerSettings,
    message: &StoredMessage,
    asked: &HashMap<String, RecipientDsn>,
    plan: HopPlan,
    rcpts: Vec<String>,
    started: std::time::Instant,
) -> Vec<(String, Outcome, Option<String>)> {
    let everyone = |o: Outcome, host: Option<String>| {
        rcpts
            .iter()
            .map(|r| (r.clone(), o.clone(), host.clone()))
            .collect::<Vec<_>>()
    };
    let targets = match targets(d, settings, &plan).await {
        Ok(t) if t.is_empty() => {
            return everyone(
                Outcome::Temporary {
                    reply: format!("no address for {}", plan.key()),
                },
                None,
            );
        }
        Ok(t) => t,
        Err(o) => return everyone(o, None),
    };
    // A route with a send rate: past it, the message waits in the queue
    // for its slot (no attempt, no error, no bounce).
    if let HopPlan::Route(route) = &plan
        && let Some(rate) = route.rate
    {
        let now = crate::abuse::now_ms();
        let wait = d
            .rates
            .lock()
            .ok()
            .and_then(|mut r| r.take(route, rate, &message.id, now));
        if let Some(until) = wait {
            return everyone(
                Outcome::Waiting {
                    until: until.div_ceil(1000) as i64,
                    reply: format!(
                        "waiting for the rate limit of route {} ({rate}): its turn comes at {}",
                        route.domain,
                        crate::events::utc_text(until)
                    ),
                },
                None,
            );
        }
    }
    let hop_sem = {
        let mut map = match d.per_hop.lock() {
            Ok(m) => m,
            Err(_) => {
                return everyone(not_tried(settings, "internal lock"), None);
            }
        };
        let wanted = match &plan {
            HopPlan::Route(r) => r.concurrency,
            _ => None,
        }
        .unwrap_or(settings.destination_concurrency);
        let entry = map
            .entry(plan.key())
            .or_insert_with(|| (wanted, Arc::new(Semaphore::new(wanted))));
        if entry.0 != wanted {
            // A changed setting: new attempts share a new semaphore; those
            // in flight finish under the old one.
            *entry = (wanted, Arc::new(Semaphore::new(wanted)));
        }
        Arc::clone(&entry.1)
    };
    let global = match d.global.lock() {
        Ok(g) => Arc::clone(&g),
        Err(_) => {
            return everyone(not_tried(settings, "internal lock"), None);
        }
    };
    let (Ok(_hop), Ok(_global)) = (hop_sem.acquire().await, global.acquire().await) else {
        return everyone(
            Outcome::Waiting {
                until: now_secs(),
                reply: "not tried: the engine is shutting down".into(),
            },
            None,
        );
    };
    // Held or deleted while this waited (for memory, the reader, a slot,
    // DNS): those recipients are not sent to. A delivery that did not wait
    // was started from the spool a moment ago, so it is asked only after
    // a wait.
    let rcpts = if started.elapsed() >= RECHECK_AFTER {
        match read_spool(d, &message.id, |r, id| r.queued_now(id)).await {
            Ok(queued) => rcpts.into_iter().filter(|r| queued.contains(r)).collect(),
            Err(_) => rcpts,
        }
    } else {
        rcpts
    };
    if rcpts.is_empty() {
        return Vec::new();
    }
    let config = client_config(settings);
    let sender = message.message.sender.clone();
    let snapshot = d.shared.snapshot();
    let dkim = dkim_signer(&snapshot, &message.message);
    let mut last_error = String::from("no host to try");
    for target in &targets {
        if let Ok(mut f) = d.in_flight.lock()
            && let Some(a) = f.get_mut(&message.id)
        {
            a.hosts
                .push(format!("{} ({})", target.tls_name, target.addr));
        }
        match d
            .pool
            .deliver(
                &config,
                target,
                super::client::Envelope {
                    sender: &sender,
                    recipients: &rcpts,
                    body: &message.message.body,
                    smtputf8: message.message.smtputf8,
                    dsn: super::client::DsnRequests {
                        message: &message.message.dsn,
                        recipients: asked,
                    },
                    dkim,
                },
            )
            .await
        {
            Ok(outcomes) => {
                let host = Some(format!("{} ({})", target.tls_name, target.addr));
                return rcpts
                    .iter()
                    .cloned()
                    .zip(outcomes)
                    .map(|(r, o)| (r, o, host.clone()))
                    .collect();
            }
            Err(e) => last_error = e.0,
        }
    }
    rcpts
        .into_iter()
        .map(|r| {
            (
                r,
                Outcome::Temporary {
                    reply: last_error.clone(),
                },
                None,
            )
        })
        .collect()
}

/// An attempt that never reached a next hop for a reason of the engine's
/// own: no attempt counted, no delay warning; tried again after
/// `retry-first`.
fn not_tried(settings: &ServerSettings, why: &str) -> Outcome {
    Outcome::Waiting {
        until: now_secs() + settings.retry_first_secs as i64,
        reply: format!("not tried: {why}"),
    }
}

/// A delivery that waited this long asks the spool again which of its
/// recipients are still to be sent to.
const RECHECK_AFTER: Duration = Duration::from_millis(100);

/// Applies a changed `delivery-concurrency` without a restart: new
/// attempts share a semaphore of the new size; those in flight finish
/// under the old one (so for a moment the two may overlap).
fn resize_global(d: &Arc<Delivery>, wanted: usize) {
    use std::sync::atomic::Ordering;
    if d.global_size.swap(wanted, Ordering::Relaxed) != wanted
        && let Ok(mut g) = d.global.lock()
    {
        *g = Arc::new(Semaphore::new(wanted));
    }
}

/// What recording a group's outcomes leaves to the end of the attempt.
#[derive(Debug, Default)]
struct Recorded {
    /// The recipients to warn the sender of as delayed, if a warning is
    /// due: one warning for all the message's next hops ([`warn_of_delay`]).
    delayed: Vec<ReportedRecipient>,
    /// Reports were stored with the outcomes: one notice for all the
    /// message's next hops is due ([`send_reports`]).
    reported: bool,
}

/// Turns outcomes into spool updates (retry times, expiry, the reports
/// to the sender) and commits them; emits one event per recipient.
/// `warned`: the sender was warned of a delay already.
async fn record(
    d: &Arc<Delivery>,
    settings: &ServerSettings,
    message: &StoredMessage,
    attempts: &HashMap<String, i64>,
    asked: &HashMap<String, RecipientDsn>,
    warned: bool,
    results: Vec<(String, Outcome, Option<String>)>,
) -> Recorded {
    let now = now_secs();
    let age = now - message.received_at;
    let mut updates = Vec::new();
    // The recipients the notice to the sender reports: failures unless
    // NOTIFY said otherwise, deliveries to a next hop without DSN when
    // NOTIFY asked for success (RFC 3461 4.1, 4.2).
    let mut reported = Vec::new();
    // A message's sender is warned of its delay once, when it has waited
    // `delay-warning`.
    let may_warn = settings.delay_warning_secs > 0
        && age >= settings.delay_warning_secs as i64
        && !message.message.sender.is_empty()
        && !warned;
    let mut delayed = Vec::new();
    let none = RecipientDsn::default();
    for (rcpt, outcome, host) in &results {
        let asked = asked.get(rcpt.as_str()).unwrap_or(&none);
        // A failure the sender asked not to hear of: said after its outcome.
        let mut withheld = false;
        let (update, event_outcome, reply) = match outcome {
            Outcome::Delivered { reply, dsn_passed } => {
                if !dsn_passed && Notify::wants_success(asked.notify) {
                    let status = status_in_class(reply, '2');
                    reported.push(report(rcpt, DsnAction::Relayed, status, reply, host, asked));
                }
                (
                    RecipientUpdate::Delivered,
                    DeliveryOutcome::Delivered,
                    reply.clone(),
                )
            }
            Outcome::Permanent { reply, status } | Outcome::NotSent { reply, status } => {
                // A refusal of ours names no remote MTA (RFC 3464 2.3.5).
                let said_by_host = matches!(outcome, Outcome::Permanent { .. });
                if !Notify::wants_failure(asked.notify) {
                    withheld = true;
                } else {
                    let host = host.clone().filter(|_| said_by_host);
                    let failure =
                        report(rcpt, DsnAction::Failed, status.clone(), reply, &host, asked);
                    reported.push(failure);
                }
                (
                    RecipientUpdate::Failed {
                        error: reply.clone(),
                    },
                    DeliveryOutcome::Bounced,
                    reply.clone(),
                )
            }
            Outcome::Temporary { reply } if age >= settings.max_queue_age_secs as i64 => {
                let text = format!(
                    "4.4.7 message expired after {} days in the queue; last error: {reply}",
                    age / 86_400
                );
                if !Notify::wants_failure(asked.notify) {
                    withheld = true;
                } else {
                    let status = "4.4.7".to_string();
                    reported.push(report(rcpt, DsnAction::Failed, status, &text, host, asked));
                }
                (
                    RecipientUpdate::Failed {
                        error: text.clone(),
                    },
                    DeliveryOutcome::Expired,
                    text,
                )
            }
            Outcome::Waiting { until, reply } => (
                RecipientUpdate::Wait {
                    next_attempt: *until,
                    note: reply.clone(),
                },
                DeliveryOutcome::Deferred,
                reply.clone(),
            ),
            Outcome::Temporary { reply } => {
                let previous = attempts.get(rcpt).copied().unwrap_or(0).clamp(0, 30);
                let wait = settings
                    .retry_first_secs
                    .saturating_mul(1u64 << previous)
                    .min(settings.retry_max_interval_secs);
                if may_warn && Notify::wants_delay(asked.notify) {
                    let status = status_in_class(reply, '4');
                    delayed.push(report(rcpt, DsnAction::Delayed, status, reply, host, asked));
                }
                (
                    RecipientUpdate::Retry {
                        next_attempt: now + wait as i64,
                        error: reply.clone(),
                    },
                    DeliveryOutcome::Deferred,
                    reply.clone(),
                )
            }
        };
        updates.push((rcpt.clone(), update));
        d.shared.events.emit(Event::Delivery {
            message_id: message.id.clone(),
            recipient: rcpt.clone(),
            host: host.clone().unwrap_or_else(|| "-".into()),
            outcome: event_outcome,
            reply: crate::events::printable(&reply),
        });
        if let (true, false, Some(n)) = (withheld, message.message.sender.is_empty(), asked.notify)
        {
            d.shared.events.emit(Event::NotNotified {
                message_id: message.id.clone(),
                recipient: rcpt.clone(),
                notify: n.as_param(),
            });
        }
    }
    // Kept only when a notice can be sent: none to the null sender, and
    // never one about a notice.
    if !reported.is_empty()
        && (message.message.sender.is_empty() || dsn::is_bounce(&message.message.body))
    {
        reported.clear();
    }
    let reports: Vec<(String, String)> = reported
        .iter()
        .map(|r| (r.address.clone(), dsn::StoredReport::of(r).text()))
        .collect();
    let op = SpoolOp::Attempt {
        message_id: message.id.clone(),
        updates,
        reports,
    };
    // Outcomes written later (a full disk) have their reports swept then.
    let written = apply_or_keep(d, op, &message.id).await.is_some();
    Recorded {
        delayed,
        reported: written && !reported.is_empty(),
    }
}

/// Applies a delivery's op to the spool (taking the disk's reserve when it
/// is full); what it cannot apply is kept, and no delivery starts until it
/// is written ([`record_again`]). Whether it was applied, and its rows.
async fn apply_or_keep(d: &Arc<Delivery>, op: SpoolOp, id: &str) -> Option<usize> {
    let mut result = d.shared.spool.apply(op.clone()).await;
    if matches!(result, Err(crate::spool::SpoolError::Full(_))) && release_reserve(d) {
        result = d.shared.spool.apply(op.clone()).await;
    }
    match result {
        Ok(n) => Some(n),
        Err(e) => {
            let first = d.unrecorded.lock().is_ok_and(|mut u| {
                u.push(op);
                u.len() == 1
            });
            if first {
                d.shared.events.emit(Event::Error {
                    session: None,
                    message: format!(
                        "recording delivery of {id}: {e}; no delivery starts until the spool \
                         records outcomes again (tried every second)"
                    ),
                });
            }
            None
        }
    }
}

/// Warns a message's sender of its delay, once: after an attempt whose
/// outcomes are recorded, naming every recipient still deferred, those
/// this attempt deferred (`delayed`, with the next hop that said so) and
/// those deferred before and waiting for their next attempt, in the
/// message's order, as each asked (NOTIFY). Postfix's warning, too, names
/// every deferred recipient of the queue file. The spool stores it only
/// if the sender was not warned already.
async fn warn_of_delay(
    d: &Arc<Delivery>,
    settings: &ServerSettings,
    message: &StoredMessage,
    asked: &HashMap<String, RecipientDsn>,
    mut delayed: Vec<ReportedRecipient>,
) {
    if delayed.is_empty() {
        return;
    }
    // A message's recipients are few: its own rows, read by its key. Not
    // read, gone or held: no warning now (the next attempt warns).
    match read_spool(d, &message.id, |r, id| r.entry(id)).await {
        Ok(Some(entry)) if !entry.held => {
            delayed = deferred_recipients(delayed, entry.recipients, asked);
        }
        _ => return,
    }
    let Some(notice) = bounce_for(settings, message, &delayed) else {
        return;
    };
    let notice_id = notice.id.clone();
    let op = SpoolOp::DelayWarning {
        message_id: message.id.clone(),
        notice,
    };
    // Not kept when it cannot be written: the message is then not marked
    // warned, and its next attempt warns.
    if let Ok(1..) = d.shared.spool.apply(op).await {
        d.shared.events.emit(Event::NoticeSent {
            message_id: message.id.clone(),
            notice_id,
            to: message.message.sender.clone(),
            delayed: delayed.len(),
            relayed: 0,
        });
    }
}

/// The recipients a delay warning names: those an attempt deferred
/// (`this_attempt`, as it reported them) and the message's other
/// recipients (`queued`, as the spool has them) that were deferred
/// before and wait for their next attempt (with their last reply), each
/// if its NOTIFY asks for delays, in the message's order.
fn deferred_recipients(
    mut this_attempt: Vec<ReportedRecipient>,
    queued: Vec<crate::spool::RecipientState>,
    asked: &HashMap<String, RecipientDsn>,
) -> Vec<ReportedRecipient> {
    let none = RecipientDsn::default();
    let mut named = Vec::new();
    for r in queued {
        if let Some(i) = this_attempt.iter().position(|x| x.address == r.address) {
            named.push(this_attempt.remove(i));
            continue;
        }
        let asked = asked.get(r.address.as_str()).unwrap_or(&none);
        if r.state != "queued" || r.attempts == 0 || !Notify::wants_delay(asked.notify) {
            continue;
        }
        // Its last error, if that was a reply (a 4.x.x status); a note of
        // the engine's own since (a rate limit's wait) is no diagnosis.
        let error = r.last_error.unwrap_or_default();
        let reply = super::client::enhanced_status(&error).filter(|s| s.starts_with('4'));
        named.push(ReportedRecipient {
            address: r.address,
            status: reply.clone().unwrap_or_else(|| "4.0.0".into()),
            diagnostic: reply.map(|_| error),
            remote_mta: None,
            action: DsnAction::Delayed,
            original_recipient: asked.orcpt.clone(),
        });
    }
    named.extend(this_attempt);
    named
}

/// A message's due recipients with their attempts so far, and whether
/// its sender was warned of its delay (as the queue scan read them).
#[derive(Debug)]
struct Tried {
    attempts: HashMap<String, i64>,
    delay_warned: bool,
}

/// A recipient as a notice reports it: what happened, its enhanced
/// status code, the reply that said so, who said it, and its ORCPT.
fn report(
    rcpt: &str,
    action: DsnAction,
    status: String,
    reply: &str,
    host: &Option<String>,
    asked: &RecipientDsn,
) -> ReportedRecipient {
    ReportedRecipient {
        address: rcpt.to_string(),
        status,
        diagnostic: Some(reply.to_string()),
        remote_mta: host.clone(),
        action,
        original_recipient: asked.orcpt.clone(),
    }
}

/// A reply's enhanced status code if it is of the class (`2` or `4`),
/// else that class's generic one.
fn status_in_class(reply: &str, class: char) -> String {
    super::client::enhanced_status(reply)
        .filter(|s| s.starts_with(class))
        .unwrap_or_else(|| format!("{class}.0.0"))
}

/// The reports recorded in a message's rows, as a notice names them, each
/// with its ORCPT (a damaged row as a failure without details).
fn stored_reports(
    rows: Vec<(String, String)>,
    asked: &HashMap<String, RecipientDsn>,
) -> Vec<ReportedRecipient> {
    rows.into_iter()
        .map(|(address, text)| {
            let orcpt = asked.get(&address).and_then(|a| a.orcpt.clone());
            let stored = dsn::StoredReport::parse(&text).unwrap_or(dsn::StoredReport {
                action: DsnAction::Failed,
                status: "5.0.0".into(),
                diagnostic: None,
                remote_mta: None,
            });
            stored.recipient(address, orcpt)
        })
        .collect()
}

/// The bounce for a message the administrator deletes from the queue: the
/// reports recorded and not yet sent, then every recipient still queued,
/// reported failed (5.0.0). Shared by `queue delete --bounce` and the
/// console.
pub fn bounce_for_deleted(
    settings: &ServerSettings,
    reader: &SpoolReader,
    message: &StoredMessage,
) -> rusqlite::Result<Option<NewMessage>> {
    let asked = message.message.dsn_asked();
    let none = RecipientDsn::default();
    let mut reported = stored_reports(reader.reports(&message.id)?, &asked);
    // This message's recipients only (not a walk of the whole queue).
    let queued: Vec<ReportedRecipient> = reader
        .entry(&message.id)?
        .into_iter()
        .flat_map(|e| e.recipients)
        .filter(|r| r.state == "queued")
        .filter_map(|r| {
            let asked = asked.get(r.address.as_str()).unwrap_or(&none);
            Notify::wants_failure(asked.notify).then(|| {
                let why = "deleted from the queue by the administrator";
                report(
                    &r.address,
                    DsnAction::Failed,
                    "5.0.0".into(),
                    why,
                    &None,
                    asked,
                )
            })
        })
        .collect();
    reported.extend(queued);
    Ok(bounce_for(settings, message, &reported))
}

/// The notice for the recipients reported on (failed, delayed, or relayed to a
/// next hop without DSN), unless the sender is the null sender or the
/// message is itself a notice (never a bounce for a bounce).
pub fn bounce_for(
    settings: &ServerSettings,
    message: &StoredMessage,
    reported: &[ReportedRecipient],
) -> Option<NewMessage> {
    let sender = &message.message.sender;
    if reported.is_empty() || sender.is_empty() || dsn::is_bounce(&message.message.body) {
        return None;
    }
    let id = crate::spool::new_id();
    let envid = message.message.dsn.envid_text();
    let body = dsn::build_bounce(&BounceInput {
        reporting_mta: &settings.hostname,
        original_id: &message.id,
        original_sender: sender,
        arrival: UNIX_EPOCH + Duration::from_secs(message.received_at.max(0) as u64),
        now: SystemTime::now(),
        original: &message.message.body,
        recipients: reported,
        message_id_domain: &settings.hostname,
        envid: envid.as_deref(),
        global: !sender.is_ascii(),
        retry_until: Some(
            UNIX_EPOCH
                + Duration::from_secs(
                    (message.received_at.max(0) as u64).saturating_add(settings.max_queue_age_secs),
                ),
        ),
        return_full: message.message.dsn.ret == Some(crate::smtp::dsn_params::Ret::Full),
    });
    Some(NewMessage {
        dsn: Default::default(),
        spilled: None,
        // A UTF-8 sender can only be reached with SMTPUTF8 (RFC 6531).
        smtputf8: !sender.is_ascii(),
        id,
        sender: String::new(),
        recipients: vec![SpoolRecipient {
            dsn: Default::default(),
            address: sender.clone(),
            class: "bounce".into(),
            reason: format!("delivery status notification for {}", message.id),
        }],
        login: None,
        peer: "127.0.0.1".into(),
        // relaygate's own notices are never signed.
        client_listed: Some(false),
        helo: settings.hostname.clone(),
        body,
    })
}

#[cfg(test)]
mod body_budget_tests {
    use super::*;

    #[test]
    fn a_body_takes_five_times_its_size_within_the_budget() {
        assert_eq!(body_permits(0), 1);
        assert_eq!(body_permits(1), 5);
        assert_eq!(body_permits(1024 * 1024), 5 * 1024);
        // 20 MiB: 100 MiB of the 128, so one at a time.
        assert_eq!(body_permits(20 * 1024 * 1024), 100 * 1024);
        // 25 MiB, the largest message by default: 125 MiB, alone.
        assert_eq!(body_permits(25 * 1024 * 1024), 125 * 1024);
        // Larger than the budget allows: the whole budget, so it still goes.
        assert_eq!(body_permits(1 << 40), BODY_BUDGET_KIB);
    }

    /// Twenty-five 1 MiB deliveries fit at once; one more waits until one
    /// ends; a 25 MiB one waits for them all.
    #[tokio::test]
    async fn a_delivery_past_the_budget_waits_for_one_to_end() {
        let budget = Arc::new(Semaphore::new(BODY_BUDGET_KIB as usize));
        let mib = body_permits(1024 * 1024);
        let mut held = Vec::new();
        for _ in 0..25 {
            held.push(Arc::clone(&budget).try_acquire_many_owned(mib).unwrap());
        }
        assert!(Arc::clone(&budget).try_acquire_many_owned(mib).is_err());
        held.pop();
        held.push(Arc::clone(&budget).try_acquire_many_owned(mib).unwrap());
        let big = body_permits(25 * 1024 * 1024);
        assert!(Arc::clone(&budget).try_acquire_many_owned(big).is_err());
        held.clear();
        assert!(Arc::clone(&budget).try_acquire_many_owned(big).is_ok());
    }

    /// A message's first read for delivery takes the message with its
    /// memory when that is free, only its size when not (the delivery then
    /// waits and reads again), and nothing of a message no longer there.
    #[test]
    fn the_first_read_takes_the_message_only_with_its_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = crate::spool::Spool::open(&path).unwrap();
        let id = spool.next_id();
        let body = vec![b'x'; 300 * 1024];
        spool
            .apply_blocking(SpoolOp::Insert(NewMessage {
                dsn: Default::default(),
                id: id.clone(),
                sender: "a@example.com".into(),
                recipients: vec![SpoolRecipient {
                    address: "b@far.test".into(),
                    class: "outbound".into(),
                    reason: "test".into(),
                    dsn: Default::default(),
                }],
                login: None,
                peer: "127.0.0.1".into(),
                client_listed: Some(false),
                helo: "client".into(),
                body: body.clone(),
                spilled: None,
                smtputf8: false,
            }))
            .unwrap();
        let reader = SpoolReader::open(&path).unwrap();
        let budget = Arc::new(Semaphore::new(BODY_BUDGET_KIB as usize));
        let needs = body_permits(body.len() as u64) as usize;
        // Free: the message, and its share of the budget held.
        match BodyRead::first(&reader, &id, Arc::clone(&budget)).unwrap() {
            BodyRead::Whole(Some(m), permit) => {
                assert_eq!(m.message.body, body);
                assert_eq!(permit.num_permits(), needs);
                assert_eq!(budget.available_permits(), BODY_BUDGET_KIB as usize - needs);
            }
            _ => panic!("the message was not read with its memory"),
        }
        assert_eq!(budget.available_permits(), BODY_BUDGET_KIB as usize);
        // All but a little of the budget taken: only its size.
        let _taken = Arc::clone(&budget)
            .try_acquire_many_owned(BODY_BUDGET_KIB - 100)
            .unwrap();
        match BodyRead::first(&reader, &id, Arc::clone(&budget)).unwrap() {
            BodyRead::WaitFor(size) => assert_eq!(size, body.len() as u64),
            _ => panic!("read without the memory for it"),
        }
        assert_eq!(budget.available_permits(), 100);
        assert!(matches!(
            BodyRead::first(&reader, "no-such-id", budget).unwrap(),
            BodyRead::Gone
        ));
    }
}

#[cfg(test)]
mod delay_warning_tests {
    use super::*;
    use crate::spool::RecipientState;

    fn queued(address: &str, state: &str, attempts: i64, error: Option<&str>) -> RecipientState {
        RecipientState {
            address: address.into(),
            state: state.into(),
            attempts,
            next_attempt: 0,
            last_error: error.map(str::to_string),
            notify: None,
        }
    }

    /// The warning names this attempt's deferred recipients as it reported
    /// them (with their next hop), and the message's recipients deferred
    /// earlier and not due now, with their last error; not those delivered,
    /// failed, never tried, or that asked for no delay notice; in the
    /// message's order.
    #[test]
    fn a_warning_names_every_deferred_recipient_of_the_message() {
        let now = report(
            "b@two.test",
            DsnAction::Delayed,
            "4.2.2".into(),
            "452 4.2.2 mailbox full",
            &Some("mx.two.test ([127.0.0.2]:25)".into()),
            &RecipientDsn::default(),
        );
        let mut asked = HashMap::new();
        asked.insert(
            "e@one.test".to_string(),
            RecipientDsn {
                notify: Notify::parse("FAILURE"),
                orcpt: None,
            },
        );
        let spool = vec![
            queued("a@one.test", "queued", 2, Some("421 4.4.2 try later")),
            queued("b@two.test", "queued", 3, Some("452 4.2.2 mailbox full")),
            queued("c@one.test", "delivered", 1, None),
            queued("d@one.test", "queued", 0, None),
            queued("e@one.test", "queued", 2, Some("421 4.4.2 try later")),
            queued("f@one.test", "failed", 1, Some("550 5.1.1 unknown")),
            // Deferred, then kept waiting by a rate limit: named, with no
            // diagnosis from the note.
            queued(
                "g@one.test",
                "queued",
                1,
                Some("waiting for the rate limit"),
            ),
        ];
        let named = deferred_recipients(vec![now.clone()], spool, &asked);
        let addresses: Vec<&str> = named.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(addresses, ["a@one.test", "b@two.test", "g@one.test"]);
        assert_eq!(
            (named[2].status.as_str(), &named[2].diagnostic),
            ("4.0.0", &None)
        );
        assert_eq!(named[0].status, "4.4.2");
        assert_eq!(named[0].diagnostic.as_deref(), Some("421 4.4.2 try later"));
        assert_eq!(named[0].remote_mta, None);
        assert_eq!(named[1], now, "as this attempt reported it");
        // Without the spool's rows (it could not be read), this attempt's.
        assert_eq!(
            deferred_recipients(vec![now.clone()], Vec::new(), &asked),
            [now]
        );
    }
}
