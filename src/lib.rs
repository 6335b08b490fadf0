//! relaygate: an SMTP relay gateway that is never an open relay.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod answer_memory;
pub mod bindings;
pub mod cli;
pub mod config_file;
pub mod console;
pub mod control;
pub mod credentials;
pub mod data_dir;
pub mod decision_log;
pub mod delivery;
pub mod dkim;
pub mod engine;
pub mod events;
pub mod live;
pub mod metrics;
pub mod net_text;
pub mod policy;
pub mod policy_check;
pub mod queue_admin;
pub mod server_settings;
pub mod session_board;
pub mod smtp;
pub mod spool;
pub mod spool_space;
pub mod store;
pub mod tls;
pub mod trace;
