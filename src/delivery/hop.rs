//! One SMTP connection to a next hop: the socket (plain, or TLS after
//! STARTTLS), replies read through [`ReplyReader`] (bounded, liberal), and
//! a deadline on every read and write, the last QUIT included: a next hop
//! that stops answering or reading costs one timeout, never a delivery
//! slot for ever.

use super::reply::{Reply, ReplyReader};
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long QUIT may take when a connection is given up.
const QUIT_LIMIT: Duration = Duration::from_secs(2);

/// Why a step failed: the connection is no longer usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub String);

/// What the EHLO reply offered (nothing after a HELO).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// DSN (RFC 3461): NOTIFY, ORCPT, RET and ENVID are taken.
    pub dsn: bool,
    /// SIZE's limit; `Some(0)` is "no fixed limit" (RFC 1870).
    pub size: Option<u64>,
    pub auth_plain: bool,
    pub auth_login: bool,
}

impl Extensions {
    /// The keywords of an EHLO reply's lines after the first.
    pub fn parse(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "DSN" => ext.dsn = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    for m in words {
                        match m.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection to a next hop.
pub struct HopConnection {
    stream: Stream,
    reader: ReplyReader,
    /// Bytes read and not yet used by the reader.
    pending: Vec<u8>,
    /// A step failed or the server said 421: not to be used again.
    broken: bool,
    /// Per read or write.
    limit: Duration,
}

impl HopConnection {
    /// Connects and reads the greeting (which the caller judges).
    pub async fn open(
        addr: SocketAddr,
        connect_limit: Duration,
        limit: Duration,
    ) -> Result<(HopConnection, Reply), (String, Broken)> {
        let tcp = match tokio::time::timeout(connect_limit, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(("connect".into(), Broken(e.to_string()))),
            Err(_) => return Err(("connect".into(), Broken("timed out".into()))),
        };
        // Nagle off: the body and its final dot may go in two writes.
        let _ = tcp.set_nodelay(true);
        let mut conn = HopConnection {
            stream: Stream::Plain(tcp),
            reader: ReplyReader::default(),
            pending: Vec::new(),
            broken: false,
            limit,
        };
        let greeting = conn
            .read_reply("greeting")
            .await
            .map_err(|e| ("greeting".to_string(), e))?;
        Ok((conn, greeting))
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection as not to be used again (out of step with
    /// the server).
    pub fn give_up(&mut self) {
        self.broken = true;
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Reads one reply; `what` names the step for the error. A 421 also
    /// marks the connection broken: the server is closing it.
    pub async fn read_reply(&mut self, what: &str) -> Result<Reply, Broken> {
        self.read_reply_within(what, self.limit).await
    }

    /// [`read_reply`](Self::read_reply) with a time of its own.
    pub async fn read_reply_within(
        &mut self,
        what: &str,
        limit: Duration,
    ) -> Result<Reply, Broken> {
        match tokio::time::timeout(limit, self.next_reply()).await {
            Ok(Ok(reply)) => {
                if reply.code == 421 {
                    self.broken = true;
                }
                Ok(reply)
            }
            Ok(Err(e)) => {
                self.broken = true;
                Err(Broken(format!("{what}: {e}")))
            }
            Err(_) => {
                self.broken = true;
                Err(Broken(format!(
                    "no answer to {what} within {} s",
                    limit.as_secs()
                )))
            }
        }
    }

    async fn next_reply(&mut self) -> Result<Reply, String> {
        let mut buf = [0u8; 4096];
        loop {
            if !self.pending.is_empty() {
                let (used, reply) = self.reader.feed(&self.pending);
                self.pending.drain(..used);
                if let Some(reply) = reply {
                    return reply.map_err(|e| e.0);
                }
            }
            let n = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut buf).await,
                Stream::Tls(s) => s.read(&mut buf).await,
            }
            .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the connection was closed".into());
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes all of `bytes` within `limit`. Bytes from the server that no
    /// command asked for (a second greeting, two replies to one command)
    /// mean every reply from here would answer the wrong command: the
    /// connection is out of step, and given up.
    pub async fn write(&mut self, bytes: &[u8], limit: Duration, what: &str) -> Result<(), Broken> {
        if !self.pending.is_empty() {
            self.broken = true;
            return Err(Broken(format!(
                "{what}: out of step: the next hop sent {} bytes no command asked for",
                self.pending.len()
            )));
        }
        let write = async {
            match &mut self.stream {
                Stream::Plain(s) => s.write_all(bytes).await,
                Stream::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(Broken(format!("{what}: {e}")))
            }
            Err(_) => {
                self.broken = true;
                Err(Broken(format!(
                    "{what}: the next hop did not read within {} s",
                    limit.as_secs()
                )))
            }
        }
    }

    /// Sends a command line and reads its reply.
    pub async fn command(&mut self, line: &str, what: &str) -> Result<Reply, Broken> {
        self.write(line.as_bytes(), self.limit, what).await?;
        self.read_reply(what).await
    }

    /// EHLO, or HELO when EHLO is refused (RFC 5321 3.2): what the next
    /// hop offers, or its refusal of both.
    pub async fn hello(&mut self, name: &str) -> Result<Result<Extensions, Reply>, Broken> {
        let ehlo = self.command(&format!("EHLO {name}\r\n"), "EHLO").await?;
        if ehlo.code == 250 {
            return Ok(Ok(Extensions::parse(&ehlo)));
        }
        if ehlo.is_positive() {
            // RFC 5321 4.3.2: EHLO's success is 250; another 2xx (a
            // second 220 greeting) answers something else.
            self.broken = true;
            return Err(Broken(format!(
                "EHLO: out of step: answered {}",
                ehlo.one_line()
            )));
        }
        if ehlo.class() != 5 || ehlo.code == 421 {
            return Ok(Err(ehlo));
        }
        let helo = self.command(&format!("HELO {name}\r\n"), "HELO").await?;
        Ok(if helo.is_positive() {
            Ok(Extensions::default())
        } else {
            Err(helo)
        })
    }

    /// STARTTLS and the handshake. `Ok(Err(reply))`: the server refused
    /// STARTTLS and the connection is still usable in plaintext.
    pub async fn starttls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<Result<HopConnection, (HopConnection, Reply)>, Broken> {
        let reply = self.command("STARTTLS\r\n", "STARTTLS").await?;
        if reply.class() != 2 {
            return Ok(Err((self, reply)));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Broken("STARTTLS: TLS is already on".into()));
        };
        // RFC 3207: nothing the server sent before its 220 counts after it.
        let server_name = ServerName::try_from(name.to_string())
            .unwrap_or_else(|_| ServerName::try_from("invalid.invalid").expect("a valid name"));
        let connector = tokio_rustls::TlsConnector::from(config);
        match tokio::time::timeout(self.limit, connector.connect(server_name, tcp)).await {
            Ok(Ok(tls)) => Ok(Ok(HopConnection {
                stream: Stream::Tls(Box::new(tls)),
                reader: ReplyReader::default(),
                pending: Vec::new(),
                broken: false,
                limit: self.limit,
            })),
            Ok(Err(e)) => Err(Broken(format!("TLS handshake: {e}"))),
            Err(_) => Err(Broken(format!(
                "TLS handshake: no answer within {} s",
                self.limit.as_secs()
            ))),
        }
    }

    /// AUTH PLAIN, or LOGIN when only that is offered. `Ok(Err(reply))`:
    /// the server refused the credentials.
    pub async fn auth(
        &mut self,
        ext: &Extensions,
        user: &str,
        password: &str,
    ) -> Result<Result<(), Reply>, Broken> {
        let b64 = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let done = if ext.auth_plain || !ext.auth_login {
            let token = b64(format!("\0{user}\0{password}").as_bytes());
            self.command(&format!("AUTH PLAIN {token}\r\n"), "AUTH")
                .await?
        } else {
            let r = self.command("AUTH LOGIN\r\n", "AUTH").await?;
            if r.code != 334 {
                return Ok(Err(r));
            }
            let r = self
                .command(&format!("{}\r\n", b64(user.as_bytes())), "AUTH")
                .await?;
            if r.code != 334 {
                return Ok(Err(r));
            }
            self.command(&format!("{}\r\n", b64(password.as_bytes())), "AUTH")
                .await?
        };
        Ok(if done.class() == 2 { Ok(()) } else { Err(done) })
    }

    /// Says goodbye without waiting long: a next hop that no longer reads
    /// or answers is simply dropped.
    pub async fn quit(mut self) {
        self.limit = QUIT_LIMIT;
        if !self.broken {
            let _ = self.command("QUIT\r\n", "QUIT").await;
        }
        let close = async {
            match &mut self.stream {
                Stream::Plain(s) => s.shutdown().await,
                Stream::Tls(s) => s.shutdown().await,
            }
        };
        let _ = tokio::time::timeout(QUIT_LIMIT, close).await;
    }
}

/// The TLS settings for a route: `verify` checks the certificate chain
/// against the web's roots and `extra_roots` (PEM), and the name;
/// otherwise any certificate is taken (opportunistic TLS: encrypted,
/// unauthenticated, still better than plaintext), its signature checked.
pub fn tls_config(verify: bool, extra_roots: &[Vec<u8>]) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for pem in extra_roots {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("extra CA: {e}"))?;
                roots.add(cert).map_err(|e| format!("extra CA: {e}"))?;
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Opportunistic TLS: any certificate, but the handshake's signatures
/// are still checked against it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
