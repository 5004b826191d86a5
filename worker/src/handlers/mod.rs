//! Job bodies, and what they share. Each is idempotent (delivery is at least once) and says
//! how. [`run`] builds the shared context and registers every job's handler with the runtime.

pub mod canary;
pub mod comment;
pub mod housekeeping;
pub mod inbound;
pub mod send;
pub mod settings;
pub mod tokens;

use igsales_meta::{ErrorClass, MetaError};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use igsales_jobs::RedisConn;
use igsales_jobs::{HousekeepingV1, InboundSignalV1, TokenRefreshSweepV1, probes};
use igsales_meta::MetaClient;
use igsales_schema::{Db, DbError, MerchantId, Vault};

use self::settings::RunSettings;
use crate::runtime::{Context, Runtime};
use crate::sales::embed::EmbeddingClient;
use crate::sales::graph::GraphGate;
use crate::sales::llm::LlmClient;

use crate::runtime::outcome::JobError;

/// What every handler may use; one per process.
pub struct Shared {
    pub db: Db,
    pub redis: RedisConn,
    pub vault: Vault,
    pub meta: MetaClient,
    pub llm: LlmClient,
    /// Semantic catalog search, when OPENAI_EMBEDDING_MODEL is set.
    pub embedder: Option<EmbeddingClient>,
    pub gate: GraphGate,
    pub settings: RunSettings,
}

impl Context for Shared {
    async fn ready(&self) -> (StatusCode, Json<serde_json::Value>) {
        probes::readyz(&self.db, &self.redis, Duration::from_secs(2)).await
    }
}

/// `worker run`: connects, then runs every queue and cron until SIGTERM or a worker that keeps
/// dying.
pub async fn run(settings: RunSettings) -> anyhow::Result<()> {
    igsales_config::prometheus();
    let bound = settings.echo_must_exceed();
    if settings.conversation.echo_confirm <= bound {
        tracing::warn!(
            echo_confirm = ?settings.conversation.echo_confirm,
            "ECHO_CONFIRM_SECS should be {}: a part sent just before a worker died may go out twice",
            settings::echo_form(bound)
        );
    }
    let redis = igsales_jobs::redis_conn::connect(&settings.redis).await?;
    let db = Db::connect(&settings.db).await?;
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", settings.pool.metrics_port))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on METRICS_PORT {}: {e}",
                settings.pool.metrics_port
            )
        })?;
    let shared = Arc::new(Shared {
        vault: Vault::new(&settings.keys.ring),
        gate: GraphGate::new(redis.clone(), &settings.limits),
        meta: MetaClient::new(&settings.graph, settings.dns.cache),
        llm: LlmClient::new(&settings.model, settings.dns.cache),
        embedder: EmbeddingClient::new(&settings.model, &settings.embedding, settings.dns.cache),
        db,
        redis: redis.clone(),
        settings,
    });
    let s = &shared.settings;
    let (pool, retry) = (s.pool.clone(), s.retry.clone());
    let schedule = s.schedule.clone();
    Runtime::new(shared.clone(), redis, &pool, &retry)
        .queue(retry.inbound_event(), |j, s| async move {
            inbound::run(j, &s).await
        })
        // Its own permits and fetch loop: echoes confirm sends however far the model is behind.
        .queue(retry.inbound_event(), |j: InboundSignalV1, s| async move {
            inbound::run(j.0, &s).await
        })
        .queue(retry.send_message(), |j, s| async move {
            send::run(j, &s).await
        })
        .queue(retry.refresh_token(), |j, s| async move {
            tokens::refresh(j, &s).await
        })
        .queue(retry.max_attempts, |j, s| async move {
            tokens::sweep(j, &s).await
        })
        .queue(retry.max_attempts, |j, s| async move {
            housekeeping::run(j, &s).await
        })
        .queue(retry.max_attempts, |j, s| async move {
            canary::run(j, &s).await
        })
        .cron(schedule.token_refresh, |tick| TokenRefreshSweepV1 {
            tick,
            delivery: Default::default(),
        })
        .cron(schedule.housekeeping, |tick| HousekeepingV1 {
            tick,
            delivery: Default::default(),
        })
        .run(listener)
        .await
}

/// Postgres out of reach waits without using attempts; any other database error is a retry.
impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            JobError::Unavailable(e.into())
        } else {
            JobError::Retry(e.into())
        }
    }
}

/// What a failed Graph call means for its job (SPEC §5.3), for every caller but the Send API
/// (whose unknown outcomes and per-part states need more): a throttled merchant is paused in
/// every replica, exactly as sends are.
pub async fn graph_failed(shared: &Shared, merchant: MerchantId, e: MetaError) -> JobError {
    match e.class() {
        ErrorClass::Throttled {
            regain_after,
            scope,
        } => match shared.gate.throttled(merchant, regain_after, scope).await {
            Ok(wait) => JobError::Wait(wait, "meta throttled the merchant"),
            Err(redis) => JobError::redis(redis),
        },
        ErrorClass::Transient | ErrorClass::Unknown => JobError::Retry(e.into()),
        ErrorClass::Reauth => JobError::Dead(igsales_jobs::DeadReason::NeedsReauth, e.into()),
        ErrorClass::WindowExpired => {
            JobError::Dead(igsales_jobs::DeadReason::WindowExpired, e.into())
        }
        ErrorClass::Permanent | ErrorClass::AlreadyReplied => JobError::permanent(e),
    }
}

/// Meta's limits before a Graph call: a paused merchant or a full window waits.
pub async fn graph_admit(
    shared: &Shared,
    merchant: MerchantId,
    endpoint: &str,
) -> Result<(), JobError> {
    match shared
        .gate
        .admit(merchant, endpoint)
        .await
        .map_err(JobError::redis)?
    {
        Some(wait) => Err(JobError::Wait(wait, "graph rate limit")),
        None => Ok(()),
    }
}
