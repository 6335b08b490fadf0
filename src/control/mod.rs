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
