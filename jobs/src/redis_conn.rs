//! The Redis connection both binaries use: explicit connect and reply timeouts (a slow reply
//! fails one command, not the process), reconnects by itself after a Redis restart.

use std::time::Duration;

use igsales_config::RedisSettings;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisStartupError {
    #[error(
        "Redis is unreachable at {location} (REDIS_URL): {reason}. Start Redis or point REDIS_URL at a running server."
    )]
    Unreachable { location: String, reason: String },
    #[error(
        "Redis at {location} has maxmemory-policy {policy}; production needs noeviction (queues and dedupe claims must never be evicted): CONFIG SET maxmemory-policy noeviction, and persist it in redis.conf."
    )]
    Eviction { location: String, policy: String },
}

/// Connects, checks the server answers, and checks the eviction policy where Redis lets us read
/// it (production refuses anything but `noeviction`; development warns).
pub async fn connect(settings: &RedisSettings) -> Result<ConnectionManager, RedisStartupError> {
    // rediss:// needs a process-wide rustls crypto provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let location = settings.url.location();
    let unreachable = |reason: String| RedisStartupError::Unreachable {
        location: location.clone(),
        reason,
    };
    let client = redis::Client::open(settings.url.expose())
        .map_err(|e| unreachable(format!("bad URL ({:?})", e.kind())))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let mut conn = tokio::time::timeout(
        settings.connect_timeout * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| {
        unreachable(format!(
            "no answer within {:?}",
            settings.connect_timeout * 2
        ))
    })?
    .map_err(|e| unreachable(describe(&e)))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| unreachable(describe(&e)))?;

    match redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async::<Vec<String>>(&mut conn)
        .await
    {
        Ok(pair) => {
            let policy = pair.get(1).cloned().unwrap_or_default();
            if policy != "noeviction" {
                if settings.app_env.is_production() {
                    return Err(RedisStartupError::Eviction { location, policy });
                }
                tracing::warn!(
                    redis.maxmemory_policy = %policy,
                    "Redis may evict keys; production requires maxmemory-policy noeviction"
                );
            }
        }
        Err(_) => tracing::warn!(
            "cannot read Redis maxmemory-policy (CONFIG is disabled here); make sure it is noeviction"
        ),
    }
    Ok(conn)
}

/// Redis refused the command without running it, for now: loading its data after a restart, a
/// script hogging it, a replica or a primary mid-failover.
pub fn refused_for_now(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN")
    )
}

/// A Redis error without anything that could carry the URL or its password.
pub fn describe(e: &redis::RedisError) -> String {
    if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_io_error() {
        "I/O error".to_owned()
    } else {
        format!("{:?} error", e.kind())
    }
}
