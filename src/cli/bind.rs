//! `relaygate bind show|add|remove ADDR:PORT`

use crate::bindings::{BindKind, Binding, parse_listen_addr};
use crate::store::Store;
use clap::{Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum BindCommand {
    /// List the listen bindings.
    Show,
    /// Add a binding (or change its kind): 127.0.0.1:2525, [::1]:2525, 0.0.0.0:25.
    Add {
        #[arg(value_name = "ADDR:PORT")]
        addr: String,
        #[arg(long, value_enum, default_value = "smtp")]
        kind: KindArg,
    },
    /// Remove a binding.
    Remove {
        #[arg(value_name = "ADDR:PORT")]
        addr: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Smtp,
    Submission,
    Smtps,
}

impl From<KindArg> for BindKind {
    fn from(k: KindArg) -> BindKind {
        match k {
            KindArg::Smtp => BindKind::Smtp,
            KindArg::Submission => BindKind::Submission,
            KindArg::Smtps => BindKind::Smtps,
        }
    }
}

pub fn run(store: &mut Store, cmd: BindCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BindCommand::Show => {
            let bindings = store.bindings()?;
            if bindings.is_empty() {
                println!("no bindings: the engine listens nowhere");
            }
            for b in bindings {
                println!("{:<40} {}", b.addr.to_string(), b.kind);
            }
        }
        BindCommand::Add { addr, kind } => {
            let addr = parse_listen_addr(&addr).map_err(anyhow::Error::msg)?;
            let binding = Binding {
                addr,
                kind: kind.into(),
            };
            if store.add_binding(binding)? {
                println!("binding {addr} ({})", binding.kind);
            } else {
                println!("binding {addr} ({}) already present", binding.kind);
            }
        }
        BindCommand::Remove { addr } => {
            let addr = parse_listen_addr(&addr).map_err(anyhow::Error::msg)?;
            store.remove_binding(addr)?;
            println!("removed binding {addr}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
