//! The admin command line: one module per settings group. Every command
//! validates its input fully before writing; bad input exits 2 and changes
//! nothing.

mod ban;
mod bind;
mod check;
mod config;
mod dkim;
mod domain;
mod list;
mod policy;
mod queue;
mod quota;
mod route;
mod rule;
mod serve;
mod trace;
pub use serve::flush_log_on_panic;
mod user;

use crate::store::Store;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

/// The default database, relative to the working directory.
pub const DEFAULT_DB: &str = "data/relaygate.db";

#[derive(Debug, Parser)]
#[command(
    name = "relaygate",
    version,
    about = "SMTP relay gateway that is never an open relay",
    long_about = "SMTP relay gateway that is never an open relay.\n\nWith no command on a terminal, attaches a console to the engine running on the database, or runs the engine and the console in one process if none runs. Every command edits or reads the SQLite database given by --db; a running engine picks changes up within a second."
)]
pub struct Cli {
    /// The relaygate database (created with safe defaults if missing).
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_DB)]
    pub db: PathBuf,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show and edit the "allow relay from" and "deny relay from" IP lists.
    #[command(subcommand)]
    List(list::ListCommand),
    /// Show and edit the local domains.
    #[command(subcommand)]
    Domain(domain::DomainCommand),
    /// Show and edit users and their sender addresses.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Show or set the authentication mode.
    #[command(subcommand)]
    Auth(user::AuthCommand),
    /// Show or set the policy switches.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Show and edit the sender/recipient rules.
    #[command(subcommand)]
    Rule(rule::RuleCommand),
    /// Show and edit the listen bindings.
    #[command(subcommand)]
    Bind(bind::BindCommand),
    /// Show and edit delivery routes (internal servers, smarthost).
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Show and steer the mail queue.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// Show and edit sending quotas (per login, client address or sender domain).
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Show, add and lift bans (addresses refused at connect).
    #[command(subcommand)]
    Ban(ban::BanCommand),
    /// DKIM signing keys: the mail your users send is signed (RFC 6376).
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// The whole configuration as one TOML file: export, apply.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Explain what the policy decides for a client, sender and recipients.
    Check(check::CheckArgs),
    /// A message's whole story from the event log (connection, decisions,
    /// acceptance, every delivery attempt, the bounce) and where it is now.
    Trace(trace::TraceArgs),
    /// Attach a console to the engine running on this database (it keeps
    /// running when the console quits).
    Console,
    /// Run the SMTP engine on the stored bindings until SIGINT/SIGTERM.
    Serve {
        /// No console: log every event to stderr (RELAYGATE_LOG=debug shows
        /// each command too).
        #[arg(long)]
        headless: bool,
    },
}

/// Runs a parsed command line. `Err` is bad input or a failed operation
/// (exit 2); `check` returns 1 itself when a recipient is denied.
pub fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    // A symbolic link to the database stands for the database itself: the
    // engine's lock, spool, event log and socket are the real file's, so a
    // second engine started through the link finds the first.
    if std::fs::symlink_metadata(&cli.db).is_ok_and(|m| m.file_type().is_symlink())
        && let Ok(real) = std::fs::canonicalize(&cli.db)
    {
        cli.db = real;
    }
    let command = match cli.command {
        Some(Command::Serve { headless: true }) => return serve::run(&cli.db),
        Some(Command::Serve { headless: false }) => return serve::run_console(&cli.db),
        Some(Command::Console) => {
            crate::console::attach(&cli.db)?;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Command::Trace(args)) => return trace::run(&cli.db, args),
        None => return serve::run_default(&cli.db),
        Some(command) => command,
    };
    // Reading needs no write access: a read-only file or directory (a
    // copy, another user's database) can still be shown and checked.
    // A missing database is created with safe defaults, by any command.
    let existed = cli.db.exists();
    // A change on a full disk: the reserve kept beside the spool goes
    // first, or not even the databases could be opened to make it.
    if !reads_only(&command) && existed {
        let spool = crate::spool::spool_path_for(&cli.db);
        if crate::spool_space::measure(&cli.db)
            .is_ok_and(|free| free < crate::spool_space::NEARLY_FULL)
        {
            give_up_reserve(&spool, "less than 1 MiB free");
        }
    }
    let mut store = if reads_only(&command) && existed {
        Store::open_read_only(&cli.db)?
    } else {
        Store::open(&cli.db)?
    };
    if !existed {
        // A mistyped --db would otherwise take edits that no engine reads.
        eprintln!(
            "relaygate: note: {} did not exist: created a new database with safe defaults (no engine runs on it yet)",
            cli.db.display()
        );
    }
    match command {
        Command::Serve { .. } | Command::Console => serve::run(&cli.db),
        Command::List(c) => list::run(&mut store, c),
        Command::Domain(c) => domain::run(&mut store, c),
        Command::User(c) => user::run_user(&mut store, c),
        Command::Auth(c) => user::run_auth(&mut store, c),
        Command::Policy(c) => policy::run(&mut store, c),
        Command::Rule(c) => rule::run(&mut store, c),
        Command::Bind(c) => bind::run(&mut store, c),
        Command::Route(c) => route::run(&mut store, c),
        Command::Queue(c) => queue::run(&mut store, c),
        Command::Quota(c) => quota::run(&mut store, c),
        Command::Ban(c) => ban::run(&mut store, c),
        Command::Dkim(c) => dkim::run(&mut store, c),
        Command::Config(c) => config::run(&mut store, c),
        Command::Check(c) => check::run(&mut store, c),
        Command::Trace(args) => trace::run(&cli.db, args),
    }
}

/// Commands that only read the configuration.
fn reads_only(command: &Command) -> bool {
    if let Command::User(user::UserCommand::Addresses {
        addresses, clear, ..
    }) = command
    {
        return addresses.is_empty() && !clear;
    }
    matches!(
        command,
        Command::List(list::ListCommand::Show { .. } | list::ListCommand::Export { .. })
            | Command::Domain(domain::DomainCommand::Show)
            | Command::User(user::UserCommand::Show)
            | Command::Auth(user::AuthCommand::Show)
            | Command::Policy(policy::PolicyCommand::Show)
            | Command::Rule(rule::RuleCommand::Show)
            | Command::Bind(bind::BindCommand::Show)
            | Command::Route(route::RouteCommand::Show)
            | Command::Quota(quota::QuotaCommand::Show)
            | Command::Queue(queue::QueueCommand::Show)
            | Command::Ban(ban::BanCommand::Show { .. })
            | Command::Dkim(dkim::DkimCommand::Show)
            | Command::Config(
                config::ConfigCommand::Export { .. }
                    | config::ConfigCommand::Apply { dry_run: true, .. }
            )
            | Command::Check(_)
    )
}

/// The CLI gives up the reserve (see [`crate::spool_space::RESERVE`]) for an administrator's
/// change and says so on stderr; false if there was none.
pub(crate) fn give_up_reserve(spool: &std::path::Path, why: &str) -> bool {
    let reserve = crate::spool_space::reserve_path(spool);
    if !crate::spool_space::release_reserve(spool) {
        return false;
    }
    eprintln!(
        "relaygate: the disk is full ({why}): gave up the {} reserve kept for this ({}) to make the change; free room on the disk",
        crate::spool_space::size_text(crate::spool_space::RESERVE),
        reserve.display()
    );
    true
}

/// Reads a password from the first line of standard input.
fn read_password_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        anyhow::bail!("no password on standard input (--password-stdin reads one line)");
    }
    Ok(password.to_string())
}

/// Hashes a password read from standard input.
fn hashed_password_stdin() -> anyhow::Result<String> {
    let password = read_password_stdin()?;
    Ok(crate::credentials::hash_password(&password)?)
}

/// The most a configuration or list file may hold: far above any real
/// one, and a bound on what `config apply /dev/zero` can take.
pub const MAX_INPUT_FILE: u64 = 64 << 20;

/// A text file (or standard input for `-`) read whole, refused past
/// [`MAX_INPUT_FILE`] rather than read until memory runs out.
pub fn read_text_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::Read;
    let (mut reader, name): (Box<dyn Read>, String) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin()), "standard input".into())
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        (Box::new(f), path.display().to_string())
    };
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(MAX_INPUT_FILE + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {name}"))?;
    if bytes.len() as u64 > MAX_INPUT_FILE {
        anyhow::bail!(
            "{name} is larger than {} MiB: not read",
            MAX_INPUT_FILE >> 20
        );
    }
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{name} is not UTF-8 text"))
}

/// Writes `text` to `path` whole or not at all, owner-only: a new
/// temporary file beside it (created, never reused: a file someone else
/// put there is not written into), synced, then renamed over `path`.
pub fn write_private_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random name: {e}"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "relaygate".into());
    let tmp = path.with_file_name(format!(".{name}.relaygate-tmp-{suffix}"));
    let written = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What the engine running on `db` says of itself (its listeners, the
/// attempts under way), `None` when no engine runs, or why the running one
/// could not be asked.
pub fn ask_engine_status(
    db: &std::path::Path,
) -> Result<Option<crate::control::protocol::EngineStatus>, String> {
    let dir = crate::data_dir::DataDir::for_db(db);
    if dir.running_engine().is_none() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime
        .block_on(crate::control::client::fetch_status(db, &dir.socket))
        .map(Some)
        .map_err(|e| e.to_string())
}
