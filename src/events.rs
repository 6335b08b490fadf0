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

/// An event with the time it happened.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: Arc<Event>,
}

/// Fans events out to subscribers without ever blocking the engine.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<mpsc::Sender<Stamped>>>,
    dropped: AtomicU64,
}

impl EventBus {
    /// A new subscriber with room for `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(tx);
        }
        rx
    }

    /// Offers an event to every subscriber; a full subscriber loses it.
    pub fn emit(&self, event: Event) {
        let Ok(mut subs) = self.subscribers.lock() else {
            return;
        };
        if subs.is_empty() {
            return;
        }
        let stamped = Stamped {
            at: SystemTime::now(),
            event: Arc::new(event),
        };
        subs.retain(|tx| match tx.try_send(stamped.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
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
}
