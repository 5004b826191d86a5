//! The `worker` binary: the job pool (`worker run`) and the operators' command line.

mod admin;
pub mod catalog;
pub mod cli;
mod commands;
pub mod dlq;
mod graph;
mod handlers;
mod keys;
pub mod llm;
pub mod reply;
pub mod runtime;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Action, Cli};

/// Parses and validates the command line and environment, then runs the command.
/// Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
pub fn main() -> ExitCode {
    // `worker healthcheck` probes a running pool's METRICS_PORT (for container health checks).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return igsales_config::healthcheck("METRICS_PORT", 10001);
    }
    igsales_config::run_checked(Cli::parse().check(), Action::run)
}
