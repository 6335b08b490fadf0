//! `relaygate quota show|add|remove`: sending quotas per login, client
//! address (or prefix) or sender domain.

use crate::abuse::quota::{QuotaScope, QuotaUnit};
use crate::abuse::rate::Rate;
use crate::store::Store;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// List the quotas, and the keys nearest their limit (as the engine
    /// last saved them, every 10 s).
    Show,
    /// Add a quota: at most N messages (or recipients) per PERIOD per KEY.
    /// Past it, recipients get 452 4.7.1 (try again later).
    ///
    /// Example: `quota add login 200/hour` and `quota add login 1000/day --suspend`.
    Add {
        /// login, sender-domain, ip (per address; IPv6 per /64), ip/24
        /// (per IPv4 /24) or ip/24/48 (and per IPv6 /48).
        #[arg(value_name = "KEY")]
        scope: String,
        /// N/PERIOD: 200/hour, 1000/day, 30/10m.
        #[arg(value_name = "N/PERIOD")]
        rate: String,
        /// Count recipients rather than messages.
        #[arg(long)]
        recipients: bool,
        /// Reaching it also suspends the login (login quotas): it cannot
        /// authenticate until `user unsuspend`.
        #[arg(long)]
        suspend: bool,
    },
    /// Remove a quota by its number (see `quota show`).
    Remove {
        #[arg(value_name = "NUMBER")]
        id: String,
    },
}

pub fn run(store: &mut Store, cmd: QuotaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        QuotaCommand::Show => {
            let quotas = store.quotas()?;
            if quotas.is_empty() {
                println!("no quotas (add one with: relaygate quota add login 200/hour)");
                return Ok(ExitCode::SUCCESS);
            }
            for q in &quotas {
                println!("{q}");
            }
            let mut table = crate::abuse::quota::QuotaTable::default();
            table.set_quotas(quotas);
            table.restore(store.quota_counts()?);
            let usage = table.usage(crate::abuse::now_ms());
            if !usage.is_empty() {
                println!();
                println!("{:<8} {:<40} {:>10}", "quota", "key", "used");
                for u in usage.iter().take(20) {
                    println!(
                        "#{:<7} {:<40} {:>10}",
                        u.quota,
                        u.key,
                        format!("{}/{}", u.used, u.limit)
                    );
                }
                if usage.len() > 20 {
                    println!("... and {} more keys", usage.len() - 20);
                }
            }
        }
        QuotaCommand::Add {
            scope,
            rate,
            recipients,
            suspend,
        } => {
            let scope = QuotaScope::parse(&scope).map_err(anyhow::Error::msg)?;
            let rate = Rate::parse(&rate).map_err(anyhow::Error::msg)?;
            let unit = if recipients {
                QuotaUnit::Recipients
            } else {
                QuotaUnit::Messages
            };
            let q = store.add_quota(scope, unit, rate, suspend)?;
            println!("added quota {q}");
        }
        QuotaCommand::Remove { id } => {
            let n: i64 = id
                .trim_start_matches('#')
                .parse()
                .map_err(|_| anyhow::anyhow!("{id:?} is not a quota number (see quota show)"))?;
            let q = store.remove_quota(n)?;
            println!("removed quota {q}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
