//! The control socket's protocol: newline-delimited JSON, versioned.
//!
//! The engine speaks first: a [`ServerMessage::Hello`] with the protocol
//! and engine versions and what the client may do. The client answers
//! with its own [`ClientMessage::Hello`]; on a version mismatch the engine
//! sends an [`ServerMessage::Error`] and closes, and the client reports the
//! mismatch in words instead of misreading what follows. Then the engine
//! sends one [`ServerMessage::Snapshot`] and the live events, each the
//! engine's own typed [`Stamped`] event. A client that falls behind is
//! told how many events it missed and gets a fresh snapshot.
//!
//! Pure: encoding, decoding and the version check, no I/O.

use crate::engine::ListenerStatus;
use crate::events::Stamped;
use crate::live::LiveState;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Bumped whenever a message changes incompatibly (3: the spool-space
/// event, which an older console could not read; 4: the notice event;
/// 5: recipient verification in decisions; 6: the blocklist event and a
/// refusal's cause).
pub const PROTOCOL_VERSION: u32 = 7;

/// The longest line either side accepts (a snapshot of many sessions is
/// one line).
pub const MAX_LINE: usize = 256 * 1024 * 1024;

/// What an attached client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The service user or root: edits go through the store as the CLI's do.
    Admin,
    /// A member of the console group: live panels, the log, dialogues.
    Watch,
}

/// The engine's state when a client attaches (or catches up).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub started: SystemTime,
    pub listeners: Vec<ListenerStatus>,
    pub live: LiveState,
    /// The newest events (no command lines), oldest first.
    pub recent: Vec<Stamped>,
    /// Events the engine could not hand to some subscriber.
    pub dropped: u64,
}

/// What changes without an event: sent once a second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub listeners: Vec<ListenerStatus>,
    pub dropped: u64,
    /// Delivery attempts under way.
    #[serde(default)]
    pub in_flight: Vec<crate::delivery::InFlightAttempt>,
    /// Room on the spool's disk, once measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<crate::spool_space::SpoolRoom>,
}

/// A line from the engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Hello {
        protocol: u32,
        engine: String,
        pid: u32,
        access: Access,
    },
    Snapshot {
        snapshot: Box<EngineSnapshot>,
    },
    Event {
        event: Stamped,
    },
    Status {
        status: EngineStatus,
    },
    /// The client fell behind: this many events were skipped; a snapshot
    /// follows.
    Lagged {
        missed: u64,
    },
    /// The live picture's changes (counters, rates, changed rows), a few
    /// times a second.
    Tick {
        tick: crate::live::LiveTick,
    },
    /// Events not sent to this console in the last moment (it is sent at
    /// most a few thousand a second; the event log has every one).
    Skipped {
        events: u64,
    },
    /// One session's dialogue, as the engine has it.
    Dialogue {
        session: u64,
        events: Vec<Stamped>,
    },
    /// The failed bindings were tried again.
    BindingsRetried {
        listeners: Vec<ListenerStatus>,
    },
    /// The request cannot be served, or the client is refused; the engine
    /// may close after this.
    Error {
        message: String,
    },
}

/// A line from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// A console's first line: it attaches, and takes a console's place.
    Hello {
        protocol: u32,
    },
    /// A one-shot question's first line (the CLI's `queue`, `bind show`):
    /// the engine answers with its [`ServerMessage::Status`] and closes. It
    /// takes no console's place, so attached consoles never stand in the
    /// way of a command that must ask the engine first.
    AskStatus {
        protocol: u32,
    },
    /// One session's full dialogue; its command lines are then sent live
    /// until [`ClientMessage::Unfollow`].
    Dialogue {
        session: u64,
    },
    Unfollow,
    /// Try every binding that could not be opened again, now.
    RetryBindings,
}

/// Why a line from the other side cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "the running engine speaks control protocol {theirs} (relaygate {engine}); this console speaks {ours}: use the relaygate binary of the same version as the engine"
    )]
    Version {
        theirs: u32,
        ours: u32,
        engine: String,
    },
    /// The same mismatch, seen from the engine: the console is the other.
    #[error(
        "this console speaks control protocol {theirs}; the running engine (relaygate {engine}) speaks {ours}: use the relaygate binary of the same version as the engine"
    )]
    ConsoleVersion {
        theirs: u32,
        ours: u32,
        engine: String,
    },
    #[error("the engine refused: {0}")]
    Refused(String),
    #[error("not a relaygate control socket, or a garbled line: {0}")]
    Garbled(String),
}

/// One message as one line, newline included.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_else(|e| {
        // Only a map with non-string keys can fail, and ours have none.
        format!("{{\"type\":\"error\",\"message\":\"cannot encode: {e}\"}}").into_bytes()
    });
    line.push(b'\n');
    line
}

/// A message from the engine.
pub fn decode_server(line: &[u8]) -> Result<ServerMessage, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| ProtocolError::Garbled(e.to_string()))
}

/// A message from a client.
pub fn decode_client(line: &[u8]) -> Result<ClientMessage, ProtocolError> {
    serde_json::from_slice(line).map_err(|e| ProtocolError::Garbled(e.to_string()))
}

/// Checks the engine's first line. The version is read before the rest of
/// the hello, so a future hello with other fields still gets a clear
/// version error rather than a parse error.
pub fn check_hello(line: &[u8]) -> Result<(String, u32, Access), ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Garbled(e.to_string()))?;
    if value.get("type").and_then(|t| t.as_str()) == Some("error") {
        let message = value
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("no reason given");
        return Err(ProtocolError::Refused(message.to_string()));
    }
    let protocol = value
        .get("protocol")
        .and_then(|p| p.as_u64())
        .ok_or_else(|| ProtocolError::Garbled("the first line is not a hello".into()))?;
    let engine = value
        .get("engine")
        .and_then(|e| e.as_str())
        .unwrap_or("unknown")
        .to_string();
    if protocol != u64::from(PROTOCOL_VERSION) {
        return Err(ProtocolError::Version {
            theirs: protocol as u32,
            ours: PROTOCOL_VERSION,
            engine,
        });
    }
    match decode_server(line)? {
        ServerMessage::Hello {
            engine,
            pid,
            access,
            ..
        } => Ok((engine, pid, access)),
        _ => Err(ProtocolError::Garbled(
            "the first line is not a hello".into(),
        )),
    }
}

/// Checks a client's hello on the engine's side.
pub fn check_client_hello(line: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Garbled(e.to_string()))?;
    match value.get("protocol").and_then(|p| p.as_u64()) {
        Some(p) if p == u64::from(PROTOCOL_VERSION) => match decode_client(line)? {
            first @ (ClientMessage::Hello { .. } | ClientMessage::AskStatus { .. }) => Ok(first),
            _ => Err(ProtocolError::Garbled(
                "the first line is not a hello".into(),
            )),
        },
        Some(p) => Err(ProtocolError::ConsoleVersion {
            theirs: u32::try_from(p).unwrap_or(u32::MAX),
            ours: PROTOCOL_VERSION,
            engine: env!("CARGO_PKG_VERSION").to_string(),
        }),
        None => Err(ProtocolError::Garbled(
            "the first line is not a hello".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::{BindKind, Binding};
    use crate::events::{ConfigError, DeliveryOutcome, Event};
    use crate::policy::decision::{Decision, Reason, RelayClass, Reply, Verdict};
    use crate::policy::ip_lists::{ListEntry, ListKind};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn decision() -> Decision {
        let entry = ListEntry {
            list: ListKind::Deny,
            text: Arc::from("10.*.*.*"),
            pattern: crate::policy::ip_pattern::IpPattern::V4([
                (10, 10),
                (0, 255),
                (0, 255),
                (0, 255),
            ]),
        };
        Decision {
            verdict: Verdict::Deny,
            class: RelayClass::Relay,
            reply: Reply {
                code: 554,
                status: "5.7.1".into(),
                text: "Relay access denied".into(),
            },
            reason: Reason::IpDenied {
                class: RelayClass::Relay,
                ip: "10.1.2.3".parse().unwrap(),
                entry,
                over: None,
            },
            routing_trick: Some(crate::policy::address::RoutingTrick::Percent),
            accepted_by_rule: Some(2),
            verification: None,
        }
    }

    /// One of every event; the match makes a new variant fail to compile
    /// here until it is added.
    fn every_event() -> Vec<Event> {
        let peer: std::net::SocketAddr = "127.0.0.2:4000".parse().unwrap();
        let all = vec![
            Event::EngineStarted {
                pid: 7,
                version: "0.1.0".into(),
            },
            Event::EngineStopping {
                pid: 7,
                grace_secs: 30,
            },
            Event::ListenerUp {
                addr: peer,
                kind: BindKind::Smtp,
                proxied: true,
            },
            Event::ListenerFailed {
                addr: peer,
                kind: BindKind::Submission,
                error: "in use".into(),
            },
            Event::ListenerDown { addr: peer },
            Event::PolicyReloaded { allow: 1, deny: 2 },
            Event::OpenToAnyone {
                class: crate::policy::decision::RelayClass::Relay,
            },
            Event::ConfigRejected {
                error: ConfigError::Tls {
                    cert: "/c".into(),
                    key: "/k".into(),
                    detail: "gone".into(),
                },
            },
            Event::ConfigRejected {
                error: ConfigError::Store {
                    detail: "corrupt".into(),
                },
            },
            Event::SessionOpened {
                session: 1,
                peer,
                local: peer,
                kind: BindKind::Smtps,
                tls: true,
                via: None,
            },
            Event::SessionRefused {
                peer,
                reply: "421 4.7.0 busy".into(),
                cause: crate::events::RefusalCause::Limit,
            },
            Event::BlocklistUnusable {
                session: Some(1),
                zone: Some("zen.example".into()),
                trouble: crate::events::BlocklistTrouble::ErrorCode {
                    answer: std::net::Ipv4Addr::new(127, 255, 255, 254),
                },
            },
            Event::BlocklistUnusable {
                session: None,
                zone: None,
                trouble: crate::events::BlocklistTrouble::Failed {
                    error: "no nameserver".into(),
                },
            },
            Event::ControlRefused {
                uid: 65534,
                pid: Some(9),
                repeated: 3,
            },
            Event::SessionClosed {
                session: 1,
                why: "QUIT".into(),
            },
            Event::TlsEstablished { session: 1 },
            Event::Command {
                session: 1,
                line: "EHLO x\u{1b}".into(),
                reply: "250 ok".into(),
            },
            Event::Authenticated {
                session: 1,
                login: "alice".into(),
            },
            Event::AuthFailed {
                session: 1,
                peer: peer.ip(),
                login: None,
            },
            Event::AuthRefused {
                session: 1,
                peer: peer.ip(),
                busy: true,
            },
            Event::Decision {
                session: 1,
                peer: peer.ip(),
                login: Some("alice".into()),
                sender: "a@example.com".into(),
                recipient: "b@far.test".into(),
                decision: Box::new(decision()),
            },
            Event::MessageAccepted {
                session: 1,
                id: "ABC".into(),
                size: 10,
                recipients: 2,
            },
            Event::Delivery {
                message_id: "ABC".into(),
                recipient: "b@far.test".into(),
                host: "mx".into(),
                outcome: DeliveryOutcome::Expired,
                reply: "4.4.7".into(),
            },
            Event::Bounced {
                message_id: "ABC".into(),
                bounce_id: "DEF".into(),
                to: "a@example.com".into(),
            },
            Event::NotNotified {
                message_id: "ABC".into(),
                recipient: "b@far.test".into(),
                notify: "NEVER".into(),
            },
            Event::NoticeSent {
                message_id: "ABC".into(),
                notice_id: "DEF".into(),
                to: "a@example.com".into(),
                delayed: 1,
                relayed: 2,
            },
            Event::Error {
                session: None,
                message: "x".into(),
            },
            Event::ClientBanned {
                peer: "203.0.113.7".parse().unwrap(),
                net: "203.0.113.7/32".into(),
                until_ms: 1_795_000_000_000,
                strikes: 2,
                reason: "5 failed logins in 10m".into(),
            },
            Event::LoginSuspended {
                login: "alice".into(),
                why: "quota #2 reached".into(),
            },
            Event::ProxyRefused {
                peer: "10.0.0.9:4000".parse().unwrap(),
                local: "10.0.0.1:25".parse().unwrap(),
                why: "10.0.0.9 is not a trusted proxy".into(),
            },
            Event::SpoolSpace {
                free: 30 << 20,
                needed: 75 << 19,
                low: true,
            },
        ];
        for e in &all {
            match e {
                Event::EngineStarted { .. }
                | Event::EngineStopping { .. }
                | Event::ListenerUp { .. }
                | Event::ListenerFailed { .. }
                | Event::ListenerDown { .. }
                | Event::PolicyReloaded { .. }
                | Event::OpenToAnyone { .. }
                | Event::ConfigRejected { .. }
                | Event::SessionOpened { .. }
                | Event::SessionRefused { .. }
                | Event::BlocklistUnusable { .. }
                | Event::ControlRefused { .. }
                | Event::SessionClosed { .. }
                | Event::TlsEstablished { .. }
                | Event::Command { .. }
                | Event::Authenticated { .. }
                | Event::AuthFailed { .. }
                | Event::AuthRefused { .. }
                | Event::Decision { .. }
                | Event::MessageAccepted { .. }
                | Event::Delivery { .. }
                | Event::Bounced { .. }
                | Event::NoticeSent { .. }
                | Event::NotNotified { .. }
                | Event::Error { .. }
                | Event::ClientBanned { .. }
                | Event::ProxyRefused { .. }
                | Event::LoginSuspended { .. }
                | Event::SpoolSpace { .. } => {}
            }
        }
        all
    }

    #[test]
    fn every_event_survives_the_socket_and_reads_the_same() {
        for event in every_event() {
            let stamped = Stamped {
                at: UNIX_EPOCH + Duration::from_millis(1_795_000_000_123),
                event: Arc::new(event),
            };
            let line = encode(&ServerMessage::Event {
                event: stamped.clone(),
            });
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            match decode_server(&line) {
                Ok(ServerMessage::Event { event }) => {
                    assert_eq!(event, stamped);
                    // And the text made from it at the edge is the same.
                    assert_eq!(
                        crate::events::describe(&event.event),
                        crate::events::describe(&stamped.event)
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_snapshot_with_sessions_survives_the_socket() {
        let mut live = LiveState::default();
        for (i, event) in every_event().into_iter().enumerate() {
            live.apply(&Stamped {
                at: UNIX_EPOCH + Duration::from_secs(1_795_000_000 + i as u64),
                event: Arc::new(event),
            });
        }
        assert_eq!(live.connections.len(), 1);
        let snapshot = EngineSnapshot {
            started: UNIX_EPOCH,
            listeners: vec![ListenerStatus {
                binding: Binding {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    kind: BindKind::Smtp,
                },
                bound: Err("in use".into()),
            }],
            live,
            recent: Vec::new(),
            dropped: 3,
        };
        let line = encode(&ServerMessage::Snapshot {
            snapshot: Box::new(snapshot.clone()),
        });
        match decode_server(&line) {
            Ok(ServerMessage::Snapshot { snapshot: back }) => {
                assert_eq!(back.listeners, snapshot.listeners);
                assert_eq!(back.live.counters, snapshot.live.counters);
                assert_eq!(back.live.rates, snapshot.live.rates);
                let (a, b) = (&back.live.connections[&1], &snapshot.live.connections[&1]);
                assert_eq!(
                    (a.login.as_deref(), a.rcpt_denied, &a.closed),
                    (b.login.as_deref(), b.rcpt_denied, &b.closed)
                );
                // Dialogues are asked for, not sent with every snapshot.
                assert!(a.dialogue.is_empty() && !b.dialogue.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_version_mismatch_is_named_on_both_sides() {
        let future = br#"{"type":"hello","protocol":99,"engine":"9.0.0","pid":1,"access":"admin","new_field":true}"#;
        match check_hello(future) {
            Err(ProtocolError::Version {
                theirs: 99,
                ours,
                engine,
            }) => {
                assert_eq!(ours, PROTOCOL_VERSION);
                assert_eq!(engine, "9.0.0");
            }
            other => panic!("{other:?}"),
        }
        let message = check_client_hello(br#"{"type":"hello","protocol":0}"#)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("this console speaks control protocol 0;")
                && message.contains("same version"),
            "{message}"
        );
        assert!(matches!(
            check_hello(b"garbage\n"),
            Err(ProtocolError::Garbled(_))
        ));
        assert!(matches!(
            check_hello(br#"{"type":"error","message":"not allowed"}"#),
            Err(ProtocolError::Refused(m)) if m == "not allowed"
        ));
        let ours = encode(&ServerMessage::Hello {
            protocol: PROTOCOL_VERSION,
            engine: "0.1.0".into(),
            pid: 5,
            access: Access::Watch,
        });
        assert_eq!(
            check_hello(&ours).unwrap(),
            ("0.1.0".into(), 5, Access::Watch)
        );
    }

    #[test]
    fn requests_read_back() {
        for m in [
            ClientMessage::Hello { protocol: 1 },
            ClientMessage::Dialogue { session: 42 },
            ClientMessage::RetryBindings,
            ClientMessage::Unfollow,
        ] {
            assert_eq!(decode_client(&encode(&m)).unwrap(), m);
        }
    }
}
