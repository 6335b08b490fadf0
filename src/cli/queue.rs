//! `relaygate queue show|retry|delete|hold|release`: the spool, seen and
//! steered from another process; the running engine notices within a
//! quarter of a second (it reads the queue on every tick).

use crate::delivery::scheduler::bounce_for_deleted;
use crate::spool::{Spool, SpoolOp, SpoolReader, spool_path_for};
use crate::store::Store;
use anyhow::Context;
use clap::Subcommand;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Every queued message: id, age, sender, recipients with state, next
    /// attempt, last error.
    Show,
    /// Attempt delivery now: one message, or `all`.
    Retry {
        #[arg(value_name = "ID|all")]
        id: String,
    },
    /// Remove a message; with --bounce its sender is told, else silently.
    Delete {
        id: String,
        #[arg(long)]
        bounce: bool,
    },
    /// Keep a message from being delivered until it is released.
    Hold { id: String },
    /// Let a held message be delivered again.
    Release { id: String },
}

/// Holds or releases one message.
fn set_held(
    path: &std::path::Path,
    id: &str,
    held: bool,
    need: impl Fn(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    need(id)?;
    Spool::open(path)?.apply_blocking(SpoolOp::Hold {
        message_id: id.to_string(),
        held,
    })?;
    println!("{id} {}", if held { "held" } else { "released" });
    Ok(())
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub fn run(store: &mut Store, cmd: QueueCommand) -> anyhow::Result<ExitCode> {
    let path = spool_path_for(store.path());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let reader = SpoolReader::open(&path)
        .with_context(|| format!("opening the spool {}", path.display()))?;
    let need = |id: &str| -> anyhow::Result<()> {
        if reader.message(id)?.is_none() {
            anyhow::bail!("no message {id} in the queue");
        }
        Ok(())
    };
    match cmd {
        QueueCommand::Show => {
            let entries = reader.listing()?;
            if entries.is_empty() {
                println!("the queue is empty");
            }
            let in_flight = in_flight_now(store.path());
            for e in entries {
                let sender = if e.sender.is_empty() {
                    "<>".to_string()
                } else {
                    format!("<{}>", e.sender)
                };
                let flying = in_flight
                    .iter()
                    .find(|a| a.message_id == e.id)
                    .map(|a| crate::console::panels::queue::in_flight_text(a, now))
                    .unwrap_or_default();
                println!(
                    "{}  age {}  {} bytes  from {sender}{}{flying}",
                    e.id,
                    age(now - e.received_at),
                    e.size,
                    if e.held { "  HELD" } else { "" }
                );
                for r in e.recipients {
                    let when = if r.state != "queued" {
                        String::new()
                    } else if r.next_attempt <= now {
                        "  next attempt now".to_string()
                    } else {
                        format!("  next attempt in {}", age(r.next_attempt - now))
                    };
                    let error = r
                        .last_error
                        .map(|e| format!("\n      last error: {e}"))
                        .unwrap_or_default();
                    println!(
                        "    <{}>  {}  {} attempts{when}{error}",
                        r.address, r.state, r.attempts
                    );
                }
            }
        }
        QueueCommand::Retry { id } => {
            let spool = Spool::open(&path)?;
            let target = if id == "all" {
                None
            } else {
                need(&id)?;
                Some(id.clone())
            };
            let n = spool.apply_blocking(SpoolOp::RetryNow { message_id: target })?;
            println!("{n} recipients due now");
        }
        QueueCommand::Hold { id } => set_held(&path, &id, true, need)?,
        QueueCommand::Release { id } => set_held(&path, &id, false, need)?,
        QueueCommand::Delete { id, bounce } => {
            let Some(message) = reader.message(&id)? else {
                anyhow::bail!("no message {id} in the queue");
            };
            let bounce = if bounce {
                bounce_for_deleted(&store.server_settings()?, &reader, &message)?
            } else {
                None
            };
            let bounced = bounce.as_ref().map(|b| b.id.clone());
            Spool::open(&path)?.apply_blocking(SpoolOp::Delete {
                message_id: id.clone(),
                bounce,
            })?;
            match bounced {
                Some(b) => println!(
                    "{id} deleted; bounce {b} queued to <{}>",
                    message.message.sender
                ),
                None => println!("{id} deleted"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The running engine's delivery attempts under way, if an engine runs on
/// this database and lets us ask; otherwise none.
fn in_flight_now(db: &std::path::Path) -> Vec<crate::delivery::InFlightAttempt> {
    let dir = crate::data_dir::DataDir::for_db(db);
    if dir.running_engine().is_none() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    runtime
        .block_on(crate::control::client::fetch_status(db, &dir.socket))
        .map(|s| s.in_flight)
        .unwrap_or_default()
}
