//! The SMTP client side of delivery, on lettre's connection API: one
//! connection per next-hop host, STARTTLS as the route says, AUTH at a
//! smarthost, then MAIL, each RCPT and DATA, with the outcome of every
//! recipient kept apart (lettre's high-level `send` stops at the first
//! refused recipient, which a relay cannot do). Idle connections are kept
//! for the next message to the same host.
//!
//! With a next hop that offers PIPELINING (RFC 2920), MAIL, every RCPT and
//! DATA go out in one write and their replies are read in order, and the
//! body and its final dot in one more: two writes a message instead of
//! five, and two waits for the server instead of four.

use super::{RouteAuth, TlsMode};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::{ClientId, Extension};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
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

/// What the next hop said about one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        reply: String,
    },
    /// 4xx, or trouble on the connection: try again later.
    Temporary {
        reply: String,
    },
    /// 5xx: bounce. `status` is the enhanced status code.
    Permanent {
        reply: String,
        status: String,
    },
    /// Not tried: the route's send rate is used up until `until` (Unix
    /// seconds). Not an attempt, not an error: the message waits.
    Waiting {
        until: i64,
        reply: String,
    },
}

impl Outcome {
    fn from_error(e: &lettre::transport::smtp::Error) -> Outcome {
        let reply = one_line(&e.to_string());
        if e.is_permanent() {
            let status = enhanced_status(&reply).unwrap_or_else(|| "5.0.0".into());
            Outcome::Permanent { reply, status }
        } else {
            Outcome::Temporary { reply }
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

/// Idle connections by host, reused for the next message.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<PoolKey, Vec<(Hop, Instant)>>>,
}

/// A connection to a next hop, and whether it takes pipelined commands.
struct Hop {
    conn: AsyncSmtpConnection,
    pipelining: bool,
}

const MAX_IDLE: Duration = Duration::from_secs(5);
const MAX_IDLE_PER_HOST: usize = 64;

impl ConnectionPool {
    fn take(&self, key: &PoolKey) -> Option<Hop> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some((hop, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE && !hop.conn.has_broken() {
                return Some(hop);
            }
        }
        None
    }

    fn give_back(&self, key: PoolKey, conn: Hop) {
        if conn.conn.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            list.retain(|(_, since)| since.elapsed() < MAX_IDLE);
            if list.len() < MAX_IDLE_PER_HOST {
                list.push((conn, Instant::now()));
            }
        }
    }

    /// Delivers one message to one host. `Err` only when the host could not
    /// be reached or would not start a session: the caller tries the next
    /// host. Otherwise every recipient has an outcome.
    pub async fn deliver(
        &self,
        config: &ClientConfig,
        target: &Target,
        sender: &str,
        recipients: &[String],
        body: &[u8],
        smtputf8: bool,
    ) -> Result<Vec<Outcome>, ConnectError> {
        let key = PoolKey {
            addr: target.addr,
            tls_name: target.tls_name.clone(),
            tls: target.tls,
            auth: target
                .auth
                .as_ref()
                .map(|a| (a.user.clone(), a.password.clone())),
        };
        if let Some(mut hop) = self.take(&key) {
            // A pooled connection the server has closed meanwhile fails at
            // MAIL: then open a fresh one instead.
            if let Ok(outcomes) =
                transaction(config, &mut hop, sender, recipients, body, smtputf8).await
            {
                self.give_back(key, hop);
                return Ok(outcomes);
            }
        }
        let mut hop = connect(config, target).await?;
        let outcomes = match transaction(config, &mut hop, sender, recipients, body, smtputf8).await
        {
            Ok(o) => o,
            Err(Stale(reply)) => vec![Outcome::Temporary { reply }; recipients.len()],
        };
        self.give_back(key, hop);
        Ok(outcomes)
    }
}

async fn timed<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

fn tls_parameters(config: &ClientConfig, target: &Target) -> Result<TlsParameters, String> {
    let mut b = TlsParameters::builder(target.tls_name.clone());
    if target.tls == TlsMode::Required {
        for pem in &config.extra_roots {
            let cert = Certificate::from_pem(pem).map_err(|e| format!("extra CA: {e}"))?;
            b = b.add_root_certificate(cert);
        }
    } else {
        // Opportunistic TLS: encrypt, but any certificate will do (an
        // unverified certificate is still better than plaintext).
        b = b
            .dangerous_accept_invalid_certs(true)
            .dangerous_accept_invalid_hostnames(true);
    }
    b.build_rustls().map_err(|e| e.to_string())
}

async fn connect(config: &ClientConfig, target: &Target) -> Result<Hop, ConnectError> {
    let hello = ClientId::Domain(config.hello_name.clone());
    let fail = |what: &str, e: String| ConnectError(format!("{} ({what}): {e}", target.addr));
    // Our own socket, so that Nagle is off: lettre writes the body and the
    // final dot separately, and Nagle with delayed ACKs would stall every
    // message by 40 ms.
    let tcp = match tokio::time::timeout(
        config.connect_timeout,
        tokio::net::TcpStream::connect(target.addr),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(fail("connect", e.to_string())),
        Err(_) => return Err(fail("connect", "timed out".into())),
    };
    let _ = tcp.set_nodelay(true);
    let mut conn = match tokio::time::timeout(
        config.command_timeout,
        AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(fail("greeting", one_line(&e.to_string()))),
        Err(_) => return Err(fail("greeting", "timed out".into())),
    };
    match target.tls {
        TlsMode::None => {}
        TlsMode::Opportunistic if !conn.can_starttls() => {}
        TlsMode::Required if !conn.can_starttls() => {
            conn.abort().await;
            return Err(fail(
                "TLS",
                "STARTTLS required by the route but not offered".into(),
            ));
        }
        TlsMode::Opportunistic | TlsMode::Required => {
            let params = tls_parameters(config, target).map_err(|e| fail("TLS", e))?;
            if let Err(e) = timed(config.command_timeout, conn.starttls(params, &hello)).await {
                conn.abort().await;
                return Err(fail("STARTTLS", e));
            }
        }
    }
    // lettre keeps only the extensions it uses from the EHLO reply: ask
    // again for PIPELINING (once per connection; before AUTH, which some
    // servers forget at a new EHLO).
    let pipelining = match timed(
        config.command_timeout,
        conn.command(format!("EHLO {}\r\n", config.hello_name)),
    )
    .await
    {
        Ok(reply) => reply.message().any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PIPELINING"))
        }),
        Err(e) => {
            conn.abort().await;
            return Err(fail("EHLO", e));
        }
    };
    if let Some(auth) = &target.auth {
        let creds = Credentials::new(auth.user.clone(), auth.password.clone());
        if let Err(e) = timed(
            config.command_timeout,
            conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds),
        )
        .await
        {
            conn.abort().await;
            return Err(fail("AUTH", e));
        }
    }
    Ok(Hop { conn, pipelining })
}

/// The connection failed before the server answered MAIL.
struct Stale(String);

/// MAIL, every RCPT, DATA: one outcome per recipient.
async fn transaction(
    config: &ClientConfig,
    hop: &mut Hop,
    sender: &str,
    recipients: &[String],
    body: &[u8],
    smtputf8: bool,
) -> Result<Vec<Outcome>, Stale> {
    let pipelining = hop.pipelining;
    let conn = &mut hop.conn;
    let t = config.command_timeout;
    let all = |o: Outcome| vec![o; recipients.len()];
    // RFC 6531 3.4: a message that needs SMTPUTF8 is not downgraded; a
    // next hop without it gets nothing, and the recipients bounce.
    let utf8_param = if smtputf8 {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Ok(all(Outcome::Permanent {
                reply: "5.6.7 the next hop does not support SMTPUTF8, which this message needs"
                    .into(),
                status: "5.6.7".into(),
            }));
        }
        " SMTPUTF8"
    } else {
        ""
    };
    let body_param =
        if !body.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
            " BODY=8BITMIME"
        } else {
            ""
        };
    let mail = format!("MAIL FROM:<{sender}>{body_param}{utf8_param}\r\n");
    if pipelining {
        return pipelined(t, conn, mail, recipients, body).await;
    }
    match tokio::time::timeout(t, conn.command(mail)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.is_transient() || e.is_permanent() => {
            let o = Outcome::from_error(&e);
            reset(conn, t).await;
            return Ok(all(o));
        }
        Ok(Err(e)) => {
            conn.abort().await;
            return Err(Stale(one_line(&e.to_string())));
        }
        Err(_) => {
            conn.abort().await;
            return Ok(all(Outcome::Temporary {
                reply: "timeout after MAIL FROM".into(),
            }));
        }
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(recipients.len());
    for r in recipients {
        match tokio::time::timeout(t, conn.command(format!("RCPT TO:<{r}>\r\n"))).await {
            Ok(Ok(_)) => outcomes.push(None),
            Ok(Err(e)) if e.is_transient() || e.is_permanent() => {
                outcomes.push(Some(Outcome::from_error(&e)))
            }
            Ok(Err(e)) => {
                conn.abort().await;
                return Ok(all(Outcome::Temporary {
                    reply: one_line(&e.to_string()),
                }));
            }
            Err(_) => {
                conn.abort().await;
                return Ok(all(Outcome::Temporary {
                    reply: "timeout after RCPT TO".into(),
                }));
            }
        }
    }
    if outcomes.iter().all(Option::is_some) {
        reset(conn, t).await;
        return Ok(outcomes.into_iter().flatten().collect());
    }
    // lettre ends the data with CRLF "." CRLF itself: the body's own last
    // CRLF is that first CRLF, or the next hop would get an extra empty line.
    let content = body.strip_suffix(b"\r\n").unwrap_or(body);
    let data = async {
        conn.command("DATA\r\n").await?;
        conn.message_iter(content.chunks(STUFFED_CHUNK)).await
    };
    let sent = tokio::time::timeout(data_limit(t, body), data).await;
    let (final_outcome, broken) = data_outcome(sent);
    if broken {
        conn.abort().await;
    }
    Ok(with_final(outcomes, final_outcome))
}

/// MAIL, every RCPT and DATA in one write, their replies read in order;
/// then the body with its final dot in one write (RFC 2920).
async fn pipelined(
    t: Duration,
    conn: &mut AsyncSmtpConnection,
    mail: String,
    recipients: &[String],
    body: &[u8],
) -> Result<Vec<Outcome>, Stale> {
    use std::fmt::Write;
    let all = |o: Outcome| vec![o; recipients.len()];
    let mut commands = mail;
    for r in recipients {
        let _ = write!(commands, "RCPT TO:<{r}>\r\n");
    }
    commands.push_str("DATA\r\n");
    // Each reply as an outcome: None for a positive one, Some for a
    // refusal; Err when the connection failed or went silent.
    let judge = |r: Result<Result<_, lettre::transport::smtp::Error>, _>, what: &str| match r {
        Ok(Ok(resp)) => Ok((None, Some(resp))),
        Ok(Err(e)) if e.is_transient() || e.is_permanent() => {
            Ok((Some(Outcome::from_error(&e)), None))
        }
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(_) => Err(format!("timeout after {what}")),
    };
    // The MAIL reply. A connection that fails here is stale (a pooled one
    // the server closed): the caller opens a fresh one.
    let mail_refused = match judge(
        tokio::time::timeout(t, conn.command(&commands)).await,
        "MAIL FROM",
    ) {
        Ok((refused, _)) => refused,
        Err(reply) => {
            conn.abort().await;
            return Err(Stale(reply));
        }
    };
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(recipients.len());
    for _ in recipients {
        match judge(
            tokio::time::timeout(t, conn.read_response()).await,
            "RCPT TO",
        ) {
            Ok((refused, _)) => outcomes.push(refused),
            Err(reply) => {
                conn.abort().await;
                return Ok(all(Outcome::Temporary { reply }));
            }
        }
    }
    let data = match judge(tokio::time::timeout(t, conn.read_response()).await, "DATA") {
        Ok(d) => d,
        Err(reply) => {
            conn.abort().await;
            return Ok(all(Outcome::Temporary { reply }));
        }
    };
    if let Some(refused) = mail_refused {
        // Every RCPT and the DATA were refused after it (503).
        return Ok(all(refused));
    }
    let accepted = outcomes.iter().any(Option::is_none);
    match data {
        (Some(refused), _) => {
            // DATA refused: the recipients it accepted share that outcome.
            reset(conn, t).await;
            return Ok(with_final(outcomes, refused));
        }
        (None, Some(resp))
            if resp.code().severity
                == lettre::transport::smtp::response::Severity::PositiveIntermediate => {}
        (None, _) => {
            // A 2xx to DATA is not a go-ahead: nothing was sent.
            reset(conn, t).await;
            let reply = "the next hop did not ask for the message after DATA".into();
            return Ok(with_final(outcomes, Outcome::Temporary { reply }));
        }
    }
    // 354 with no recipient accepted (a server that should have refused
    // DATA): end the empty message at once.
    let block = if !accepted {
        Ok(".\r\n".to_string())
    } else if body.len() > STUFFED_COPY_MAX {
        // A large body goes in pieces, each stuffed as it is sent: no
        // copy of the whole message besides the body itself.
        Err(())
    } else {
        dot_stuffed(body)
    };
    let sent = async {
        match block {
            Ok(text) => conn.command(text).await,
            // Not UTF-8 (8BITMIME bodies), or large: lettre stuffs and
            // sends it a piece at a time (its stuffing state runs on from
            // one piece to the next).
            Err(()) => {
                let content = body.strip_suffix(b"\r\n").unwrap_or(body);
                conn.message_iter(content.chunks(STUFFED_CHUNK)).await
            }
        }
    };
    let sent = tokio::time::timeout(data_limit(t, body), sent).await;
    let (final_outcome, broken) = data_outcome(sent);
    if broken {
        conn.abort().await;
    }
    Ok(with_final(outcomes, final_outcome))
}

/// How long the end of the data may take: the command timeout, and a
/// second more per 100 kB of body.
fn data_limit(t: Duration, body: &[u8]) -> Duration {
    t + Duration::from_secs(body.len() as u64 / 100_000)
}

type DataReply = Result<
    Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error>,
    tokio::time::error::Elapsed,
>;

/// What the reply to the end of the data means for the recipients the
/// server took, and whether the connection must be dropped (broken or
/// silent).
fn data_outcome(sent: DataReply) -> (Outcome, bool) {
    match sent {
        Ok(Ok(resp)) => (
            Outcome::Delivered {
                reply: format!(
                    "{} {}",
                    resp.code(),
                    one_line(&resp.message().collect::<Vec<_>>().join(" "))
                ),
            },
            false,
        ),
        Ok(Err(e)) => (
            Outcome::from_error(&e),
            !(e.is_transient() || e.is_permanent()),
        ),
        Err(_) => (
            Outcome::Temporary {
                reply: "timeout during DATA".into(),
            },
            true,
        ),
    }
}

/// Every recipient's outcome: its own refusal, or the data's outcome.
fn with_final(outcomes: Vec<Option<Outcome>>, data: Outcome) -> Vec<Outcome> {
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| data.clone()))
        .collect()
}

/// Bodies up to this size are stuffed whole by [`dot_stuffed`] (fewer
/// instructions); larger ones a piece at a time by lettre (less memory).
const STUFFED_COPY_MAX: usize = 1 << 20;
/// The pieces lettre stuffs and writes, one at a time.
const STUFFED_CHUNK: usize = 64 * 1024;

/// The message as DATA sends it (RFC 5321 4.5.2): a dot doubled at the
/// start of every line, CRLF at the end, then the lone dot. `Err` if the
/// body is not UTF-8 (lettre's byte API sends those).
fn dot_stuffed(body: &[u8]) -> Result<String, ()> {
    let text = std::str::from_utf8(body).map_err(|_| ())?;
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + text.len() / 64 + 8);
    // Line by line (a line ends at CRLF only), scanning bytes for LF: a
    // str pattern search cost ten times as much per message.
    let mut start = 0;
    while start < bytes.len() {
        if bytes[start] == b'.' {
            out.push('.');
        }
        let end = crlf_end(bytes, start).unwrap_or(bytes.len());
        out.push_str(text.get(start..end).ok_or(())?);
        start = end;
    }
    if !out.is_empty() && !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    Ok(out)
}

/// Where the line starting at `start` ends: just after its CRLF.
fn crlf_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut from = start;
    loop {
        let lf = from + bytes.get(from..)?.iter().position(|&b| b == b'\n')?;
        if lf > start && bytes[lf - 1] == b'\r' {
            return Some(lf + 1);
        }
        from = lf + 1;
    }
}

async fn reset(conn: &mut AsyncSmtpConnection, t: Duration) {
    if !matches!(
        tokio::time::timeout(t, conn.command("RSET\r\n")).await,
        Ok(Ok(_))
    ) {
        conn.abort().await;
    }
}

/// A remote reply on one line, control characters removed, at most 500
/// characters: it goes into logs, events and bounces.
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(500)
        .collect();
    out.truncate(out.trim_end().len());
    out
}

/// The first `d.d.d` enhanced status code in a reply text.
fn enhanced_status(text: &str) -> Option<String> {
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
            enhanced_status("permanent error (550): 5.1.1 no such user"),
            Some("5.1.1".into())
        );
        assert_eq!(enhanced_status("550 no such user"), None);
        assert_eq!(one_line("a\r\nb\u{0}c  "), "a  b c");
    }

    proptest::proptest! {
        /// The byte scan stuffs exactly the lines `split_inclusive` sees.
        #[test]
        fn dot_stuffing_matches_its_line_by_line_definition(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![".", "\r", "\n", "\r\n", "a", "é", ".."]),
                0..40,
            )
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
            proptest::prop_assert_eq!(dot_stuffed(text.as_bytes()).unwrap(), want);
        }
    }

    #[test]
    fn dot_stuffing_as_rfc_5321_says() {
        assert_eq!(
            dot_stuffed(b"a\r\n.b\r\n..c\r\n").unwrap(),
            "a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuffed(b".\r\n").unwrap(), "..\r\n.\r\n");
        assert_eq!(dot_stuffed(b"no end").unwrap(), "no end\r\n.\r\n");
        assert_eq!(dot_stuffed(b"").unwrap(), ".\r\n");
        // A dot inside a line, or after a bare LF, is not at a line start.
        assert_eq!(dot_stuffed(b"a.b\n.c\r\n").unwrap(), "a.b\n.c\r\n.\r\n");
        assert!(dot_stuffed(b"\xff\r\n").is_err());
    }
}
