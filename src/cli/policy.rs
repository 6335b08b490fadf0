//! `relaygate policy show` and `relaygate policy set KEY on|off`

use crate::policy::settings::parse_on_off;
use crate::server_settings::{SERVER_KEYS, ServerSettings};
use crate::store::Store;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the auth mode, every switch and the size of each list.
    Show,
    /// Set a switch (internal.listed-ip, internal.auth, outbound.listed-ip,
    /// outbound.auth, relay.listed-ip, relay.auth, domain-restrict-send,
    /// user-restrict-send, sender-login-match) on or off, or an engine
    /// setting (plaintext-auth, max-message-size, ...: see `policy show`).
    Set {
        key: String,
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
}

pub fn run(store: &mut Store, cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Show => {
            let config = store.load_config()?;
            // One column for every key, the longest included.
            let w = config
                .switches
                .entries()
                .iter()
                .map(|(k, _, _)| k.len())
                .chain(SERVER_KEYS.iter().map(|(k, _)| k.len()))
                .max()
                .unwrap_or(22);
            println!("{:<w$} {}", "auth mode", config.auth_mode);
            for (key, on, what) in config.switches.entries() {
                println!("{key:<w$} {:<4} {what}", if on { "on" } else { "off" });
            }
            println!(
                "{:<w$} {} allow, {} deny entries; {} local domains; {} users; {} rules",
                "lists",
                config.allow.len(),
                config.deny.len(),
                config.local_domains.len(),
                config.users.len(),
                config.rules.len()
            );
            let server = store.server_settings()?;
            for (key, what) in SERVER_KEYS {
                let value = server.get(key).unwrap_or_default();
                let value = if value.is_empty() {
                    "(none)".to_string()
                } else {
                    value
                };
                println!("{key:<w$} {value:<10} {what}");
            }
            for note in config.switches.notes() {
                println!("note: {note}");
            }
            for class in config.switches.open_to_anyone() {
                println!("warning: {}", crate::policy::settings::open_warning(class));
            }
            if server.verify_recipients {
                for note in unverifiable_domains(store)? {
                    println!("{note}");
                }
            }
            if let Some(problem) = tls_problem(&server) {
                println!("{problem}");
            }
            engine_state(store.path(), w);
        }
        PolicyCommand::Set { key, value } if ServerSettings::is_key(&key) => {
            let value = store.set_server_setting(&key, &value)?;
            println!("{key} = {value}");
            if (key == "tls-cert-file" || key == "tls-key-file")
                && let Some(problem) = tls_problem(&store.server_settings()?)
            {
                println!("{problem}");
            }
            if key == "console-group"
                && !value.is_empty()
                && crate::control::access::lookup_group(&value).is_none()
            {
                println!(
                    "warning: no group {value} on this machine (/etc/group): the control socket stays owner-only until it exists"
                );
            }
            if key == "delay-warning" || key == "max-queue-age" {
                let s = store.server_settings()?;
                if s.delay_warning_secs > 0 && s.delay_warning_secs >= s.max_queue_age_secs {
                    println!(
                        "warning: delay-warning ({} s) is not shorter than max-queue-age ({} s): mail bounces before any delay warning is sent",
                        s.delay_warning_secs, s.max_queue_age_secs
                    );
                }
            }
            if key == "verify-recipients" && value == "on" {
                for note in unverifiable_domains(store)? {
                    println!("{note}");
                }
            }
            if key == "max-command-line"
                && let Ok(n) = value.parse::<usize>()
                && n < crate::smtp::server::DSN_COMMAND_LINE
            {
                println!(
                    "note: a command line of up to {} bytes is still taken: the room RFC 3461 gives DSN parameters",
                    crate::smtp::server::DSN_COMMAND_LINE
                );
            }
            if key == "plaintext-auth" && value == "on" {
                println!(
                    "warning: AUTH is now offered without TLS: passwords cross the network in clear"
                );
            }
        }
        PolicyCommand::Set { key, value } => {
            // The key first: a misspelt key is named as such, not taken for
            // a switch with a bad value.
            crate::policy::settings::Switches::default().set(&key, false)?;
            let on = parse_on_off(&value)?;
            store.set_switch(&key, on)?;
            println!("{key} = {}", if on { "on" } else { "off" });
            for class in store.load_config()?.switches.open_to_anyone() {
                println!("warning: {}", crate::policy::settings::open_warning(class));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Local domains whose recipients verification cannot ask about: they
/// have no route of their own (a local domain never goes to `*` or MX).
fn unverifiable_domains(store: &Store) -> anyhow::Result<Vec<String>> {
    Ok(store
        .local_domains_without_route()?
        .into_iter()
        .map(|d| {
            format!(
                "note: local domain {d} has no route, so its recipients are taken unverified (relaygate route add {d} HOST:PORT)"
            )
        })
        .collect())
}

/// What is wrong with the configured TLS files, as the engine will find
/// it: one of the pair missing (the generated certificate stays in use),
/// or files that do not load (the engine keeps its previous certificate;
/// everything else still applies).
fn tls_problem(settings: &ServerSettings) -> Option<String> {
    // A file given that cannot be read is said first: the pair's other
    // half may well come next, but this one will not do.
    let unreadable = |key: &str, path: &str| {
        std::fs::File::open(path).err().map(|e| {
            format!("warning: {key} {path}: {e}; stored all the same, the engine cannot use it")
        })
    };
    let missing = |key: &str, set: (&str, &str)| {
        unreadable(set.0, set.1).or_else(|| {
            Some(format!(
                "warning: {key} is not set: the generated certificate stays in use until both files are set"
            ))
        })
    };
    match (&settings.tls_cert_file, &settings.tls_key_file) {
        (None, None) => None,
        (Some(cert), None) => missing("tls-key-file", ("tls-cert-file", cert)),
        (None, Some(key)) => missing("tls-cert-file", ("tls-key-file", key)),
        (Some(cert), Some(key)) => crate::tls::load_server_config(
            std::path::Path::new(cert),
            std::path::Path::new(key),
        )
        .err()
        .map(|e| {
            format!(
                "warning: the TLS files do not load for this user ({e}); stored all the same (the other of the pair may come next), and the engine keeps its previous certificate (none at start) until they do"
            )
        }),
    }
}

/// Whether an engine runs on this database, and a configuration it refused
/// (read from its event log: the refusal stands until a later reload).
fn engine_state(db: &std::path::Path, w: usize) {
    let dir = crate::data_dir::DataDir::for_db(db);
    match dir.running_engine() {
        Some(pid) => println!(
            "{:<w$} running{}",
            "engine",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        None => println!("{:<w$} not running", "engine"),
    }
    let Ok(log) = crate::decision_log::DecisionLog::open_read_only(&dir.log) else {
        return;
    };
    if let Ok(Some((at, crate::events::Event::ConfigRejected { error }))) = log.standing_rejection()
    {
        let ago = at.elapsed().map_or(0, |d| d.as_secs());
        println!(
            "error: {ago} s ago the engine refused the stored configuration, and runs on the previous one: {error}"
        );
    }
}
