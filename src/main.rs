//! relaygate: parse the command line, hand off, map errors to exit 2.
#![forbid(unsafe_code)]

use clap::Parser;
use relaygate::cli::{Cli, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relaygate: error: {}", error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause once: many errors
/// already name their cause in their own text.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `relaygate list show deny | head -1`: when the reader goes away, stop
/// quietly, as Unix tools do, instead of a panic message (Rust ignores
/// SIGPIPE, so `println!` panics on EPIPE).
fn quiet_on_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        // The headless log's last lines first, then the panic.
        relaygate::cli::flush_log_on_panic();
        previous(info);
    }));
}

/// mimalloc: glibc's allocator merges its fast bins at every allocation of
/// a kilobyte or more (a message body, a read buffer), which was a tenth
/// of the engine's CPU per relayed message; mimalloc has no such pass.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
