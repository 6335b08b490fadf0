//! `relaygate check`: what the policy decides, and why, for a client, a
//! sender and recipients. Exit 0 if all are allowed, 1 if any is denied.

use super::read_password_stdin;
use crate::credentials::verify_password;
use crate::policy::Envelope;
use crate::policy::address::{parse_forward_path, parse_reverse_path};
use crate::policy::settings::AuthMode;
use crate::store::Store;
use clap::Args;
use std::net::IpAddr;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The client's IP address.
    #[arg(long)]
    ip: IpAddr,
    /// Decide as this authenticated login (with --password-stdin, the
    /// password is checked too).
    #[arg(long)]
    user: Option<String>,
    /// Read the login's password from standard input and verify it.
    #[arg(long, requires = "user")]
    password_stdin: bool,
    /// The sender (MAIL FROM); '' or '<>' is the null sender.
    #[arg(long, value_name = "ADDR", allow_hyphen_values = true)]
    from: String,
    /// A recipient (RCPT TO); repeat for several.
    #[arg(long = "to", value_name = "ADDR", required = true)]
    to: Vec<String>,
}

pub fn run(store: &mut Store, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let sender = parse_reverse_path(&args.from)?;
    let recipients = args
        .to
        .iter()
        .map(|t| parse_forward_path(t))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = store.load_policy()?;
    let mut login = None;
    if let Some(user) = &args.user {
        if policy.auth_mode() == AuthMode::None {
            anyhow::bail!("auth mode is none: no client can authenticate, so --user cannot apply");
        }
        let hash = policy.login_hash(user);
        if args.password_stdin {
            let password = read_password_stdin()?;
            if verify_password(hash, &password) {
                println!("auth: {user} authenticated (235 2.7.0)");
                login = Some(user.as_str());
            } else {
                println!(
                    "auth: 535 5.7.8 authentication failed for {user}; deciding as an unauthenticated client"
                );
            }
        } else if hash.is_some() {
            login = Some(user.as_str());
        } else {
            anyhow::bail!(
                "{user} cannot authenticate under auth mode {}",
                policy.auth_mode()
            );
        }
    }
    let env = Envelope {
        peer: args.ip,
        login,
        sender: sender.as_ref(),
    };
    println!(
        "client {}, {}, sender <{}>",
        args.ip,
        login.map_or("not authenticated".to_string(), |l| format!(
            "authenticated as {l}"
        )),
        sender.as_ref().map(|s| s.to_string()).unwrap_or_default()
    );
    let mut all_allowed = true;
    for rcpt in &recipients {
        let d = policy.decide(&env, rcpt);
        all_allowed &= d.is_allowed();
        println!("<{rcpt}>");
        println!(
            "  verdict  {}",
            if d.is_allowed() { "allowed" } else { "denied" }
        );
        println!("  class    {}", d.class);
        println!("  reply    {}", d.reply);
        println!("  reason   {d}");
    }
    Ok(if all_allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
