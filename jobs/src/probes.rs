//! `/healthz`, `/readyz` and `/metrics` as both binaries answer them (the ingress on its port,
//! the worker on `METRICS_PORT`).
//!
//! Here because this crate already holds what ingress and worker share about Redis, the
//! connection readiness pings; the Postgres half comes from the schema crate, which both
//! binaries use anyway.

use std::time::Duration;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use igsales_schema::Db;
use serde_json::json;

use crate::redis_conn::RedisConn;

pub async fn healthz() -> &'static str {
    "ok"
}

/// What readiness found Redis to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    /// A master: it takes writes.
    Master,
    /// Alive but a replica (or a sentinel): writes would fail with READONLY.
    NotMaster,
    /// No answer within the timeout, or an error.
    Down,
}

impl RedisRole {
    pub fn word(self) -> &'static str {
        match self {
            RedisRole::Master => "ok",
            RedisRole::NotMaster => "not_writable_master",
            RedisRole::Down => "error",
        }
    }
}

/// Asks the node its `ROLE` (or, where an ACL refuses ROLE, its `INFO replication`): a demoted
/// master still answers PING, so being alive is not enough. A node that is not the master
/// makes the connection look the master up again (sentinel mode).
pub async fn redis_role(redis: &RedisConn, timeout: Duration) -> RedisRole {
    let mut conn = redis.clone();
    let ask = async {
        match redis::cmd("ROLE")
            .query_async::<redis::Role>(&mut conn)
            .await
        {
            Ok(redis::Role::Primary { .. }) => Ok(true),
            Ok(_) => Ok(false),
            Err(e) if e.code() == Some("NOPERM") => redis::cmd("INFO")
                .arg("replication")
                .query_async::<String>(&mut conn)
                .await
                .map(|info| info.lines().any(|l| l.trim() == "role:master")),
            Err(e) => Err(e),
        }
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(true)) => RedisRole::Master,
        Ok(Ok(false)) => {
            redis.suspect_master();
            RedisRole::NotMaster
        }
        _ => RedisRole::Down,
    }
}

/// 200 when Redis is a writable master and Postgres answers, both within `timeout`; 503 naming
/// the one that is not.
pub async fn readyz(
    db: &Db,
    redis: &RedisConn,
    timeout: Duration,
) -> (StatusCode, Json<serde_json::Value>) {
    let (role, db_ok) = tokio::join!(redis_role(redis, timeout), async {
        tokio::time::timeout(timeout, db.ping())
            .await
            .is_ok_and(|r| r.is_ok())
    });
    let status = if role == RedisRole::Master && db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "redis": role.word(),
            "postgres": if db_ok { "ok" } else { "error" },
        })),
    )
}

/// Prometheus text from the process-wide recorder (nginx does not expose this route).
pub async fn metrics() -> Response {
    match igsales_config::prometheus() {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response(),
    }
}
