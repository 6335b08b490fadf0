//! `relaygate check`: what the policy decides, and why, for a client, a
//! sender and recipients. Exit 0 if all are allowed, 1 if any is denied
//! or the client is banned. A suspended login counts as not logged in.
//! It decides through [`crate::policy_check::check`], as the console's
//! test box does.

use super::read_password_stdin;
use crate::credentials::verify_password;
use crate::policy::settings::AuthMode;
use crate::policy_check::{CheckQuery, check};
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
    /// Ask local recipients' routes about them even with
    /// verify-recipients off (with it on, they are always asked).
    #[arg(long)]
    verify: bool,
}

pub fn run(store: &mut Store, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let policy = store.load_policy()?;
    // What the engine does before the policy: a ban refuses the client at
    // connect, a suspension refuses its login.
    let now = crate::abuse::now_ms();
    let ban = store
        .bans()?
        .into_iter()
        .filter(|b| b.active(now) && b.net.contains(&args.ip))
        .max_by_key(|b| b.until);
    if let Some(ban) = &ban {
        println!(
            "connect: 554 5.7.1 Your address is banned until {} ({}); the decisions below apply once the ban is lifted",
            crate::events::utc_text(ban.until),
            ban.reason
        );
    }
    let mut user = args.user.as_deref();
    if let Some(name) = user
        && args.password_stdin
        && policy.auth_mode() != AuthMode::None
    {
        let password = read_password_stdin()?;
        if verify_password(policy.login_hash(name), &password) {
            println!("auth: {name} authenticated (235 2.7.0)");
        } else {
            println!(
                "auth: 535 5.7.8 authentication failed for {name}; deciding as an unauthenticated client"
            );
            user = None;
        }
    }
    if let Some(name) = user
        && store
            .suspended_logins()?
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
    {
        println!(
            "auth: 525 5.7.13 {name} is suspended (user unsuspend {name}); deciding as an unauthenticated client"
        );
        user = None;
    }
    let mut checked = check(
        &policy,
        &CheckQuery {
            ip: args.ip,
            user,
            sender: &args.from,
            recipients: args.to.iter().map(String::as_str).collect(),
        },
    )?;
    if let Some(why) = &checked.login_refused {
        anyhow::bail!("{why}, so --user cannot apply");
    }
    let settings = store.server_settings()?;
    let listed =
        !settings.dnsbl.is_empty() && checked.login.is_none() && !policy.lists().allows(args.ip);
    if listed || args.verify || settings.verify_recipients {
        network_checks(
            store,
            &settings,
            listed.then_some(args.ip),
            args.verify || settings.verify_recipients,
            &mut checked.decisions,
        )?;
    }
    println!(
        "client {}, {}, sender <{}>",
        args.ip,
        checked
            .login
            .as_ref()
            .map_or("not authenticated".to_string(), |l| format!(
                "authenticated as {l}"
            )),
        checked
            .sender
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    for (rcpt, d) in &checked.decisions {
        println!("<{rcpt}>");
        println!(
            "  verdict  {}",
            if d.is_allowed() {
                "allowed"
            } else if d.is_deferral() {
                "deferred"
            } else {
                "denied"
            }
        );
        println!("  class    {}", d.class);
        println!("  reply    {}", d.reply);
        println!("  reason   {d}");
    }
    Ok(if checked.all_allowed() && ban.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What the engine checks over the network, as it would: the client on
/// the DNS blocklists (`dnsbl`, when `blocklist_client` is given), then
/// each allowed local recipient at its route (`verify-recipients`, or
/// `--verify`: a real `MAIL FROM:<>`/`RCPT TO`). Nothing is remembered,
/// and the engine's memory is not used.
fn network_checks(
    store: &Store,
    settings: &crate::server_settings::ServerSettings,
    blocklist_client: Option<IpAddr>,
    verify: bool,
    decisions: &mut [(
        crate::policy::address::MailAddress,
        crate::policy::decision::Decision,
    )],
) -> anyhow::Result<()> {
    use crate::delivery::recipient_verify::{RecipientVerifier, VerifyConfig, worth_verifying};
    let routes = store.routes()?;
    let config = VerifyConfig::from_settings(settings);
    let verifier = RecipientVerifier::new(std::sync::Arc::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if let Some(ip) = blocklist_client {
            let lookup = crate::abuse::dnsbl::DnsblChecker::default()
                .check(&settings.dns_servers, &settings.dnsbl, ip)
                .await;
            for (zone, trouble) in lookup.problems {
                // Said as the engine's log says it.
                let event = crate::events::Event::BlocklistUnusable {
                    session: None,
                    zone,
                    trouble,
                };
                println!("note: {}", crate::events::describe(&event).text);
            }
            if let Some(listing) = lookup.listing {
                for (_, decision) in decisions.iter_mut() {
                    if decision.is_allowed() {
                        *decision = decision.clone().blocklisted(
                            ip,
                            listing.zone.clone(),
                            listing.answer.to_string(),
                        );
                    }
                }
            }
        }
        if !verify {
            return;
        }
        for (recipient, decision) in decisions.iter_mut() {
            if !decision.is_allowed() || !worth_verifying(decision.class, recipient) {
                continue;
            }
            match verifier.verify_local(&config, &routes, recipient).await {
                Some(finding) => *decision = decision.clone().verified(finding),
                None => println!(
                    "note: <{recipient}> is not verified: its domain has no route of its own to ask"
                ),
            }
        }
    });
    Ok(())
}
