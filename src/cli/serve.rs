//! `relaygate serve --headless`: the engine with no console, logging every
//! event to stderr, until SIGINT or SIGTERM.

use crate::engine::Engine;
use crate::events::{Event, EventBus, Level, Stamped, describe};
use anyhow::Context;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use tokio::sync::mpsc;

/// Runs the engine headless until a signal, then shuts down gracefully.
pub fn run(db: &Path) -> anyhow::Result<ExitCode> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let bus = std::sync::Arc::new(EventBus::default());
        // Command lines are logged at debug level only.
        let events = if tracing::enabled!(tracing::Level::DEBUG) {
            bus.subscribe(65_536)
        } else {
            bus.subscribe_without_commands(65_536)
        };
        let engine = Engine::start(db, bus).await?;
        let logger = tokio::spawn(log_events(events, std::sync::Arc::clone(engine.shared())));
        tracing::info!(
            "relaygate engine running on {} (spool {})",
            db.display(),
            engine.shared().spool.path().display()
        );
        wait_for_signal().await;
        tracing::info!("shutting down: no new sessions; messages in DATA may finish");
        engine.shutdown().await;
        // Let the logger print what the shutdown emitted.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        logger.abort();
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The engine with the console in the foreground; headless (with a
/// one-line note) when standard input or output is not a terminal.
pub fn run_console(db: &Path) -> anyhow::Result<ExitCode> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        eprintln!("relaygate: not a terminal, so no console: running headless, logging to stderr");
        return run(db);
    }
    crate::console::run(db)?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One log line per event; decisions with their full reason.
async fn log_events(
    mut events: mpsc::Receiver<Stamped>,
    shared: std::sync::Arc<crate::engine::Shared>,
) {
    let mut reported_drops = 0;
    while let Some(stamped) = events.recv().await {
        let dropped = shared.events.dropped();
        if dropped > reported_drops {
            tracing::warn!(
                "{} events dropped: the log could not keep up",
                dropped - reported_drops
            );
            reported_drops = dropped;
        }
        log_event(&stamped.event);
    }
}

fn log_event(event: &Event) {
    // Command lines are logged at debug level only: do not even format them
    // unless that level is on.
    if matches!(event, Event::Command { .. }) && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let d = describe(event);
    match d.level {
        Level::Debug => tracing::debug!("{}", d.text),
        Level::Info => tracing::info!("{}", d.text),
        Level::Warn => tracing::warn!("{}", d.text),
        Level::Error => tracing::error!("{}", d.text),
    }
}
