//! The SMTP protocol without I/O: command parsing, replies, the DATA
//! reader and the session state machine. The tokio server only moves bytes
//! between a socket and [`session::Session`].
//!
//! Hand-written rather than on the `smtp-proto` crate: that parser checks
//! addresses and known parameters itself and reports its own error kinds,
//! while relaygate needs its own address parser (`policy::address`) and
//! an exact, tested reply (code and enhanced status) for every error.

pub mod command;
pub mod data;
pub mod dsn_params;
pub mod framer;
pub mod proxy_header;
pub mod reply;
pub mod server;
pub mod session;
pub mod trace_header;

pub use command::{Command, CommandError, Param, parse_command};
pub use data::{BareLineEnding, DataEnd, DataReader};
pub use reply::Reply;
pub use session::{
    Action, AuthRequest, BodyType, DataProgress, Limits, Message, RecipientDecision, Session,
    SessionParams, Transaction,
};
