//! The typed events the engine emits, and the bus that carries them.
//!
//! The engine never waits for a viewer: every subscriber has a bounded
//! channel, events are offered with `try_send`, and an event a full channel
//! cannot take is dropped and counted.

use crate::bindings::BindKind;
use crate::policy::decision::Decision;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// A session that came through a load balancer speaking the PROXY
/// protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyVia {
    /// The load balancer's address (the TCP peer).
    #[serde(serialize_with = "crate::net_text::serialize_socket")]
    pub proxy: SocketAddr,
    /// The binding that took the connection.
    #[serde(serialize_with = "crate::net_text::serialize_socket")]
    pub binding: SocketAddr,
}

/// One thing that happened in the engine. The same value reaches the
/// headless log, the persisted event log (as JSON), the control socket and
/// the screen; text is made from it at each edge, never parsed back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The engine took its lock and is starting.
    EngineStarted {
        pid: u32,
        version: String,
    },
    /// The engine was asked to stop: no new sessions; messages in DATA
    /// may finish within `grace_secs`. The history shows when it was down.
    EngineStopping {
        pid: u32,
        grace_secs: u64,
    },
    ListenerUp {
        addr: SocketAddr,
        kind: BindKind,
        /// Its clients come through a proxy that sends the PROXY protocol
        /// header (`bind add --trusted-proxy`).
        #[serde(default)]
        proxied: bool,
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
    /// A class of mail anyone may send, its relay controls off
    /// ([`crate::policy::settings::Switches::open_to_anyone`]): said when
    /// the engine starts and whenever the switches change, while it lasts.
    OpenToAnyone {
        class: crate::policy::decision::RelayClass,
    },
    /// The stored configuration could not be loaded; the old one stays.
    ConfigRejected {
        error: ConfigError,
    },
    SessionOpened {
        session: u64,
        #[serde(serialize_with = "crate::net_text::serialize_socket")]
        peer: SocketAddr,
        /// The address the client connected to (behind a load balancer:
        /// as its PROXY header says).
        #[serde(serialize_with = "crate::net_text::serialize_socket")]
        local: SocketAddr,
        kind: BindKind,
        tls: bool,
        /// The load balancer it came through, and the binding that took
        /// it from there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<ProxyVia>,
    },
    /// A session refused at the greeting (a ban, too many sessions).
    SessionRefused {
        peer: SocketAddr,
        reply: String,
        /// Rows from before it was kept say `limit`.
        #[serde(default)]
        cause: RefusalCause,
    },
    /// A DNS blocklist zone, or the resolver, could not be used: no client
    /// is refused for it meanwhile. Said at most once per zone every 10
    /// minutes.
    BlocklistUnusable {
        session: Option<u64>,
        /// `None`: the resolver itself (`dns-servers`).
        zone: Option<String>,
        trouble: BlocklistTrouble,
    },
    /// A control-socket client was refused (its credentials do not allow it).
    ControlRefused {
        uid: u32,
        pid: Option<i32>,
        /// Refusals of the same user before this one that were not said
        /// (one is said a minute).
        #[serde(default)]
        repeated: u64,
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
    /// A password was not judged: the address has used its guesses for the
    /// window (or is locked out), or too many checks were waiting (`busy`).
    AuthRefused {
        session: u64,
        peer: IpAddr,
        busy: bool,
    },
    /// The policy decision for one recipient, with its reason.
    Decision {
        session: u64,
        #[serde(serialize_with = "crate::net_text::serialize_ip")]
        peer: IpAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
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
        outcome: DeliveryOutcome,
        reply: String,
    },
    /// A bounce was queued for the sender of a message.
    Bounced {
        message_id: String,
        bounce_id: String,
        to: String,
    },
    /// A recipient's failure not bounced because its sender asked not to
    /// hear of failures (DSN `NOTIFY` without FAILURE, RFC 3461): said,
    /// so that a missing bounce is explained.
    NotNotified {
        message_id: String,
        recipient: String,
        /// The recipient's NOTIFY, as `NEVER` or its list.
        notify: String,
    },
    /// A notice queued to the sender that reports no failure: recipients
    /// still being retried past `delay-warning`, or relayed to a next hop
    /// without DSN when NOTIFY asked for success (RFC 3461). A notice that
    /// also reports failures is a [`Event::Bounced`].
    NoticeSent {
        message_id: String,
        notice_id: String,
        to: String,
        /// Recipients it warns are delayed.
        delayed: usize,
        /// Recipients it reports relayed.
        relayed: usize,
    },
    Error {
        session: Option<u64>,
        message: String,
    },
    /// An address was banned: refused at connect until `until_ms`.
    ClientBanned {
        peer: IpAddr,
        /// The banned range (the address's /32 or /64).
        net: String,
        until_ms: u64,
        /// Bans of this address so far, this one included.
        strikes: u32,
        reason: String,
    },
    /// A connection to a PROXY binding was closed without a greeting: not
    /// from a trusted proxy, or no valid header in time.
    ProxyRefused {
        peer: SocketAddr,
        local: SocketAddr,
        why: String,
    },
    /// A sending quota suspended a login: it cannot authenticate until an
    /// administrator lifts the suspension (`user unsuspend`).
    LoginSuspended {
        login: String,
        why: String,
    },
    /// The spool's disk went short of room for a whole message (`low`:
    /// MAIL is refused with 452 4.3.1 from now on), or has room again.
    SpoolSpace {
        /// Bytes free for the engine on the spool's filesystem.
        free: u64,
        /// Bytes it needs free to take mail (see [`crate::spool_space`]).
        needed: u64,
        low: bool,
    },
}

/// Why a connection was refused before its session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCause {
    /// Its address is banned.
    Ban,
    /// A session limit (`max-sessions`, per address, connection rate).
    #[default]
    Limit,
}

impl RefusalCause {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::Ban => "ban",
            RefusalCause::Limit => "limit",
        }
    }
}

/// What was wrong with a DNS blocklist zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BlocklistTrouble {
    /// It answered with one of its error codes (127.255.255.x; Spamhaus's
    /// "query through a public resolver"), not a listing.
    ErrorCode { answer: std::net::Ipv4Addr },
    /// No answer within the deadline.
    NoAnswer { within_secs: u64 },
    /// The query failed (or the resolver could not be built).
    Failed { error: String },
}

impl BlocklistTrouble {
    /// Its kind, as the metric labels it.
    pub fn kind(&self) -> &'static str {
        match self {
            BlocklistTrouble::ErrorCode { .. } => "error_code",
            BlocklistTrouble::NoAnswer { .. } => "no_answer",
            BlocklistTrouble::Failed { .. } => "failed",
        }
    }
}

/// What a delivery attempt did for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Deferred => "deferred",
            DeliveryOutcome::Bounced => "bounced",
            DeliveryOutcome::Expired => "expired",
        }
    }
}

impl std::fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the engine refused a configuration; the previous one stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum ConfigError {
    /// The database could not be read or holds something invalid.
    #[error("the configuration cannot be read: {detail}")]
    Store { detail: String },
    /// The configured TLS certificate or key cannot be used.
    #[error("TLS certificate {cert} / key {key} unusable: {detail}")]
    Tls {
        cert: String,
        key: String,
        detail: String,
    },
}

/// What kind of thing an event is, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Decision,
    Auth,
    Delivery,
    Session,
    Command,
    Config,
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Decision => "decision",
            EventKind::Auth => "auth",
            EventKind::Delivery => "delivery",
            EventKind::Session => "session",
            EventKind::Command => "command",
            EventKind::Config => "config",
            EventKind::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::Decision,
            EventKind::Auth,
            EventKind::Delivery,
            EventKind::Session,
            EventKind::Command,
            EventKind::Config,
            EventKind::Error,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome an event reports, where it has one: what colours a line and
/// what the Log panel's filters select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Denied,
    Refused,
    Accepted,
    Authenticated,
    Failed,
    Delivered,
    Deferred,
    Bounced,
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Refused => "refused",
            Outcome::Accepted => "accepted",
            Outcome::Authenticated => "authenticated",
            Outcome::Failed => "failed",
            Outcome::Delivered => "delivered",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        use Outcome::*;
        [
            Allowed,
            Denied,
            Refused,
            Accepted,
            Authenticated,
            Failed,
            Delivered,
            Deferred,
            Bounced,
            Expired,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// Good news, bad news, or a warning.
    pub fn tone(self) -> Tone {
        match self {
            Outcome::Allowed | Outcome::Accepted | Outcome::Authenticated | Outcome::Delivered => {
                Tone::Good
            }
            Outcome::Denied
            | Outcome::Refused
            | Outcome::Failed
            | Outcome::Bounced
            | Outcome::Expired => Tone::Bad,
            Outcome::Deferred => Tone::Warning,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DeliveryOutcome> for Outcome {
    fn from(o: DeliveryOutcome) -> Outcome {
        match o {
            DeliveryOutcome::Delivered => Outcome::Delivered,
            DeliveryOutcome::Deferred => Outcome::Deferred,
            DeliveryOutcome::Bounced => Outcome::Bounced,
            DeliveryOutcome::Expired => Outcome::Expired,
        }
    }
}

/// How an outcome reads: what the screen colours green, red or yellow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Bad,
    Warning,
}

/// How an event reads in a log: its kind (for filtering), an outcome where
/// there is one, the severity and one line of text. The headless log, the
/// event log and the console all render events through this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub kind: EventKind,
    pub verdict: Option<Outcome>,
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

impl Event {
    /// The kind and outcome of an event, without formatting its text.
    pub fn classify(&self) -> (EventKind, Option<Outcome>) {
        use EventKind as K;
        match self {
            Event::EngineStarted { .. }
            | Event::EngineStopping { .. }
            | Event::ListenerUp { .. }
            | Event::ListenerDown { .. }
            | Event::PolicyReloaded { .. }
            | Event::OpenToAnyone { .. } => (K::Config, None),
            Event::ListenerFailed { .. }
            | Event::ConfigRejected { .. }
            | Event::Error { .. }
            | Event::BlocklistUnusable { .. } => (K::Error, None),
            Event::ControlRefused { .. } => (K::Error, Some(Outcome::Refused)),
            Event::SessionOpened { .. }
            | Event::SessionClosed { .. }
            | Event::TlsEstablished { .. } => (K::Session, None),
            Event::SessionRefused { .. } => (K::Session, Some(Outcome::Refused)),
            Event::Command { .. } => (K::Command, None),
            Event::Authenticated { .. } => (K::Auth, Some(Outcome::Authenticated)),
            Event::AuthFailed { .. } => (K::Auth, Some(Outcome::Failed)),
            Event::AuthRefused { .. } => (K::Auth, Some(Outcome::Refused)),
            Event::ClientBanned { .. } => (K::Session, Some(Outcome::Refused)),
            Event::ProxyRefused { .. } => (K::Session, Some(Outcome::Refused)),
            Event::LoginSuspended { .. } => (K::Auth, Some(Outcome::Refused)),
            Event::SpoolSpace { low: true, .. } => (K::Error, None),
            Event::SpoolSpace { low: false, .. } => (K::Config, None),
            Event::Decision { decision, .. } => (
                K::Decision,
                Some(if decision.is_allowed() {
                    Outcome::Allowed
                } else if decision.is_deferral() {
                    Outcome::Deferred
                } else {
                    Outcome::Denied
                }),
            ),
            Event::MessageAccepted { .. } => (K::Session, Some(Outcome::Accepted)),
            Event::Delivery { outcome, .. } => (K::Delivery, Some((*outcome).into())),
            Event::Bounced { .. } => (K::Delivery, Some(Outcome::Bounced)),
            // News for the sender, not an outcome of its own.
            Event::NoticeSent { .. } | Event::NotNotified { .. } => (K::Delivery, None),
        }
    }
}

/// One line for an event, the same wherever it is shown.
pub fn describe(event: &Event) -> Described {
    let (kind, verdict) = event.classify();
    let mut text = String::new();
    let level = describe_into(event, &mut text);
    Described {
        kind,
        verdict,
        level,
        text,
    }
}

/// Writes [`describe`]'s line for `event` at the end of `out` and returns
/// its severity: the headless log lays its lines out in one buffer,
/// without a string per event. Whatever the client's text in it (an
/// address in a reason, a recipient of a delivery), the line has no
/// control character: the log, `trace` and the console show it escaped.
pub fn describe_into(event: &Event, out: &mut String) -> Level {
    let start = out.len();
    let level = describe_raw_into(event, out);
    if has_control(&out[start..]) {
        let safe = printable(&out[start..]);
        out.truncate(start);
        out.push_str(&safe);
    }
    level
}

/// Whether a text holds a control character (C0, DEL or C1).
pub fn has_control(text: &str) -> bool {
    control_at(text).is_some()
}

/// Where the first control character (C0, DEL, C1) is: bytes while the
/// text is ASCII (every reply and almost every event line), chars after
/// that.
pub fn control_at(text: &str) -> Option<usize> {
    let at = text.bytes().position(|b| !(0x20..0x7f).contains(&b))?;
    if text.as_bytes().get(at).is_some_and(|b| *b < 0x80) {
        return Some(at);
    }
    text.get(at..)?.find(char::is_control).map(|n| at + n)
}

fn describe_raw_into(event: &Event, out: &mut String) -> Level {
    use crate::net_text::AddrText;
    use Level::*;
    use std::fmt::Write;
    /// Proof that a line was written.
    struct Written;
    macro_rules! put {
        ($($t:tt)*) => {{
            let _ = write!(out, $($t)*);
            Written
        }};
    }
    let d = |level: Level, _: Written| level;
    match event {
        Event::EngineStarted { pid, version } => {
            d(Info, put!("relaygate {version} engine started (pid {pid})"))
        }
        Event::EngineStopping { pid, grace_secs } => d(
            Info,
            put!(
                "engine stopping (pid {pid}): no new sessions; messages in DATA may finish within {grace_secs} s"
            ),
        ),
        Event::ListenerUp {
            addr,
            kind,
            proxied,
        } => d(
            Info,
            put!(
                "listening on {addr} ({kind}{})",
                if *proxied { ", PROXY protocol" } else { "" }
            ),
        ),
        Event::ListenerFailed { addr, kind, error } => {
            d(Error, put!("cannot listen on {addr} ({kind}): {error}"))
        }
        Event::ListenerDown { addr } => d(Info, put!("stopped listening on {addr}")),
        Event::PolicyReloaded { allow, deny } => d(
            Info,
            put!("configuration reloaded: {allow} allow and {deny} deny entries"),
        ),
        Event::OpenToAnyone { class } => d(
            Warn,
            put!("warning: {}", crate::policy::settings::open_warning(*class)),
        ),
        Event::ConfigRejected { error } => d(
            Error,
            put!("configuration change rejected, previous one stays: {error}"),
        ),
        Event::ControlRefused { uid, pid, repeated } => d(
            Warn,
            put!(
                "control socket: refused a client running as uid {uid}{}{}",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                match repeated {
                    0 => String::new(),
                    n => format!(
                        ", and {n} more of that user in the minute before (said once a minute)"
                    ),
                }
            ),
        ),
        Event::SessionOpened {
            session,
            peer,
            local,
            kind,
            tls,
            via,
        } => d(
            Info,
            match via {
                None => put!(
                    "session {session} opened from {} on {} ({kind}{})",
                    AddrText::socket(*peer),
                    AddrText::socket(*local),
                    if *tls { ", TLS" } else { "" }
                ),
                Some(v) => put!(
                    "session {session} opened from {} to {} ({kind}{}) through the load balancer {} on {} (PROXY protocol)",
                    AddrText::socket(*peer),
                    AddrText::socket(*local),
                    if *tls { ", TLS" } else { "" },
                    AddrText::socket(v.proxy),
                    AddrText::socket(v.binding)
                ),
            },
        ),
        Event::SessionRefused { peer, reply, .. } => d(Warn, put!("refused {peer}: {reply}")),
        Event::BlocklistUnusable {
            session,
            zone,
            trouble,
        } => {
            let what = match trouble {
                BlocklistTrouble::ErrorCode { answer } => format!(
                    "answered {answer}, an error code, not a listing (does the zone refuse queries through this resolver?)"
                ),
                BlocklistTrouble::NoAnswer { within_secs } => {
                    format!("no answer within {within_secs} s")
                }
                BlocklistTrouble::Failed { error } => error.clone(),
            };
            if let Some(s) = session {
                let _ = write!(out, "session {s}: ");
            }
            d(
                Warn,
                match zone {
                    Some(zone) => {
                        put!("DNS blocklist {zone}: {what}; no client is refused for it")
                    }
                    None => put!(
                        "DNS blocklists: the resolver (dns-servers) cannot be used: {what}; no client is refused"
                    ),
                },
            )
        }
        Event::SessionClosed { session, why } => d(Info, put!("session {session} closed: {why}")),
        Event::TlsEstablished { session } => d(Info, put!("session {session} STARTTLS done")),
        Event::Command {
            session,
            line,
            reply,
        } => d(Debug, put!("session {session} C: {line} S: {reply}")),
        Event::Authenticated { session, login } => {
            d(Info, put!("session {session} authenticated as {login}"))
        }
        Event::AuthFailed {
            session,
            peer,
            login,
        } => d(
            Warn,
            put!(
                "session {session} AUTH failed from {peer} for {}",
                login.as_deref().unwrap_or("?")
            ),
        ),
        Event::AuthRefused {
            session,
            peer,
            busy,
        } => d(
            Warn,
            if *busy {
                put!(
                    "session {session} AUTH from {peer} not checked: too many checks waiting (454)"
                )
            } else {
                put!(
                    "session {session} AUTH from {peer} not checked: too many failures from this address (454)"
                )
            },
        ),
        Event::Decision {
            session,
            peer,
            login,
            sender,
            recipient,
            decision,
        } => d(
            if decision.is_allowed() { Info } else { Warn },
            put!(
                "decision session={session} peer={} login={} from=<{sender}> to=<{recipient}> class={} reply=\"{}\" {decision}",
                AddrText::ip(*peer),
                login.as_deref().unwrap_or("-"),
                decision.class,
                decision.reply
            ),
        ),
        Event::MessageAccepted {
            session,
            id,
            size,
            recipients,
        } => d(
            Info,
            put!(
                "session {session} message {id} accepted: {size} bytes, {recipients} recipient{}",
                if *recipients == 1 { "" } else { "s" }
            ),
        ),
        Event::Delivery {
            message_id,
            recipient,
            host,
            outcome,
            reply,
        } => d(
            if *outcome == DeliveryOutcome::Delivered {
                Info
            } else {
                Warn
            },
            put!("delivery {message_id} to=<{recipient}> via {host}: {outcome}: {reply}"),
        ),
        Event::Bounced {
            message_id,
            bounce_id,
            to,
        } => d(
            Warn,
            put!("bounce {bounce_id} for {message_id} queued to <{to}>"),
        ),
        Event::NotNotified {
            message_id,
            recipient,
            notify,
        } => d(
            Info,
            put!(
                "no bounce to the sender of {message_id} for <{recipient}>: NOTIFY={notify} on that recipient"
            ),
        ),
        Event::NoticeSent {
            message_id,
            notice_id,
            to,
            delayed,
            relayed,
        } => d(
            Info,
            match (delayed, relayed) {
                (0, r) => put!(
                    "notice {notice_id} for {message_id} queued to <{to}>: {r} recipient(s) relayed to a next hop without DSN, as NOTIFY=SUCCESS asked"
                ),
                (w, 0) => put!(
                    "notice {notice_id} for {message_id} queued to <{to}>: {w} recipient(s) delayed, still being retried"
                ),
                (w, r) => put!(
                    "notice {notice_id} for {message_id} queued to <{to}>: {w} recipient(s) delayed, {r} relayed to a next hop without DSN"
                ),
            },
        ),
        Event::Error { session, message } => d(
            Error,
            match session {
                Some(s) => put!("session {s}: {message}"),
                None => {
                    out.push_str(message);
                    Written
                }
            },
        ),
        // The ban line is a stable format for fail2ban (data/fail2ban/).
        Event::ClientBanned {
            peer,
            net,
            until_ms,
            strikes,
            reason,
        } => d(
            Warn,
            put!(
                "ban client={peer} net={net} until={} strikes={strikes}: {reason}",
                utc_text(*until_ms)
            ),
        ),
        Event::ProxyRefused { peer, local, why } => d(
            Warn,
            put!("refused {peer} on {local} without a greeting: {why}"),
        ),
        Event::LoginSuspended { login, why } => d(
            Error,
            put!("login {login} suspended: {why}; lift with: relaygate user unsuspend {login}"),
        ),
        Event::SpoolSpace { free, needed, low } => {
            use crate::spool_space::size_text;
            if *low {
                d(
                    Error,
                    put!(
                        "spool disk short of room: {} free, {} needed (spool-min-free, or 1.5 x max-message-size); MAIL is refused with 452 4.3.1 until there is room",
                        size_text(*free),
                        size_text(*needed)
                    ),
                )
            } else {
                d(
                    Info,
                    put!(
                        "spool disk has room again: {} free ({} needed); taking mail",
                        size_text(*free),
                        size_text(*needed)
                    ),
                )
            }
        }
    }
}

/// `2026-11-26T18:00:00Z` for ms since the epoch.
pub fn utc_text(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = crate::smtp::trace_header::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Text from the network, made safe to keep and to show: control
/// characters (C0, DEL, C1: ESC, BEL, CSI...) become `\x1b`-style escapes,
/// so no log, file or terminal ever gets them raw.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// An event with the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub at: SystemTime,
    pub event: Arc<Event>,
}

/// A subscriber's channel, and whether it wants command lines.
#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<Stamped>,
    commands: Arc<AtomicBool>,
}

/// Turns a subscriber's interest in command lines on and off.
#[derive(Debug)]
pub struct CommandSwitch {
    flag: Arc<AtomicBool>,
    wanted: Arc<AtomicUsize>,
}

impl CommandSwitch {
    pub fn set(&self, on: bool) {
        if self.flag.swap(on, Ordering::Relaxed) != on {
            if on {
                self.wanted.fetch_add(1, Ordering::Relaxed);
            } else {
                self.wanted.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Fans events out to subscribers without ever blocking the engine.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Subscriber>>,
    dropped: AtomicU64,
    /// How many subscribers want [`Event::Command`]s: only then are they
    /// built (they are most of the events, one per command line).
    wanted: Arc<AtomicUsize>,
}

impl EventBus {
    /// A new subscriber to every event, with room for `capacity` events.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.add(capacity, true).0
    }

    /// A subscriber to every event but the command lines.
    pub fn subscribe_without_commands(&self, capacity: usize) -> mpsc::Receiver<Stamped> {
        self.add(capacity, false).0
    }

    /// A subscriber that turns command lines on and off as it needs them.
    pub fn subscribe_switchable(
        &self,
        capacity: usize,
    ) -> (mpsc::Receiver<Stamped>, CommandSwitch) {
        self.add(capacity, false)
    }

    fn add(&self, capacity: usize, commands: bool) -> (mpsc::Receiver<Stamped>, CommandSwitch) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let switch = CommandSwitch {
            flag: Arc::new(AtomicBool::new(false)),
            wanted: Arc::clone(&self.wanted),
        };
        switch.set(commands);
        if let Ok(mut subs) = self.subscribers.lock() {
            subs.push(Subscriber {
                tx,
                commands: Arc::clone(&switch.flag),
            });
        }
        (rx, switch)
    }

    /// Whether emitting an [`Event::Command`] reaches anyone.
    pub fn wants_commands(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) > 0
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
        subs.retain(|s| {
            let keep = if is_command && !s.commands.load(Ordering::Relaxed) {
                !s.tx.is_closed()
            } else {
                match s.tx.try_send(stamped.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        true
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            };
            if !keep && s.commands.swap(false, Ordering::Relaxed) {
                self.wanted.fetch_sub(1, Ordering::Relaxed);
            }
            keep
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

    /// A refusal logged before its cause was kept reads back as a limit;
    /// a blocklist problem reads back as it was written.
    #[test]
    fn refusals_and_blocklist_problems_read_back() {
        let old = r#"{"type":"session_refused","peer":"192.0.2.1:4000","reply":"421 4.7.0 busy"}"#;
        match serde_json::from_str::<Event>(old).unwrap() {
            Event::SessionRefused { cause, .. } => assert_eq!(cause, RefusalCause::Limit),
            other => panic!("{other:?}"),
        }
        let event = Event::BlocklistUnusable {
            session: Some(7),
            zone: Some("zen.test".into()),
            trouble: BlocklistTrouble::NoAnswer { within_secs: 5 },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        assert_eq!(
            describe(&event).text,
            "session 7: DNS blocklist zen.test: no answer within 5 s; no client is refused for it"
        );
    }

    proptest::proptest! {
        /// The byte scan agrees with `char::is_control` on any text.
        #[test]
        fn has_control_finds_c0_del_and_c1(
            text in "[a-z \\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{a0}-\\u{ff}é€😀]{0,40}"
        ) {
            proptest::prop_assert_eq!(has_control(&text), text.chars().any(char::is_control));
        }
    }

    /// A recipient with a C1 CSI in it (accepted: SMTPUTF8 allows it) is
    /// shown escaped in the line every output uses.
    #[test]
    fn lines_never_carry_control_characters() {
        let event = Event::Delivery {
            message_id: "M1".into(),
            recipient: "u@x\u{9b}31m.test".into(),
            host: "127.0.0.1".into(),
            outcome: DeliveryOutcome::Delivered,
            reply: "250 ok\u{85}".into(),
        };
        let text = describe(&event).text;
        assert!(!has_control(&text), "{text:?}");
        assert!(text.contains("u@x\\x9b31m.test"), "{text}");
        let mut out = String::from("kept ");
        describe_into(&event, &mut out);
        assert!(out.starts_with("kept ") && out.contains("\\x85"), "{out}");
    }

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
