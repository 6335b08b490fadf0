//! Listen bindings: an address, a port and what kind of SMTP is spoken there.

use std::fmt;
use std::net::SocketAddr;

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindKind {
    /// Port 25 style: STARTTLS offered, AUTH optional.
    Smtp,
    /// Port 587 style: AUTH required before MAIL.
    Submission,
    /// Port 465 style: implicit TLS.
    Smtps,
}

impl BindKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BindKind::Smtp => "smtp",
            BindKind::Submission => "submission",
            BindKind::Smtps => "smtps",
        }
    }

    pub fn parse(s: &str) -> Option<BindKind> {
        match s {
            "smtp" => Some(BindKind::Smtp),
            "submission" => Some(BindKind::Submission),
            "smtps" => Some(BindKind::Smtps),
            _ => None,
        }
    }
}

impl fmt::Display for BindKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    pub addr: SocketAddr,
    pub kind: BindKind,
}

/// Parses `ADDR:PORT`, with IPv6 in brackets (`[::1]:2525`).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    t.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid listen address {t:?}: expected ADDR:PORT, like 127.0.0.1:2525 or [::1]:2525"
        )
    })
}
