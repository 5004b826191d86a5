//! The `ingress` binary: a thin axum server for Meta's webhooks, the Instagram OAuth connect
//! flow, Meta's deauthorize and data-deletion callbacks, health and metrics.

mod auth;
mod callbacks;
pub mod config;
mod error;
mod health;
pub mod metrics;
mod oauth;
mod resolver;
mod webhook;

use std::net::SocketAddr;
use std::ops::Deref;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::routing::{get, post};
use clap::Parser as _;
use igsales_jobs::RedisConn;
use igsales_jobs::{InboundEventV1, InboundSignalV1, JobQueue};
use igsales_meta::{MetaClient, OAuthApp, OAuthClient, WebhookVerifier};
use igsales_schema::{Db, Vault};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

pub use crate::config::{IngressArgs, IngressSettings};
pub use crate::error::AppError;
use crate::resolver::AccountResolver;

/// Everything a request needs; one `Arc`, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: IngressSettings,
    pub db: Db,
    pub redis: RedisConn,
    /// Events that may call the model.
    pub inbound: JobQueue<InboundEventV1>,
    /// Everything else, kept apart so echoes never wait behind model calls.
    pub signals: JobQueue<InboundSignalV1>,
    pub verifier: WebhookVerifier,
    pub accounts: AccountResolver,
    pub meta: MetaClient,
    /// The Graph client with the app's OAuth credentials (the connect flow's exchanges).
    pub oauth: OAuthClient,
    pub vault: Vault,
    pub admin: auth::SecretMatcher,
    pub verify_token: auth::SecretMatcher,
    /// One permit per delivery being worked on (`WEBHOOK_MAX_IN_FLIGHT`), held until its work
    /// ends, also when the answer went out first.
    pub webhook_permits: Arc<tokio::sync::Semaphore>,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Wires the handles around connections that are already established.
    pub fn new(settings: IngressSettings, db: Db, redis: RedisConn) -> AppState {
        // Metrics recorded before the recorder exists are lost: install it first (once).
        metrics::handle();
        let verifier = WebhookVerifier::new(app_secrets(&settings.app));
        let meta = MetaClient::new(&settings.graph, settings.dns.cache);
        let oauth = meta.clone().with_oauth(OAuthApp {
            base: settings.oauth.oauth_base_url.base().to_owned(),
            client_id: settings.app.id.clone(),
            client_secret: settings.app.secret.clone(),
        });
        let accounts = AccountResolver::new(
            db.clone(),
            settings.webhook.account_cache_hit,
            settings.webhook.account_cache_miss,
        );
        let admin = auth::SecretMatcher::new(settings.admin.token.expose());
        let verify_token = auth::SecretMatcher::new(settings.webhook.verify_token.expose());
        AppState(Arc::new(Inner {
            webhook_permits: Arc::new(tokio::sync::Semaphore::new(settings.webhook.max_in_flight)),
            inbound: JobQueue::new(redis.clone()),
            signals: JobQueue::new(redis.clone()),
            vault: Vault::new(&settings.keys.ring),
            verifier,
            accounts,
            meta,
            oauth,
            admin,
            verify_token,
            settings,
            db,
            redis,
        }))
    }

    /// The app secrets that sign webhooks and `signed_request`s.
    pub fn app_secrets(&self) -> Vec<&str> {
        app_secrets(&self.settings.app)
    }
}

fn app_secrets(app: &config::app::Settings) -> Vec<&str> {
    std::iter::once(&app.secret)
        .chain(&app.second_secret)
        .map(igsales_config::Secret::expose)
        .collect()
}

pub fn router(state: AppState) -> Router {
    let no_store = SetResponseHeaderLayer::overriding(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    let mut v1 = Router::new()
        .route(
            "/merchants/{merchant_id}/instagram/connect",
            post(oauth::connect),
        )
        .route("/merchants/{merchant_id}/instagram", get(oauth::accounts))
        .layer(no_store.clone());
    if !state.settings.admin.cors_allowed_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .settings
            .admin
            .cors_allowed_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        v1 = v1.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    let oauth = Router::new()
        .route("/start", get(oauth::start))
        .route("/callback", get(oauth::callback))
        .layer(no_store)
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ));
    let webhook_limit = state.settings.webhook.max_body_bytes;
    Router::new()
        .route("/healthz", get(igsales_jobs::probes::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(igsales_jobs::probes::metrics))
        .route(
            "/webhooks/instagram",
            get(webhook::handshake)
                .post(webhook::receive)
                .layer(DefaultBodyLimit::max(webhook_limit)),
        )
        .route("/meta/deauthorize", post(callbacks::deauthorize))
        .route("/meta/data-deletion", post(callbacks::data_deletion))
        .route(
            "/meta/data-deletion/status",
            get(callbacks::deletion_status),
        )
        .nest("/v1", v1)
        .nest("/oauth/instagram", oauth)
        .fallback(|| async { AppError::NotFound("no such route") })
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .with_state(state)
}

/// Exit codes: 0 after a clean shutdown, 1 runtime failure, 2 configuration error.
/// `ingress healthcheck` probes a running ingress (for container health checks).
pub fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return igsales_config::healthcheck("PORT", 10000);
    }
    igsales_config::run_checked(IngressArgs::parse().check(), serve)
}

/// Connects to Redis and Postgres (refusing a role that bypasses RLS), then listens until
/// SIGTERM or Ctrl-C. Shutdown stops accepting, lets in-flight requests finish, and gives up
/// after `SHUTDOWN_TIMEOUT_MS`.
pub async fn serve(settings: IngressSettings) -> anyhow::Result<()> {
    let redis = igsales_jobs::redis_conn::connect(&settings.redis).await?;
    let db = Db::connect(&settings.db).await?;
    let port = settings.server.port;
    let grace = settings.server.shutdown_timeout;
    let state = AppState::new(settings, db, redis);
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (PORT): {e}"))?;
    tracing::info!(http.port = port, "ingress listening");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_wait = stop_rx.clone();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        igsales_config::shutdown_signal("in-flight requests").await;
        let _ = stop_tx.send(true);
    });
    let deadline = async move {
        let _ = stop_wait.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result?,
        () = deadline => tracing::warn!("in-flight requests outlived the shutdown timeout; exiting"),
    }
    drop(stop_rx);
    tracing::info!("ingress stopped");
    Ok(())
}
