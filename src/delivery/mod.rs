//! Delivery: taking what the SMTP engine spooled to the next hop: a
//! configured route (internal server, smarthost) or the recipient domain's
//! MX, with retries, bounces and loop protection.

pub mod client;
pub mod dsn;
pub mod hop;
pub mod mx;
pub mod recipient_verify;
pub mod reply;
pub mod router;
pub mod scheduler;
pub mod seven_bit;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A delivery attempt under way: which message, since when, to which
/// host(s). What the queue views show as "in flight".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InFlightAttempt {
    pub message_id: String,
    pub since: SystemTime,
    /// The hosts being tried now (empty while the next hop is looked up).
    pub hosts: Vec<String>,
}

impl InFlightAttempt {
    /// An attempt starting now, its hosts not looked up yet.
    pub fn starting(message_id: &str) -> InFlightAttempt {
        InFlightAttempt {
            message_id: message_id.to_string(),
            since: SystemTime::now(),
            hosts: Vec::new(),
        }
    }
}

/// Every attempt under way, by message id; shared by the scheduler and
/// whoever shows the queue.
pub type InFlightTable = Arc<Mutex<HashMap<String, InFlightAttempt>>>;

/// The attempts under way, oldest first.
pub fn in_flight_list(table: &InFlightTable) -> Vec<InFlightAttempt> {
    let mut v: Vec<InFlightAttempt> = table
        .lock()
        .map(|t| t.values().cloned().collect())
        .unwrap_or_default();
    v.sort_by_key(|a| a.since);
    v
}

/// How a route uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Plain SMTP only.
    None,
    /// STARTTLS when offered, certificate not verified (like Postfix's `may`).
    #[default]
    Opportunistic,
    /// STARTTLS required and the certificate verified; no plaintext fallback.
    Required,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Opportunistic => "opportunistic",
            TlsMode::Required => "required",
        }
    }

    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "none" => Some(TlsMode::None),
            "opportunistic" => Some(TlsMode::Opportunistic),
            "required" => Some(TlsMode::Required),
            _ => None,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Credentials for AUTH at a smarthost.
#[derive(Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for RouteAuth {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A configured next hop for a domain pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `example.com`, `*.example.com` (its subdomains) or `*` (the default
    /// route: a smarthost).
    pub domain: String,
    /// Host name or IP address of the next hop.
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub auth: Option<RouteAuth>,
    /// At most this many messages per period to this next hop (a
    /// smarthost's cap); the rest wait in the queue.
    pub rate: Option<crate::abuse::rate::Rate>,
    /// Connections at once to this next hop, instead of
    /// `destination-concurrency`.
    pub concurrency: Option<usize>,
}
