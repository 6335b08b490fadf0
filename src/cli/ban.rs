//! `relaygate ban show|add|remove`: addresses refused at connect, made by
//! the engine (`ban-auth-failures`, `ban-relay-denials`) or by hand.

use crate::abuse::bans::{Ban, BanReason, ban_net};
use crate::store::Store;
use clap::Subcommand;
use ipnet::IpNet;
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

/// An address is banned as its client key (IPv4 /32, IPv6 /64), a prefix
/// as given.
fn parse_net(text: &str) -> anyhow::Result<IpNet> {
    let t = text.trim();
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(ban_net(ip));
    }
    t.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| {
        anyhow::anyhow!("{t:?} is not an address or prefix (like 203.0.113.7 or 198.51.100.0/24)")
    })
}

/// `in 3h 20m`, `ended 2d ago`.
fn when(until: u64, now: u64) -> String {
    let span = |ms: u64| {
        let s = ms / 1000;
        match s {
            s if s >= 86_400 * 365 * 50 => "forever".to_string(),
            s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
            s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
            s if s >= 60 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    };
    if until > now {
        let left = span(until - now);
        if left == "forever" {
            left
        } else {
            format!("{} (in {left})", crate::events::utc_text(until))
        }
    } else {
        format!("ended {} ago", span(now - until))
    }
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
            let net = parse_net(&net)?;
            let until = if time.trim().eq_ignore_ascii_case("forever") {
                u64::MAX / 4
            } else {
                let secs = crate::queue_admin::age_secs(&time).map_err(anyhow::Error::msg)?;
                if secs <= 0 {
                    anyhow::bail!("--for must be longer than 0");
                }
                now.saturating_add((secs as u64).saturating_mul(1000))
            };
            let strikes = store
                .bans()?
                .into_iter()
                .find(|b| b.net == net)
                .map_or(0, |b| b.strikes);
            let ban = Ban {
                net,
                since: now,
                until,
                strikes: strikes + 1,
                reason: BanReason::Admin {
                    note: note.unwrap_or_default(),
                },
            };
            store.put_ban(&ban)?;
            println!("banned {net} until {}", when(until, now));
        }
        BanCommand::Remove { net } => {
            let net = parse_net(&net)?;
            if !store.remove_ban(&net)? {
                anyhow::bail!("{net} is not banned (see ban show --all)");
            }
            println!("lifted the ban of {net}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
