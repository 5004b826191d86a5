//! The `ingress` binary: a thin axum server. This step serves health and readiness; webhooks,
//! OAuth and Meta's callbacks are added on the same state.

pub mod config;
mod health;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clap::Parser as _;
use igsales_schema::Db;
use redis::aio::ConnectionManager;

use crate::config::{IngressArgs, IngressSettings};

/// Cheap, cloneable handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub redis: ConnectionManager,
    /// How long a readiness probe waits for each dependency.
    pub probe_timeout: Duration,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// Exit codes: 0 after a clean shutdown, 1 runtime failure, 2 configuration error.
pub fn main() -> ExitCode {
    igsales_config::run_checked(IngressArgs::parse().check(), serve)
}

/// Connects to Redis and Postgres (refusing a role that bypasses RLS), then listens until
/// SIGTERM or Ctrl-C, letting in-flight requests finish.
pub async fn serve(settings: IngressSettings) -> anyhow::Result<()> {
    let redis = igsales_jobs::redis_conn::connect(&settings.redis, settings.app_env).await?;
    let db = Db::connect(&settings.db).await?;
    let state = AppState {
        db,
        redis,
        probe_timeout: settings.redis.response_timeout,
    };
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (PORT): {e}"))?;
    tracing::info!(http.port = settings.port, "ingress listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("ingress stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
