//! Read-only views of a session for the I/O layer's events and trace
//! header.

use super::{Phase, Session, Transaction};

impl Session {
    /// The transaction in progress (after MAIL), if any.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    /// Whether the client greeted with EHLO (ESMTP) rather than HELO.
    pub fn esmtp(&self) -> bool {
        self.greeting.as_ref().is_some_and(|g| g.esmtp)
    }

    /// Whether the next line is an answer to an AUTH prompt (a secret that
    /// must never be logged).
    pub fn awaiting_auth_response(&self) -> bool {
        matches!(self.phase, Phase::Auth(_))
    }
}
