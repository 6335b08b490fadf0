//! An SMTP sink for delivery tests: a real server on 127.0.0.1:0 running on
//! its own thread and tokio runtime, that records what it accepts.
//!
//! Recipients choose their fate by local part: `perm...` gets
//! `550 5.1.1`, `temp...` gets `451 4.3.0` every time, `flaky...` gets
//! `451` on its first RCPT (per exact address) and `250` after; anything
//! else `250`. [`Sink::set_mode`] switches the whole server: `TempFailAll`
//! answers `421` at the greeting, `Down` closes the listener (connections
//! are refused, open ones are cut), and `Normal` brings it back on the
//! same port.
//!
//! Offers PIPELINING (unless told not to), 8BITMIME, SIZE, ENHANCEDSTATUSCODES, and with the
//! options STARTTLS (a self-signed rcgen certificate) and AUTH PLAIN LOGIN
//! (then required before MAIL). MAIL parameters other than SIZE, BODY and
//! AUTH, and any RCPT parameter, are refused with 555 (with the `dsn`
//! option, RET and ENVID on MAIL and NOTIFY and ORCPT on RCPT are taken
//! and recorded): the sink is strict so a client sending what was not
//! offered gets caught.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How the sink is set up.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Offer STARTTLS with a self-signed certificate (see [`Sink::cert_pem`]).
    pub tls: bool,
    /// Offer AUTH PLAIN LOGIN with these credentials, and require it
    /// before MAIL.
    pub auth: Option<(String, String)>,
    /// The SIZE advertised and enforced, in bytes.
    pub max_size: usize,
    /// The name in the greeting and the EHLO reply (also in the certificate).
    pub hostname: String,
    /// Offer SMTPUTF8 (RFC 6531) and take it on MAIL.
    pub smtputf8: bool,
    /// Offer PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// Offer DSN (RFC 3461) and take its parameters.
    pub dsn: bool,
}

impl Default for SinkOptions {
    fn default() -> Self {
        SinkOptions {
            tls: false,
            auth: None,
            max_size: 10 * 1024 * 1024,
            hostname: "sink.test".into(),
            smtputf8: false,
            pipelining: true,
            dsn: false,
        }
    }
}

/// The whole server's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    Normal,
    /// `421 4.3.2` at the greeting, then the connection is closed.
    TempFailAll,
    /// No listener: connections are refused; open ones are closed.
    Down,
}

/// One accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    pub mail_from: String,
    /// The recipients that were accepted (250), in order.
    pub rcpts: Vec<String>,
    /// The content after dot-unstuffing, line endings as sent.
    pub body: Vec<u8>,
    /// Whether STARTTLS was in force.
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// The TCP connection (1, 2, ... in accept order): equal ids mean the
    /// client reused a connection.
    pub connection: u64,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// MAIL's DSN parameters (RET, ENVID) as sent, space-separated.
    pub mail_dsn: String,
    /// Each accepted recipient's parameters (NOTIFY, ORCPT) as sent.
    pub rcpt_params: Vec<String>,
    /// When the message was accepted.
    pub at: std::time::Instant,
}

impl SinkMessage {
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct State {
    messages: Vec<SinkMessage>,
    rcpt_attempts: HashMap<String, usize>,
    connections: u64,
    temp_fail_all: bool,
    /// Commands that arrived while another whole command was already
    /// waiting: the client pipelined.
    pipelined: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection task must not hide what was recorded.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Control {
    SetMode(SinkMode, std::sync::mpsc::Sender<Result<(), String>>),
    Shutdown,
}

/// The running sink; stops (and closes every connection) when dropped.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    thread: Option<JoinHandle<()>>,
    cert_pem: Option<String>,
}

impl Sink {
    pub fn start(options: SinkOptions) -> Sink {
        let (tls, cert_pem) = if options.tls {
            let (acceptor, pem) = self_signed(&options.hostname);
            (Some(acceptor), Some(pem))
        } else {
            (None, None)
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind sink");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("sink addr");
        let shared = Arc::new(Shared::default());
        let (control, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            shared: shared.clone(),
            options,
            tls,
        });
        let thread = std::thread::Builder::new()
            .name("smtp-sink".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("sink runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("tokio listener");
                    accept_loop(listener, addr, ctx, rx).await;
                });
            })
            .expect("spawn sink thread");
        Sink {
            addr,
            shared,
            control,
            thread: Some(thread),
            cert_pem,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificate offered with STARTTLS, PEM (for a client that
    /// verifies it).
    pub fn cert_pem(&self) -> Option<&str> {
        self.cert_pem.as_deref()
    }

    /// Switches the mode; in force when this returns (`Down`: the next
    /// connect is refused; back to `Normal`: listening again, same port).
    /// Blocks briefly: fine on a multi-thread runtime or a plain thread.
    pub fn set_mode(&self, mode: SinkMode) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(Control::SetMode(mode, tx))
            .expect("sink thread gone");
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("sink set_mode({mode:?}): {e}"),
            Err(e) => panic!("sink set_mode({mode:?}): no answer from the sink thread: {e}"),
        }
    }

    /// Every message accepted so far, in order.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared.lock().messages.clone()
    }

    /// Blocks until at least `n` messages were accepted; panics after
    /// `timeout` saying what did arrive. On a current-thread runtime that
    /// also runs the client, use [`Sink::wait_for_async`].
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.messages.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("{}", timeout_report(&state, n, timeout));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.messages.clone()
    }

    /// [`Sink::wait_for`] without blocking the runtime.
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.shared.lock();
                if state.messages.len() >= n {
                    return state.messages.clone();
                }
                if Instant::now() >= deadline {
                    panic!("{}", timeout_report(&state, n, timeout));
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// TCP connections accepted so far (including ones refused with 421).
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    /// How many RCPT commands named exactly `addr` (whatever the reply).
    /// Commands the client sent before the previous one was answered.
    pub fn pipelined(&self) -> u64 {
        self.shared.lock().pipelined
    }

    pub fn rcpt_attempts(&self, addr: &str) -> usize {
        self.shared
            .lock()
            .rcpt_attempts
            .get(addr)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn timeout_report(state: &State, n: usize, timeout: Duration) -> String {
    format!(
        "sink: wanted {n} message(s) within {timeout:?}, got {}; {} connection(s); RCPT attempts {:?}; messages: {:?}",
        state.messages.len(),
        state.connections,
        state.rcpt_attempts,
        state
            .messages
            .iter()
            .map(|m| (&m.mail_from, &m.rcpts))
            .collect::<Vec<_>>()
    )
}

/// A self-signed certificate for `localhost` and `hostname`: the acceptor
/// and the certificate's PEM.
fn self_signed(hostname: &str) -> (TlsAcceptor, String) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), hostname.to_string()])
            .expect("generate certificate");
    let cert_pem = ck.cert.pem();
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("certificate PEM");
    let key =
        PrivateKeyDer::from_pem_slice(ck.signing_key.serialize_pem().as_bytes()).expect("key PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server config");
    (TlsAcceptor::from(Arc::new(config)), cert_pem)
}

struct Ctx {
    shared: Arc<Shared>,
    options: SinkOptions,
    tls: Option<TlsAcceptor>,
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut listener = Some(listener);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            c = control.recv() => match c {
                None | Some(Control::Shutdown) => break,
                Some(Control::SetMode(mode, ack)) => {
                    let result = switch(mode, addr, &mut listener, &mut conns, &ctx).await;
                    let _ = ack.send(result);
                }
            },
            accepted = accept(listener.as_ref()) => {
                let Ok((stream, _)) = accepted else { continue };
                let id = {
                    let mut st = ctx.shared.lock();
                    st.connections += 1;
                    st.connections
                };
                conns.spawn(serve(stream, id, ctx.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn switch(
    mode: SinkMode,
    addr: SocketAddr,
    listener: &mut Option<TcpListener>,
    conns: &mut JoinSet<()>,
    ctx: &Ctx,
) -> Result<(), String> {
    if mode == SinkMode::Down {
        *listener = None;
        conns.shutdown().await; // abort and wait: every socket closed
    } else if listener.is_none() {
        // Back on the same port; retry while the old socket lets go.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    *listener = Some(l);
                    break;
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot listen on {addr} again: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    ctx.shared.lock().temp_fail_all = mode == SinkMode::TempFailAll;
    Ok(())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = BufReader<Box<dyn Io>>;

const IDLE: Duration = Duration::from_secs(60);
const MAX_LINE: u64 = 16 * 1024;
const MAX_RCPTS: usize = 100;

/// The SMTP dialogue state of one connection.
#[derive(Default)]
struct Session {
    helo: Option<String>,
    tls: bool,
    auth_user: Option<String>,
    mail_from: Option<String>,
    mail_smtputf8: bool,
    mail_dsn: String,
    rcpts: Vec<String>,
    rcpt_params: Vec<String>,
}

impl Session {
    fn reset_transaction(&mut self) {
        self.mail_smtputf8 = false;
        self.mail_dsn.clear();
        self.mail_from = None;
        self.rcpts.clear();
        self.rcpt_params.clear();
    }
}

/// Replies are collected and written when the client has nothing more
/// buffered, so a pipelined group gets its replies together.
struct Wire {
    conn: Conn,
    out: Vec<u8>,
}

impl Wire {
    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.conn.get_mut().write_all(&out).await?;
            self.conn.get_mut().flush().await?;
        }
        Ok(())
    }

    /// One line with its ending; `None` at EOF, on an error, on an idle
    /// timeout or past `MAX_LINE`. Pending replies go out first when no
    /// complete line is buffered (the client may be waiting for them).
    async fn line(&mut self) -> Option<Vec<u8>> {
        if !self.conn.buffer().contains(&b'\n') {
            self.flush().await.ok()?;
        }
        let mut buf = Vec::new();
        let mut limited = (&mut self.conn).take(MAX_LINE);
        match tokio::time::timeout(IDLE, limited.read_until(b'\n', &mut buf)).await {
            Ok(Ok(n)) if n > 0 && buf.ends_with(b"\n") => Some(buf),
            _ => None,
        }
    }
}

async fn serve(stream: TcpStream, id: u64, ctx: Arc<Ctx>) {
    let conn: Conn = BufReader::new(Box::new(stream));
    let mut w = Wire {
        conn,
        out: Vec::new(),
    };
    let host = ctx.options.hostname.clone();
    if ctx.shared.lock().temp_fail_all {
        w.reply(&format!(
            "421 4.3.2 {host} service not available, try later"
        ));
        let _ = w.flush().await;
        let _ = w.conn.get_mut().shutdown().await;
        return;
    }
    w.reply(&format!("220 {host} ESMTP relaygate test sink"));
    let mut s = Session::default();
    while let Some(raw) = w.line().await {
        if w.conn.buffer().contains(&b'\n') {
            ctx.shared.lock().pipelined += 1;
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => w.reply("501 5.5.4 Syntax: EHLO hostname"),
            "EHLO" => {
                s.reset_transaction();
                s.helo = Some(arg.to_string());
                let mut ext = vec![host.clone()];
                if ctx.options.pipelining {
                    ext.push("PIPELINING".into());
                }
                ext.extend([
                    "8BITMIME".into(),
                    format!("SIZE {}", ctx.options.max_size),
                    "ENHANCEDSTATUSCODES".into(),
                ]);
                if ctx.options.smtputf8 {
                    ext.push("SMTPUTF8".into());
                }
                if ctx.options.dsn {
                    ext.push("DSN".into());
                }
                if ctx.tls.is_some() && !s.tls {
                    ext.push("STARTTLS".into());
                }
                if ctx.options.auth.is_some() {
                    ext.push("AUTH PLAIN LOGIN".into());
                }
                let last = ext.len() - 1;
                for (i, e) in ext.iter().enumerate() {
                    let sep = if i == last { ' ' } else { '-' };
                    w.reply(&format!("250{sep}{e}"));
                }
            }
            "HELO" => {
                s.reset_transaction();
                s.helo = Some(arg.to_string());
                w.reply(&format!("250 {host}"));
            }
            "STARTTLS" => {
                let Some(acceptor) = ctx.tls.clone() else {
                    w.reply("502 5.5.1 STARTTLS not offered");
                    continue;
                };
                if s.tls {
                    w.reply("503 5.5.1 TLS already active");
                    continue;
                }
                if !arg.is_empty() {
                    w.reply("501 5.5.4 STARTTLS takes no argument");
                    continue;
                }
                w.reply("220 2.0.0 Ready to start TLS");
                if w.flush().await.is_err() {
                    return;
                }
                // Anything pipelined after STARTTLS is discarded (RFC 3207 4.2).
                let Wire { conn, .. } = w;
                let tls = match acceptor.accept(conn.into_inner()).await {
                    Ok(t) => t,
                    Err(_) => return,
                };
                w = Wire {
                    conn: BufReader::new(Box::new(tls)),
                    out: Vec::new(),
                };
                s = Session {
                    tls: true,
                    ..Session::default()
                };
            }
            "AUTH" => {
                let Some((user, pass)) = ctx.options.auth.clone() else {
                    w.reply("502 5.5.1 AUTH not offered");
                    continue;
                };
                if s.helo.is_none() {
                    w.reply("503 5.5.1 EHLO first");
                } else if s.auth_user.is_some() {
                    w.reply("503 5.5.1 Already authenticated");
                } else if s.mail_from.is_some() {
                    w.reply("503 5.5.1 AUTH not allowed in a transaction");
                } else {
                    match authenticate(&mut w, arg).await {
                        AuthResult::Credentials(u, p) if u == user && p == pass => {
                            s.auth_user = Some(u);
                            w.reply("235 2.7.0 Authentication successful");
                        }
                        AuthResult::Credentials(..) => {
                            w.reply("535 5.7.8 Authentication credentials invalid");
                        }
                        AuthResult::Reply(r) => w.reply(r),
                        AuthResult::Gone => return,
                    }
                }
            }
            "MAIL" => {
                if s.helo.is_none() {
                    w.reply("503 5.5.1 EHLO first");
                } else if ctx.options.auth.is_some() && s.auth_user.is_none() {
                    w.reply("530 5.7.0 Authentication required");
                } else if s.mail_from.is_some() {
                    w.reply("503 5.5.1 Nested MAIL command");
                } else {
                    match parse_path(arg, "FROM:") {
                        None => w.reply("501 5.5.4 Syntax: MAIL FROM:<address>"),
                        Some((from, params)) => {
                            match check_mail_params(
                                params,
                                ctx.options.max_size,
                                ctx.options.smtputf8,
                                ctx.options.dsn,
                            ) {
                                Err(r) => w.reply(r),
                                Ok((utf8, dsn)) => {
                                    s.mail_smtputf8 = utf8;
                                    s.mail_dsn = dsn;
                                    s.mail_from = Some(from);
                                    w.reply("250 2.1.0 Ok");
                                }
                            }
                        }
                    }
                }
            }
            "RCPT" => {
                if s.mail_from.is_none() {
                    w.reply("503 5.5.1 MAIL first");
                    continue;
                }
                let Some((rcpt, params)) = parse_path(arg, "TO:") else {
                    w.reply("501 5.5.4 Syntax: RCPT TO:<address>");
                    continue;
                };
                let dsn_only = params.split_ascii_whitespace().all(|p| {
                    let key = p.split_once('=').map_or(p, |(k, _)| k);
                    key.eq_ignore_ascii_case("NOTIFY") || key.eq_ignore_ascii_case("ORCPT")
                });
                let taken = params.trim().is_empty() || (ctx.options.dsn && dsn_only);
                if !taken {
                    w.reply("555 5.5.4 Unsupported RCPT parameter");
                    continue;
                }
                if s.rcpts.len() >= MAX_RCPTS {
                    w.reply("452 4.5.3 Too many recipients");
                    continue;
                }
                let attempt = {
                    let mut st = ctx.shared.lock();
                    let n = st.rcpt_attempts.entry(rcpt.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                let local = rcpt
                    .rsplit_once('@')
                    .map_or(rcpt.as_str(), |(l, _)| l)
                    .to_ascii_lowercase();
                if local.starts_with("perm") {
                    w.reply("550 5.1.1 no such user");
                } else if local.starts_with("temp") || (local.starts_with("flaky") && attempt == 1)
                {
                    w.reply("451 4.3.0 try later");
                } else {
                    s.rcpts.push(rcpt);
                    s.rcpt_params.push(params.trim().to_string());
                    w.reply("250 2.1.5 Ok");
                }
            }
            "DATA" => {
                let Some(from) = s.mail_from.clone() else {
                    w.reply("503 5.5.1 MAIL first");
                    continue;
                };
                if s.rcpts.is_empty() {
                    w.reply("554 5.5.1 No valid recipients");
                    continue;
                }
                w.reply("354 End data with <CR><LF>.<CR><LF>");
                let Some(body) = read_data(&mut w, ctx.options.max_size).await else {
                    return;
                };
                let Ok(body) = body else {
                    s.reset_transaction();
                    w.reply("552 5.3.4 Message too big");
                    continue;
                };
                let n = {
                    let mut st = ctx.shared.lock();
                    st.messages.push(SinkMessage {
                        mail_from: from,
                        rcpts: std::mem::take(&mut s.rcpts),
                        body,
                        tls: s.tls,
                        auth_user: s.auth_user.clone(),
                        connection: id,
                        helo: s.helo.clone().unwrap_or_default(),
                        smtputf8: s.mail_smtputf8,
                        mail_dsn: s.mail_dsn.clone(),
                        rcpt_params: std::mem::take(&mut s.rcpt_params),
                        at: std::time::Instant::now(),
                    });
                    st.messages.len()
                };
                ctx.shared.changed.notify_all();
                s.reset_transaction();
                w.reply(&format!("250 2.0.0 Ok: queued as {n}"));
            }
            "RSET" => {
                s.reset_transaction();
                w.reply("250 2.0.0 Ok");
            }
            "NOOP" => w.reply("250 2.0.0 Ok"),
            "VRFY" => w.reply("252 2.5.0 Cannot verify, send some mail"),
            "QUIT" => {
                w.reply("221 2.0.0 Bye");
                let _ = w.flush().await;
                let _ = w.conn.get_mut().shutdown().await;
                return;
            }
            _ => w.reply("500 5.5.2 Command not recognized"),
        }
    }
    let _ = w.flush().await;
}

enum AuthResult {
    Credentials(String, String),
    Reply(&'static str),
    Gone,
}

/// Runs AUTH PLAIN or LOGIN (with or without an initial response).
async fn authenticate(w: &mut Wire, arg: &str) -> AuthResult {
    let (mech, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
        None => (arg.to_ascii_uppercase(), None),
    };
    // The next base64 answer from the client after a 334 challenge.
    async fn answer(w: &mut Wire, challenge: &str) -> Result<Vec<u8>, AuthResult> {
        w.reply(&format!("334 {challenge}"));
        let raw = w.line().await.ok_or(AuthResult::Gone)?;
        let text = String::from_utf8_lossy(&raw);
        decode(text.trim_end_matches(['\r', '\n']))
    }
    fn decode(text: &str) -> Result<Vec<u8>, AuthResult> {
        if text == "*" {
            return Err(AuthResult::Reply("501 5.7.0 Authentication cancelled"));
        }
        if text == "=" {
            return Ok(Vec::new());
        }
        B64.decode(text)
            .map_err(|_| AuthResult::Reply("501 5.5.2 Invalid base64"))
    }
    let result = async {
        match mech.as_str() {
            "PLAIN" => {
                let blob = match initial {
                    Some(i) => decode(&i)?,
                    None => answer(w, "").await?,
                };
                let mut parts = blob.split(|b| *b == 0);
                let (Some(_authzid), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(AuthResult::Reply("501 5.5.2 Malformed PLAIN response"));
                };
                Ok(AuthResult::Credentials(
                    String::from_utf8_lossy(user).into_owned(),
                    String::from_utf8_lossy(pass).into_owned(),
                ))
            }
            "LOGIN" => {
                let user = match initial {
                    Some(i) => decode(&i)?,
                    None => answer(w, "VXNlcm5hbWU6").await?,
                };
                let pass = answer(w, "UGFzc3dvcmQ6").await?;
                Ok(AuthResult::Credentials(
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&pass).into_owned(),
                ))
            }
            _ => Err(AuthResult::Reply(
                "504 5.5.4 Unrecognized authentication type",
            )),
        }
    }
    .await;
    match result {
        Ok(r) | Err(r) => r,
    }
}

/// `FROM:<addr> PARAMS` (the keyword case-insensitive, spaces after the
/// colon tolerated) into the address and the parameter text.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_string(), &rest[end + 1..]))
}

fn check_mail_params(
    params: &str,
    max_size: usize,
    smtputf8: bool,
    dsn: bool,
) -> Result<(bool, String), &'static str> {
    let mut utf8 = false;
    let mut dsn_params: Vec<&str> = Vec::new();
    for p in params.split_ascii_whitespace() {
        let (key, value) = p.split_once('=').unwrap_or((p, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => match value.parse::<usize>() {
                Ok(n) if n > max_size => return Err("552 5.3.4 Message size exceeds fixed limit"),
                Ok(_) => {}
                Err(_) => return Err("501 5.5.4 Bad SIZE parameter"),
            },
            "BODY" => {
                if !value.eq_ignore_ascii_case("7BIT") && !value.eq_ignore_ascii_case("8BITMIME") {
                    return Err("501 5.5.4 Bad BODY parameter");
                }
            }
            "AUTH" => {}
            "SMTPUTF8" if smtputf8 => utf8 = true,
            "RET" | "ENVID" if dsn => dsn_params.push(p),
            _ => return Err("555 5.5.4 Unsupported MAIL parameter"),
        }
    }
    Ok((utf8, dsn_params.join(" ")))
}

/// The message after 354, dot-unstuffed: `None` if the connection ended,
/// `Some(Err(()))` if it was larger than `max_size` (read to the end and
/// dropped).
async fn read_data(w: &mut Wire, max_size: usize) -> Option<Result<Vec<u8>, ()>> {
    let mut body = Vec::new();
    let mut too_big = false;
    loop {
        let line = w.line().await?;
        if line == b".\r\n" || line == b".\n" {
            break;
        }
        let line = line.strip_prefix(b".").unwrap_or(&line);
        if body.len() + line.len() > max_size {
            too_big = true;
            body.clear();
        }
        if !too_big {
            body.extend_from_slice(line);
        }
    }
    Some(if too_big { Err(()) } else { Ok(body) })
}
