//! The tokio side of a session: it only reads, writes, times out and runs
//! what the sans-I/O [`Session`] asks for (TLS handshakes, password checks
//! off-thread, durable spooling). Every protocol decision is the session's.

use super::framer::{Frame, Framer, Timeouts};
use super::proxy_header::{self, ProxyHeader, ProxyParse};
use super::reply::Reply;
use super::session::{
    Action, AuthOutcome, DataProgress, Limits, Message, NetworkChecks, NotStored,
    RecipientDecision, Session, SessionParams,
};
use super::trace_header::{TraceInfo, received_header};
use crate::abuse::quota::QuotaHolds;
use crate::bindings::BindKind;
use crate::delivery::scheduler::{HANDED_BODY_MAX, HANDED_WAITING_MAX, NewWork};
use crate::engine::{RunState, Shared};
use crate::events::Event;
use crate::server_settings::ServerSettings;
use crate::session_board::{Board, LINE_CHARS, ReplyLine};
use crate::spool::{NewMessage, SpoolRecipient, StoredMessage};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Everything a connection task needs from its listener.
pub struct ConnectionContext {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub kind: BindKind,
    /// The binding as configured (its PROXY protocol setting is looked up
    /// by it).
    pub binding: SocketAddr,
    /// The load balancer the connection came through (the PROXY header
    /// gave `peer` and `local`).
    pub proxy: Option<SocketAddr>,
    /// Dropped when the task ends: the engine knows all sessions are done
    /// when the last of these is gone.
    pub _done: mpsc::Sender<()>,
}

/// The socket, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while a handshake has the stream.
    Gone,
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Gone => Poll::Ready(Ok(())),
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A message body past this size goes to a file as it arrives: memory per
/// session stays small whatever the message size.
const SPILL_AT: usize = 256 * 1024;

/// A message body being written to disk as it arrives; removed when
/// dropped (stored in the spool, refused, or the session ended).
struct SpillFile {
    file: tokio::fs::File,
    path: std::path::PathBuf,
    len: u64,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SpillFile {
    fn create(dir: &std::path::Path, session: u64) -> io::Result<SpillFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!("{session}-{nanos:09}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(SpillFile {
            file: tokio::fs::File::from_std(file),
            path,
            len: 0,
        })
    }

    async fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Writes the body held so far to the session's spill file (made on
/// first use). A failure is remembered: the message then gets 451.
async fn spill_body(
    ctx: &ConnectionContext,
    id: u64,
    session: &mut Session,
    spill: &mut Option<SpillFile>,
    failed: &mut Option<NotStored>,
    threshold: usize,
) {
    let Some(bytes) = session.take_data_body(threshold) else {
        return;
    };
    if failed.is_some() {
        return;
    }
    if spill.is_none() {
        match SpillFile::create(&ctx.shared.spill_dir, id) {
            Ok(f) => *spill = Some(f),
            Err(e) => {
                *failed = Some(not_stored(&e));
                ctx.shared.events.emit(Event::Error {
                    session: Some(id),
                    message: format!("writing a message body to disk: {e}"),
                });
                return;
            }
        }
    }
    // Off the disk's free figure at once, not at the next measurement.
    ctx.shared.spool_space.consume(bytes.len() as u64);
    if let Some(f) = spill
        && let Err(e) = f.append(&bytes).await
    {
        *failed = Some(not_stored(&e));
        ctx.shared.events.emit(Event::Error {
            session: Some(id),
            message: format!("writing a message body to disk: {e}"),
        });
    }
}

/// What a failed write of a body means for the client.
fn not_stored(e: &io::Error) -> NotStored {
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        NotStored::NoSpace
    } else {
        NotStored::Failed
    }
}

/// The shortest command line a DSN-offering server must take: RFC 5321's
/// 512 octets, 500 more for ORCPT and room for NOTIFY on RCPT, or 100 for
/// ENVID and RET beside a 500-octet AUTH= on MAIL (RFC 3461 5, RFC 4954
/// 5), so a lower `max-command-line` does not refuse valid parameters.
pub const DSN_COMMAND_LINE: usize = 1_200;

/// The session limits a set of engine settings asks for.
pub fn limits_from(settings: &ServerSettings) -> Limits {
    Limits {
        max_message_size: settings.max_message_size,
        spool_min_free: settings.spool_min_free,
        max_recipients: settings.max_recipients,
        max_command_line: settings.max_command_line.max(DSN_COMMAND_LINE),
        max_text_line: settings.max_text_line,
        max_bad_commands: settings.max_bad_commands,
        allow_plaintext_auth: settings.plaintext_auth,
        ..Limits::default()
    }
}

/// Serves one accepted connection to its end.
pub async fn serve_connection(mut ctx: ConnectionContext, mut stream: TcpStream) {
    // Behind a load balancer: the header says who the client is, and the
    // client is that address for everything from here on.
    let mut early = Vec::new();
    let first = ctx.shared.snapshot();
    if let Some(trusted) = first.proxied.get(&ctx.binding) {
        let from = ctx.peer;
        match Box::pin(proxy_header(&ctx, trusted, &mut stream)).await {
            Ok((header, rest)) => {
                if let ProxyHeader::Proxied { client, local } = header {
                    ctx.proxy = Some(from);
                    ctx.peer = client;
                    ctx.local = local;
                }
                early = rest;
            }
            Err(why) => {
                ctx.shared.events.emit(Event::ProxyRefused {
                    peer: from,
                    local: ctx.local,
                    why,
                });
                return;
            }
        }
    }
    // A banned address is refused first: no session slot, no TLS, no
    // password check.
    if let Some(ban) = ctx
        .shared
        .abuse
        .banned(ctx.peer.ip(), crate::abuse::now_ms())
    {
        let reply = ban_reply(&ban);
        let mut stream = stream;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply.to_wire())).await;
        ctx.shared.events.emit(Event::SessionRefused {
            peer: ctx.peer,
            reply: reply.to_string().trim_end().to_string(),
            cause: crate::events::RefusalCause::Ban,
        });
        return;
    }
    // A connection to a PROXY binding may have waited for its header:
    // read again.
    let snapshot = if first.proxied.contains_key(&ctx.binding) {
        ctx.shared.snapshot()
    } else {
        first
    };
    let settings = Arc::clone(&snapshot.settings);
    let id = ctx.shared.next_session_id();
    let _slot = match ctx.shared.admit(ctx.peer.ip(), &settings) {
        Ok(slot) => slot,
        Err(text) => {
            let reply = Reply::new(421, "4.7.0", text);
            let mut stream = stream;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply.to_wire()))
                    .await;
            ctx.shared.events.emit(Event::SessionRefused {
                peer: ctx.peer,
                reply: reply.to_string().trim_end().to_string(),
                cause: crate::events::RefusalCause::Limit,
            });
            return;
        }
    };
    let tls = ctx.shared.tls();
    let mut conn = Conn::Plain(stream);
    if ctx.kind == BindKind::Smtps {
        let Some(acceptor) = tls.clone() else {
            ctx.shared.events.emit(Event::Error {
                session: Some(id),
                message: format!("{}: implicit TLS listener without a certificate", ctx.local),
            });
            return;
        };
        conn = match Box::pin(handshake(&acceptor, conn)).await {
            Ok(c) => c,
            Err(e) => {
                ctx.shared.events.emit(Event::SessionClosed {
                    session: id,
                    why: format!("TLS handshake failed: {e}"),
                });
                return;
            }
        };
    }
    let params = SessionParams {
        hostname: settings.hostname.clone(),
        kind: ctx.kind,
        peer: ctx.peer.ip(),
        tls_active: ctx.kind == BindKind::Smtps,
        tls_available: tls.is_some() && ctx.kind != BindKind::Smtps,
        limits: limits_from(&settings),
        spool_space: ctx.shared.spool_space.clone(),
    };
    let board = ctx.shared.boards.open(id);
    ctx.shared.events.emit(Event::SessionOpened {
        session: id,
        peer: ctx.peer,
        local: ctx.local,
        kind: ctx.kind,
        tls: params.tls_active,
        via: ctx.proxy.map(|proxy| crate::events::ProxyVia {
            proxy,
            binding: ctx.binding,
        }),
    });
    let mut session = Session::new(params);
    let why = match run(&ctx, id, &board, &settings, &mut conn, &mut session, early).await {
        Ok(why) => why,
        Err(e) => format!("connection error: {e}"),
    };
    // TLS says goodbye (close_notify); plain TCP needs no shutdown call:
    // closing the socket sends the FIN.
    if matches!(conn, Conn::Tls(_)) {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.shutdown()).await;
    }
    ctx.shared
        .events
        .emit(Event::SessionClosed { session: id, why });
}

async fn handshake(acceptor: &tokio_rustls::TlsAcceptor, conn: Conn) -> io::Result<Conn> {
    let Conn::Plain(tcp) = conn else {
        return Err(io::Error::other("TLS is already active"));
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Ok(Conn::Tls(Box::new(tls))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// The read-handle-write loop. Returns why the session ended.
async fn run(
    ctx: &ConnectionContext,
    id: u64,
    board: &Board,
    settings: &ServerSettings,
    conn: &mut Conn,
    session: &mut Session,
    early: Vec<u8>,
) -> io::Result<String> {
    let ip = ctx.peer.ip();
    let mut framer = Framer::new(timeouts_from(settings), Instant::now());
    // Bytes that came with the PROXY header (a client that did not wait
    // for the greeting): read as if they came now.
    if !early.is_empty() {
        framer.buffer().extend_from_slice(&early);
        framer.received(early.len(), Instant::now());
    }
    let mut out: Vec<u8> = session.greeting().to_wire();
    let mut state = ctx.shared.run_state();
    let mut pending: VecDeque<Action> = VecDeque::new();
    let write_limit = Duration::from_secs(settings.command_timeout_secs);
    let mut spill: Option<SpillFile> = None;
    let mut spill_failed: Option<NotStored> = None;
    // What the transaction under way counts against the sending quotas.
    let mut quota = QuotaHold {
        abuse: &ctx.shared.abuse,
        holds: QuotaHolds::default(),
    };
    // Counted by the spool while it is under way (see `OpenTransaction`).
    let mut open_transaction: Option<crate::spool::OpenTransaction> = None;
    // The RCPT line waiting for its reply (verification, quotas).
    let mut unanswered: Option<Vec<u8>> = None;
    // The client's DNS blocklist answer, once looked up.
    let mut blocklisted: Option<Option<crate::abuse::dnsbl::Listing>> = None;
    // Recipient verification's settings, once it is first needed.
    let mut verify_config: Option<crate::delivery::recipient_verify::VerifyConfig> = None;
    loop {
        // Handle every complete line (or DATA bytes) already read.
        'handle: while !session.is_closed() {
            if session.in_data() {
                if framer.pending().is_empty() {
                    break;
                }
                match session.handle_data(framer.pending()) {
                    DataProgress::Continue => {
                        let n = framer.pending().len();
                        framer.consume(n);
                        Box::pin(spill_body(
                            ctx,
                            id,
                            session,
                            &mut spill,
                            &mut spill_failed,
                            SPILL_AT,
                        ))
                        .await;
                        break;
                    }
                    DataProgress::Finished { consumed, actions } => {
                        framer.consume(consumed);
                        framer.end_data(Instant::now());
                        if !actions.iter().any(|a| matches!(a, Action::Message(_))) {
                            // Refused (too big, bad line endings): nothing to keep.
                            spill = None;
                            spill_failed = None;
                        }
                        pending.extend(actions);
                    }
                }
            } else {
                let Some(frame) = framer.next_line(session.max_line_len()) else {
                    break;
                };
                let actions = match frame {
                    Frame::Overlong => session.handle_overlong_line(),
                    Frame::Line(line) => {
                        // Banned meanwhile (by this session's own failures,
                        // or by the administrator): the session ends here.
                        let now = crate::abuse::now_ms();
                        if ctx.shared.abuse.any_ban(now)
                            && let Some(ban) = ctx.shared.abuse.banned(ip, now)
                        {
                            let mut bye = ban_reply(&ban);
                            bye.code = 421;
                            bye.status = Some("4.7.1");
                            out.extend_from_slice(&bye.to_wire());
                            flush_last(conn, &mut out, write_limit).await?;
                            return Ok("banned".into());
                        }
                        // A login suspended meanwhile (a quota, the
                        // administrator) sends nothing more here either.
                        if let Some(login) = session.login()
                            && is_suspended(ctx, login)
                        {
                            let bye = Reply::new(
                                421,
                                "4.7.1",
                                format!("{login} is suspended; ask the mail administrator"),
                            );
                            out.extend_from_slice(&bye.to_wire());
                            flush_last(conn, &mut out, write_limit).await?;
                            return Ok("login suspended".into());
                        }
                        let policy = Arc::clone(&ctx.shared.snapshot().policy);
                        // Nor a login the administrator took back: the
                        // user removed, its password changed, the auth
                        // mode no longer admitting it.
                        if let Some(login) = session.login()
                            && !session.login_still_granted(&policy)
                        {
                            let bye = Reply::new(
                                421,
                                "4.7.1",
                                format!(
                                    "{login} may no longer send with the login it used \
                                     (the user, its password or the auth mode changed)"
                                ),
                            );
                            out.extend_from_slice(&bye.to_wire());
                            flush_last(conn, &mut out, write_limit).await?;
                            return Ok("login revoked".into());
                        }
                        // A locked-out address is told so before it is
                        // asked for credentials.
                        session.set_auth_locked_out(ctx.shared.auth_locked_out(ip));
                        session.set_quotas_on(ctx.shared.abuse.quotas_on());
                        session.set_network_checks(NetworkChecks {
                            // Clients the allow list allows are exempt,
                            // as Postfix's permit_mynetworks comes first.
                            dnsbl: !settings.dnsbl.is_empty() && !policy.lists().allows(ip),
                            verify: settings.verify_recipients,
                        });
                        let secret = session.awaiting_auth_response();
                        let actions = session.handle_line(&line, &policy);
                        // A recipient still to be verified or counted has
                        // no reply yet: its line is recorded with it.
                        if actions.iter().any(|a| {
                            matches!(a, Action::ReserveQuota(_) | Action::CheckRecipient { .. })
                        }) {
                            unanswered = Some(line.to_vec());
                        } else {
                            record_command(ctx, board, id, &line, secret, &actions);
                        }
                        actions
                    }
                };
                pending.extend(actions);
            }
            while let Some(action) = pending.pop_front() {
                match action {
                    Action::Reply(r) => out.extend_from_slice(&r.to_wire()),
                    Action::StartData => framer.start_data(Instant::now()),
                    Action::ReserveQuota(rd) => {
                        let checked = reserve_quota(ctx, session, ip, &mut quota.holds, rd);
                        let more = session.recipient_checked(checked);
                        if let Some(line) = unanswered.take() {
                            record_command(ctx, board, id, &line, false, &more);
                        }
                        for a in more.into_iter().rev() {
                            pending.push_front(a);
                        }
                    }
                    Action::CheckRecipient {
                        decided: mut rd,
                        checks,
                    } => {
                        // What the client pipelined before waits no longer
                        // than the lookups do.
                        flush(conn, &mut out, write_limit).await?;
                        if checks.dnsbl {
                            board.stage("DNS blocklists");
                            // Once per session: the answer is the client's.
                            if blocklisted.is_none() {
                                let lookup = Box::pin(ctx.shared.dnsbl.check(
                                    &settings.dns_servers,
                                    &settings.dnsbl,
                                    ip,
                                ))
                                .await;
                                for (zone, trouble) in lookup.problems {
                                    ctx.shared.events.emit(Event::BlocklistUnusable {
                                        session: Some(id),
                                        zone,
                                        trouble,
                                    });
                                }
                                blocklisted = Some(lookup.listing);
                            }
                            if let Some(Some(listing)) = &blocklisted {
                                rd.decision = rd.decision.blocklisted(
                                    ip,
                                    listing.zone.clone(),
                                    listing.answer.to_string(),
                                );
                            }
                        }
                        if checks.verify && rd.decision.is_allowed() {
                            board.stage("verifying a recipient");
                            // Built once a session: it reads the CA file.
                            let config = verify_config.get_or_insert_with(|| {
                                crate::delivery::recipient_verify::VerifyConfig::from_settings(
                                    settings,
                                )
                            });
                            rd = Box::pin(verify_recipient(ctx, config, rd)).await;
                        }
                        let more = session.recipient_network_checked(rd);
                        if !more.iter().any(|a| matches!(a, Action::ReserveQuota(_)))
                            && let Some(line) = unanswered.take()
                        {
                            record_command(ctx, board, id, &line, false, &more);
                        }
                        for a in more.into_iter().rev() {
                            pending.push_front(a);
                        }
                    }
                    Action::RecipientDecided(rd) => {
                        if !rd.decision.is_allowed()
                            && !rd.decision.is_deferral()
                            && matches!(
                                rd.decision.class,
                                crate::policy::decision::RelayClass::Relay
                                    | crate::policy::decision::RelayClass::Outbound
                            )
                        {
                            offence(ctx, ip, settings, Offence::RelayDenied);
                        }
                        let tx_sender = session_sender(session);
                        ctx.shared.events.emit(Event::Decision {
                            session: id,
                            peer: ip,
                            login: session.login().map(str::to_string),
                            sender: crate::events::printable(&tx_sender),
                            recipient: crate::events::printable(&rd.recipient.to_string()),
                            decision: Box::new(rd.decision),
                        });
                    }
                    Action::VerifyAuth(req) => {
                        let login = req.login.clone();
                        let outcome = Box::pin(check_password(ctx, ip, settings, req)).await;
                        let more = session.auth_result(outcome);
                        // The dialogue shows the outcome, never the secret.
                        record_command(ctx, board, id, b"(credentials checked)", false, &more);
                        match outcome {
                            AuthOutcome::Accepted => ctx
                                .shared
                                .events
                                .emit(Event::Authenticated { session: id, login }),
                            AuthOutcome::Rejected => {
                                ctx.shared.events.emit(Event::AuthFailed {
                                    session: id,
                                    peer: ip,
                                    login: Some(crate::events::printable(&login)),
                                });
                                offence(ctx, ip, settings, Offence::AuthFailed);
                            }
                            AuthOutcome::Suspended => ctx.shared.events.emit(Event::AuthRefused {
                                session: id,
                                peer: ip,
                                busy: false,
                            }),
                            AuthOutcome::LockedOut | AuthOutcome::Busy => {
                                ctx.shared.events.emit(Event::AuthRefused {
                                    session: id,
                                    peer: ip,
                                    busy: outcome == AuthOutcome::Busy,
                                })
                            }
                        }
                        for a in more.into_iter().rev() {
                            pending.push_front(a);
                        }
                    }
                    Action::StartTls => {
                        flush(conn, &mut out, write_limit).await?;
                        // Bytes pipelined after STARTTLS are dropped, never
                        // read as commands inside TLS (CVE-2011-0411).
                        framer.discard();
                        let Some(acceptor) = ctx.shared.tls() else {
                            return Ok("TLS disappeared before the handshake".into());
                        };
                        let plain = std::mem::replace(conn, Conn::Gone);
                        match Box::pin(handshake(&acceptor, plain)).await {
                            Ok(tls) => {
                                *conn = tls;
                                session.tls_established();
                                ctx.shared
                                    .events
                                    .emit(Event::TlsEstablished { session: id });
                            }
                            Err(e) => return Ok(format!("STARTTLS handshake failed: {e}")),
                        }
                        framer.replied(Instant::now());
                        continue 'handle;
                    }
                    Action::Message(mut message) => {
                        flush(conn, &mut out, write_limit).await?;
                        // A spilled body gets its last part on disk too.
                        let mut spilled = spill.take();
                        if let Some(f) = &mut spilled
                            && spill_failed.is_none()
                        {
                            let tail = std::mem::take(&mut message.body);
                            if let Err(e) = async {
                                f.append(&tail).await?;
                                f.file.flush().await
                            }
                            .await
                            {
                                spill_failed = Some(not_stored(&e));
                                ctx.shared.events.emit(Event::Error {
                                    session: Some(id),
                                    message: format!("writing a message body to disk: {e}"),
                                });
                            }
                        }
                        let reply = if let Some(why) = spill_failed.take() {
                            session.message_stored(Err(why))
                        } else {
                            Box::pin(store_message(
                                ctx,
                                id,
                                settings,
                                session,
                                *message,
                                spilled.as_ref(),
                            ))
                            .await
                        };
                        drop(spilled);
                        if reply.code == 250 {
                            // The message is in: what it counted stays counted.
                            quota.holds = QuotaHolds::default();
                        }
                        out.extend_from_slice(&reply.to_wire());
                        let said = reply.to_string();
                        board.command(
                            "(end of message data)",
                            ReplyLine {
                                text: said.trim_end(),
                                ..Default::default()
                            },
                        );
                        if reply.code == 250 {
                            board.stage("accepted");
                        }
                        if ctx.shared.events.wants_commands() {
                            ctx.shared.events.emit(Event::Command {
                                session: id,
                                line: "(end of message data)".into(),
                                reply: said.trim_end().to_string(),
                            });
                        }
                    }
                    Action::Close(reason) => {
                        // Given back before the goodbye, so a client that
                        // has read it can count on the quota being free.
                        ctx.shared.abuse.release(std::mem::take(&mut quota.holds));
                        // Input left unread (a client pipelining past its
                        // errors): closing at once would answer it with a
                        // reset, and the client would lose the replies.
                        if reason == super::session::CloseReason::TooManyErrors
                            || !framer.pending().is_empty()
                        {
                            flush(conn, &mut out, write_limit).await?;
                            linger(conn).await;
                        } else {
                            flush_last(conn, &mut out, write_limit).await?;
                        }
                        return Ok(reason.to_string());
                    }
                }
            }
            // A transaction that ended without a message (RSET, refused
            // DATA) gives back what it counted.
            // (Even one that counted nothing: the next starts afresh.)
            if session.transaction().is_none() && quota.holds != QuotaHolds::default() {
                ctx.shared.abuse.release(std::mem::take(&mut quota.holds));
            }
            if session.transaction().is_some() != open_transaction.is_some() {
                open_transaction = session
                    .transaction()
                    .map(|_| ctx.shared.spool.transaction_opened());
            }
        }
        if !out.is_empty() {
            flush(conn, &mut out, write_limit).await?;
            framer.replied(Instant::now());
        }
        if session.is_closed() {
            return Ok("closed".into());
        }
        // The state as it is now, not only its changes: a session that
        // finished its message while draining, or that started after the
        // drain began, is idle and must not wait for the grace period.
        if must_close(*state.borrow_and_update(), session.in_data()) {
            return shutting_down(conn, &mut out, settings).await;
        }
        let (deadline, which) = framer.deadline();
        tokio::select! {
            read = tokio::time::timeout_at(deadline.into(), conn.read_buf(framer.buffer())) => match read {
                Err(_) => {
                    out.extend_from_slice(&session.timeout_reply().to_wire());
                    flush(conn, &mut out, write_limit).await?;
                    return Ok(which.describe().into());
                }
                Ok(Ok(0)) => return Ok("client disconnected".into()),
                Ok(Ok(n)) => {
                    board.received(n);
                    framer.received(n, Instant::now());
                }
                Ok(Err(e)) => return Err(e),
            },
            changed = state.changed() => {
                let now = if changed.is_ok() { *state.borrow() } else { RunState::Aborting };
                if must_close(now, session.in_data()) {
                    return shutting_down(conn, &mut out, settings).await;
                }
            }
        }
    }
}

/// The framer's limits from the engine settings.
pub fn timeouts_from(settings: &ServerSettings) -> Timeouts {
    Timeouts {
        command: Duration::from_secs(settings.command_timeout_secs),
        data_line: Duration::from_secs(settings.data_timeout_secs),
        min_data_rate: settings.min_data_rate,
    }
}

/// Judges a password on the engine's checkers, if this address may make
/// one more guess now: the guess is reserved before it is judged, so
/// parallel sessions share the address's `auth-max-failures`.
async fn check_password(
    ctx: &ConnectionContext,
    ip: std::net::IpAddr,
    settings: &ServerSettings,
    req: super::session::AuthRequest,
) -> AuthOutcome {
    // Every guess, cached or not, takes one of the address's guesses
    // first: the cache must never be a way to try passwords for free.
    let ticket = match ctx.shared.reserve_auth(ip, settings) {
        Ok(t) => t,
        Err(crate::engine::AuthRefusal::LockedOut) => return AuthOutcome::LockedOut,
        Err(crate::engine::AuthRefusal::Busy) => return AuthOutcome::Busy,
    };
    let req_login = req.login.clone();
    // A right password verified a moment ago is not verified again.
    if let Some(hash) = &req.password_hash
        && ctx.shared.logins.hit(&req.login, &req.password, hash)
    {
        ticket.judged(true, settings);
        ctx.shared
            .logins
            .known_address(crate::engine::client_key(ip));
        if is_suspended(ctx, &req_login) {
            return AuthOutcome::Suspended;
        }
        return AuthOutcome::Accepted;
    }
    let remember = req
        .password_hash
        .clone()
        .map(|hash| (req.login.clone(), req.password.clone(), hash));
    // The office and addresses a login succeeded from go first: a flood of
    // guesses from elsewhere cannot keep them waiting.
    let client = crate::engine::client_key(ip);
    let lane = if ctx.shared.logins.is_known_address(client)
        || ctx.shared.snapshot().policy.lists().allows(ip)
    {
        crate::credentials::Lane::Known
    } else {
        crate::credentials::Lane::Other
    };
    let Ok(answer) = ctx
        .shared
        .passwords
        .submit(lane, req.password_hash, req.password)
    else {
        return AuthOutcome::Busy;
    };
    let ok = answer.await.unwrap_or(false);
    ticket.judged(ok, settings);
    if ok && let Some((login, password, hash)) = remember {
        ctx.shared.logins.remember(&login, &password, &hash);
        ctx.shared.logins.known_address(client);
    }
    if ok && is_suspended(ctx, &req_login) {
        return AuthOutcome::Suspended;
    }
    ok.into()
}

/// A right password for a suspended login is still refused.
/// Checked before every command of a logged-in session: without any
/// suspension (almost always) it is a snapshot read and an atomic load.
fn is_suspended(ctx: &ConnectionContext, login: &str) -> bool {
    let snapshot = ctx.shared.snapshot();
    (!snapshot.suspended.is_empty() && snapshot.suspended.contains(&login.to_ascii_lowercase()))
        || ctx.shared.abuse.suspended_here(login)
}

/// Gives back, when a session ends, what its unfinished transaction
/// counted against the quotas.
struct QuotaHold<'a> {
    abuse: &'a crate::abuse::AbuseGuard,
    holds: QuotaHolds,
}

impl Drop for QuotaHold<'_> {
    fn drop(&mut self) {
        self.abuse.release(std::mem::take(&mut self.holds));
    }
}

/// Asks the route of a local recipient's domain whether it knows the
/// recipient (`verify-recipients`).
async fn verify_recipient(
    ctx: &ConnectionContext,
    config: &crate::delivery::recipient_verify::VerifyConfig,
    mut rd: RecipientDecision,
) -> RecipientDecision {
    let snapshot = ctx.shared.snapshot();
    if let Some(finding) = ctx
        .shared
        .verifier
        .verify_local(config, &snapshot.routes, &rd.recipient)
        .await
    {
        rd.decision = rd.decision.verified(finding);
    }
    rd
}

/// Counts an allowed recipient against the sending quotas; past one, the
/// recipient is deferred (452 4.7.1) with the quota named, and a quota
/// that suspends suspends the login.
fn reserve_quota(
    ctx: &ConnectionContext,
    session: &Session,
    ip: std::net::IpAddr,
    holds: &mut QuotaHolds,
    rd: RecipientDecision,
) -> RecipientDecision {
    let t = session.transaction();
    // Counted in its DNS form: the two spellings of an international
    // domain are one sender domain.
    let domain = t
        .and_then(|t| t.sender.as_ref())
        .and_then(|s| s.domain_name())
        .map(crate::policy::address::dns_form);
    let sender = crate::abuse::quota::Sender {
        login: session.login(),
        ip,
        domain: domain.as_deref(),
    };
    let refusal = match ctx
        .shared
        .abuse
        .reserve(&sender, holds, crate::abuse::now_ms())
    {
        Ok(()) => return rd,
        Err(r) => r,
    };
    let already = |login: &str| ctx.shared.snapshot().suspended.contains(login);
    let suspended = match (&refusal.suspend, &refusal.newly_suspended) {
        (Some(login), true) if !already(login) => {
            ctx.shared.events.emit(Event::LoginSuspended {
                login: login.clone(),
                why: format!("quota {} reached", refusal.quota),
            });
            true
        }
        (Some(_), _) => true,
        (None, _) => false,
    };
    let q = &refusal.quota;
    let text = format!(
        "Sending quota reached for {}: at most {} {} per {}; try again later",
        refusal.key.shown(),
        q.rate.count,
        q.unit.as_str(),
        crate::abuse::rate::period_text(q.rate.period_secs)
    );
    let reason = crate::policy::decision::Reason::QuotaReached {
        quota: q.to_string(),
        key: refusal.key.shown(),
        suspended,
    };
    RecipientDecision {
        recipient: rd.recipient,
        decision: rd.decision.deferred(text, reason),
        dsn: rd.dsn,
    }
}

/// What a client did that counts towards a ban.
#[derive(Debug, Clone, Copy)]
enum Offence {
    AuthFailed,
    RelayDenied,
}

/// Counts an offence; a ban it causes is announced (the session itself is
/// closed at its next command).
fn offence(
    ctx: &ConnectionContext,
    ip: std::net::IpAddr,
    settings: &ServerSettings,
    what: Offence,
) {
    let rules = settings.ban_rules();
    let wanted = match what {
        Offence::AuthFailed => rules.auth_failures,
        Offence::RelayDenied => rules.relay_denials,
    };
    if wanted == 0 {
        return;
    }
    let listed = !rules.listed_too && ctx.shared.snapshot().policy.lists().allows(ip);
    let now = crate::abuse::now_ms();
    let ban = match what {
        Offence::AuthFailed => ctx.shared.abuse.auth_failed(ip, listed, &rules, now),
        Offence::RelayDenied => ctx.shared.abuse.relay_denied(ip, listed, &rules, now),
    };
    if let Some(ban) = ban {
        ctx.shared.events.emit(Event::ClientBanned {
            peer: ip,
            net: ban.net.to_string(),
            until_ms: ban.until,
            strikes: ban.strikes,
            reason: ban.reason.to_string(),
        });
    }
}

/// How long a load balancer has to send its PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the PROXY header of a connection to a PROXY binding: from a
/// trusted proxy only, whole within [`PROXY_HEADER_TIMEOUT`]. Returns it
/// and the bytes read past it; or why the connection is closed (without
/// a greeting).
async fn proxy_header(
    ctx: &ConnectionContext,
    trusted: &[ipnet::IpNet],
    stream: &mut TcpStream,
) -> Result<(ProxyHeader, Vec<u8>), String> {
    let from = crate::policy::ip_pattern::effective_ip(ctx.peer.ip());
    if !trusted.iter().any(|n| n.contains(&from)) {
        return Err(format!(
            "{from} is not a trusted proxy of {} (it requires the PROXY protocol)",
            ctx.binding
        ));
    }
    let mut buf: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + PROXY_HEADER_TIMEOUT;
    loop {
        match proxy_header::parse(&buf) {
            ProxyParse::Done { header, consumed } => {
                return Ok((header, buf.split_off(consumed)));
            }
            ProxyParse::Refused(why) => return Err(why),
            ProxyParse::Incomplete => {}
        }
        let mut chunk = [0u8; 512];
        let want = (proxy_header::V2_MAX + 1)
            .saturating_sub(buf.len())
            .clamp(1, chunk.len());
        // The proxy sends the header with the connection: it is usually
        // there already, and one recv takes it without waiting for the
        // reactor to say so (a wake-up less per connection).
        if buf.is_empty() {
            use std::io::Read;
            match (&*socket2::SockRef::from(&*stream)).read(&mut chunk[..want]) {
                Ok(0) => return Err("the proxy closed before a whole PROXY header".into()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("reading the PROXY header: {e}")),
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..want])).await {
            Err(_) => {
                return Err(format!(
                    "no whole PROXY header within {} s",
                    PROXY_HEADER_TIMEOUT.as_secs()
                ));
            }
            Ok(Ok(0)) => return Err("the proxy closed before a whole PROXY header".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("reading the PROXY header: {e}")),
        }
    }
}

/// 554 5.7.1 with why and until when.
fn ban_reply(ban: &crate::abuse::bans::Ban) -> Reply {
    Reply::new(
        554,
        "5.7.1",
        format!(
            "Your address is banned until {} ({})",
            crate::events::utc_text(ban.until),
            ban.reason
        ),
    )
}

/// Draining closes idle sessions; aborting closes every one.
fn must_close(state: RunState, in_data: bool) -> bool {
    state == RunState::Aborting || (state == RunState::Draining && !in_data)
}

async fn shutting_down(
    conn: &mut Conn,
    out: &mut Vec<u8>,
    settings: &ServerSettings,
) -> io::Result<String> {
    out.extend_from_slice(&Reply::shutting_down(&settings.hostname).to_wire());
    flush(
        conn,
        out,
        Duration::from_secs(settings.command_timeout_secs),
    )
    .await?;
    Ok("engine shutting down".into())
}

/// Writes the session's last replies: on plain TCP with MSG_MORE, so the
/// kernel holds them for the FIN that closing the socket sends next, and
/// they go out in one segment (one wake-up of the client, not two).
/// How long, and how much, a closing session reads and drops what the
/// client still sends, after its half-close (see [`linger`]).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Half-closes (the client sees the end after every reply) and reads what
/// the client still sends, for a moment, so that the close is not a reset
/// that would throw away the replies it has not read yet.
async fn linger(conn: &mut Conn) {
    let _ = tokio::time::timeout(LINGER, conn.shutdown()).await;
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut buf = vec![0u8; 16 * 1024];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => break,
        }
    }
}

async fn flush_last(conn: &mut Conn, out: &mut Vec<u8>, within: Duration) -> io::Result<()> {
    if let Conn::Plain(tcp) = conn
        && !out.is_empty()
    {
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            socket2::SockRef::from(&*tcp).send_with_flags(out, libc::MSG_MORE | libc::MSG_NOSIGNAL)
        });
        if let Ok(n) = sent {
            out.drain(..n.min(out.len()));
        }
    }
    flush(conn, out, within).await
}

/// Writes the pending replies. A client that stops reading is as idle as
/// one that stops writing: after `within` it is dropped, or it would hold
/// its session (and its place under the limits) for ever.
async fn flush(conn: &mut Conn, out: &mut Vec<u8>, within: Duration) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        conn.write_all(out).await?;
        conn.flush().await
    };
    match tokio::time::timeout(within, write).await {
        Ok(written) => written?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read its replies",
            ));
        }
    }
    out.clear();
    Ok(())
}

/// The sender of the transaction in progress, for events.
fn session_sender(session: &Session) -> String {
    session
        .transaction()
        .and_then(|t| t.sender.as_ref().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Records the command and its reply on the session's board, and emits
/// it while a console follows a dialogue. AUTH payloads are never kept.
/// One word of base64 that no SMTP verb looks like (8 characters or
/// more, with a lower-case letter, a digit or `+/=`): what a client sends
/// as its credentials.
fn looks_like_credential(text: &str) -> bool {
    let word = text.trim();
    word.len() >= 8
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
        && word
            .bytes()
            .any(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+/=".contains(&b))
}

fn record_command(
    ctx: &ConnectionContext,
    board: &Board,
    id: u64,
    line: &[u8],
    secret: bool,
    actions: &[Action],
) {
    // The reply's last line only (EHLO's is long): code, status, text.
    let reply = actions
        .iter()
        .find_map(|a| match a {
            Action::Reply(r) => Some(ReplyLine {
                code: Some(r.code),
                status: r.status,
                text: r.lines.last().map(|l| l.as_ref()).unwrap_or_default(),
            }),
            _ => None,
        })
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&line[..line.len().min(LINE_CHARS)]);
    let mut words = text.split_whitespace();
    // Whatever the blanks around it (the parser accepts leading ones and
    // tabs), an AUTH line's initial response is a credential.
    let shown: std::borrow::Cow<str> = if secret {
        "*** (AUTH response)".into()
    } else if words.next().is_some_and(|v| v.eq_ignore_ascii_case("AUTH")) {
        let mech: String = words.next().unwrap_or_default().chars().take(20).collect();
        format!("AUTH {mech} ***").into()
    } else if looks_like_credential(&text) {
        // A client that went on with an AUTH exchange the server had
        // refused (503): its next line is a credential, not a command.
        "*** (looks like a credential)".into()
    } else if crate::events::has_control(&text) {
        text.chars()
            .filter(|c| !c.is_control())
            .collect::<String>()
            .into()
    } else {
        text
    };
    board.command(&shown, reply);
    if ctx.shared.events.wants_commands() {
        ctx.shared.events.emit(Event::Command {
            session: id,
            line: shown.into_owned(),
            reply: reply.to_string(),
        });
    }
}

/// Adds the Received: header, stores the message durably, and returns the
/// reply the client may now hear (250 only once the spool has it).
async fn store_message(
    ctx: &ConnectionContext,
    id: u64,
    settings: &ServerSettings,
    session: &mut Session,
    message: Message,
    spilled: Option<&SpillFile>,
) -> Reply {
    let t = &message.transaction;
    let queue_id = ctx.shared.spool.next_id();
    let first_rcpt = t.recipients.first().map(|r| r.recipient.to_string());
    let header = received_header(&TraceInfo {
        helo: &t.helo,
        peer: t.peer,
        hostname: &settings.hostname,
        esmtp: t.esmtp,
        tls: t.tls,
        authenticated: t.login.is_some(),
        queue_id: &queue_id,
        single_recipient: if t.recipients.len() == 1 {
            first_rcpt.as_deref()
        } else {
            None
        },
        at: SystemTime::now(),
    });
    let mut body = Vec::with_capacity(header.len() + message.body.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&message.body);
    let postmaster = settings
        .postmaster_address
        .clone()
        .or_else(|| t.policy.default_postmaster());
    let recipients: Vec<SpoolRecipient> = t
        .recipients
        .iter()
        .map(|r| SpoolRecipient {
            // The bare <postmaster> (RFC 5321 4.5.1) is a real mailbox here,
            // delivered like any local mail.
            address: match (&r.recipient.domain, &postmaster) {
                (crate::policy::address::Domain::Postmaster, Some(p)) => p.clone(),
                _ => r.recipient.to_string(),
            },
            class: r.decision.class.to_string(),
            reason: r.decision.to_string(),
            dsn: r.dsn.clone(),
        })
        .collect();
    let count = recipients.len();
    let new = NewMessage {
        id: queue_id.clone(),
        sender: t.sender.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        recipients,
        login: t.login.clone(),
        peer: t.peer.to_string(),
        // By the policy that decided its recipients (taken at MAIL).
        client_listed: Some(t.policy.lists().allows(t.peer)),
        helo: t.helo.clone(),
        body,
        smtputf8: t.smtputf8,
        dsn: t.dsn.clone(),
        spilled: spilled.map(|s| crate::spool::Spilled {
            path: s.path.clone(),
            len: s.len,
        }),
    };
    let size = new.size() as usize;
    let rcpt_addresses: Vec<String> = new.recipients.iter().map(|r| r.address.clone()).collect();
    // A small message goes to delivery with its body, so that delivery
    // need not read it back from the spool (bounded: see HANDED_*).
    let queue = &ctx.shared.delivery_queue;
    let handed = (new.spilled.is_none()
        && new.body.len() <= HANDED_BODY_MAX
        && queue.max_capacity() - queue.capacity() < HANDED_WAITING_MAX)
        .then(|| {
            Arc::new(StoredMessage {
                id: queue_id.clone(),
                received_at: SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
                message: new.clone(),
            })
        });
    let spilled = new.spilled.as_ref().map_or(0, |s| s.len);
    let result = ctx.shared.spool.store(new).await;
    match &result {
        Ok(()) => {
            // Written twice (the write-ahead log, then the database), less
            // a spilled part (counted as it came, its file now gone): off
            // the free figure until the next measurement says what is left.
            let written = (size as u64).saturating_mul(2).saturating_sub(spilled);
            ctx.shared.spool_space.consume(written);
            // Full: the spool scan will find it within a second.
            let _ = queue.try_send(NewWork {
                id: queue_id.clone(),
                recipients: rcpt_addresses,
                message: handed,
            });
            ctx.shared.events.emit(Event::MessageAccepted {
                session: id,
                id: queue_id.clone(),
                size,
                recipients: count,
            })
        }
        Err(e) => ctx.shared.events.emit(Event::Error {
            session: Some(id),
            message: format!("spooling {queue_id} failed: {e}"),
        }),
    }
    session.message_stored(result.map(|()| queue_id).map_err(|e| match e {
        crate::spool::SpoolError::Full(_) => NotStored::NoSpace,
        _ => NotStored::Failed,
    }))
}

#[cfg(test)]
mod tests {
    use super::looks_like_credential;

    #[test]
    fn credentials_are_told_from_verbs() {
        for secret in [
            "dXNlcgBwYXNz",
            "AGFsaWNlAHB3",
            "cGFzc3dvcmQ=",
            "  Ym9iQGV4YW1wbGU= ",
        ] {
            assert!(looks_like_credential(secret), "{secret}");
        }
        for line in [
            "STARTTLS",
            "NOOP",
            "QUIT",
            "MAIL FROM:<a@b>",
            "RCPT TO:<x@y>",
            "hello",
        ] {
            assert!(!looks_like_credential(line), "{line}");
        }
    }
}
