//! relaygate: parse the command line, hand off, map errors to exit 2.
#![forbid(unsafe_code)]

use clap::Parser;
use relaygate::cli::{Cli, run};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relaygate: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
