//! relaygate: an SMTP relay gateway that is never an open relay.
#![forbid(unsafe_code)]

pub mod policy;
