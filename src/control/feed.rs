//! The engine's live feed: one task that takes every engine event, keeps
//! the live picture ([`LiveState`]) and the recent events, and fans the
//! events out to attached consoles.
//!
//! Attaching is answered inside that task, between two events, so a
//! console's snapshot and the events that follow it start at the same
//! point. What a console is sent of the stream is deliberately partial:
//! command lines only for the dialogue it shows, and at most
//! [`EVENTS_PER_SECOND`] others (the rest are counted, and the console is
//! told how many; the event log and the live picture, sent whole in ticks,
//! have them all). Consoles receive through a broadcast channel of fixed
//! size: one that falls behind is told how many events it skipped
//! ([`broadcast::error::RecvError::Lagged`]) and attaches again; it never
//! slows a session, and its backlog never grows past the channel.

use super::protocol::EngineSnapshot;
use crate::engine::ListenerStatus;
use crate::events::{CommandSwitch, EventBus, Stamped};
use crate::live::{LiveState, LiveTick};
use crate::session_board::SessionBoards;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Events a console may be behind before it is told it skipped some.
pub const CONSOLE_BACKLOG: usize = 16_384;
/// Events (no command lines) kept for a console that attaches.
pub const RECENT_EVENTS: usize = 5_000;
/// Room between the engine and the feed.
const BUS_CAPACITY: usize = 65_536;

/// Where the feed gets the listeners' state from.
pub type ListenerSource = Arc<dyn Fn() -> Vec<ListenerStatus> + Send + Sync>;

enum Request {
    Attach(oneshot::Sender<Attachment>),
    Dialogue(u64, oneshot::Sender<Vec<Stamped>>),
    Tick(u64, oneshot::Sender<Option<LiveTick>>),
}

/// Events a console is sent per second at most, besides the dialogue it
/// follows; the rest are counted and it is told how many (the event log
/// has them all). The live picture reaches it whole, in ticks.
pub const EVENTS_PER_SECOND: u64 = 2_000;
/// How often the feed takes the events waiting for it.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// How often a console gets the live picture's changes.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// The events waiting in a console's channel that it is to get, taken at
/// once; `Err` with the number missed when it fell behind. Sent before a
/// live tick: the feed puts each event in the channel as it counts it, so
/// every event a tick counts is waiting by then, and a console that got
/// the tick first would count it again (its counters are the tick's, plus
/// each event that comes after).
pub fn take_waiting(
    events: &mut broadcast::Receiver<Stamped>,
    outbox: &Outbox,
) -> Result<Vec<Stamped>, u64> {
    let mut waiting = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => {
                if outbox.admit(&event) {
                    waiting.push(event);
                }
            }
            Err(broadcast::error::TryRecvError::Lagged(missed)) => return Err(missed),
            Err(_) => return Ok(waiting),
        }
    }
}

/// What one console is sent of the event stream: no command lines but
/// those of the session whose dialogue it shows. (The feed itself sends
/// at most [`EVENTS_PER_SECOND`] other events a second to all consoles,
/// and counts the rest: each console is told how many it did not get.)
#[derive(Debug)]
pub struct Outbox {
    followed: Option<u64>,
    followers: Arc<AtomicUsize>,
    switch: Arc<CommandSwitch>,
    skipped: Arc<AtomicU64>,
    skipped_seen: u64,
}

impl Outbox {
    /// For a console whose attachment was taken when the feed had skipped
    /// `skipped_at` events.
    pub fn new(feed: &Feed, skipped_at: u64) -> Outbox {
        Outbox {
            followed: None,
            followers: Arc::clone(&feed.followers),
            switch: Arc::clone(&feed.switch),
            skipped: Arc::clone(&feed.skipped),
            skipped_seen: skipped_at,
        }
    }

    /// After a fresh attachment (the console caught up by a snapshot).
    pub fn restart_at(&mut self, skipped_at: u64) {
        self.skipped_seen = skipped_at;
    }

    /// Follows one session's command lines (its dialogue is open), or none.
    pub fn follow(&mut self, session: Option<u64>) {
        match (self.followed.is_some(), session.is_some()) {
            (false, true) => {
                self.followers.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.followers.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.followed = session;
        // Sessions emit their command lines only while someone follows.
        self.switch.set(self.followers.load(Ordering::Relaxed) > 0);
    }

    /// Whether to send this event to this console.
    pub fn admit(&self, event: &Stamped) -> bool {
        match event.event.as_ref() {
            crate::events::Event::Command { session, .. } => self.followed == Some(*session),
            _ => true,
        }
    }

    /// Events the feed held back since the last call.
    pub fn take_skipped(&mut self) -> u64 {
        let now = self.skipped.load(Ordering::Relaxed);
        let new = now.saturating_sub(self.skipped_seen);
        self.skipped_seen = now;
        new
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.follow(None);
    }
}

/// A console's start: the state now, and the events from now on.
pub struct Attachment {
    pub snapshot: Box<EngineSnapshot>,
    pub events: broadcast::Receiver<Stamped>,
    /// The feed's skipped-events count at the snapshot: what is skipped
    /// after it is this console's to be told.
    pub skipped_at: u64,
}

/// A handle on the feed task.
#[derive(Clone)]
pub struct Feed {
    requests: mpsc::Sender<Request>,
    bus: Arc<EventBus>,
    listeners: ListenerSource,
    in_flight: crate::delivery::InFlightTable,
    spool_space: crate::spool_space::SpoolSpace,
    /// Consoles following some session's command lines.
    followers: Arc<AtomicUsize>,
    switch: Arc<CommandSwitch>,
    /// Events not broadcast (over the per-second cap), ever.
    skipped: Arc<AtomicU64>,
}

impl Feed {
    /// Starts the feed on `bus`. The Live table's columns and the
    /// dialogues come from the sessions' `boards`; command events (one per
    /// line) are only asked of the engine while a console follows a
    /// dialogue.
    pub fn start(
        bus: Arc<EventBus>,
        boards: Arc<SessionBoards>,
        listeners: ListenerSource,
        in_flight: crate::delivery::InFlightTable,
        spool_space: crate::spool_space::SpoolSpace,
    ) -> Feed {
        let (events, switch) = bus.subscribe_switchable(BUS_CAPACITY);
        let switch = Arc::new(switch);
        let (requests, incoming) = mpsc::channel(64);
        let (out, _) = broadcast::channel(CONSOLE_BACKLOG);
        let followers = Arc::new(AtomicUsize::new(0));
        let skipped = Arc::new(AtomicU64::new(0));
        let task = FeedTask {
            followers: Arc::clone(&followers),
            skipped: Arc::clone(&skipped),
            window: None,
            sent: 0,
            live: LiveState::default(),
            recent: VecDeque::new(),
            started: SystemTime::now(),
            out,
            switch: Arc::clone(&switch),
            boards,
            bus: Arc::clone(&bus),
            listeners: Arc::clone(&listeners),
        };
        tokio::spawn(task.run(events, incoming));
        Feed {
            requests,
            bus,
            listeners,
            in_flight,
            spool_space,
            followers,
            switch,
            skipped,
        }
    }

    /// The state now and the events from now on; `None` once the engine
    /// is gone.
    pub async fn attach(&self) -> Option<Attachment> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Attach(tx)).await.ok()?;
        rx.await.ok()
    }

    /// What changed in the live picture since `since`; `None` when a whole
    /// snapshot is needed (or the engine is gone).
    pub async fn tick(&self, since: u64) -> Option<LiveTick> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Tick(since, tx)).await.ok()?;
        rx.await.ok().flatten()
    }

    /// One session's dialogue as the engine has it (empty if unknown).
    pub async fn dialogue(&self, session: u64) -> Vec<Stamped> {
        let (tx, rx) = oneshot::channel();
        if self
            .requests
            .send(Request::Dialogue(session, tx))
            .await
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub fn listeners(&self) -> Vec<ListenerStatus> {
        (self.listeners)()
    }

    pub fn dropped(&self) -> u64 {
        self.bus.dropped()
    }

    /// What a console shows besides events: listeners, drops, attempts
    /// under way.
    pub fn status(&self, lost: u64) -> super::protocol::EngineStatus {
        super::protocol::EngineStatus {
            listeners: self.listeners(),
            dropped: self.dropped() + lost,
            in_flight: crate::delivery::in_flight_list(&self.in_flight),
            spool: self.spool_space.room(),
        }
    }
}

struct FeedTask {
    followers: Arc<AtomicUsize>,
    skipped: Arc<AtomicU64>,
    /// The current second of the broadcast cap, and what went out in it.
    window: Option<std::time::Instant>,
    sent: u64,
    live: LiveState,
    recent: VecDeque<Stamped>,
    started: SystemTime,
    out: broadcast::Sender<Stamped>,
    switch: Arc<CommandSwitch>,
    boards: Arc<SessionBoards>,
    bus: Arc<EventBus>,
    listeners: ListenerSource,
}

impl FeedTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Stamped>,
        mut requests: mpsc::Receiver<Request>,
    ) {
        // Events are taken in batches, a few times a tick, not one wake-up
        // each: under load that is tens of thousands of wake-ups a second
        // saved on the sessions' threads. Before a request is answered,
        // everything sent so far is taken, so an attachment's snapshot and
        // its events start at the same point.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.tick() => {
                    if !self.drain(&mut events) {
                        return;
                    }
                }
                request = requests.recv() => match request {
                    Some(r) => {
                        if !self.drain(&mut events) {
                            return;
                        }
                        self.answer(r);
                    }
                    None => return,
                },
            }
            self.switch.set(self.followers.load(Ordering::Relaxed) > 0);
        }
    }

    /// Takes every event waiting; false once the engine is gone.
    fn drain(&mut self, events: &mut mpsc::Receiver<Stamped>) -> bool {
        loop {
            match events.try_recv() {
                Ok(e) => self.take(e),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Takes the columns sessions changed on their boards into the live
    /// picture.
    fn refresh(&mut self) {
        let mut changed = Vec::new();
        let connections = &self.live.connections;
        self.boards.changes(
            |s| connections.contains_key(&s),
            |s, c| changed.push((s, c)),
        );
        if changed.is_empty() {
            return;
        }
        for (session, columns) in changed {
            self.live.set_columns(session, columns);
        }
        self.live.columns_set();
    }

    fn take(&mut self, stamped: Stamped) {
        // Command lines only pass through, to the consoles following a
        // dialogue: the boards have them.
        if matches!(*stamped.event, crate::events::Event::Command { .. }) {
            if self.out.receiver_count() > 0 && self.followers.load(Ordering::Relaxed) > 0 {
                let _ = self.out.send(stamped);
            }
            return;
        }
        self.live.apply(&stamped);
        if crate::decision_log::is_logged(&stamped) {
            if self.recent.len() >= RECENT_EVENTS {
                self.recent.pop_front();
            }
            self.recent.push_back(stamped.clone());
        }
        if self.out.receiver_count() == 0 {
            return;
        }
        // Up to the cap, so a console's work (and the engine's in serving
        // it) stays small whatever the rate.
        let now = std::time::Instant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= std::time::Duration::from_secs(1))
        {
            self.window = Some(now);
            self.sent = 0;
        }
        if self.sent >= EVENTS_PER_SECOND {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.sent += 1;
        let _ = self.out.send(stamped);
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Attach(reply) => {
                self.refresh();
                let snapshot = Box::new(EngineSnapshot {
                    started: self.started,
                    listeners: (self.listeners)(),
                    live: self.live.clone(),
                    recent: self.recent.iter().cloned().collect(),
                    dropped: self.bus.dropped(),
                });
                let events = self.out.subscribe();
                let skipped_at = self.skipped.load(Ordering::Relaxed);
                let _ = reply.send(Attachment {
                    snapshot,
                    events,
                    skipped_at,
                });
            }
            Request::Tick(since, reply) => {
                self.refresh();
                let _ = reply.send(self.live.tick_since(since));
            }
            Request::Dialogue(session, reply) => {
                // The session's events and its command lines, in order.
                let mut dialogue: Vec<Stamped> = self
                    .live
                    .connections
                    .get(&session)
                    .map(|c| c.dialogue.iter().cloned().collect())
                    .unwrap_or_default();
                if let Some(board) = self.boards.get(session) {
                    dialogue.extend(board.transcript());
                    dialogue.sort_by_key(|e| e.at);
                }
                let _ = reply.send(dialogue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, EventBus, RefusalCause};

    fn refused(bus: &EventBus) {
        bus.emit(Event::SessionRefused {
            peer: "127.0.0.1:1".parse().expect("addr"),
            reply: "554 5.7.1 no".into(),
            cause: RefusalCause::Limit,
        });
    }

    /// Every event a live tick counts is waiting in the console's channel
    /// by the time the tick is made, so the events taken before the tick
    /// and the tick's counters (which replace the console's) leave the
    /// console with the engine's count; an event sent after the tick, as
    /// before this was kept, counted twice.
    #[tokio::test]
    async fn a_tick_comes_after_the_events_it_counts() {
        let bus = Arc::new(EventBus::default());
        let feed = Feed::start(
            Arc::clone(&bus),
            Default::default(),
            Arc::new(Vec::new),
            Default::default(),
            Default::default(),
        );
        let attachment = feed.attach().await.expect("attach");
        let mut console = attachment.snapshot.live.clone();
        let generation = console.generation;
        let mut events = attachment.events;
        let outbox = Outbox::new(&feed, attachment.skipped_at);
        for _ in 0..5 {
            refused(&bus);
        }
        let tick = loop {
            let tick = feed.tick(generation).await.expect("tick");
            if tick.counters.refused_sessions == 5 {
                break tick;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        };
        let waiting = take_waiting(&mut events, &outbox).expect("not behind");
        assert_eq!(waiting.len(), 5, "the tick's events are all waiting");
        for event in &waiting {
            console.apply(event);
        }
        console.merge(tick);
        assert_eq!(console.counters.refused_sessions, 5);
        // Nothing the tick counted is left to count again.
        assert!(matches!(
            events.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
        refused(&bus);
        let later = events.recv().await.expect("event");
        console.apply(&later);
        assert_eq!(console.counters.refused_sessions, 6);
    }
}
