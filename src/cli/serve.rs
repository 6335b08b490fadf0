//! `relaygate serve --headless`: the engine with no console, logging every
//! event to stderr, until SIGINT or SIGTERM.

use crate::engine::Engine;
use crate::events::{Event, EventBus, Stamped};
use crate::policy::decision::Verdict;
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
        let events = bus.subscribe(65_536);
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
    match event {
        Event::ListenerUp { addr, kind } => tracing::info!("listening on {addr} ({kind})"),
        Event::ListenerFailed { addr, kind, error } => {
            tracing::error!("cannot listen on {addr} ({kind}): {error}")
        }
        Event::ListenerDown { addr } => tracing::info!("stopped listening on {addr}"),
        Event::PolicyReloaded { allow, deny } => {
            tracing::info!("configuration reloaded: {allow} allow and {deny} deny entries")
        }
        Event::ConfigRejected { error } => {
            tracing::error!("configuration change rejected, previous one stays: {error}")
        }
        Event::SessionOpened {
            session,
            peer,
            local,
            kind,
            tls,
        } => tracing::info!(
            "session {session} opened from {peer} on {local} ({kind}{})",
            if *tls { ", TLS" } else { "" }
        ),
        Event::SessionRefused { peer, reply } => tracing::warn!("refused {peer}: {reply}"),
        Event::SessionClosed { session, why } => tracing::info!("session {session} closed: {why}"),
        Event::TlsEstablished { session } => tracing::info!("session {session} STARTTLS done"),
        Event::Command {
            session,
            line,
            reply,
        } => tracing::debug!("session {session} C: {line} S: {reply}"),
        Event::Authenticated { session, login } => {
            tracing::info!("session {session} authenticated as {login}")
        }
        Event::AuthFailed {
            session,
            peer,
            login,
        } => tracing::warn!(
            "session {session} AUTH failed from {peer} for {}",
            login.as_deref().unwrap_or("?")
        ),
        Event::Decision {
            session,
            peer,
            login,
            sender,
            recipient,
            decision,
        } => {
            let line = format!(
                "decision session={session} peer={peer} login={} from=<{sender}> to=<{recipient}> class={} reply=\"{}\" {decision}",
                login.as_deref().unwrap_or("-"),
                decision.class,
                decision.reply
            );
            if decision.verdict == Verdict::Allow {
                tracing::info!("{line}")
            } else {
                tracing::warn!("{line}")
            }
        }
        Event::MessageAccepted {
            session,
            id,
            size,
            recipients,
        } => tracing::info!(
            "session {session} message {id} accepted: {size} bytes, {recipients} recipients"
        ),
        Event::Delivery {
            message_id,
            recipient,
            host,
            outcome,
            reply,
        } => {
            let line =
                format!("delivery {message_id} to=<{recipient}> via {host}: {outcome}: {reply}");
            if *outcome == "delivered" {
                tracing::info!("{line}")
            } else {
                tracing::warn!("{line}")
            }
        }
        Event::Bounced {
            message_id,
            bounce_id,
            to,
        } => tracing::warn!("bounce {bounce_id} for {message_id} queued to <{to}>"),
        Event::Error { session, message } => match session {
            Some(s) => tracing::error!("session {s}: {message}"),
            None => tracing::error!("{message}"),
        },
    }
}
