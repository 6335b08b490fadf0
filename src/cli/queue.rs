//! `relaygate queue show|retry|delete|hold|release`: the spool, seen and
//! steered from another process; the running engine notices within a
//! quarter of a second (it reads the queue on every tick).

use crate::delivery::scheduler::bounce_for_deleted;
use crate::spool::{QueueEntry, Spool, SpoolOp, SpoolReader, spool_path_for};
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
    /// Attempt delivery now: one message, `all`, or those the filters match.
    Retry {
        #[arg(value_name = "ID|all")]
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Remove messages (one, or those the filters match); with --bounce
    /// their senders are told, else silently.
    Delete {
        id: Option<String>,
        #[arg(long)]
        bounce: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Keep messages (one, or those the filters match) from being delivered
    /// until they are released.
    Hold {
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Let held messages (one, or those the filters match) be delivered
    /// again.
    Release {
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
}

/// Which queued messages a bulk action takes; all given must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Text in the sender, a recipient or a recipient's last error (any case).
    #[arg(long = "match", value_name = "TEXT")]
    pub text: Option<String>,
    /// A recipient in this domain.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Received at least this long ago: 90m, 12h, 2d.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.text.is_none() && self.domain.is_none() && self.older_than.is_none()
    }

    /// Whether `e` is taken, at `now` (seconds).
    fn takes(&self, e: &QueueEntry, now: i64, older_than: Option<i64>) -> bool {
        if older_than.is_some_and(|age| now - e.received_at < age) {
            return false;
        }
        if let Some(d) = &self.domain {
            let d = d.trim().trim_start_matches('@').to_lowercase();
            let in_domain = e.recipients.iter().any(|r| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, rd)| rd.eq_ignore_ascii_case(&d))
            });
            if !in_domain {
                return false;
            }
        }
        if let Some(t) = &self.text {
            let t = t.to_lowercase();
            let hit = e.sender.to_lowercase().contains(&t)
                || e.recipients.iter().any(|r| {
                    r.address.to_lowercase().contains(&t)
                        || r.last_error
                            .as_deref()
                            .is_some_and(|x| x.to_lowercase().contains(&t))
                });
            if !hit {
                return false;
            }
        }
        true
    }
}

/// `90m`, `12h`, `2d`, `45s` as seconds.
fn age_secs(text: &str) -> anyhow::Result<i64> {
    let t = text.trim();
    let bad = || anyhow::anyhow!("--older-than {text:?}: give an age like 90m, 12h or 2d");
    let unit = t.chars().last().ok_or_else(bad)?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    if n < 0 {
        return Err(bad());
    }
    Ok(n.saturating_mul(mult))
}

/// The messages an action takes: the one named, or every one the filters
/// match (never both, never neither).
fn targets(
    reader: &SpoolReader,
    id: Option<&str>,
    filter: &Filter,
    now: i64,
) -> anyhow::Result<Vec<QueueEntry>> {
    match (id, filter.is_empty()) {
        (Some(_), false) => {
            anyhow::bail!("give a queue id or filters (--match, --domain, --older-than), not both")
        }
        (None, true) => {
            anyhow::bail!("give a queue id, or filters (--match, --domain, --older-than)")
        }
        (Some(id), true) => match reader.entry(id)? {
            Some(e) => Ok(vec![e]),
            None => anyhow::bail!("no message {id} in the queue"),
        },
        (None, false) => {
            let older = filter.older_than.as_deref().map(age_secs).transpose()?;
            Ok(reader
                .listing()?
                .into_iter()
                .filter(|e| filter.takes(e, now, older))
                .collect())
        }
    }
}

/// "1 message" / "3 messages".
fn messages(n: usize) -> String {
    if n == 1 {
        "1 message".into()
    } else {
        format!("{n} messages")
    }
}

/// Holds or releases messages, all in one transaction.
fn set_held(
    path: &std::path::Path,
    reader: &SpoolReader,
    id: Option<String>,
    filter: &Filter,
    now: i64,
    held: bool,
) -> anyhow::Result<()> {
    let chosen = targets(reader, id.as_deref(), filter, now)?;
    let ops = chosen
        .iter()
        .map(|e| SpoolOp::Hold {
            message_id: e.id.clone(),
            held,
        })
        .collect();
    Spool::open(path)?.apply_blocking(SpoolOp::All(ops))?;
    let what = if held { "held" } else { "released" };
    match id {
        Some(id) => println!("{id} {what}"),
        None => println!("{} {what}", messages(chosen.len())),
    }
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
                    } else if e.held {
                        "  held".to_string()
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
        QueueCommand::Retry { id, filter } => {
            let spool = Spool::open(&path)?;
            if id.as_deref() == Some("all") && filter.is_empty() {
                let n = spool.apply_blocking(SpoolOp::RetryNow { message_id: None })?;
                println!("{n} recipients due now");
                return Ok(ExitCode::SUCCESS);
            }
            let chosen = targets(&reader, id.as_deref(), &filter, now)?;
            let ops = chosen
                .iter()
                .map(|e| SpoolOp::RetryNow {
                    message_id: Some(e.id.clone()),
                })
                .collect();
            let n = spool.apply_blocking(SpoolOp::All(ops))?;
            println!("{}: {n} recipients due now", messages(chosen.len()));
        }
        QueueCommand::Hold { id, filter } => set_held(&path, &reader, id, &filter, now, true)?,
        QueueCommand::Release { id, filter } => set_held(&path, &reader, id, &filter, now, false)?,
        QueueCommand::Delete { id, bounce, filter } => {
            let chosen = targets(&reader, id.as_deref(), &filter, now)?;
            let settings = store.server_settings()?;
            let mut ops = Vec::with_capacity(chosen.len());
            let mut told = Vec::new();
            for e in &chosen {
                let Some(message) = reader.message(&e.id)? else {
                    continue;
                };
                let b = if bounce {
                    bounce_for_deleted(&settings, &reader, &message)?
                } else {
                    None
                };
                if let Some(b) = &b {
                    told.push((e.id.clone(), b.id.clone(), message.message.sender.clone()));
                }
                ops.push(SpoolOp::Delete {
                    message_id: e.id.clone(),
                    bounce: b,
                });
            }
            let n = Spool::open(&path)?.apply_blocking(SpoolOp::All(ops))?;
            if id.is_some() {
                match told.first() {
                    Some((id, b, to)) => println!("{id} deleted; bounce {b} queued to <{to}>"),
                    None => println!("{} deleted", chosen.first().map_or("", |e| e.id.as_str())),
                }
            } else {
                println!("{} deleted, {} bounces queued", messages(n), told.len());
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
