//! relaygate: an SMTP relay gateway that is never an open relay.
#![forbid(unsafe_code)]

pub mod bindings;
pub mod cli;
pub mod credentials;
pub mod policy;
pub mod smtp;
pub mod store;
