//! The `worker` binary: the job pool (`worker run`) and the operators' command line, in four
//! rooms (ARCHITECTURE.md): `runtime` (apalis, generic over the context it runs jobs with),
//! `handlers` (one per job, and the context they share), `sales` (prompt, model, Meta's
//! limits) and `cli` (the operators' commands).

pub mod cli;
mod handlers;
pub mod runtime;
pub mod sales;

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
