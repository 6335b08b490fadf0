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
        /// Behind a load balancer: every connection must start with a PROXY
        /// protocol header (v1 or v2), whose client address is then the
        /// client's for everything (policy, limits, bans, logs, Received:).
        #[arg(long, requires = "trusted_proxy")]
        proxy_protocol: bool,
        /// The load balancers allowed to connect (and send the header):
        /// addresses or CIDRs, comma-separated.
        #[arg(long, value_name = "CIDR[,CIDR...]", requires = "proxy_protocol")]
        trusted_proxy: Option<String>,
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
            let proxied = store.proxy_bindings()?;
            // The running engine says which ones it could not open.
            let engine = super::ask_engine_status(store.path());
            for b in bindings {
                let state = match &engine {
                    Ok(Some(status)) => match status.listeners.iter().find(|l| l.binding == b) {
                        Some(l) => match &l.bound {
                            Ok(bound) if *bound == b.addr => String::new(),
                            Ok(bound) => format!("  listening on {bound}"),
                            Err(e) => format!("  NOT LISTENING: {e} (tried again, doubling)"),
                        },
                        None => "  not open yet".to_string(),
                    },
                    _ => String::new(),
                };
                match proxied.get(&b.addr) {
                    Some(nets) => println!(
                        "{:<40} {}  PROXY protocol from {}{state}",
                        b.addr.to_string(),
                        b.kind,
                        nets.iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => println!("{:<40} {}{state}", b.addr.to_string(), b.kind),
                }
            }
            if let Err(e) = engine {
                println!(
                    "warning: the running engine could not be asked which bindings it has open ({e})"
                );
            }
        }
        BindCommand::Add {
            addr,
            kind,
            trusted_proxy,
            ..
        } => {
            let addr = parse_listen_addr(&addr).map_err(anyhow::Error::msg)?;
            let binding = Binding {
                addr,
                kind: kind.into(),
            };
            let trusted = trusted_proxy
                .as_deref()
                .map(crate::store::parse_trusted_proxies)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?;
            let existed = store.bindings()?.contains(&binding);
            let was_proxied = store.proxy_bindings()?.get(&addr).cloned();
            store.put_binding(binding, trusted.as_deref())?;
            let proxy = match &trusted {
                Some(nets) => format!(
                    ", PROXY protocol from {}",
                    nets.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => String::new(),
            };
            if existed && was_proxied == trusted {
                println!("binding {addr} ({}{proxy}) already present", binding.kind);
            } else {
                println!("binding {addr} ({}{proxy})", binding.kind);
            }
            if let Some(warning) = super::user::submission_without_auth(store)? {
                println!("{warning}");
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
