//! `relaygate user ...` and `relaygate auth mode ...`

use super::hashed_password_stdin;
use crate::policy::Login;
use crate::policy::settings::AuthMode;
use crate::store::{Store, check_login_name};
use clap::{Subcommand, ValueEnum};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// List users and their sender addresses.
    Show,
    /// Add a user; the password is read from standard input.
    Add {
        name: String,
        /// Read the password from the first line of standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Remove a user and its sender addresses.
    Remove { name: String },
    /// Set a new password, read from standard input.
    Password {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Suspend a login: it cannot authenticate (525 5.7.13) until unsuspended.
    Suspend {
        name: String,
        /// Why, shown in `user show`.
        #[arg(long)]
        note: Option<String>,
    },
    /// Lift a login's suspension (by a quota or by hand).
    Unsuspend { name: String },
    /// Replace the sender addresses a login may use (user@domain or @domain);
    /// with none, show them; `--clear` takes them all away.
    Addresses {
        name: String,
        #[arg(value_name = "ADDR")]
        addresses: Vec<String>,
        /// Take every sender address away from the login.
        #[arg(long, conflicts_with = "addresses")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Show the auth mode.
    Show,
    /// Set the auth mode: none, any-user, or specified (one login).
    Mode {
        mode: ModeArg,
        /// The login of mode `specified`.
        #[arg(long, requires = "password_stdin")]
        user: Option<String>,
        /// Read the password of `--user` from standard input.
        #[arg(long, requires = "user")]
        password_stdin: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    None,
    AnyUser,
    Specified,
}

impl From<ModeArg> for AuthMode {
    fn from(m: ModeArg) -> AuthMode {
        match m {
            ModeArg::None => AuthMode::None,
            ModeArg::AnyUser => AuthMode::AnyUser,
            ModeArg::Specified => AuthMode::Specified,
        }
    }
}

pub fn run_user(store: &mut Store, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Show => {
            let users = store.users()?;
            if users.is_empty() {
                println!("no users");
            }
            for u in users {
                let addrs = if u.addresses.is_empty() {
                    "(no sender addresses)".to_string()
                } else {
                    u.addresses.join(", ")
                };
                match &u.suspended {
                    Some(why) => println!("{}  {addrs}  SUSPENDED: {why}", u.name),
                    None => println!("{}  {addrs}", u.name),
                }
            }
        }
        UserCommand::Add { name, .. } => {
            check_login_name(&name)?;
            let hash = hashed_password_stdin()?;
            store.add_user(&name, &hash)?;
            println!("added user {name}");
        }
        UserCommand::Remove { name } => {
            store.remove_user(&name)?;
            println!("removed user {name}");
        }
        UserCommand::Password { name, .. } => {
            if !store.users()?.iter().any(|u| u.name == name) {
                anyhow::bail!("no user {name}");
            }
            store.set_password(&name, &hashed_password_stdin()?)?;
            println!("password of {name} changed");
        }
        UserCommand::Suspend { name, note } => {
            if let Some(n) = &note {
                crate::abuse::bans::check_note(n).map_err(anyhow::Error::msg)?;
            }
            let why = match note {
                Some(n) => format!("by the administrator: {n}"),
                None => "by the administrator".to_string(),
            };
            store.set_suspended(&name, Some(&why))?;
            println!(
                "suspended {name}: it cannot authenticate until: relaygate user unsuspend {name}"
            );
        }
        UserCommand::Unsuspend { name } => {
            let was = store.users()?.into_iter().find(|u| u.name == name);
            match was {
                None => anyhow::bail!("no user {name}"),
                Some(u) if u.suspended.is_none() => {
                    println!("{name} was not suspended");
                }
                Some(_) => {
                    store.set_suspended(&name, None)?;
                    println!("lifted the suspension of {name}");
                }
            }
        }
        UserCommand::Addresses {
            name,
            addresses,
            clear,
        } => {
            // Only `--clear` clears: a bare `user addresses NAME`, typed to
            // look, must not wipe them.
            let set = if addresses.is_empty() && !clear {
                if !store.users()?.iter().any(|u| u.name == name) {
                    anyhow::bail!("no user {name}");
                }
                store.sender_addresses(&name)?
            } else {
                store.set_sender_addresses(&name, &addresses)?
            };
            if set.is_empty() {
                println!("{name} has no sender addresses");
            } else {
                println!("{name} may send as: {}", set.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_auth(store: &mut Store, cmd: AuthCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuthCommand::Show => {
            let (mode, specified) = store.auth_mode()?;
            match (mode, specified) {
                (AuthMode::Specified, Some(u)) => println!("auth mode specified (login {u})"),
                (m, _) => println!("auth mode {m}"),
            }
        }
        AuthCommand::Mode { mode, user, .. } => {
            let mode: AuthMode = mode.into();
            let login = match user {
                Some(name) => {
                    check_login_name(&name)?;
                    Some(Login {
                        password_hash: hashed_password_stdin()?,
                        name,
                    })
                }
                None => None,
            };
            store.set_auth_mode(mode, login.as_ref())?;
            println!("auth mode {mode}");
            if let Some(warning) = submission_without_auth(store)? {
                println!("{warning}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A submission binding refuses MAIL until AUTH, and `auth mode none`
/// offers no AUTH: the port then takes no mail at all.
pub fn submission_without_auth(store: &Store) -> anyhow::Result<Option<String>> {
    if store.auth_mode()?.0 != AuthMode::None {
        return Ok(None);
    }
    let ports: Vec<String> = store
        .bindings()?
        .into_iter()
        .filter(|b| b.kind == crate::bindings::BindKind::Submission)
        .map(|b| b.addr.to_string())
        .collect();
    Ok((!ports.is_empty()).then(|| {
        format!(
            "warning: auth mode is none, so the submission binding{} {} offer{} no AUTH and take no mail (530 5.7.0 to every MAIL); relaygate auth mode any-user turns AUTH on",
            if ports.len() == 1 { "" } else { "s" },
            ports.join(", "),
            if ports.len() == 1 { "s" } else { "" },
        )
    }))
}
