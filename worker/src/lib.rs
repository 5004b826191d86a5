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
    igsales_config::run_checked(Cli::parse().check(), run)
}

async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Run(settings) => runtime::run(*settings).await,
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
        Action::TokensRefresh {
            db,
            redis,
            merchant,
            window,
        } => admin::tokens_refresh(&db, &redis, merchant, window).await,
        Action::AccountsResubscribe {
            db,
            keys,
            graph,
            merchant,
        } => admin::accounts_resubscribe(&db, &keys, &graph, merchant).await,
        Action::AccountsDisconnect {
            db,
            keys,
            graph,
            merchant,
            account,
        } => admin::accounts_disconnect(&db, &keys, &graph, merchant, &account).await,
        Action::ConversationResume {
            db,
            merchant,
            customer,
        } => admin::conversation_resume(&db, merchant, &customer).await,
        Action::DlqList {
            redis,
            queue,
            limit,
            json,
            show_payload,
        } => dlq::list(&redis, queue.as_deref(), limit, json, show_payload).await,
        Action::DlqReplay { redis, queue, id } => dlq::replay(&redis, &queue, id.as_deref()).await,
        Action::DlqDrain {
            redis,
            queue,
            older_than,
        } => dlq::drain(&redis, &queue, older_than).await,
    }
}
