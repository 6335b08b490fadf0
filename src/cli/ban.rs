//! `relaygate ban show|add|remove`: addresses refused at connect, made by
//! the engine (`ban-auth-failures`, `ban-relay-denials`) or by hand.

use crate::abuse::bans::{Ban, manual_ban, parse_ban_net, until_text as when};
use crate::store::Store;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum BanCommand {
    /// List the bans in force (--all: also ended ones, kept 30 days for
    /// their strikes).
    Show {
        #[arg(long)]
        all: bool,
    },
    /// Ban an address or a prefix (refused at connect with 554 5.7.1).
    Add {
        /// 203.0.113.7, 2001:db8::/48, 198.51.100.0/24.
        #[arg(value_name = "ADDR|CIDR")]
        net: String,
        /// How long: 90m, 12h, 7d, or "forever".
        #[arg(long = "for", value_name = "TIME", default_value = "7d")]
        time: String,
        /// Why, shown in the refusal and in `ban show`.
        #[arg(long)]
        note: Option<String>,
    },
    /// Lift a ban (the address also loses its strikes).
    Remove {
        #[arg(value_name = "ADDR|CIDR")]
        net: String,
    },
}

pub fn run(store: &mut Store, cmd: BanCommand) -> anyhow::Result<ExitCode> {
    let now = crate::abuse::now_ms();
    match cmd {
        BanCommand::Show { all } => {
            let bans: Vec<Ban> = store
                .bans()?
                .into_iter()
                .filter(|b| all || b.active(now))
                .collect();
            if bans.is_empty() {
                println!("no bans in force");
            }
            for b in bans {
                println!(
                    "{:<24} until {:<40} strike {}  {}",
                    b.net.to_string(),
                    when(b.until, now),
                    b.strikes,
                    b.reason
                );
            }
        }
        BanCommand::Add { net, time, note } => {
            let ban = manual_ban(
                &net,
                &time,
                note.as_deref().unwrap_or(""),
                &store.bans()?,
                now,
            )
            .map_err(anyhow::Error::msg)?;
            store.put_ban(&ban)?;
            println!("banned {} until {}", ban.net, when(ban.until, now));
            if let Some(warning) = wide_ban_warning(store, &ban.net) {
                println!("warning: {warning}");
            }
        }
        BanCommand::Remove { net } => {
            let net = parse_ban_net(&net).map_err(anyhow::Error::msg)?;
            if !store.remove_ban(&net)? {
                anyhow::bail!("{net} is not banned (see ban show --all)");
            }
            println!("lifted the ban of {net}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What an administrator should hear about a ban this wide: one that
/// covers a /8 (IPv4) or a /16 (IPv6) or more, or the allow list's own
/// clients (their LAN, refused at connect like anyone).
fn wide_ban_warning(store: &Store, net: &ipnet::IpNet) -> Option<String> {
    let short = match net {
        ipnet::IpNet::V4(n) => n.prefix_len() <= 8,
        ipnet::IpNet::V6(n) => n.prefix_len() <= 16,
    };
    let allowed = store
        .list_entries(crate::policy::ip_lists::ListKind::Allow)
        .ok()?
        .into_iter()
        .filter(|e| {
            // The entry starts inside the ban, or the ban inside the entry.
            crate::policy::list_text::parse_list_text(e)
                .entries
                .first()
                .is_some_and(|p| {
                    net.contains(&p.pattern.lowest()) || p.pattern.matches(net.network())
                })
        })
        .collect::<Vec<_>>();
    match (short, allowed.is_empty()) {
        (_, false) => Some(format!(
            "{net} covers allow-listed clients ({}): they are refused at connect too; lift it with `relaygate ban remove {net}`",
            allowed.join(", ")
        )),
        (true, true) => Some(format!(
            "{net} covers {} addresses: every client in it is refused at connect; lift it with `relaygate ban remove {net}`",
            if net.prefix_len() == 0 {
                "all".to_string()
            } else {
                format!("2^{}", net.max_prefix_len() - net.prefix_len())
            }
        )),
        (false, true) => None,
    }
}
