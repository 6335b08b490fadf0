//! `relaygate config export [FILE]` and `config apply FILE [--dry-run]`:
//! the whole configuration as one TOML document, for Git and Ansible.

use crate::config_file::{ConfigDoc, diff};
use crate::store::Store;
use clap::Subcommand;
use std::io::Write;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write the whole configuration as TOML (to FILE, mode 0600, written
    /// whole or not at all; or to standard output).
    Export { file: Option<std::path::PathBuf> },
    /// Make the database equal to FILE in one transaction, and print what
    /// changed, section by section. Bans, quota counts and suspensions are
    /// kept.
    Apply {
        file: std::path::PathBuf,
        /// Print the changes, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(store: &mut Store, cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Export { file } => {
            let text = store.export_config()?.to_toml();
            match file {
                None => std::io::stdout().write_all(text.as_bytes())?,
                Some(path) => {
                    super::write_private_file(&path, &text)?;
                    eprintln!("configuration written to {}", path.display());
                }
            }
        }
        ConfigCommand::Apply { file, dry_run } => {
            let text = super::read_text_file(&file)?;
            let doc = ConfigDoc::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                .normalized();
            // Checked whole before anything is shown as a change, dry run
            // or not: a file that cannot apply gets no diff, only its error.
            check_applies(&doc)
                .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was changed", file.display()))?;
            let current = store.export_config()?;
            let changes = diff(&current, &doc, &default_settings()?);
            if changes.is_empty() {
                println!("no changes: the database already equals {}", file.display());
                return Ok(ExitCode::SUCCESS);
            }
            print!("{changes}");
            if dry_run {
                println!("(dry run: nothing was changed)");
            } else {
                store
                    .apply_config(&doc)
                    .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was changed", file.display()))?;
                println!("applied {}", file.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every setting's value in a new database: the stored ones (switches,
/// auth mode) and the engine settings' defaults.
fn default_settings() -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut defaults = Store::scratch()?.export_config()?.settings;
    let server = crate::server_settings::ServerSettings::default();
    for (key, _) in crate::server_settings::SERVER_KEYS {
        if let Some(v) = server.get(key) {
            defaults.entry((*key).to_string()).or_insert(v);
        }
    }
    Ok(defaults)
}

/// Whether a configuration would apply: it is applied to a scratch
/// database in memory, which is then thrown away.
fn check_applies(doc: &ConfigDoc) -> anyhow::Result<()> {
    Store::scratch()?.apply_config(doc)?;
    Ok(())
}
