//! `relaygate list show|add|remove|import|export allow|deny`

use crate::policy::ip_lists::ListKind;
use crate::policy::ip_pattern::IpPattern;
use crate::policy::list_text::{ParsedEntry, format_list_text, parse_list_text};
use crate::queue_admin::plural;
use crate::store::Store;
use clap::{Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListArg {
    Allow,
    Deny,
}

impl From<ListArg> for ListKind {
    fn from(l: ListArg) -> ListKind {
        match l {
            ListArg::Allow => ListKind::Allow,
            ListArg::Deny => ListKind::Deny,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Print a list (both lists without an argument).
    Show { list: Option<ListArg> },
    /// Add entries: 10.1.2.3, 192.168.0.0/16, 10.*.*.*, 172.16-31.*.*, ::1, 2001:db8::/32.
    Add {
        list: ListArg,
        #[arg(required = true, value_name = "ENTRY")]
        entries: Vec<String>,
    },
    /// Remove entries (any equivalent spelling matches).
    Remove {
        list: ListArg,
        #[arg(required = true, value_name = "ENTRY")]
        entries: Vec<String>,
    },
    /// Import entries from a CSV, TSV or one-per-line file ("-" for stdin);
    /// invalid entries and duplicates are skipped and reported.
    Import { list: ListArg, file: PathBuf },
    /// Write a list one entry per line, to FILE or standard output.
    Export {
        list: ListArg,
        file: Option<PathBuf>,
    },
}

pub fn run(store: &mut Store, cmd: ListCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ListCommand::Show { list } => {
            let lists = match list {
                Some(l) => vec![l.into()],
                None => vec![ListKind::Allow, ListKind::Deny],
            };
            for kind in lists {
                let entries = store.list_entries(kind)?;
                println!("{kind} ({}):", plural(entries.len(), "entry", "entries"));
                for e in entries {
                    println!("  {e}");
                }
            }
        }
        ListCommand::Add { list, entries } => {
            let parsed = parse_all(&entries)?;
            let outcome = store.add_entries(list.into(), &parsed)?;
            for e in &outcome.added {
                println!("added {e} to the {} list", ListKind::from(list));
            }
            for (e, existing) in &outcome.duplicates {
                println!("{e}: already listed as {existing}");
            }
        }
        ListCommand::Remove { list, entries } => {
            let parsed = parse_all(&entries)?;
            for e in store.remove_entries(list.into(), &parsed)? {
                println!("removed {e} from the {} list", ListKind::from(list));
            }
        }
        ListCommand::Import { list, file } => {
            let text = super::read_text_file(&file)?;
            let parsed = parse_list_text(&text);
            let outcome = store.add_entries(list.into(), &parsed.entries)?;
            let dups = parsed.duplicates.len() + outcome.duplicates.len();
            println!(
                "imported {} into the {} list; {} and {} skipped",
                plural(outcome.added.len(), "entry", "entries"),
                ListKind::from(list),
                plural(dups, "duplicate", "duplicates"),
                plural(parsed.invalid.len(), "invalid entry", "invalid entries")
            );
            for (e, first) in &parsed.duplicates {
                println!("  duplicate, line {}: {} (same as {first})", e.line, e.text);
            }
            for (e, existing) in &outcome.duplicates {
                match parsed.entries.iter().find(|p| &p.text == e) {
                    Some(p) => println!(
                        "  duplicate, line {}: {e} (already listed as {existing})",
                        p.line
                    ),
                    None => println!("  duplicate: {e} (already listed as {existing})"),
                }
            }
            for s in &parsed.invalid {
                println!("  invalid, line {}: {}", s.line, s.error);
            }
        }
        ListCommand::Export { list, file } => {
            let entries = store.list_entries(list.into())?;
            let text = format_list_text(&entries);
            match file {
                Some(path) => {
                    super::write_private_file(&path, &text)?;
                    let n = entries.len();
                    println!(
                        "exported {} of the {} list to {} (owner-only)",
                        plural(n, "entry", "entries"),
                        ListKind::from(list),
                        path.display()
                    );
                }
                None => std::io::stdout().write_all(text.as_bytes())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses every entry; the first invalid one fails the whole command.
fn parse_all(entries: &[String]) -> anyhow::Result<Vec<ParsedEntry>> {
    entries
        .iter()
        .map(|text| {
            Ok(ParsedEntry {
                line: 0,
                pattern: IpPattern::parse(text)?,
                text: text.trim().to_string(),
            })
        })
        .collect()
}
