//! The console's end of the control socket: connect, check the hello,
//! follow the engine's messages, and reconnect when the engine comes back.

use super::protocol::{
    self, Access, ClientMessage, MAX_LINE, PROTOCOL_VERSION, ProtocolError, ServerMessage, encode,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Why a console could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "no relaygate engine is running on {db} (nothing listens on {socket}); start it with `relaygate serve --headless` or the systemd service, or run `relaygate` for the engine and the console in one process"
    )]
    NotRunning { db: PathBuf, socket: PathBuf },
    #[error("cannot open the control socket {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the engine closed the connection before saying hello")]
    Closed,
}

/// What the engine said in its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHello {
    pub engine: String,
    pub pid: u32,
    pub access: Access,
}

/// An open, greeted connection.
pub struct Attached {
    pub hello: EngineHello,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// What the follower reports.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    Attached(EngineHello),
    Message(ServerMessage),
    /// The engine went away, or is up and refused us (`refused`: the
    /// console group changed, too many consoles...); reconnecting.
    Detached {
        reason: String,
        refused: bool,
    },
}

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = reader
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(line))
}

/// Connects to the engine whose socket is `socket`, reads its hello and
/// answers with ours: a console attaches.
pub async fn connect(db: &Path, socket: &Path) -> Result<Attached, AttachError> {
    greet(
        db,
        socket,
        ClientMessage::Hello {
            protocol: PROTOCOL_VERSION,
        },
    )
    .await
}

/// Connects, reads the engine's hello and answers with `first` (a
/// console's hello, or a one-shot question).
async fn greet(db: &Path, socket: &Path, first: ClientMessage) -> Result<Attached, AttachError> {
    let address = super::SocketAddress::of(socket).map_err(|source| AttachError::Io {
        socket: socket.to_path_buf(),
        source,
    })?;
    let stream = match UnixStream::connect(address.path()).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(AttachError::NotRunning {
                db: db.to_path_buf(),
                socket: socket.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(AttachError::Io {
                socket: socket.to_path_buf(),
                source,
            });
        }
    };
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    let io = |source| AttachError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let hello = tokio::time::timeout(Duration::from_secs(10), read_line(&mut reader))
        .await
        .map_err(|_| AttachError::Closed)?
        .map_err(io)?
        .ok_or(AttachError::Closed)?;
    let (engine, pid, access) = protocol::check_hello(&hello)?;
    writer.write_all(&encode(&first)).await.map_err(io)?;
    Ok(Attached {
        hello: EngineHello {
            engine,
            pid,
            access,
        },
        reader,
        writer,
    })
}

/// The running engine's status (listeners, attempts under way), asked on
/// its control socket; for one-shot commands like `queue show`.
pub async fn fetch_status(
    db: &Path,
    socket: &Path,
) -> Result<super::protocol::EngineStatus, AttachError> {
    let question = ClientMessage::AskStatus {
        protocol: PROTOCOL_VERSION,
    };
    let mut attached = greet(db, socket, question).await?;
    let wait = async {
        loop {
            let line = read_line(&mut attached.reader)
                .await
                .map_err(|source| AttachError::Io {
                    socket: socket.to_path_buf(),
                    source,
                })?
                .ok_or(AttachError::Closed)?;
            match protocol::decode_server(&line)? {
                ServerMessage::Status { status } => return Ok(status),
                ServerMessage::Error { message } => {
                    return Err(ProtocolError::Refused(message).into());
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .map_err(|_| AttachError::Closed)?
}

/// Follows the engine: every message goes to `emit` (which returns false
/// to stop); requests are written as they come. When the engine goes away
/// the follower says so and reconnects, once a second, for as long as
/// `emit` wants.
pub async fn follow(
    db: PathBuf,
    socket: PathBuf,
    first: Attached,
    mut requests: mpsc::UnboundedReceiver<ClientMessage>,
    mut emit: impl FnMut(ClientEvent) -> bool + Send,
) {
    let mut current = Some(first);
    loop {
        let Some(Attached {
            hello,
            mut reader,
            mut writer,
        }) = current.take()
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match connect(&db, &socket).await {
                Ok(a) => current = Some(a),
                Err(AttachError::NotRunning { .. }) => {}
                Err(e) => {
                    // Up, but it would not take us (or its socket is not
                    // ours to open); a close before its hello is a stop.
                    let refused = !matches!(e, AttachError::Closed);
                    let reason = e.to_string();
                    if !emit(ClientEvent::Detached { reason, refused }) {
                        return;
                    }
                }
            }
            continue;
        };
        if !emit(ClientEvent::Attached(hello)) {
            return;
        }
        // Lines are read on their own task so that a select never cuts one.
        let (lines_tx, mut lines) = mpsc::channel::<std::io::Result<Option<Vec<u8>>>>(1024);
        let line_reader = tokio::spawn(async move {
            loop {
                let line = read_line(&mut reader).await;
                let end = !matches!(line, Ok(Some(_)));
                if lines_tx.send(line).await.is_err() || end {
                    return;
                }
            }
        });
        // The engine's last word, if it sent us away with an error.
        let mut refused = false;
        let reason = loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(Ok(Some(line))) => match protocol::decode_server(&line) {
                        Ok(message) => {
                            refused = matches!(message, ServerMessage::Error { .. });
                            if !emit(ClientEvent::Message(message)) {
                                line_reader.abort();
                                return;
                            }
                        }
                        Err(e) => break e.to_string(),
                    },
                    Some(Ok(None)) | None => break "the engine closed the connection".to_string(),
                    Some(Err(e)) => break e.to_string(),
                },
                request = requests.recv() => match request {
                    Some(r) => {
                        if let Err(e) = writer.write_all(&encode(&r)).await {
                            break e.to_string();
                        }
                    }
                    None => {
                        line_reader.abort();
                        return;
                    }
                },
            }
        };
        line_reader.abort();
        if !emit(ClientEvent::Detached { reason, refused }) {
            return;
        }
    }
}
