//! The SMTP session as a state machine without I/O: the I/O layer feeds it
//! command lines and DATA chunks, and carries out the [`Action`]s it
//! returns, in order. Slow or durable work (argon2, the TLS handshake,
//! spooling) is asked for with an action and answered with a call
//! ([`Session::auth_result`], [`Session::tls_established`],
//! [`Session::message_stored`]), so the session itself never blocks.

use super::command::{Command, Param, parse_command};
use super::data::{BareLineEnding, DataReader};
use super::dsn_params::{self, MessageDsn, Notify, OriginalRecipient, RecipientDsn, Ret};
use super::reply::Reply;
use crate::bindings::BindKind;
use crate::policy::address::{MailAddress, parse_forward_path, parse_reverse_path};
use crate::policy::decision::Decision;
use crate::policy::ip_pattern::effective_ip;
use crate::policy::settings::AuthMode;
use crate::policy::{Envelope, Policy};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, PAD_INDIFFERENT};
use std::net::IpAddr;
use std::sync::Arc;

/// 25 MiB, a common provider limit.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25 * 1024 * 1024;
/// Recipients over `max_recipients` answered 452 before they count as
/// errors towards `max_bad_commands`.
pub const RECIPIENT_OVERSHOOT: usize = 1000;
/// RFC 5321 says 1000 (CRLF included), but real senders write longer
/// lines; the enforced default is this, as in the engine's settings.
pub const DEFAULT_MAX_TEXT_LINE: usize = 8192;
/// RFC 4954 section 4: servers accept AUTH lines of at least 12288 octets.
pub const AUTH_LINE_MAX: usize = 12288 + 2;

/// Base64 as RFC 4954 uses it; missing padding is tolerated, as clients
/// differ.
const BASE64: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, PAD_INDIFFERENT);

/// Per-session limits. Each has the default a new install gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest body accepted, after dot-unstuffing (advertised as SIZE).
    pub max_message_size: u64,
    /// Bytes the spool's disk keeps free (see [`crate::spool_space`]).
    pub spool_min_free: u64,
    /// Accepted recipients per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Longest command line, CRLF included (RFC 5321 4.5.3.1.4: 512 at
    /// least). The I/O layer enforces it while framing lines, through
    /// [`Session::max_line_len`].
    pub max_command_line: usize,
    /// Longest body line, CRLF included; a message with a longer line is
    /// refused (550 5.6.0) once its end is read. RFC 5321 4.5.3.1.6 says
    /// 1000, but senders exceed it, so the default is a tolerant
    /// [`DEFAULT_MAX_TEXT_LINE`]; lines over 1000 are counted
    /// ([`Message::long_lines`]) and relayed unchanged (re-encoding them
    /// would break signatures such as DKIM).
    pub max_text_line: usize,
    /// Protocol errors before the session is closed with 421 4.7.0.
    pub max_bad_commands: usize,
    /// Offer AUTH over a connection that is neither TLS nor loopback.
    pub allow_plaintext_auth: bool,
    /// What a bare CR or LF in a body does.
    pub bare_line_endings: BareLineEnding,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            spool_min_free: 0,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: DEFAULT_MAX_TEXT_LINE,
            max_bad_commands: 20,
            allow_plaintext_auth: false,
            bare_line_endings: BareLineEnding::Reject,
        }
    }
}

/// What the session is told about its connection.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Our name, in the greeting and EHLO.
    pub hostname: String,
    pub kind: BindKind,
    pub peer: IpAddr,
    /// TLS is already on (implicit TLS, `smtps`).
    pub tls_active: bool,
    /// STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
    pub limits: Limits,
    /// The spool disk's free space, as the engine last measured it.
    pub spool_space: crate::spool_space::SpoolSpace,
}

/// The body type a client declared with `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// One RCPT and what the policy said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientDecision {
    pub recipient: MailAddress,
    pub decision: Decision,
    /// What the client asked to be told about it (RFC 3461).
    pub dsn: RecipientDsn,
}

/// A mail transaction, from MAIL to the end of DATA.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub peer: IpAddr,
    /// The EHLO/HELO name.
    pub helo: String,
    /// EHLO rather than HELO (for the Received: header's `with`).
    pub esmtp: bool,
    pub login: Option<String>,
    pub tls: bool,
    /// `None` is the null sender `<>`.
    pub sender: Option<MailAddress>,
    /// The accepted recipients only; every decision also went out as
    /// [`Action::RecipientDecided`].
    pub recipients: Vec<RecipientDecision>,
    pub body_type: BodyType,
    /// The `SIZE=` the client declared, if any.
    pub declared_size: Option<u64>,
    /// `SMTPUTF8` was given with MAIL (RFC 6531): UTF-8 addresses and
    /// headers; the next hop must support it too.
    pub smtputf8: bool,
    /// `RET` and `ENVID` (RFC 3461).
    pub dsn: MessageDsn,
    /// The policy snapshot taken at MAIL: every RCPT of this transaction
    /// is decided by it, even if the policy is swapped meanwhile.
    pub policy: Arc<Policy>,
}

/// A complete message, for the caller to store durably.
#[derive(Debug, Clone)]
pub struct Message {
    pub transaction: Transaction,
    /// The unstuffed body; lines end in CRLF.
    pub body: Vec<u8>,
    /// Lines longer than RFC 5321's 1000 octets (accepted).
    pub long_lines: usize,
    /// Bare CRs and LFs that were normalised to CRLF.
    pub normalized_line_endings: usize,
}

/// Credentials to check. The session never runs argon2 itself: the I/O
/// layer verifies off-thread (`credentials::verify_password(
/// password_hash.as_deref(), &password)`) and calls
/// [`Session::auth_result`].
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub login: String,
    pub password: String,
    /// The login's hash in the policy snapshot current at AUTH; `None` for
    /// an unknown login (verify against a dummy all the same, for timing).
    pub password_hash: Option<String>,
}

impl std::fmt::Debug for AuthRequest {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthRequest")
            .field("login", &self.login)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// How a password check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    Accepted,
    Rejected,
    /// Not judged: this address has used its guesses for now.
    LockedOut,
    /// Not judged: too many checks are waiting.
    Busy,
    /// The password is right, but the login is suspended (a quota, or the
    /// administrator): RFC 4954's 525 5.7.13.
    Suspended,
}

impl From<bool> for AuthOutcome {
    fn from(ok: bool) -> AuthOutcome {
        if ok {
            AuthOutcome::Accepted
        } else {
            AuthOutcome::Rejected
        }
    }
}

/// What the I/O layer must do, in order.
#[derive(Debug, Clone)]
pub enum Action {
    /// Write this reply.
    Reply(Reply),
    /// Start the TLS handshake now, after writing the 220 before it.
    /// Discard every byte read but not yet handled: a client that
    /// pipelines after STARTTLS could otherwise inject plaintext commands
    /// into the TLS session (CVE-2011-0411). Then call
    /// [`Session::tls_established`].
    StartTls,
    /// Verify these credentials, then call [`Session::auth_result`]. Feed
    /// no further line until then.
    VerifyAuth(AuthRequest),
    /// The 354 is out: from now on feed bytes to [`Session::handle_data`].
    StartData,
    /// A recipient was decided (allowed or not), for the event stream.
    RecipientDecided(RecipientDecision),
    /// The policy allowed this recipient; sending quotas are on: count it
    /// against them (or turn it into a 452), then call
    /// [`Session::recipient_checked`]. Feed no further line until then.
    ReserveQuota(RecipientDecision),
    /// The policy allowed this recipient; `checks` need the network: look
    /// the client up on the DNS blocklists ([`crate::abuse::dnsbl`]), then
    /// ask the route of the recipient's local domain about it
    /// ([`crate::delivery::recipient_verify`]), and call
    /// [`Session::recipient_network_checked`]. Feed no further line until
    /// then.
    CheckRecipient {
        decided: RecipientDecision,
        checks: NetworkChecks,
    },
    /// A complete message: store it durably, then call
    /// [`Session::message_stored`] and write its reply. Feed no further
    /// line until then.
    Message(Box<Message>),
    /// Close the connection, after writing any reply before this.
    Close(CloseReason),
}

/// Why the session closes the connection: said in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client said QUIT.
    Quit,
    /// More bad commands than `max-bad-commands`: the client got `421`.
    TooManyErrors,
    /// A line came after the session had ended.
    AlreadyClosed,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Quit => "the client said QUIT",
            CloseReason::TooManyErrors => "too many bad commands (max-bad-commands): 421 sent",
            CloseReason::AlreadyClosed => "input after the session had ended",
        })
    }
}

/// Checks of an allowed recipient that need the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkChecks {
    /// Look the client up on the DNS blocklists: `dnsbl` is set and the
    /// allow list does not allow the client (the session adds: it did not
    /// authenticate).
    pub dnsbl: bool,
    /// Ask the route of a local recipient's domain (`verify-recipients`;
    /// the session adds: a local recipient other than postmaster).
    pub verify: bool,
}

/// How far [`Session::handle_data`] got.
#[derive(Debug)]
pub enum DataProgress {
    /// The whole chunk was body; the message goes on.
    Continue,
    /// The message ended after the first `consumed` bytes of the chunk;
    /// the rest is command lines. `actions` carry the reply or message.
    Finished {
        consumed: usize,
        actions: Vec<Action>,
    },
}

/// The EHLO/HELO the client gave.
#[derive(Debug, Clone)]
struct Greeting {
    name: String,
    esmtp: bool,
    /// STARTTLS was in the EHLO response (decides 454 versus 502).
    offered_starttls: bool,
}

/// Where an AUTH exchange is waiting for the client.
#[derive(Debug, Clone)]
enum AuthPrompt {
    Plain,
    LoginUsername,
    LoginPassword { login: String },
}

/// What the session expects next.
#[derive(Debug)]
enum Phase {
    Commands,
    Auth(AuthPrompt),
    VerifyingAuth { login: String, hash: Option<String> },
    TlsHandshake,
    Data(Box<DataReader>),
    Storing,
    Closed,
}

/// Why a message could not be stored: RFC 3463 has a code for a full
/// disk (4.3.1), which tells the client it is no fault of its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    NoSpace,
    Failed,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct Session {
    params: SessionParams,
    greeting: Option<Greeting>,
    login: Option<String>,
    /// The password hash the login was verified against: a login whose
    /// user is gone, whose password changed or whom the auth mode no
    /// longer admits holds a different one (or none).
    login_hash: Option<String>,
    transaction: Option<Transaction>,
    phase: Phase,
    bad_commands: usize,
    /// Recipients refused for being over `max_recipients`, this session.
    overshoot: usize,
    auth_failures: usize,
    auth_locked_out: bool,
    /// Allowed recipients go through [`Action::ReserveQuota`].
    quotas_on: bool,
    /// What allowed recipients go through [`Action::CheckRecipient`] for.
    network_checks: NetworkChecks,
}

impl Session {
    pub fn new(params: SessionParams) -> Session {
        Session {
            params,
            greeting: None,
            login: None,
            login_hash: None,
            transaction: None,
            phase: Phase::Commands,
            bad_commands: 0,
            overshoot: 0,
            auth_failures: 0,
            auth_locked_out: false,
            quotas_on: false,
            network_checks: NetworkChecks::default(),
        }
    }

    /// The 220 to send first (after the handshake, for implicit TLS).
    pub fn greeting(&self) -> Reply {
        Reply::greeting(&self.params.hostname)
    }

    /// The reply before the I/O layer drops an idle client.
    pub fn timeout_reply(&self) -> Reply {
        Reply::timeout(&self.params.hostname)
    }

    pub fn params(&self) -> &SessionParams {
        &self.params
    }

    /// The transaction in progress (from MAIL to the end of DATA).
    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    /// The authenticated login, if any.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// Whether this session's login would still be let in by `policy`:
    /// the user is there, with the password it was verified with, and the
    /// auth mode admits it. True without a login.
    pub fn login_still_granted(&self, policy: &Policy) -> bool {
        match &self.login {
            None => true,
            Some(login) => {
                self.login_hash.is_some() && policy.login_hash(login) == self.login_hash.as_deref()
            }
        }
    }

    /// Failed AUTH attempts in this session, for the per-IP lockout.
    pub fn auth_failures(&self) -> usize {
        self.auth_failures
    }

    pub fn bad_commands(&self) -> usize {
        self.bad_commands
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether bytes now go to [`handle_data`](Self::handle_data).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// The I/O layer's per-IP lockout: while set, AUTH answers 454 4.7.0.
    /// Update it before feeding each line.
    pub fn set_auth_locked_out(&mut self, locked_out: bool) {
        self.auth_locked_out = locked_out;
    }

    /// Whether sending quotas are in force (the I/O layer sets it before
    /// feeding each line).
    pub fn set_quotas_on(&mut self, on: bool) {
        self.quotas_on = on;
    }

    /// Which checks that need the network are in force (the I/O layer
    /// sets them before feeding each line).
    pub fn set_network_checks(&mut self, checks: NetworkChecks) {
        self.network_checks = checks;
    }

    /// The answer to [`Action::CheckRecipient`]: the recipient as the
    /// blocklists and its route left it. Refused (554 5.7.1 listed, 550
    /// 5.1.1 unknown), it counts towards `max-bad-commands` like any
    /// refused recipient, so a session cannot try names by the thousand;
    /// put off (450) it does not.
    pub fn recipient_network_checked(&mut self, decided: RecipientDecision) -> Vec<Action> {
        if !decided.decision.is_allowed() {
            let answer = Reply::from(&decided.decision.reply);
            let deferral = decided.decision.is_deferral();
            let mut actions = vec![Action::RecipientDecided(decided)];
            if deferral {
                actions.push(Action::Reply(answer));
            } else {
                actions.extend(self.error_reply(answer));
            }
            return actions;
        }
        self.recipient_allowed(decided)
    }

    /// An allowed recipient after verification: counted against the
    /// quotas if they are on, else taken.
    fn recipient_allowed(&mut self, decided: RecipientDecision) -> Vec<Action> {
        if self.quotas_on {
            return vec![Action::ReserveQuota(decided)];
        }
        let answer = Reply::from(&decided.decision.reply);
        if let Some(t) = self.transaction.as_mut() {
            t.recipients.push(decided.clone());
        }
        vec![Action::RecipientDecided(decided), Action::Reply(answer)]
    }

    /// The answer to [`Action::ReserveQuota`]: the recipient as the quotas
    /// left it (still allowed, or deferred with 452 4.7.1). A deferral is
    /// not a protocol error and does not count towards
    /// `max-bad-commands`.
    pub fn recipient_checked(&mut self, decided: RecipientDecision) -> Vec<Action> {
        let answer = Reply::from(&decided.decision.reply);
        if decided.decision.is_allowed()
            && let Some(t) = self.transaction.as_mut()
        {
            t.recipients.push(decided.clone());
        }
        vec![Action::RecipientDecided(decided), Action::Reply(answer)]
    }

    /// Whether STARTTLS can be done (a certificate reload may fail). If it
    /// was offered in EHLO and is gone now, STARTTLS answers 454 4.7.0.
    pub fn set_tls_available(&mut self, available: bool) {
        self.params.tls_available = available;
    }

    /// The longest line the I/O layer should frame next, CRLF included;
    /// longer ones go to [`handle_overlong_line`](Self::handle_overlong_line).
    pub fn max_line_len(&self) -> usize {
        match self.phase {
            Phase::Auth(_) => AUTH_LINE_MAX.max(self.params.limits.max_command_line),
            _ => self.params.limits.max_command_line,
        }
    }

    /// A line longer than [`max_line_len`](Self::max_line_len) was read
    /// and discarded: 500 5.5.6, and the session goes on.
    pub fn handle_overlong_line(&mut self) -> Vec<Action> {
        // 5.5.6 is an over-long AUTH exchange line (RFC 4954); any other
        // line is a syntax error (RFC 5321 4.5.3.1.4: "500 Line too long").
        match self.phase {
            Phase::Auth(_) => {
                self.phase = Phase::Commands;
                self.error(500, "5.5.6", "Error: authentication exchange line too long")
            }
            _ => self.error(500, "5.5.2", "Error: line too long"),
        }
    }

    /// Handles one line, CRLF stripped: a command, or the client's answer
    /// to an AUTH prompt. `policy` is the current snapshot.
    pub fn handle_line(&mut self, line: &[u8], policy: &Arc<Policy>) -> Vec<Action> {
        if line.len().saturating_add(2) > self.max_line_len() {
            return self.handle_overlong_line();
        }
        match &self.phase {
            Phase::Commands => self.command(line, policy),
            Phase::Auth(prompt) => {
                let prompt = prompt.clone();
                self.auth_response(prompt, line, policy)
            }
            Phase::Closed => vec![Action::Close(CloseReason::AlreadyClosed)],
            // The I/O layer must wait for the result it was asked for;
            // answer without changing state rather than guess.
            Phase::VerifyingAuth { .. } | Phase::TlsHandshake | Phase::Data(_) | Phase::Storing => {
                vec![reply(503, "5.5.1", "Error: command not expected now")]
            }
        }
    }

    fn command(&mut self, line: &[u8], policy: &Arc<Policy>) -> Vec<Action> {
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.error_reply(e.reply()),
        };
        match command {
            Command::Ehlo(name) => self.ehlo(name, policy),
            Command::Helo(name) => {
                self.transaction = None;
                self.greeting = Some(Greeting {
                    name,
                    esmtp: false,
                    offered_starttls: false,
                });
                vec![Action::Reply(Reply::bare(
                    250,
                    self.params.hostname.clone(),
                ))]
            }
            Command::Mail { path, params } => self.mail(&path, &params, policy),
            Command::Rcpt { path, params } => self.rcpt(&path, &params),
            Command::Data => self.data(),
            Command::Rset => {
                self.transaction = None;
                vec![reply(250, "2.0.0", "Ok")]
            }
            Command::Noop => vec![reply(250, "2.0.0", "Ok")],
            Command::Quit => {
                self.phase = Phase::Closed;
                vec![reply(221, "2.0.0", "Bye"), Action::Close(CloseReason::Quit)]
            }
            Command::Help => vec![reply(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY AUTH STARTTLS",
            )],
            // Never tells whether a user exists.
            Command::Vrfy => vec![reply(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )],
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response.as_deref(), policy),
            Command::StartTls => self.starttls(),
        }
    }

    /// Whether AUTH may be offered: a mode that has logins, over TLS, from
    /// loopback, or where plaintext AUTH was allowed on purpose.
    fn auth_offered(&self, policy: &Policy) -> bool {
        policy.auth_mode() != AuthMode::None && self.auth_channel_ok()
    }

    fn auth_channel_ok(&self) -> bool {
        self.params.tls_active
            || effective_ip(self.params.peer).is_loopback()
            || self.params.limits.allow_plaintext_auth
    }

    fn starttls_offered(&self) -> bool {
        self.params.tls_available && !self.params.tls_active
    }

    fn ehlo(&mut self, name: String, policy: &Policy) -> Vec<Action> {
        self.transaction = None;
        let offered_starttls = self.starttls_offered();
        let mut lines: Vec<std::borrow::Cow<'static, str>> = Vec::with_capacity(8);
        lines.extend([
            self.params.hostname.clone().into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.params.limits.max_message_size).into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "DSN".into(),
        ]);
        if offered_starttls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered(policy) {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.greeting = Some(Greeting {
            name,
            esmtp: true,
            offered_starttls,
        });
        vec![Action::Reply(Reply {
            code: 250,
            status: None,
            lines,
        })]
    }

    fn mail(&mut self, path: &str, params: &[Param], policy: &Arc<Policy>) -> Vec<Action> {
        let Some(greeting) = self.greeting.clone() else {
            return self.error(503, "5.5.1", "Error: send HELO/EHLO first");
        };
        if self.transaction.is_some() {
            return self.error(503, "5.5.1", "Error: nested MAIL command");
        }
        if self.params.kind == BindKind::Submission && self.login.is_none() {
            return self.error(530, "5.7.0", "Authentication required");
        }
        let sender = match parse_reverse_path(path) {
            Ok(s) => s,
            Err(e) => {
                return self.error(
                    501,
                    "5.1.7",
                    format!("Bad sender address syntax: {}", e.problem),
                );
            }
        };
        let mut body_type = BodyType::default();
        let mut declared_size = None;
        let mut smtputf8 = false;
        let mut dsn = MessageDsn::default();
        for param in params {
            let value = param.value.as_deref();
            match (param.keyword.as_str(), value) {
                // Digits only (RFC 1870): `parse` would take "+5".
                ("SIZE", Some(v)) if !v.bytes().all(|b| b.is_ascii_digit()) => {
                    return self.error(501, "5.5.4", "Bad SIZE parameter");
                }
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    Ok(n) if n > self.params.limits.max_message_size => {
                        return vec![reply(
                            552,
                            "5.3.4",
                            "Error: message size exceeds fixed maximum message size",
                        )];
                    }
                    Ok(n) => declared_size = Some(n),
                    Err(_) => return self.error(501, "5.5.4", "Bad SIZE parameter"),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                    body_type = BodyType::SevenBit;
                }
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                    body_type = BodyType::EightBitMime;
                }
                ("SIZE" | "BODY", _) => {
                    return self.error(501, "5.5.4", format!("Bad {} parameter", param.keyword));
                }
                // RFC 6531: internationalised addresses and headers.
                ("SMTPUTF8", None) if greeting.esmtp => smtputf8 = true,
                ("SMTPUTF8", Some(_)) => {
                    return self.error(501, "5.5.4", "Bad SMTPUTF8 parameter: it takes no value");
                }
                // RFC 3461: what a failure notice returns, and the
                // client's name for the transaction; each once.
                ("RET", Some(v)) if dsn.ret.is_none() && greeting.esmtp => match Ret::parse(v) {
                    Some(ret) => dsn.ret = Some(ret),
                    None => return self.error(501, "5.5.4", "Bad RET parameter: FULL or HDRS"),
                },
                ("ENVID", Some(v)) if dsn.envid.is_none() && greeting.esmtp => {
                    match dsn_params::parse_envid(v) {
                        Some(envid) => dsn.envid = Some(envid),
                        None => {
                            return self.error(
                                501,
                                "5.5.4",
                                "Bad ENVID parameter: xtext of printable ASCII, at most 100 characters",
                            );
                        }
                    }
                }
                ("RET" | "ENVID", Some(_)) if greeting.esmtp => {
                    return self.error(
                        501,
                        "5.5.4",
                        format!("Duplicate {} parameter", param.keyword),
                    );
                }
                ("RET" | "ENVID", None) if greeting.esmtp => {
                    return self.error(501, "5.5.4", format!("Bad {} parameter", param.keyword));
                }
                // RFC 4954 section 5: accepted; the submitter identity it
                // names is not trusted, so it is dropped.
                ("AUTH", Some(_)) if self.auth_offered(policy) || self.login.is_some() => {}
                (keyword, _) => {
                    return self.error(555, "5.5.4", format!("Unsupported parameter {keyword}"));
                }
            }
        }
        if !path.is_ascii() && !smtputf8 {
            return self.error(
                553,
                "5.6.7",
                "Error: a UTF-8 address needs the SMTPUTF8 parameter (RFC 6531)",
            );
        }
        // Not the client's error (RFC 3463 4.3.1): it tries again later,
        // when the disk has room, and no message is read only to be lost.
        let limits = &self.params.limits;
        let needed = crate::spool_space::needed(limits.spool_min_free, limits.max_message_size);
        if !self.params.spool_space.has_room(needed) {
            return vec![reply(
                452,
                "4.3.1",
                "Insufficient system storage: the spool's disk is short of room, try again later",
            )];
        }
        self.transaction = Some(Transaction {
            peer: self.params.peer,
            helo: greeting.name,
            esmtp: greeting.esmtp,
            login: self.login.clone(),
            tls: self.params.tls_active,
            sender,
            recipients: Vec::new(),
            body_type,
            declared_size,
            smtputf8,
            dsn,
            policy: Arc::clone(policy),
        });
        vec![reply(250, "2.1.0", "Ok")]
    }

    fn rcpt(&mut self, path: &str, params: &[Param]) -> Vec<Action> {
        let Some(transaction) = &self.transaction else {
            return self.error(503, "5.5.1", "Error: need MAIL command");
        };
        // DSN is an ESMTP extension (RFC 3461 4): not after HELO.
        let esmtp = self.greeting.as_ref().is_some_and(|g| g.esmtp);
        let utf8 = transaction.smtputf8;
        let dsn = match self.rcpt_dsn(params, esmtp, utf8) {
            Ok(dsn) => dsn,
            Err(actions) => return actions,
        };
        let Some(transaction) = &self.transaction else {
            return self.error(503, "5.5.1", "Error: need MAIL command");
        };
        if transaction.recipients.len() >= self.params.limits.max_recipients {
            // Not a client error (RFC 5321 4.5.3.1.10): the client sends
            // the rest in another transaction. Only a flood of them counts
            // (as Postfix's `smtpd_recipient_overshoot_limit`).
            self.overshoot = self.overshoot.saturating_add(1);
            let answer = Reply::new(452, "4.5.3", "Error: too many recipients");
            return if self.overshoot > RECIPIENT_OVERSHOOT {
                self.error_reply(answer)
            } else {
                vec![Action::Reply(answer)]
            };
        }
        let recipient = match parse_forward_path(path) {
            Ok(r) => r,
            Err(e) => {
                let text = format!("Bad recipient address syntax: {}", e.problem);
                return self.error(501, "5.1.3", text);
            }
        };
        if !path.is_ascii() && !transaction.smtputf8 {
            return self.error(
                553,
                "5.6.7",
                "Error: a UTF-8 address needs the SMTPUTF8 parameter on MAIL (RFC 6531)",
            );
        }
        let envelope = Envelope {
            peer: transaction.peer,
            login: transaction.login.as_deref(),
            sender: transaction.sender.as_ref(),
        };
        let decision = transaction.policy.decide(&envelope, &recipient);
        let decided = RecipientDecision {
            recipient,
            decision,
            dsn,
        };
        if !decided.decision.is_allowed() {
            let answer = Reply::from(&decided.decision.reply);
            // A refused recipient is an error like any other (as Postfix's
            // smtpd_hard_error_limit counts them): a client cannot try
            // relay recipients by the thousand in one session.
            let mut actions = vec![Action::RecipientDecided(decided)];
            actions.extend(self.error_reply(answer));
            return actions;
        }
        let checks = NetworkChecks {
            dnsbl: self.network_checks.dnsbl && self.login.is_none(),
            verify: self.network_checks.verify
                && crate::policy::worth_verifying(decided.decision.class, &decided.recipient),
        };
        if checks.dnsbl || checks.verify {
            return vec![Action::CheckRecipient { decided, checks }];
        }
        self.recipient_allowed(decided)
    }

    /// RCPT's DSN parameters (RFC 3461 4.1, 4.2), each once; the error
    /// reply otherwise.
    fn rcpt_dsn(
        &mut self,
        params: &[Param],
        esmtp: bool,
        utf8: bool,
    ) -> Result<RecipientDsn, Vec<Action>> {
        let mut dsn = RecipientDsn::default();
        for param in params {
            match (param.keyword.as_str(), param.value.as_deref()) {
                (keyword, _) if !esmtp => {
                    return Err(self.error(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {keyword}"),
                    ));
                }
                // RFC 3461 4.1 and 4.2, each once.
                ("NOTIFY", Some(v)) if dsn.notify.is_none() => match Notify::parse(v) {
                    Some(n) => dsn.notify = Some(n),
                    None => {
                        return Err(self.error(
                            501,
                            "5.5.4",
                            "Bad NOTIFY parameter: NEVER, or SUCCESS, FAILURE and DELAY separated by commas",
                        ));
                    }
                },
                ("ORCPT", Some(v)) if dsn.orcpt.is_none() => {
                    match OriginalRecipient::parse(v, utf8) {
                        Some(o) => dsn.orcpt = Some(o),
                        None => {
                            return Err(self.error(
                                501,
                                "5.5.4",
                                "Bad ORCPT parameter: address type, ';' and the address in xtext",
                            ));
                        }
                    }
                }
                ("NOTIFY" | "ORCPT", Some(_)) => {
                    return Err(self.error(
                        501,
                        "5.5.4",
                        format!("Duplicate {} parameter", param.keyword),
                    ));
                }
                ("NOTIFY" | "ORCPT", None) => {
                    return Err(self.error(
                        501,
                        "5.5.4",
                        format!("Bad {} parameter", param.keyword),
                    ));
                }
                (keyword, _) => {
                    return Err(self.error(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {keyword}"),
                    ));
                }
            }
        }
        Ok(dsn)
    }

    fn data(&mut self) -> Vec<Action> {
        match &self.transaction {
            None => self.error(503, "5.5.1", "Error: need MAIL command"),
            Some(t) if t.recipients.is_empty() => {
                self.error(503, "5.5.1", "Error: need RCPT command")
            }
            Some(_) => {
                let limits = &self.params.limits;
                self.phase = Phase::Data(Box::new(DataReader::new(
                    limits.max_message_size,
                    limits.max_text_line,
                )));
                vec![
                    Action::Reply(Reply::bare(354, "End data with <CR><LF>.<CR><LF>")),
                    Action::StartData,
                ]
            }
        }
    }

    /// The body received so far, once at least `threshold` bytes are held:
    /// the I/O layer writes it to disk, so a large message never sits in
    /// memory. The session keeps counting (and limiting) the size.
    pub fn take_data_body(&mut self, threshold: usize) -> Option<Vec<u8>> {
        match &mut self.phase {
            Phase::Data(reader) if reader.held() >= threshold => Some(reader.take_body()),
            _ => None,
        }
    }

    /// Feeds DATA bytes, any chunking. On the end of data the transaction
    /// is over: an [`Action::Message`] to store, or a refusal (552 5.3.4
    /// too big, 550 5.6.11 bare line endings when those are refused).
    pub fn handle_data(&mut self, chunk: &[u8]) -> DataProgress {
        let Phase::Data(reader) = &mut self.phase else {
            return DataProgress::Finished {
                consumed: 0,
                actions: Vec::new(),
            };
        };
        let Some(consumed) = reader.feed(chunk) else {
            return DataProgress::Continue;
        };
        let Phase::Data(reader) = std::mem::replace(&mut self.phase, Phase::Commands) else {
            return DataProgress::Continue;
        };
        let end = reader.finish();
        let transaction = self.transaction.take();
        let refusal = if end.too_big {
            Some(reply(
                552,
                "5.3.4",
                "Error: message exceeds fixed maximum message size",
            ))
        } else if end.line_too_long {
            let max = self.params.limits.max_text_line;
            Some(reply(
                550,
                "5.6.0",
                format!("Error: message has a line longer than {max} bytes"),
            ))
        } else if end.bare_line_endings > 0
            && self.params.limits.bare_line_endings == BareLineEnding::Reject
        {
            Some(reply(
                550,
                "5.6.11",
                "Error: bare <CR> or <LF> in message; lines must end with <CR><LF>",
            ))
        } else {
            None
        };
        let actions = match (refusal, transaction) {
            (Some(refusal), _) => vec![refusal],
            (None, Some(transaction)) => {
                self.phase = Phase::Storing;
                vec![Action::Message(Box::new(Message {
                    transaction,
                    body: end.body,
                    long_lines: end.long_lines,
                    normalized_line_endings: end.bare_line_endings,
                }))]
            }
            (None, None) => vec![reply(503, "5.5.1", "Error: need MAIL command")],
        };
        DataProgress::Finished { consumed, actions }
    }

    /// The caller stored the message (`Ok(queue id)`) or could not. Only
    /// now may the client hear 250. The error text stays in the caller's
    /// log: the client gets a generic 451.
    pub fn message_stored(&mut self, result: Result<String, NotStored>) -> Reply {
        if matches!(self.phase, Phase::Storing) {
            self.phase = Phase::Commands;
        }
        match result {
            Ok(queue_id) => Reply::new(250, "2.0.0", format!("Ok: queued as {queue_id}")),
            Err(NotStored::NoSpace) => Reply::new(
                452,
                "4.3.1",
                "Error: insufficient system storage, try again later",
            ),
            Err(NotStored::Failed) => Reply::new(
                451,
                "4.3.0",
                "Error: local error in processing, try again later",
            ),
        }
    }

    fn starttls(&mut self) -> Vec<Action> {
        if self.params.tls_active {
            return self.error(503, "5.5.1", "Error: TLS already active");
        }
        if !self.params.tls_available {
            let offered = self.greeting.as_ref().is_some_and(|g| g.offered_starttls);
            return if offered {
                vec![reply(
                    454,
                    "4.7.0",
                    "TLS not available due to temporary reason",
                )]
            } else {
                self.error(502, "5.5.1", "Error: command not implemented")
            };
        }
        self.phase = Phase::TlsHandshake;
        vec![reply(220, "2.0.0", "Ready to start TLS"), Action::StartTls]
    }

    /// The handshake succeeded. RFC 3207 section 4.2: everything learnt
    /// before it (EHLO, AUTH, a transaction) is forgotten; the client
    /// starts again with EHLO.
    pub fn tls_established(&mut self) {
        self.params.tls_active = true;
        self.greeting = None;
        self.login = None;
        self.login_hash = None;
        self.transaction = None;
        self.phase = Phase::Commands;
    }

    fn auth(
        &mut self,
        mechanism: &str,
        initial_response: Option<&str>,
        policy: &Arc<Policy>,
    ) -> Vec<Action> {
        if !self.greeting.as_ref().is_some_and(|g| g.esmtp) {
            return self.error(503, "5.5.1", "Error: send EHLO first");
        }
        if self.login.is_some() {
            return self.error(503, "5.5.1", "Error: already authenticated");
        }
        if self.transaction.is_some() {
            return self.error(503, "5.5.1", "Error: MAIL transaction in progress");
        }
        if policy.auth_mode() == AuthMode::None {
            return self.error(503, "5.5.1", "Error: authentication not enabled");
        }
        if !self.auth_channel_ok() {
            return self.error(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            );
        }
        if self.auth_locked_out {
            return vec![reply(
                454,
                "4.7.0",
                "Temporary authentication failure: too many failures, try again later",
            )];
        }
        match (mechanism, initial_response) {
            ("PLAIN", None) => {
                self.phase = Phase::Auth(AuthPrompt::Plain);
                vec![Action::Reply(Reply::bare(334, ""))]
            }
            ("PLAIN", Some(response)) => {
                self.auth_response(AuthPrompt::Plain, response.as_bytes(), policy)
            }
            ("LOGIN", None) => {
                self.phase = Phase::Auth(AuthPrompt::LoginUsername);
                vec![Action::Reply(Reply::bare(334, "VXNlcm5hbWU6"))]
            }
            ("LOGIN", Some(response)) => {
                self.auth_response(AuthPrompt::LoginUsername, response.as_bytes(), policy)
            }
            _ => self.error(504, "5.5.4", "Unsupported authentication mechanism"),
        }
    }

    /// One client answer in an AUTH exchange: `*` cancels, otherwise
    /// base64 (`=` alone is the empty initial response of RFC 4954).
    fn auth_response(
        &mut self,
        prompt: AuthPrompt,
        line: &[u8],
        policy: &Arc<Policy>,
    ) -> Vec<Action> {
        self.phase = Phase::Commands;
        let text = line.trim_ascii();
        if text == b"*" {
            return vec![reply(501, "5.0.0", "Authentication cancelled")];
        }
        let decoded = if text == b"=" {
            Ok(Vec::new())
        } else {
            BASE64.decode(text)
        };
        let Ok(decoded) = decoded else {
            return self.error(501, "5.5.2", "Error: invalid base64 data");
        };
        match prompt {
            AuthPrompt::Plain => match split_plain(&decoded) {
                Ok((login, password)) => self.verify(login, password, policy),
                Err(PlainError::Malformed) => {
                    self.error(501, "5.5.2", "Error: malformed AUTH PLAIN response")
                }
                // Well-formed, but asking to act as someone else: no
                // password is checked, and no guess is spent.
                Err(PlainError::OtherIdentity) => self.error(
                    535,
                    "5.7.8",
                    "Error: authentication failed: acting as another user (an authorization identity other than the login) is not supported",
                ),
            },
            AuthPrompt::LoginUsername => match String::from_utf8(decoded) {
                Ok(login) => {
                    self.phase = Phase::Auth(AuthPrompt::LoginPassword { login });
                    vec![Action::Reply(Reply::bare(334, "UGFzc3dvcmQ6"))]
                }
                Err(_) => self.error(501, "5.5.2", "Error: login is not UTF-8"),
            },
            AuthPrompt::LoginPassword { login } => match String::from_utf8(decoded) {
                Ok(password) => self.verify(login, password, policy),
                Err(_) => self.error(501, "5.5.2", "Error: password is not UTF-8"),
            },
        }
    }

    fn verify(&mut self, login: String, password: String, policy: &Policy) -> Vec<Action> {
        let password_hash = policy.login_hash(&login).map(str::to_string);
        self.phase = Phase::VerifyingAuth {
            login: login.clone(),
            hash: password_hash.clone(),
        };
        vec![Action::VerifyAuth(AuthRequest {
            login,
            password,
            password_hash,
        })]
    }

    /// The answer to [`Action::VerifyAuth`]: 235 2.7.0; 535 5.7.8 and one
    /// more failure (which also counts as a bad command); or 454 4.7.0
    /// when the check could not be made (too many failures from this
    /// address, or too many checks waiting).
    pub fn auth_result(&mut self, outcome: AuthOutcome) -> Vec<Action> {
        let Phase::VerifyingAuth { login, hash } =
            std::mem::replace(&mut self.phase, Phase::Commands)
        else {
            return Vec::new();
        };
        match outcome {
            AuthOutcome::Accepted => {
                self.login = Some(login);
                self.login_hash = hash;
                vec![reply(235, "2.7.0", "Authentication successful")]
            }
            AuthOutcome::Rejected => {
                self.auth_failures = self.auth_failures.saturating_add(1);
                self.error(535, "5.7.8", "Error: authentication failed")
            }
            AuthOutcome::LockedOut => self.error(
                454,
                "4.7.0",
                "Temporary authentication failure: too many failures, try again later",
            ),
            AuthOutcome::Busy => self.error(
                454,
                "4.7.0",
                "Temporary authentication failure: too many checks under way, try again shortly",
            ),
            AuthOutcome::Suspended => self.error(
                525,
                "5.7.13",
                "Error: this login is suspended; ask the mail administrator",
            ),
        }
    }

    /// A protocol error: counted, and once over the limit the session
    /// ends with 421 4.7.0 instead.
    fn error(
        &mut self,
        code: u16,
        status: &'static str,
        text: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Vec<Action> {
        self.error_reply(Reply::new(code, status, text))
    }

    fn error_reply(&mut self, answer: Reply) -> Vec<Action> {
        self.bad_commands = self.bad_commands.saturating_add(1);
        if self.bad_commands > self.params.limits.max_bad_commands {
            self.phase = Phase::Closed;
            let text = format!("{} Error: too many errors", self.params.hostname);
            return vec![
                reply(421, "4.7.0", text),
                Action::Close(CloseReason::TooManyErrors),
            ];
        }
        vec![Action::Reply(answer)]
    }
}

fn reply(
    code: u16,
    status: &'static str,
    text: impl Into<std::borrow::Cow<'static, str>>,
) -> Action {
    Action::Reply(Reply::new(code, status, text))
}

/// Why an AUTH PLAIN response is refused before any password check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlainError {
    /// Not `authzid NUL authcid NUL password`, or not UTF-8.
    Malformed,
    /// An authorization identity other than the login.
    OtherIdentity,
}

/// `authzid NUL authcid NUL password` (RFC 4616). An authorization
/// identity other than the login itself is refused: nobody may act as
/// someone else.
fn split_plain(decoded: &[u8]) -> Result<(String, String), PlainError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(login), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| PlainError::Malformed);
    let (login, password) = (text(login)?, text(password)?);
    if !authzid.is_empty() && authzid != login.as_bytes() {
        return Err(PlainError::OtherIdentity);
    }
    Ok((login, password))
}

mod io_view;
#[cfg(test)]
mod tests;
