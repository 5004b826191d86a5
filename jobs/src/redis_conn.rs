//! The Redis connection both binaries use: explicit connect and reply timeouts (a slow reply
//! fails one command, not the process), reconnects by itself after a Redis restart, and, with
//! `REDIS_SENTINELS`, follows the master through a failover.
//!
//! [`RedisConn`] holds the current [`ConnectionManager`]. Without sentinels it is exactly that
//! manager. With them, a reply that says the node is no longer a writable master (`READONLY`,
//! `MASTERDOWN`) or a lost connection starts one look-up of the master through the sentinels
//! (concurrent failures share it), and a master found elsewhere replaces the connection. The
//! failed command itself still fails: callers decide whether it is safe to send again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use igsales_config::RedisSettings;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, RedisResult, TlsMode, Value,
};

#[derive(Debug, thiserror::Error)]
pub enum RedisStartupError {
    #[error(
        "Redis is unreachable at {location} ({var}): {reason}. Start Redis or point {var} at a running server."
    )]
    Unreachable {
        location: String,
        var: &'static str,
        reason: String,
    },
    #[error(
        "Redis at {location} has maxmemory-policy {policy}; production needs noeviction (queues and dedupe claims must never be evicted): CONFIG SET maxmemory-policy noeviction, and persist it in redis.conf."
    )]
    Eviction { location: String, policy: String },
}

/// How often a failing master is looked up again through the sentinels, at most.
const LOOKUP_PAUSE: Duration = Duration::from_millis(250);
/// How long a look-up keeps trying after one failure before it waits for the next one.
const LOOKUP_PERSISTENCE: Duration = Duration::from_secs(60);

/// The one Redis connection type of both binaries. Cheap to clone; clones share the connection
/// and follow a failover together.
#[derive(Clone)]
pub struct RedisConn {
    shared: Arc<Shared>,
}

struct Shared {
    current: RwLock<Current>,
    follower: Option<Follower>,
}

#[derive(Clone)]
struct Current {
    /// Bumped each time the connection is replaced by one to another master.
    generation: u64,
    conn: ConnectionManager,
    /// Where it points (sentinel mode only).
    addr: Option<ConnectionAddr>,
}

/// What following the master through the sentinels needs.
struct Follower {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
    settings: RedisSettings,
    /// A look-up is under way: further failures wait for its outcome instead of starting one.
    looking: AtomicBool,
}

fn manager_config(settings: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2))
}

fn addr_text(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        _ => "a unix socket".to_owned(),
    }
}

/// A reply that says this node no longer takes writes, or that the connection is gone.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

fn lost_master_value(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(e.code(), "READONLY" | "MASTERDOWN"),
        _ => false,
    }
}

impl Follower {
    fn build(
        settings: &RedisSettings,
        sentinels: &[(String, u16)],
        master: &str,
    ) -> RedisResult<Follower> {
        let url: ConnectionInfo = settings.url.expose().into_connection_info()?;
        let tls = settings.url.is_tls();
        let mut auth = RedisConnectionInfo::default();
        if let Some(password) = &settings.sentinel_password {
            auth = auth.set_password(password.expose());
        }
        let infos: Vec<ConnectionInfo> = sentinels
            .iter()
            .map(|(host, port)| {
                let addr = if tls {
                    ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.clone(), *port)
                };
                addr.into_connection_info()
                    .map(|info| info.set_redis_settings(auth.clone()))
            })
            .collect::<RedisResult<_>>()?;
        let mut node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(url.redis_settings().clone());
        if tls {
            node = node.set_tls_mode(TlsMode::Secure);
        }
        Ok(Follower {
            sentinel: tokio::sync::Mutex::new(Sentinel::build(infos)?),
            master: master.to_owned(),
            node,
            settings: settings.clone(),
            looking: AtomicBool::new(false),
        })
    }

    /// Asks the sentinels for the master (they check it answers ROLE as a master) and, unless
    /// it is still at `known`, connects to it; within a bounded time.
    async fn connect_master(
        &self,
        known: Option<&ConnectionAddr>,
    ) -> Result<Option<(ConnectionManager, ConnectionAddr)>, String> {
        let within = self.settings.connect_timeout * 3;
        let lookup = async {
            let client = self
                .sentinel
                .lock()
                .await
                .async_master_for(&self.master, Some(&self.node))
                .await
                .map_err(|e| format!("no master from the sentinels ({})", describe(&e)))?;
            let addr = client.get_connection_info().addr().clone();
            if known == Some(&addr) {
                // Still the master: the manager reconnects to it by itself.
                return Ok(None);
            }
            let conn = client
                .get_connection_manager_with_config(manager_config(&self.settings))
                .await
                .map_err(|e| format!("master {}: {}", addr_text(&addr), describe(&e)))?;
            Ok(Some((conn, addr)))
        };
        tokio::time::timeout(within, lookup)
            .await
            .map_err(|_| format!("no answer within {within:?}"))?
    }
}

impl Shared {
    fn current(&self) -> Current {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Looks the master up until one is found (or for [`LOOKUP_PERSISTENCE`]); moves the
    /// connection over when it is elsewhere.
    async fn follow(self: Arc<Self>) {
        let Some(f) = &self.follower else { return };
        let started = tokio::time::Instant::now();
        loop {
            let known = self.current().addr;
            match f.connect_master(known.as_ref()).await {
                Ok(None) => break,
                Ok(Some((conn, addr))) => {
                    let mut current = match self.current.write() {
                        Ok(c) => c,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    tracing::warn!(
                        redis.master = %addr_text(&addr),
                        redis.previous = %current.addr.as_ref().map(addr_text).unwrap_or_default(),
                        "the sentinels name another Redis master; following it"
                    );
                    *current = Current {
                        generation: current.generation + 1,
                        conn,
                        addr: Some(addr),
                    };
                    break;
                }
                Err(reason) => {
                    if started.elapsed() > LOOKUP_PERSISTENCE {
                        tracing::error!(%reason, "no Redis master found through REDIS_SENTINELS");
                        break;
                    }
                    tracing::warn!(%reason, "looking for the Redis master through REDIS_SENTINELS");
                }
            }
            tokio::time::sleep(LOOKUP_PAUSE).await;
        }
        f.looking.store(false, Ordering::SeqCst);
    }
}

impl RedisConn {
    /// A connection that never follows a failover (the plain `REDIS_URL` case, and tests).
    pub fn fixed(conn: ConnectionManager) -> RedisConn {
        RedisConn {
            shared: Arc::new(Shared {
                current: RwLock::new(Current {
                    generation: 0,
                    conn,
                    addr: None,
                }),
                follower: None,
            }),
        }
    }

    /// Which master the connection points at: changes each time it followed a failover. A
    /// `WAIT` is only meaningful on the connection that carried the writes it waits for.
    pub fn generation(&self) -> u64 {
        self.shared.current().generation
    }

    /// Follows the sentinels (when there are any) because this node is not a writable master
    /// or the connection failed. One look-up at a time; returns at once.
    pub fn suspect_master(&self) {
        let Some(f) = &self.shared.follower else {
            return;
        };
        if f.looking.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(self.shared.clone().follow());
    }

    fn check(&self, e: &RedisError) {
        if lost_master(e) {
            self.suspect_master();
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut conn = self.shared.current().conn;
            let result = conn.req_packed_command(cmd).await;
            match &result {
                Err(e) => self.check(e),
                Ok(v) if lost_master_value(v) => self.suspect_master(),
                Ok(_) => {}
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut conn = self.shared.current().conn;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Err(e) => self.check(e),
                Ok(values) if values.iter().any(lost_master_value) => self.suspect_master(),
                Ok(_) => {}
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.current().conn.get_db()
    }
}

/// Connects (through the sentinels when `REDIS_SENTINELS` is set), checks the server answers,
/// and checks the eviction policy where Redis lets us read it (production refuses anything
/// but `noeviction`; development warns).
pub async fn connect(settings: &RedisSettings) -> Result<RedisConn, RedisStartupError> {
    // rediss:// needs a process-wide rustls crypto provider; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let location = settings.location();
    let var = if settings.sentinel().is_some() {
        "REDIS_SENTINELS"
    } else {
        "REDIS_URL"
    };
    let unreachable = |reason: String| RedisStartupError::Unreachable {
        location: location.clone(),
        var,
        reason,
    };
    let mut conn = match settings.sentinel() {
        None => {
            let client = redis::Client::open(settings.url.expose())
                .map_err(|e| unreachable(format!("bad URL ({:?})", e.kind())))?;
            let manager = tokio::time::timeout(
                settings.connect_timeout * 2,
                client.get_connection_manager_with_config(manager_config(settings)),
            )
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {:?}",
                    settings.connect_timeout * 2
                ))
            })?
            .map_err(|e| unreachable(describe(&e)))?;
            RedisConn::fixed(manager)
        }
        Some((sentinels, master)) => {
            let follower = Follower::build(settings, sentinels, master)
                .map_err(|e| unreachable(format!("bad settings ({:?})", e.kind())))?;
            let (manager, addr) = follower
                .connect_master(None)
                .await
                .map_err(unreachable)?
                .ok_or_else(|| unreachable("no master".to_owned()))?;
            tracing::info!(redis.master = %addr_text(&addr), "found the Redis master through the sentinels");
            RedisConn {
                shared: Arc::new(Shared {
                    current: RwLock::new(Current {
                        generation: 0,
                        conn: manager,
                        addr: Some(addr),
                    }),
                    follower: Some(follower),
                }),
            }
        }
    };
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
