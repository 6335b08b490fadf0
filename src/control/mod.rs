//! The control socket: how a console attaches to a running engine.
//!
//! [`feed`] keeps the engine's live picture and fans its events out;
//! [`server`] serves them on a Unix socket to checked peers; [`client`] is
//! the console's end; [`protocol`] is what crosses the socket.

pub mod access;
pub mod client;
pub mod feed;
pub mod protocol;
pub mod server;

/// A Unix socket's path as `bind` and `connect` can take it. A path
/// longer than `sun_path` (108 bytes with its NUL) is reached through its
/// directory, open for the call, as `/proc/self/fd/N/NAME`: the socket
/// stays beside the database however deep that is.
pub struct SocketAddress {
    path: std::path::PathBuf,
    /// The directory `path` goes through, open while it is used.
    _dir: Option<std::fs::File>,
}

/// Room in `sockaddr_un.sun_path`, the terminating NUL excluded.
const SUN_PATH_ROOM: usize = 107;

impl SocketAddress {
    pub fn of(socket: &std::path::Path) -> std::io::Result<SocketAddress> {
        use std::os::unix::ffi::OsStrExt;
        if socket.as_os_str().as_bytes().len() <= SUN_PATH_ROOM {
            return Ok(SocketAddress {
                path: socket.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket path has no directory",
            ));
        };
        let dir = std::fs::File::open(parent)?;
        use std::os::fd::AsRawFd;
        let path = std::path::Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        if path.as_os_str().as_bytes().len() > SUN_PATH_ROOM {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket file name longer than a Unix socket's path",
            ));
        }
        Ok(SocketAddress {
            path,
            _dir: Some(dir),
        })
    }

    /// The path to hand `bind` or `connect`, valid while `self` lives.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
