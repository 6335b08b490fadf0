//! `relaygate rule show|add|remove`

use crate::policy::rules::Rule;
use crate::store::Store;
use clap::{ArgGroup, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// List the rules in evaluation order.
    Show,
    /// Add a rule. Patterns use * wildcards and a leading ! to negate;
    /// the null sender is matched as <>.
    #[command(group(ArgGroup::new("action").required(true).args(["reject", "accept"])))]
    Add {
        /// Sender pattern, e.g. '!*@example.com'.
        #[arg(long, value_name = "PATTERN", allow_hyphen_values = true)]
        sender: String,
        /// Recipient pattern.
        #[arg(long, value_name = "PATTERN", default_value = "*")]
        recipient: String,
        /// Which recipients: internal (local domains), external or any.
        #[arg(long, value_name = "internal|external|any", default_value = "any")]
        destination: String,
        /// Refuse matching recipients with 550 5.7.1 and this text.
        #[arg(long, value_name = "TEXT")]
        reject: Option<String>,
        /// Stop evaluating rules (the relay controls still apply).
        #[arg(long)]
        accept: bool,
        /// Insert at this 1-based position instead of the end.
        #[arg(long, value_name = "N")]
        at: Option<usize>,
    },
    /// Remove the rule numbered N in `rule show`.
    Remove { number: usize },
}

pub fn run(store: &mut Store, cmd: RuleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RuleCommand::Show => {
            let rules = store.rules()?;
            if rules.is_empty() {
                println!("no rules");
            }
            for (i, r) in rules.iter().enumerate() {
                println!("#{}  {r}", i + 1);
            }
        }
        RuleCommand::Add {
            sender,
            recipient,
            destination,
            reject,
            at,
            ..
        } => {
            let rule = Rule::new(&sender, &recipient, &destination, reject.as_deref())?;
            let n = store.add_rule(&rule, at)?;
            println!("added rule #{n}: {rule}");
        }
        RuleCommand::Remove { number } => {
            let r = store.remove_rule(number)?;
            println!("removed rule #{number}: {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
