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

/// Bumped whenever a message changes incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

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
    Hello {
        protocol: u32,
    },
    /// One session's full dialogue.
    Dialogue {
        session: u64,
    },
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
pub fn check_client_hello(line: &[u8]) -> Result<(), ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| ProtocolError::Garbled(e.to_string()))?;
    match value.get("protocol").and_then(|p| p.as_u64()) {
        Some(p) if p == u64::from(PROTOCOL_VERSION) => Ok(()),
        Some(p) => Err(ProtocolError::Version {
            theirs: p as u32,
            ours: PROTOCOL_VERSION,
            engine: env!("CARGO_PKG_VERSION").to_string(),
        }),
        None => Err(ProtocolError::Garbled(
            "the first line is not a hello".into(),
        )),
    }
}
