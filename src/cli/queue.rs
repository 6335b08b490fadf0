//! `relaygate queue show|retry|delete|hold|release`: the spool, seen and
//! steered from another process; the running engine notices within a
//! quarter of a second (it reads the queue on every tick).

use crate::queue_admin::{self, QueueAction, QueueFilter};
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
    /// Attempt delivery now: one message, `all`, or those the filters match.
    Retry {
        #[arg(value_name = "ID|all")]
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Remove messages (one, `all`, or those the filters match); with
    /// --bounce their senders are told, else silently.
    Delete {
        #[arg(value_name = "ID|all")]
        id: Option<String>,
        #[arg(long)]
        bounce: bool,
        #[command(flatten)]
        filter: Filter,
    },
    /// Keep messages (one, `all`, or those the filters match) from being
    /// delivered until they are released.
    Hold {
        #[arg(value_name = "ID|all")]
        id: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
    /// Let held messages (one, `all`, or those the filters match) be
    /// delivered again.
    Release {
        #[arg(value_name = "ID|all")]
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
    #[arg(long, value_name = "DOMAIN", value_parser = domain_text)]
    pub domain: Option<String>,
    /// Received at least this long ago: 90m, 12h, 2d.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
}

/// A domain as given, once it is a valid one (a typo is bad input, not
/// "0 messages").
fn domain_text(text: &str) -> Result<String, String> {
    let name = text.trim().trim_start_matches('@');
    // An address literal ([192.0.2.1], [IPv6:2001:db8::1]) is a domain too.
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let ip = inner.strip_prefix("IPv6:").unwrap_or(inner);
        return ip
            .parse::<std::net::IpAddr>()
            .map(|_| text.to_string())
            .map_err(|_| format!("{text:?} is not an address literal"));
    }
    crate::policy::address::normalize_domain(name)
        .map(|_| text.to_string())
        .map_err(|e| format!("{text:?} is not a domain: {e}"))
}

impl Filter {
    fn parsed(&self) -> anyhow::Result<QueueFilter> {
        QueueFilter::parse(
            self.text.as_deref(),
            self.domain.as_deref(),
            self.older_than.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("--older-than {e}"))
    }
}

/// The messages an action takes: the one named, or every one the filters
/// match (never both, never neither).
fn targets(
    reader: &SpoolReader,
    id: Option<&str>,
    filter: &Filter,
    now: i64,
) -> anyhow::Result<Vec<String>> {
    let parsed = filter.parsed()?;
    match (id, parsed.is_empty()) {
        (Some(_), false) => {
            anyhow::bail!("give a queue id or filters (--match, --domain, --older-than), not both")
        }
        (None, true) => {
            anyhow::bail!("give a queue id, or filters (--match, --domain, --older-than)")
        }
        // Every message, as `queue retry all`.
        (Some(id), true) if id.eq_ignore_ascii_case("all") => {
            Ok(reader.listing()?.into_iter().map(|e| e.id).collect())
        }
        (Some(id), true) => Ok(vec![id.to_string()]),
        (None, false) => Ok(reader
            .listing()?
            .into_iter()
            .filter(|e| parsed.takes(e, now))
            .map(|e| e.id)
            .collect()),
    }
}

/// Applies an action to the messages an id or the filters choose, in one
/// transaction, and says what it did.
fn act(
    store: &mut Store,
    path: &std::path::Path,
    reader: &SpoolReader,
    id: Option<String>,
    filter: &Filter,
    now: i64,
    action: QueueAction,
) -> anyhow::Result<()> {
    let chosen = targets(reader, id.as_deref(), filter, now)?;
    let settings = store.server_settings()?;
    let spool = Spool::open(path)?;
    // A bounce must not say a message failed while a next hop takes it:
    // the running engine is asked which are under way.
    // The engine cannot be asked (another user's, not answering): no
    // bounce is made on a guess.
    let busy: std::collections::HashSet<String> = match action {
        QueueAction::Delete { bounce: true } => ask_in_flight(store.path())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot ask the running engine which messages it is delivering ({e}): \
                     nothing deleted; delete without --bounce, or try again"
                )
            })?
            .into_iter()
            .map(|a| a.message_id)
            .collect(),
        _ => Default::default(),
    };
    let one = id.is_some_and(|id| !id.eq_ignore_ascii_case("all"));
    let apply = || queue_admin::apply(&spool, reader, &settings, action, &chosen, &busy, one);
    let applied = match apply() {
        // A full disk: the reserve kept for this is given up, and the
        // change (which frees room, if it deletes) is tried once more.
        Err(queue_admin::QueueAdminError::Full(e)) if super::give_up_reserve(path, &e) => apply()?,
        other => other?,
    };
    println!("{}", applied.summary(action, one));
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
            let in_flight = match ask_in_flight(store.path()) {
                Ok(attempts) => attempts,
                Err(e) => {
                    println!(
                        "warning: the running engine could not be asked what it is delivering ({e}): a message being delivered now is not marked"
                    );
                    Vec::new()
                }
            };
            if let Some(note) = delivery_off(store)? {
                println!("{note}");
            }
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
                        .map(|e| format!("\n      {}", queue_admin::last_error_text(&e)))
                        .unwrap_or_default();
                    let notify = r
                        .notify
                        .map(|n| format!("  NOTIFY={n}"))
                        .unwrap_or_default();
                    println!(
                        "    <{}>  {}  {} attempts{when}{notify}{error}",
                        r.address, r.state, r.attempts
                    );
                }
            }
        }
        QueueCommand::Retry { id, filter }
            if id.as_deref().is_some_and(|i| i.eq_ignore_ascii_case("all"))
                && filter.parsed()?.is_empty() =>
        {
            let spool = Spool::open(&path)?;
            let retry = || spool.apply_blocking(SpoolOp::RetryNow { message_id: None });
            let n = match retry() {
                Err(e @ crate::spool::SpoolError::Full(_))
                    if super::give_up_reserve(&path, &e.to_string()) =>
                {
                    retry()?
                }
                other => other?,
            };
            println!(
                "{} due now",
                crate::queue_admin::plural(n, "recipient", "recipients")
            );
            if let Some(note) = delivery_off(store)? {
                println!("{note}");
            }
        }
        QueueCommand::Retry { id, filter } => {
            act(store, &path, &reader, id, &filter, now, QueueAction::Retry)?;
            if let Some(note) = delivery_off(store)? {
                println!("{note}");
            }
        }
        QueueCommand::Hold { id, filter } => {
            act(store, &path, &reader, id, &filter, now, QueueAction::Hold)?
        }
        QueueCommand::Release { id, filter } => act(
            store,
            &path,
            &reader,
            id,
            &filter,
            now,
            QueueAction::Release,
        )?,
        QueueCommand::Delete { id, bounce, filter } => {
            let action = QueueAction::Delete { bounce };
            act(store, &path, &reader, id, &filter, now, action)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With `delivery off` nothing is sent, whatever "next attempt now" says.
fn delivery_off(store: &Store) -> anyhow::Result<Option<String>> {
    Ok((!store.server_settings()?.delivery).then(|| {
        "note: delivery is off: nothing is sent until `relaygate policy set delivery on`"
            .to_string()
    }))
}

/// The running engine's delivery attempts under way (none when no engine
/// runs), or why the running one could not be asked.
fn ask_in_flight(db: &std::path::Path) -> Result<Vec<crate::delivery::InFlightAttempt>, String> {
    Ok(super::ask_engine_status(db)?
        .map(|s| s.in_flight)
        .unwrap_or_default())
}
