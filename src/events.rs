//! The typed events the engine emits, and the bus that carries them.
//!
//! The engine never waits for a viewer: every subscriber has a bounded
//! channel, events are offered with `try_send`, and an event a full channel
//! cannot take is dropped and counted.

use crate::bindings::BindKind;
use crate::policy::decision::Decision;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// One thing that happened in the engine.
#[derive(Debug, Clone)]
pub enum Event {
    ListenerUp {
        addr: SocketAddr,
        kind: BindKind,
    },
    ListenerFailed {
        addr: SocketAddr,
        kind: BindKind,
        error: String,
    },
    ListenerDown {
        addr: SocketAddr,
    },
    /// A new policy snapshot is in force.
    PolicyReloaded {
        allow: usize,
        deny: usize,
    },
    /// The stored configuration could not be loaded; the old one stays.
    ConfigRejected {
        error: String,
    },
    SessionOpened {
        session: u64,
        peer: SocketAddr,
        local: SocketAddr,
        kind: BindKind,
        tls: bool,
    },
    /// A session refused at the greeting (too many sessions).
    SessionRefused {
        peer: SocketAddr,
        reply: String,
    },
    SessionClosed {
        session: u64,
        why: String,
    },
    TlsEstablished {
        session: u64,
    },
    /// A command and the code of its reply. AUTH payloads are never included.
    Command {
        session: u64,
        line: String,
        reply: String,
    },
    Authenticated {
        session: u64,
        login: String,
    },
    AuthFailed {
        session: u64,
        peer: IpAddr,
        login: Option<String>,
    },
    /// The policy decision for one recipient, with its reason.
    Decision {
        session: u64,
        peer: IpAddr,
        login: Option<String>,
        sender: String,
        recipient: String,
        decision: Box<Decision>,
    },
    MessageAccepted {
        session: u64,
        id: String,
        size: usize,
        recipients: usize,
    },
    /// One delivery attempt for one recipient and its outcome
    /// (`delivered`, `deferred`, `bounced`, `expired`), with the remote reply.
    Delivery {
        message_id: String,
        recipient: String,
        host: String,
        outcome: &'static str,
        reply: String,
    },
    /// A bounce was queued for the sender of a message.
    Bounced {
        message_id: String,
        bounce_id: String,
        to: String,
    },
    Error {
        session: Option<u64>,
        message: String,
    },
}

/// How an event reads in a log: its kind (for filtering), an outcome word
/// where there is one, the severity and one line of text. The headless log,
/// the decision log and the console all render events through this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// `decision`, `auth`, `delivery`, `session`, `command`, `config`, `error`.
    pub kind: &'static str,
    /// `allowed`/`denied` for decisions, the delivery outcome, `failed` for AUTH.
    pub verdict: Option<&'static str>,
    pub level: Level,
    pub text: String,
}

/// Severity of a described event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// One line for an event, the same wherever it is shown.
pub fn describe(event: &Event) -> Described {
    use Level::*;
    let d = |kind, verdict, level, text: String| Described {
        kind,
        verdict,
        level,
        text,
    };
    match event {
        Event::ListenerUp { addr, kind } => d(
            "config",
            None,
            Info,
            format!("listening on {addr} ({kind})"),
        ),
        Event::ListenerFailed { addr, kind, error } => d(
            "error",
            None,
            Error,
            format!("cannot listen on {addr} ({kind}): {error}"),
        ),
        Event::ListenerDown { addr } => {
            d("config", None, Info, format!("stopped listening on {addr}"))
        }
        Event::PolicyReloaded { allow, deny } => d(
            "config",
            None,
            Info,
            format!("configuration reloaded: {allow} allow and {deny} deny entries"),
        ),
        Event::ConfigRejected { error } => d(
            "error",
            None,
            Error,
            format!("configuration change rejected, previous one stays: {error}"),
        ),
        Event::SessionOpened {
            session,
            peer,
            local,
            kind,
            tls,
        } => d(
            "session",
            None,
            Info,
            format!(
                "session {session} opened from {peer} on {local} ({kind}{})",
                if *tls { ", TLS" } else { "" }
            ),
        ),
        Event::SessionRefused { peer, reply } => d(
            "session",
            Some("refused"),
            Warn,
            format!("refused {peer}: {reply}"),
        ),
        Event::SessionClosed { session, why } => d(
            "session",
            None,
            Info,
            format!("session {session} closed: {why}"),
        ),
        Event::TlsEstablished { session } => d(
            "session",
            None,
            Info,
            format!("session {session} STARTTLS done"),
        ),
        Event::Command {
            session,
            line,
            reply,
        } => d(
            "command",
            None,
            Debug,
            format!("session {session} C: {line} S: {reply}"),
        ),
        Event::Authenticated { session, login } => d(
            "auth",
            Some("authenticated"),
            Info,
            format!("session {session} authenticated as {login}"),
        ),
        Event::AuthFailed {
            session,
            peer,
            login,
        } => d(
            "auth",
            Some("failed"),
            Warn,
            format!(
                "session {session} AUTH failed from {peer} for {}",
                login.as_deref().unwrap_or("?")
            ),
        ),
        Event::Decision {
            session,
            peer,
            login,
            sender,
            recipient,
            decision,
        } => {
            let allowed = decision.is_allowed();
            d(
                "decision",
                Some(if allowed { "allowed" } else { "denied" }),
                if allowed { Info } else { Warn },
                format!(
                    "decision session={session} peer={peer} login={} from=<{sender}> to=<{recipient}> class={} reply=\"{}\" {decision}",
                    login.as_deref().unwrap_or("-"),
                    decision.class,
                    decision.reply
                ),
            )
        }
        Event::MessageAccepted {
            session,
            id,
            size,
            recipients,
        } => d(
            "session",
            Some("accepted"),
            Info,
            format!(
                "session {session} message {id} accepted: {size} bytes, {recipients} recipients"
            ),
        ),
        Event::Delivery {
            message_id,
            recipient,
            host,
            outcome,
            reply,
        } => d(
            "delivery",
            Some(outcome),
            if *outcome == "delivered" { Info } else { Warn },
            format!("delivery {message_id} to=<{recipient}> via {host}: {outcome}: {reply}"),
        ),
        Event::Bounced {
            message_id,
            bounce_id,
            to,
        } => d(
            "delivery",
            Some("bounced"),
            Warn,
            format!("bounce {bounce_id} for {message_id} queued to <{to}>"),
        ),
        Event::Error { session, message } => d(
            "error",
            None,
            Error,
            match session {
                Some(s) => format!("session {s}: {message}"),
                None => message.clone(),
            },
        ),
    }
}

/// An event with the time it happened.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: Arc<Event>,
}

/// A subscriber's channel, and whether it wants command lines.
#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Stamped>,
    commands: bool,
}

/// Fans events out to subscribers without ever blocking the engine.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped: AtomicU64,
    /// Some subscriber wants [`Event::Command`]s: only then are they built
    /// (they are most of the events, one per command line).
    wants_commands: std::sync::atomic::AtomicBool,
}

impl EventBus {
    /// A new subscriber to every event, with room for `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.add(capacity, true)
    }

    /// A subscriber to every event but the command lines.
    pub fn subscribe_without_commands(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.add(capacity, false)
    }

    fn add(&self, capacity: usize, commands: bool) -> mpsc::Receiver<Stamped> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(Subscriber { tx, commands });
            self.note_interest(&subs);
        }
        rx
    }

    fn note_interest(&self, subs: &[Subscriber]) {
        self.wants_commands
            .store(subs.iter().any(|s| s.commands), Ordering::Relaxed);
    }

    /// Whether emitting an [`Event::Command`] reaches anyone.
    pub fn wants_commands(&self) -> bool {
        self.wants_commands.load(Ordering::Relaxed)
    }

    /// Offers an event to every subscriber; a full subscriber loses it.
    pub fn emit(&self, event: Event) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        if subs.is_empty() {
            return;
        }
        let is_command = matches!(event, Event::Command { .. });
        let stamped = Stamped {
            at: SystemTime::now(),
            event: Arc::new(event),
        };
        let before = subs.len();
        subs.retain(|s| {
            if is_command && !s.commands {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(stamped.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if subs.len() != before {
            self.note_interest(&subs);
        }
    }

    /// How many events were dropped because a subscriber was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_subscriber_drops_and_counts() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe(2);
        for i in 0..5 {
            bus.emit(Event::SessionClosed {
                session: i,
                why: "test".into(),
            });
        }
        assert_eq!(bus.dropped(), 3);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        drop(rx);
        bus.emit(Event::SessionClosed {
            session: 9,
            why: "closed subscriber is forgotten".into(),
        });
        assert_eq!(bus.dropped(), 3);
    }

    #[test]
    fn command_lines_only_reach_those_who_want_them() {
        let bus = EventBus::default();
        let mut quiet = bus.subscribe_without_commands(8);
        assert!(!bus.wants_commands());
        let command = || Event::Command {
            session: 1,
            line: "NOOP".into(),
            reply: "250 2.0.0 Ok".into(),
        };
        bus.emit(command());
        assert!(quiet.try_recv().is_err());
        let mut all = bus.subscribe(8);
        assert!(bus.wants_commands());
        bus.emit(command());
        assert!(all.try_recv().is_ok());
        assert!(quiet.try_recv().is_err());
        drop(all);
        bus.emit(command());
        assert!(!bus.wants_commands());
    }
}
