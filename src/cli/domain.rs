//! `relaygate domain show|add|remove NAME`

use crate::store::Store;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// List the local domains.
    Show,
    /// Add a local domain (mail for it is inbound or internal).
    Add { name: String },
    /// Remove a local domain.
    Remove { name: String },
}

pub fn run(store: &mut Store, cmd: DomainCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DomainCommand::Show => {
            let domains = store.domains()?;
            if domains.is_empty() {
                println!("no local domains: all mail is outbound or relay");
            }
            let unrouted = store.local_domains_without_route()?;
            for d in domains {
                if unrouted.contains(&d) {
                    println!(
                        "{d}  (no route: mail held until `relaygate route add {d} HOST:PORT`)"
                    );
                } else {
                    println!("{d}");
                }
            }
        }
        DomainCommand::Add { name } => {
            println!("added local domain {}", store.add_domain(&name)?);
            super::route::warn_unrouted(store)?;
        }
        DomainCommand::Remove { name } => {
            println!("removed local domain {}", store.remove_domain(&name)?)
        }
    }
    Ok(ExitCode::SUCCESS)
}
