//! The `worker` binary: the job pool (from a later step) and the operators' command line.

pub mod catalog;
pub mod cli;
mod commands;
mod keys;

use std::process::ExitCode;

use clap::Parser as _;
use igsales_config::{EXIT_CONFIG, EXIT_RUNTIME, init_tracing};

use crate::cli::{Action, Cli};

/// Parses and validates the command line and environment, then runs the command.
/// Exit codes: 0 success, 1 runtime failure, 2 configuration or usage error.
pub fn main() -> ExitCode {
    let (common, action) = match Cli::parse().check() {
        Ok(checked) => checked,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_tracing(common.log_format, common.filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(run(action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Migrate {
            url,
            var,
            connect_timeout,
        } => commands::migrate(&url, var, connect_timeout).await,
        Action::KeysStatus { db, ring } => keys::status(&db, &ring).await,
        Action::KeysRotate { db, ring } => keys::rotate(&db, &ring).await,
        Action::MerchantCreate { db, name, persona } => {
            commands::merchant_create(&db, &name, persona.as_deref()).await
        }
        Action::MerchantSet {
            db,
            merchant,
            changes,
        } => commands::merchant_set(&db, merchant, &changes).await,
        Action::CatalogImport { db, merchant, file } => {
            commands::catalog_import(&db, merchant, &file).await
        }
    }
}
