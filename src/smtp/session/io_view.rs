//! Read-only views of a session for the I/O layer's events.

use super::{Phase, Session};

impl Session {
    /// Whether the next line is an answer to an AUTH prompt (a secret that
    /// must never be logged).
    pub fn awaiting_auth_response(&self) -> bool {
        matches!(self.phase, Phase::Auth(_))
    }
}
