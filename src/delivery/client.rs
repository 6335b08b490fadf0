//! The SMTP client side of delivery: one connection per next-hop host
//! ([`HopConnection`]: bounded replies, a deadline on every step),
//! STARTTLS as the route says, AUTH at a smarthost, then MAIL, each RCPT
//! and DATA, with the outcome of every recipient kept apart. Idle
//! connections are kept for the next message to the same host.
//!
//! With a next hop that offers PIPELINING (RFC 2920), MAIL, every RCPT and
//! DATA go out in one write and their replies are read in order, and the
//! body and its final dot in one more: two writes a message instead of
//! five, and two waits for the server instead of four.

use super::hop::{Broken, Extensions, HopConnection};
use super::reply::Reply;
use super::{RouteAuth, TlsMode};
use crate::smtp::dsn_params::{MessageDsn, RecipientDsn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One host to deliver to.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// The name the certificate must carry (route host or MX name).
    pub tls_name: String,
    pub tls: TlsMode,
    pub auth: Option<RouteAuth>,
}

impl Target {
    /// The hosts of a configured route: its address, or what its host
    /// name resolves to.
    pub async fn of_route(r: &super::Route) -> Result<Vec<Target>, String> {
        let addrs: Vec<SocketAddr> = match r.host.parse::<std::net::IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, r.port)],
            Err(_) => tokio::net::lookup_host((r.host.as_str(), r.port))
                .await
                .map_err(|e| format!("cannot resolve route host {}: {e}", r.host))?
                .collect(),
        };
        Ok(addrs
            .into_iter()
            .map(|addr| Target {
                addr,
                tls_name: r.host.clone(),
                tls: r.tls,
                auth: r.auth.clone(),
            })
            .collect())
    }
}

/// What the next hop said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        reply: String,
        /// The next hop offers DSN and was given the recipient's DSN
        /// requests: notices are its business from here (RFC 3461 4.2).
        dsn_passed: bool,
    },
    /// 4xx, or trouble on the connection: try again later.
    Temporary { reply: String },
    /// 5xx: bounce. `status` is the enhanced status code.
    Permanent { reply: String, status: String },
    /// Refused here, before anything was sent (the next hop's SIZE, no
    /// SMTPUTF8): a bounce like `Permanent`, but no word of the next hop's.
    NotSent { reply: String, status: String },
    /// Not tried: the route's send rate is used up until `until` (Unix
    /// seconds). Not an attempt, not an error: the message waits.
    Waiting { until: i64, reply: String },
}

impl Outcome {
    /// What a reply means for the recipients it answers: 2xx delivered
    /// (at the end of the data) or accepted, 5xx permanent, anything
    /// else (4xx, a 3xx where none belongs) temporary.
    fn of(reply: &Reply) -> Outcome {
        let text = reply.one_line();
        match reply.class() {
            2 => Outcome::Delivered {
                reply: text,
                dsn_passed: false,
            },
            5 => Outcome::Permanent {
                status: enhanced_status(&text).unwrap_or_else(|| "5.0.0".into()),
                reply: text,
            },
            _ => Outcome::Temporary { reply: text },
        }
    }

    /// A refused recipient: None if the reply accepts it. A 552 at RCPT
    /// is "too many recipients" and temporary (RFC 5321 4.5.3.1.10).
    fn of_rcpt(reply: &Reply) -> Option<Outcome> {
        match reply.class() {
            2 => None,
            _ if reply.code == 552 => Some(Outcome::Temporary {
                reply: reply.one_line(),
            }),
            _ => Some(Outcome::of(reply)),
        }
    }
}

/// Client settings that come from the engine settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub hello_name: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// Extra trust anchors (PEM) for `required` TLS.
    pub extra_roots: Vec<Vec<u8>>,
}

/// Failing to reach or greet a host: try the next one.
#[derive(Debug, Clone)]
pub struct ConnectError(pub String);

/// Connections are shared only by deliveries that would have opened the
/// very same one: same host, TLS mode and credentials.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    tls_name: String,
    tls: TlsMode,
    auth: Option<(String, String)>,
}

impl PoolKey {
    fn of(target: &Target) -> PoolKey {
        PoolKey {
            addr: target.addr,
            tls_name: target.tls_name.clone(),
            tls: target.tls,
            auth: target
                .auth
                .as_ref()
                .map(|a| (a.user.clone(), a.password.clone())),
        }
    }
}

/// Idle connections by host, reused for the next message; and the TLS
/// settings, built once.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<PoolKey, Vec<(Hop, Instant)>>>,
    /// For `required` TLS, with the extra roots they were built with.
    verified: Mutex<Option<VerifiedTls>>,
    /// For opportunistic TLS.
    any: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

/// TLS settings that verify, and the extra roots they were built with.
type VerifiedTls = (Vec<Vec<u8>>, Arc<rustls::ClientConfig>);

/// A connection to a next hop, and what it offered.
struct Hop {
    conn: HopConnection,
    ext: Extensions,
}

const MAX_IDLE: Duration = Duration::from_secs(5);
const MAX_IDLE_PER_HOST: usize = 64;

impl ConnectionPool {
    fn take(&self, key: &PoolKey) -> Option<Hop> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((hop, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE && !hop.conn.is_broken() {
                return Some(hop);
            }
        }
        None
    }

    /// Says goodbye (QUIT) to connections idle for [`MAX_IDLE`]: they
    /// would otherwise stay open until the next message to their host.
    pub fn sweep(&self) {
        let expired: Vec<Hop> = match self.idle.lock() {
            Ok(mut idle) => {
                let mut out = Vec::new();
                for list in idle.values_mut() {
                    let (old, fresh): (Vec<_>, Vec<_>) = std::mem::take(list)
                        .into_iter()
                        .partition(|(_, since)| since.elapsed() >= MAX_IDLE);
                    *list = fresh;
                    out.extend(old.into_iter().map(|(hop, _)| hop));
                }
                idle.retain(|_, list| !list.is_empty());
                out
            }
            Err(_) => Vec::new(),
        };
        for hop in expired {
            tokio::spawn(hop.conn.quit());
        }
    }

    /// Keeps a connection for the next message, or ends it.
    async fn give_back(&self, key: PoolKey, hop: Hop) {
        if hop.conn.is_broken() {
            hop.conn.quit().await;
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        list.retain(|(_, since)| since.elapsed() < MAX_IDLE);
        if list.len() < MAX_IDLE_PER_HOST {
            list.push((hop, Instant::now()));
        }
    }

    /// The TLS settings for a route's mode, built the first time.
    fn tls_config(
        &self,
        config: &ClientConfig,
        verify: bool,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        if verify {
            let mut cached = self.verified.lock().map_err(|e| e.to_string())?;
            if let Some((roots, tls)) = cached.as_ref()
                && *roots == config.extra_roots
            {
                return Ok(Arc::clone(tls));
            }
            let tls = Arc::new(super::hop::tls_config(true, &config.extra_roots)?);
            *cached = Some((config.extra_roots.clone(), Arc::clone(&tls)));
            Ok(tls)
        } else {
            let mut cached = self.any.lock().map_err(|e| e.to_string())?;
            if let Some(tls) = cached.as_ref() {
                return Ok(Arc::clone(tls));
            }
            let tls = Arc::new(super::hop::tls_config(false, &[])?);
            *cached = Some(Arc::clone(&tls));
            Ok(tls)
        }
    }

    /// Delivers one message to one host. `Err` only when the host could not
    /// be reached or would not start a session: the caller tries the next
    /// host. Otherwise every recipient has an outcome.
    pub async fn deliver(
        &self,
        config: &ClientConfig,
        target: &Target,
        message: Envelope<'_>,
    ) -> Result<Vec<Outcome>, ConnectError> {
        let key = PoolKey::of(target);
        let pooled = self.take(&key);
        if let Some(mut hop) = pooled {
            // A pooled connection the server has closed meanwhile fails at
            // MAIL: then open a fresh one instead.
            match transaction(config, &mut hop, message).await {
                Ok(outcomes) => {
                    let outcomes = more_transactions(config, &mut hop, message, outcomes).await;
                    self.give_back(key, hop).await;
                    return Ok(outcomes);
                }
                Err(Stale(_)) => hop.conn.quit().await,
            }
        }
        let mut hop = self.connect(config, target).await?;
        let outcomes = match transaction(config, &mut hop, message).await {
            Ok(o) => more_transactions(config, &mut hop, message, o).await,
            Err(Stale(reply)) => vec![Outcome::Temporary { reply }; message.recipients.len()],
        };
        self.give_back(key, hop).await;
        Ok(outcomes)
    }

    /// Connects, greets, starts TLS as the route says and logs in.
    /// Opportunistic TLS whose handshake fails is tried once more in
    /// plaintext (as Postfix's `may` does), unless the route logs in:
    /// credentials never go out in plaintext after a failed handshake.
    async fn connect(&self, config: &ClientConfig, target: &Target) -> Result<Hop, ConnectError> {
        let fail = |what: &str, e: String| ConnectError(format!("{} ({what}): {e}", target.addr));
        let mut tls = target.tls;
        loop {
            let (mut conn, greeting) =
                HopConnection::open(target.addr, config.connect_timeout, config.command_timeout)
                    .await
                    .map_err(|(what, Broken(e))| fail(&what, e))?;
            if !greeting.is_positive() {
                conn.quit().await;
                return Err(fail("greeting", greeting.one_line()));
            }
            let mut ext = match conn.hello(&config.hello_name).await {
                Ok(Ok(ext)) => ext,
                Ok(Err(refused)) => {
                    conn.quit().await;
                    return Err(fail("EHLO", refused.one_line()));
                }
                Err(Broken(e)) => return Err(fail("EHLO", e)),
            };
            match (tls, ext.starttls) {
                (TlsMode::None, _) | (TlsMode::Opportunistic, false) => {}
                (TlsMode::Required, false) => {
                    conn.quit().await;
                    return Err(fail(
                        "TLS",
                        "STARTTLS required by the route but not offered".into(),
                    ));
                }
                (TlsMode::Opportunistic | TlsMode::Required, true) => {
                    let verify = tls == TlsMode::Required;
                    let tls_config = self
                        .tls_config(config, verify)
                        .map_err(|e| fail("TLS", e))?;
                    match conn.starttls(tls_config, &target.tls_name).await {
                        Ok(Ok(secured)) => {
                            conn = secured;
                            // RFC 3207 4.2: what was offered before TLS
                            // no longer counts.
                            ext = match conn.hello(&config.hello_name).await {
                                Ok(Ok(ext)) => ext,
                                Ok(Err(refused)) => {
                                    conn.quit().await;
                                    return Err(fail("EHLO", refused.one_line()));
                                }
                                Err(Broken(e)) => return Err(fail("EHLO", e)),
                            };
                        }
                        // Refused (454): opportunistic TLS goes on in
                        // plaintext on the same connection.
                        Ok(Err((plain, _))) if !verify => conn = plain,
                        Ok(Err((plain, refused))) => {
                            plain.quit().await;
                            return Err(fail("STARTTLS", refused.one_line()));
                        }
                        Err(Broken(_)) if !verify && target.auth.is_none() => {
                            tls = TlsMode::None;
                            continue;
                        }
                        Err(Broken(e)) => return Err(fail("STARTTLS", e)),
                    }
                }
            }
            if let Some(auth) = &target.auth {
                // Credentials go in the clear only where the route says
                // so (`--tls none`): a next hop that offers no TLS, or
                // refuses it, may be someone who stripped it. (Over an
                // opportunistic route's TLS the certificate is not
                // checked: `--tls required` verifies the smarthost.)
                if !conn.is_tls() && target.tls != TlsMode::None {
                    conn.quit().await;
                    return Err(fail(
                        "AUTH",
                        "no TLS, and the route's credentials are never sent in plaintext \
                         (route add ... --tls none allows it)"
                            .into(),
                    ));
                }
                match conn.auth(&ext, &auth.user, &auth.password).await {
                    Ok(Ok(())) => {}
                    Ok(Err(refused)) => {
                        conn.quit().await;
                        return Err(fail("AUTH", refused.one_line()));
                    }
                    Err(Broken(e)) => return Err(fail("AUTH", e)),
                }
            }
            return Ok(Hop { conn, ext });
        }
    }
}

/// A next hop's answer to recipient verification
/// ([`ConnectionPool::probe`]).
#[derive(Debug, Clone)]
pub enum ProbeAnswer {
    /// The reply to RCPT TO.
    Rcpt(Reply),
    /// MAIL FROM:<> was refused: the host said nothing of the recipient.
    MailRefused(Reply),
    /// The address needs SMTPUTF8 and the host does not offer it.
    NoSmtpUtf8,
}

impl ConnectionPool {
    /// Recipient verification: asks a host whether it takes mail for
    /// `recipient` (MAIL FROM:<>, RCPT TO, then RSET), on an idle
    /// connection or a new one, which is kept for the next message or
    /// question. Nothing is sent after RCPT but RSET: no message is made.
    pub async fn probe(
        &self,
        config: &ClientConfig,
        target: &Target,
        recipient: &str,
    ) -> Result<ProbeAnswer, ConnectError> {
        let key = PoolKey::of(target);
        if let Some(mut hop) = self.take(&key) {
            match ask(&mut hop, recipient).await {
                Ok(answer) => {
                    self.give_back(key, hop).await;
                    return Ok(answer);
                }
                // Closed while idle: a new connection asks again.
                Err(Asked::Stale(_)) => hop.conn.quit().await,
                // The question itself went wrong: not asked twice.
                Err(Asked::Failed(e)) => {
                    hop.conn.quit().await;
                    return Err(ConnectError(format!("{} {e}", target.addr)));
                }
            }
        }
        let mut hop = self.connect(config, target).await?;
        match ask(&mut hop, recipient).await {
            Ok(answer) => {
                self.give_back(key, hop).await;
                Ok(answer)
            }
            Err(Asked::Stale(e) | Asked::Failed(e)) => {
                hop.conn.quit().await;
                Err(ConnectError(format!("{} {e}", target.addr)))
            }
        }
    }
}

/// How a verification question failed.
enum Asked {
    /// Before the server answered MAIL: an idle connection it closed.
    Stale(String),
    /// After: a broken connection, or replies out of step.
    Failed(String),
}

/// One verification question on an open connection. Replies are held to
/// the codes RFC 5321 gives their commands (250 to MAIL, 250 or 251 to
/// RCPT): another 2xx answers some other command, and a connection out of
/// step could otherwise make an unknown recipient look known.
async fn ask(hop: &mut Hop, recipient: &str) -> Result<ProbeAnswer, Asked> {
    let utf8 = if recipient.is_ascii() {
        ""
    } else if hop.ext.smtputf8 {
        " SMTPUTF8"
    } else {
        return Ok(ProbeAnswer::NoSmtpUtf8);
    };
    let conn = &mut hop.conn;
    let mail = conn
        .command(&format!("MAIL FROM:<>{utf8}\r\n"), "MAIL FROM")
        .await
        .map_err(|Broken(e)| Asked::Stale(format!("(MAIL FROM): {e}")))?;
    if mail.code == 421 {
        return Err(Asked::Stale(format!("(MAIL FROM): {}", mail.one_line())));
    }
    if mail.is_positive() && mail.code != 250 {
        conn.give_up();
        return Err(Asked::Failed(format!(
            "(MAIL FROM): out of step: answered {}",
            mail.one_line()
        )));
    }
    if !mail.is_positive() {
        reset(conn).await;
        return Ok(ProbeAnswer::MailRefused(mail));
    }
    let rcpt = conn
        .command(&format!("RCPT TO:<{recipient}>\r\n"), "RCPT TO")
        .await
        .map_err(|Broken(e)| Asked::Failed(format!("(RCPT TO): {e}")))?;
    if rcpt.is_positive() && !matches!(rcpt.code, 250 | 251) {
        conn.give_up();
        return Err(Asked::Failed(format!(
            "(RCPT TO): out of step: answered {}",
            rcpt.one_line()
        )));
    }
    reset(conn).await;
    Ok(ProbeAnswer::Rcpt(rcpt))
}

/// What one delivery sends: the envelope and the body.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub recipients: &'a [String],
    pub body: &'a [u8],
    /// The message needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// What the client asked to be told (RFC 3461), passed on to a next
    /// hop that offers DSN.
    pub dsn: DsnRequests<'a>,
    /// Sign the message as it goes out (after any conversion to 7 bits,
    /// so that the signature covers the bytes sent).
    pub dkim: Option<&'a crate::dkim::DkimSigner>,
}

/// The DSN requests of a message and of its recipients (looked up by
/// address, so that a subset of the recipients finds its own).
#[derive(Debug, Clone, Copy)]
pub struct DsnRequests<'a> {
    pub message: &'a MessageDsn,
    /// [`crate::spool::NewMessage::dsn_asked`].
    pub recipients: &'a HashMap<String, RecipientDsn>,
}

impl DsnRequests<'_> {
    /// RCPT's DSN parameters for this address, with leading spaces.
    fn rcpt_params(&self, address: &str) -> String {
        self.recipients
            .get(address)
            .map(|r| r.rcpt_params())
            .unwrap_or_default()
    }
}

/// The connection failed before the server answered MAIL.
struct Stale(String);

/// Recipients a next hop put off with 452 ("too many recipients") while
/// it took others go at once in another transaction on the same
/// connection (RFC 5321 4.5.3.1.10), for as long as each round delivers.
async fn more_transactions(
    config: &ClientConfig,
    hop: &mut Hop,
    message: Envelope<'_>,
    mut outcomes: Vec<Outcome>,
) -> Vec<Outcome> {
    // "Too many recipients" is 452 4.5.3 (RFC 3463); a 452 of another
    // kind (a full mailbox, 4.2.2) waits for the retry like any 4xx.
    let put_off = |o: &Outcome| {
        matches!(o, Outcome::Temporary { reply }
            if reply.starts_with("452") && (reply.contains("4.5.3") || reply.to_ascii_lowercase().contains("too many recipients")))
    };
    let mut round: Vec<usize> = (0..outcomes.len()).collect();
    for _ in 0..MORE_TRANSACTIONS {
        let delivered = round
            .iter()
            .any(|&i| matches!(outcomes.get(i), Some(Outcome::Delivered { .. })));
        let rest: Vec<usize> = round
            .iter()
            .copied()
            .filter(|&i| outcomes.get(i).is_some_and(put_off))
            .collect();
        if !delivered || rest.is_empty() || hop.conn.is_broken() {
            return outcomes;
        }
        let addresses: Vec<String> = rest
            .iter()
            .filter_map(|&i| message.recipients.get(i).cloned())
            .collect();
        let again = Envelope {
            recipients: &addresses,
            ..message
        };
        let Ok(more) = transaction(config, hop, again).await else {
            return outcomes;
        };
        for (&i, o) in rest.iter().zip(more) {
            outcomes[i] = o;
        }
        round = rest;
    }
    outcomes
}

/// [`super::seven_bit::downgrade`], with a large body converted off the
/// worker's other tasks (they move to another worker meanwhile), so that
/// a 20 MB message does not hold up the sessions sharing its thread.
fn downgrade_aside(body: &[u8]) -> super::seven_bit::Conversion {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let multi =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if multi && body.len() > 256 * 1024 {
        tokio::task::block_in_place(|| super::seven_bit::downgrade(body))
    } else {
        super::seven_bit::downgrade(body)
    }
}

/// Transactions after the first for recipients put off as too many: a
/// next hop taking one recipient at a time would otherwise get as many
/// transactions as recipients (and the square of their RCPTs); the rest
/// wait for the retry.
const MORE_TRANSACTIONS: usize = 20;

/// MAIL, every RCPT, DATA: one outcome per recipient. A recipient the
/// next hop took with its DSN requests is marked so.
async fn transaction(
    config: &ClientConfig,
    hop: &mut Hop,
    message: Envelope<'_>,
) -> Result<Vec<Outcome>, Stale> {
    let dsn = hop.ext.dsn;
    let mut outcomes = one_transaction(config, hop, message).await?;
    if dsn {
        for o in &mut outcomes {
            if let Outcome::Delivered { dsn_passed, .. } = o {
                *dsn_passed = true;
            }
        }
    }
    Ok(outcomes)
}

async fn one_transaction(
    config: &ClientConfig,
    hop: &mut Hop,
    message: Envelope<'_>,
) -> Result<Vec<Outcome>, Stale> {
    let Envelope {
        sender,
        recipients,
        body,
        smtputf8,
        dsn,
        dkim,
    } = message;
    let t = config.command_timeout;
    let all = |o: Outcome| vec![o; recipients.len()];
    // RFC 6531 3.4: a message that needs SMTPUTF8 is not downgraded; a
    // next hop without it gets nothing, and the recipients bounce.
    let utf8_param = if smtputf8 {
        if !hop.ext.smtputf8 {
            return Ok(all(Outcome::NotSent {
                reply: "5.6.7 the next hop does not support SMTPUTF8, which this message needs"
                    .into(),
                status: "5.6.7".into(),
            }));
        }
        " SMTPUTF8"
    } else {
        ""
    };
    // RFC 6152 3: 8-bit MIME goes to a next hop without 8BITMIME as
    // quoted-printable (a message that is not MIME goes as it is).
    let converted = if hop.ext.eight_bit_mime {
        None
    } else {
        use super::seven_bit::Conversion;
        match downgrade_aside(body) {
            Conversion::Unchanged => None,
            Conversion::Converted(out) => Some(out),
            Conversion::TooDeep => {
                return Ok(all(Outcome::NotSent {
                    reply: format!(
                        "5.6.3 not sent: the next hop does not take 8-bit mail (no 8BITMIME), and this message's 8-bit parts are nested more than {} deep to be converted",
                        super::seven_bit::MAX_DEPTH
                    ),
                    status: "5.6.3".into(),
                }));
            }
        }
    };
    let body = converted.as_deref().unwrap_or(body);
    // A message that cannot be signed (no header section) goes unsigned.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = dkim.and_then(|s| s.sign(body, now).ok());
    let body = signed.as_deref().unwrap_or(body);
    // RFC 1870: a message over the next hop's limit is not sent at all.
    let size_param = match hop.ext.size {
        Some(max) if max > 0 && body.len() as u64 > max => {
            return Ok(all(Outcome::NotSent {
                reply: format!(
                    "5.3.4 not sent: the message ({} bytes) is over the size limit the next hop announces ({max} bytes)",
                    body.len()
                ),
                status: "5.3.4".into(),
            }));
        }
        Some(_) => format!(" SIZE={}", body.len()),
        None => String::new(),
    };
    let body_param = if !body.is_ascii() && hop.ext.eight_bit_mime {
        " BODY=8BITMIME"
    } else {
        ""
    };
    let (dsn_param, dsn) = if hop.ext.dsn {
        (dsn.message.mail_params(), Some(dsn))
    } else {
        (String::new(), None)
    };
    let rcpt_line = |r: &str| {
        let params = dsn.map(|d| d.rcpt_params(r)).unwrap_or_default();
        format!("RCPT TO:<{r}>{params}\r\n")
    };
    let mail = format!("MAIL FROM:<{sender}>{size_param}{body_param}{utf8_param}{dsn_param}\r\n");
    let conn = &mut hop.conn;
    if hop.ext.pipelining {
        return pipelined(t, conn, mail, recipients, &rcpt_line, body).await;
    }
    let mail_reply = conn
        .command(&mail, "MAIL FROM")
        .await
        .map_err(|Broken(e)| Stale(e))?;
    // A 421 here is a server closing a connection it kept idle: stale too.
    if mail_reply.code == 421 {
        return Err(Stale(mail_reply.one_line()));
    }
    if !mail_reply.is_positive() {
        let o = temporary_unless_permanent(&mail_reply);
        reset(conn).await;
        return Ok(all(o));
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(recipients.len());
    for r in recipients {
        match conn.command(&rcpt_line(r), "RCPT TO").await {
            Ok(reply) if reply.code == 421 => {
                return Ok(cut_short(outcomes, recipients.len(), Outcome::of(&reply)));
            }
            Ok(reply) => outcomes.push(Outcome::of_rcpt(&reply)),
            Err(Broken(reply)) => {
                return Ok(cut_short(
                    outcomes,
                    recipients.len(),
                    Outcome::Temporary { reply },
                ));
            }
        }
    }
    if outcomes.iter().all(Option::is_some) {
        reset(conn).await;
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let data = match conn.command("DATA\r\n", "DATA").await {
        Ok(reply) => reply,
        Err(Broken(reply)) => return Ok(all(Outcome::Temporary { reply })),
    };
    if let Some(refused) = refused_data(conn, &data).await {
        return Ok(with_final(outcomes, refused));
    }
    let final_outcome = send_body(conn, body, t).await;
    Ok(with_final(outcomes, final_outcome))
}

/// A refusal of MAIL: what it says, but never "delivered" (a 3xx there is
/// not SMTP, and so temporary).
fn temporary_unless_permanent(reply: &Reply) -> Outcome {
    match Outcome::of(reply) {
        Outcome::Delivered { reply, .. } => Outcome::Temporary { reply },
        o => o,
    }
}

/// The reply to DATA, unless it is the go-ahead (354): the outcome of the
/// recipients it accepted. A 2xx is not a go-ahead either; nothing was
/// sent and the connection, out of step, is not used again.
async fn refused_data(conn: &mut HopConnection, data: &Reply) -> Option<Outcome> {
    match data.class() {
        3 => None,
        2 => {
            conn.give_up();
            Some(Outcome::Temporary {
                reply: format!(
                    "the next hop did not ask for the message after DATA: {}",
                    data.one_line()
                ),
            })
        }
        _ => {
            reset(conn).await;
            Some(Outcome::of(data))
        }
    }
}

/// MAIL, every RCPT and DATA in one write, their replies read in order;
/// then the body with its final dot in one write (RFC 2920).
async fn pipelined(
    t: Duration,
    conn: &mut HopConnection,
    mail: String,
    recipients: &[String],
    rcpt_line: &(dyn Fn(&str) -> String + Sync),
    body: &[u8],
) -> Result<Vec<Outcome>, Stale> {
    let all = |o: Outcome| vec![o; recipients.len()];
    // In groups of PIPELINE_BATCH recipients, their replies read before
    // the next group goes: thousands of commands written at once could
    // fill both sides' buffers with nobody reading (RFC 2920 3.1).
    let mut commands = mail;
    let mut mail_reply = None;
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(recipients.len());
    let batches = recipients.len().div_ceil(PIPELINE_BATCH).max(1);
    for (k, batch) in recipients.chunks(PIPELINE_BATCH).enumerate() {
        for r in batch {
            commands.push_str(&rcpt_line(r));
        }
        if k + 1 == batches {
            commands.push_str("DATA\r\n");
        }
        let written = conn.write(commands.as_bytes(), t, "MAIL FROM").await;
        commands.clear();
        if mail_reply.is_none() {
            // The MAIL reply. A connection that fails here is stale (a
            // pooled one the server closed): the caller opens a fresh one.
            written.map_err(|Broken(e)| Stale(e))?;
            let reply = conn
                .read_reply("MAIL FROM")
                .await
                .map_err(|Broken(e)| Stale(e))?;
            if reply.code == 421 {
                return Err(Stale(reply.one_line()));
            }
            mail_reply = Some(reply);
        } else if let Err(Broken(reply)) = written {
            return Ok(cut_short(
                outcomes,
                recipients.len(),
                Outcome::Temporary { reply },
            ));
        }
        let refused = mail_reply.as_ref().filter(|m| !m.is_positive());
        for _ in batch {
            let cut = match conn.read_reply("RCPT TO").await {
                Ok(reply) if reply.code == 421 => Outcome::of(&reply),
                Ok(reply) => {
                    outcomes.push(Outcome::of_rcpt(&reply));
                    continue;
                }
                Err(Broken(reply)) => Outcome::Temporary { reply },
            };
            return Ok(match refused {
                Some(m) => all(temporary_unless_permanent(m)),
                None => cut_short(outcomes, recipients.len(), cut),
            });
        }
        // MAIL refused: the later batches (and DATA) are not sent.
        if let Some(m) = refused
            && k + 1 < batches
        {
            return Ok(all(temporary_unless_permanent(m)));
        }
    }
    let Some(mail_reply) = mail_reply else {
        return Ok(Vec::new());
    };
    let data = match conn.read_reply("DATA").await {
        Ok(d) => d,
        Err(Broken(reply)) => return Ok(all(Outcome::Temporary { reply })),
    };
    if !mail_reply.is_positive() {
        // Every RCPT and the DATA were refused after it (503). A server
        // that said 354 all the same waits for a body: not used again.
        if data.class() == 3 {
            conn.give_up();
        }
        return Ok(all(temporary_unless_permanent(&mail_reply)));
    }
    if let Some(refused) = refused_data(conn, &data).await {
        return Ok(with_final(outcomes, refused));
    }
    // 354 with no recipient accepted (a server that should have refused
    // DATA): end the empty message at once.
    if outcomes.iter().all(Option::is_some) {
        let o = send_body(conn, b"", t).await;
        return Ok(with_final(outcomes, o));
    }
    let final_outcome = send_body(conn, body, t).await;
    Ok(with_final(outcomes, final_outcome))
}

/// The body, dot-stuffed a piece at a time, its final dot, and the reply
/// to it: the outcome of every recipient accepted. A body up to
/// [`STUFFED_CHUNK`] goes in one write; a larger one never has more than
/// one piece copied.
async fn send_body(conn: &mut HopConnection, body: &[u8], t: Duration) -> Outcome {
    // Each piece has the command timeout (RFC 5321 4.5.3.2.5: a time per
    // send, not for the whole): a slow but steady next hop gets a large
    // message in the end, one that stops reading is given up on.
    let mut stuffer = DotStuffer::default();
    let mut out = Vec::with_capacity(body.len().min(STUFFED_CHUNK) * 33 / 32 + 8);
    for piece in body.chunks(STUFFED_CHUNK) {
        stuffer.stuff(piece, &mut out);
        if out.len() >= STUFFED_CHUNK {
            if let Err(broken) = conn.write(&out, t, "DATA").await {
                return cut_off(conn, broken).await;
            }
            out.clear();
        }
    }
    stuffer.finish(&mut out);
    if let Err(broken) = conn.write(&out, t, "DATA").await {
        return cut_off(conn, broken).await;
    }
    // The reply to the final dot may come after a content scan: twice the
    // command timeout (600 s by default: RFC 5321 4.5.3.2.6's 10 minutes).
    match conn.read_reply_within("the end of DATA", t * 2).await {
        Ok(reply) if reply.class() == 3 => {
            conn.give_up();
            Outcome::Temporary {
                reply: reply.one_line(),
            }
        }
        Ok(reply) => Outcome::of(&reply),
        Err(Broken(reply)) => Outcome::Temporary { reply },
    }
}

/// A transaction cut short (421, a broken connection) after `so_far`
/// recipients were answered: each keeps its own refusal, every other
/// recipient of the `n` gets `cut`.
fn cut_short(so_far: Vec<Option<Outcome>>, n: usize, cut: Outcome) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = so_far
        .into_iter()
        .map(|o| o.unwrap_or_else(|| cut.clone()))
        .collect();
    outcomes.resize(n, cut);
    outcomes
}

/// Every recipient's outcome: its own refusal, or the data's outcome.
fn with_final(outcomes: Vec<Option<Outcome>>, data: Outcome) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| data.clone()))
        .collect()
}

/// A body cut off by the next hop: a server that refuses a message before
/// its end (552, too big) says so, then closes; its reply is read if it
/// came, or the write's failure is the outcome.
async fn cut_off(conn: &mut HopConnection, Broken(failure): Broken) -> Outcome {
    match conn.read_reply_within("DATA", Duration::from_secs(1)).await {
        Ok(reply) if matches!(reply.class(), 4 | 5) => Outcome::of(&reply),
        _ => Outcome::Temporary { reply: failure },
    }
}

/// Recipients written at once to a pipelining next hop.
const PIPELINE_BATCH: usize = 100;

/// The pieces the body is stuffed and written in.
const STUFFED_CHUNK: usize = 64 * 1024;

/// Dot-stuffing as DATA sends a message (RFC 5321 4.5.2), a piece at a
/// time: a dot doubled at the start of every line (a line starts after
/// CRLF only), CRLF at the end if the body lacks it, then the lone dot.
#[derive(Debug)]
struct DotStuffer {
    line_start: bool,
    after_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            after_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends `piece`, stuffed, to `out`. Scans for LF a line at a time
    /// (a byte-by-byte loop cost several times as much per message).
    fn stuff(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < piece.len() {
            if self.line_start && piece[i] == b'.' {
                out.push(b'.');
            }
            match piece[i..].iter().position(|&b| b == b'\n') {
                Some(p) => {
                    let lf = i + p;
                    let cr = if lf > i {
                        piece[lf - 1] == b'\r'
                    } else {
                        self.after_cr
                    };
                    out.extend_from_slice(&piece[i..=lf]);
                    self.line_start = cr;
                    self.after_cr = false;
                    i = lf + 1;
                }
                None => {
                    out.extend_from_slice(&piece[i..]);
                    self.after_cr = piece.last() == Some(&b'\r');
                    self.line_start = false;
                    i = piece.len();
                }
            }
        }
    }

    /// The end of the data: CRLF unless the body ended a line (or was
    /// empty), then ".CRLF".
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole message as DATA sends it.
#[cfg(test)]
fn dot_stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut s = DotStuffer::default();
    s.stuff(body, &mut out);
    s.finish(&mut out);
    out
}

/// RSET after a refused transaction; a connection that does not take it
/// is not used again.
async fn reset(conn: &mut HopConnection) {
    if !matches!(conn.command("RSET\r\n", "RSET").await, Ok(r) if r.code == 250) {
        conn.give_up();
    }
}

/// A remote reply on one line, control characters removed, at most 500
/// characters: it goes into logs, events and bounces.
pub(super) fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// The first `d.d.d` enhanced status code in a reply text.
pub(super) fn enhanced_status(text: &str) -> Option<String> {
    enhanced_status_of(text)
}

/// The enhanced status code (RFC 3463) in a reply's text, if any.
pub(crate) fn enhanced_status_of(text: &str) -> Option<String> {
    text.split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ':')
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "2" | "4" | "5")
                && parts[1..]
                    .iter()
                    .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_sanitising() {
        assert_eq!(
            enhanced_status("550 5.1.1 no such user"),
            Some("5.1.1".into())
        );
        assert_eq!(enhanced_status("550 no such user"), None);
        assert_eq!(one_line("a\r\nb\u{0}c  "), "a  b c");
    }

    proptest::proptest! {
        /// The stuffer, fed in any pieces, stuffs exactly the lines
        /// `split_inclusive` sees.
        #[test]
        fn dot_stuffing_matches_its_line_by_line_definition(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![".", "\r", "\n", "\r\n", "a", "é", ".."]),
                0..40,
            ),
            cuts in proptest::collection::vec(1usize..8, 0..10),
        ) {
            let text: String = parts.concat();
            let mut want = String::new();
            for line in text.split_inclusive("\r\n") {
                if line.starts_with('.') {
                    want.push('.');
                }
                want.push_str(line);
            }
            if !want.is_empty() && !want.ends_with("\r\n") {
                want.push_str("\r\n");
            }
            want.push_str(".\r\n");
            proptest::prop_assert_eq!(dot_stuffed(text.as_bytes()), want.as_bytes());
            let mut out = Vec::new();
            let mut stuffer = DotStuffer::default();
            let mut rest = text.as_bytes();
            for cut in cuts {
                let (piece, tail) = rest.split_at(cut.min(rest.len()));
                stuffer.stuff(piece, &mut out);
                rest = tail;
            }
            stuffer.stuff(rest, &mut out);
            stuffer.finish(&mut out);
            proptest::prop_assert_eq!(out, want.as_bytes());
        }
    }

    #[test]
    fn dot_stuffing_as_rfc_5321_says() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuffed(b"no end"), b"no end\r\n.\r\n");
        assert_eq!(dot_stuffed(b""), b".\r\n");
        // A dot inside a line, or after a bare LF, is not at a line start.
        assert_eq!(dot_stuffed(b"a.b\n.c\r\n"), b"a.b\n.c\r\n.\r\n");
        // 8-bit bodies are bytes like any other.
        assert_eq!(dot_stuffed(b"\xff\r\n.\xff"), b"\xff\r\n..\xff\r\n.\r\n");
    }
}
