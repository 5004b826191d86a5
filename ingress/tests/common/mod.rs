//! An in-process ingress on a real port, with its own Postgres database, its own Redis
//! database, and the fake Meta.
#![allow(dead_code)] // each test file uses a different part of this harness

use std::time::Duration;

use igsales_config::{
    AppEnv, DbSettings, GraphSettings, GraphVersion, HttpUrl, KeyEntry, KeyRing, PgUrl,
    RedisSettings, RedisUrl, Secret, dns, keys,
};
use igsales_ingress::config::{admin_api, app, callbacks, oauth, server, webhook};
use igsales_ingress::{AppState, IngressSettings, router};
use igsales_jobs::InboundEventV1;
use igsales_schema::{Db, MerchantId, Vault};
use igsales_tests::fake_meta::{FakeMeta, FakeMetaConfig};
use igsales_tests::http::{Answer, get, post};
use igsales_tests::shops::{self, Account, Shop};
use igsales_tests::{TestDb, TestRedis};

/// The §1.2 fixture's key; also the Instagram app secret of the fake.
pub const IG_SECRET: &str = "test_app_secret";
pub const META_SECRET: &str = "second-meta-app-secret";
pub const ADMIN: &str = "admin-token-0123456789abcdef0123456789";
pub const VERIFY: &str = "verify-token-9f8e7d";
pub const APP_ID: &str = "990602627938098";
pub const SUCCESS_URL: &str = "http://dashboard.test/connected";
pub const FAILURE_URL: &str = "http://dashboard.test/failed";

pub fn key_ring() -> KeyRing {
    KeyRing(vec![KeyEntry {
        version: 1,
        key: [7; 32],
    }])
}

pub struct Harness {
    pub base: String,
    pub state: AppState,
    pub db: TestDb,
    pub redis: TestRedis,
    pub fake: FakeMeta,
    pub app_db: Db,
}

pub fn settings(base: &str, db: &TestDb, redis_url: &str, fake: &FakeMeta) -> IngressSettings {
    let url = |s: &str| HttpUrl::parse(s).expect("url");
    IngressSettings {
        db: db.app_settings(4),
        redis: RedisSettings {
            app_env: AppEnv::Development,
            url: RedisUrl::parse(redis_url).expect("redis url"),
            connect_timeout: Duration::from_millis(500),
            response_timeout: Duration::from_secs(3),
            sentinels: None,
            sentinel_master: None,
            sentinel_password: None,
        },
        keys: keys::Settings { ring: key_ring() },
        app: app::Settings {
            id: APP_ID.into(),
            secret: Secret::new(IG_SECRET),
            second_secret: Some(Secret::new(META_SECRET)),
        },
        graph: GraphSettings {
            version: GraphVersion::parse("v26.0").expect("version"),
            base_url: url(&fake.base_url()),
            timeout: Duration::from_secs(5),
            max_concurrency: 8,
        },
        dns: dns::Settings {
            cache: Duration::from_secs(30),
        },
        oauth: oauth::Settings {
            app_env: AppEnv::Development,
            api_base_url: url(base),
            success_redirect_url: url(SUCCESS_URL),
            failure_redirect_url: url(FAILURE_URL),
            oauth_base_url: url(&fake.base_url()),
            authorize_url: url(&format!("{}/oauth/authorize", fake.base_url())),
            state_ttl: Duration::from_secs(600),
        },
        webhook: webhook::Settings {
            verify_token: Secret::new(VERIFY),
            max_body_bytes: 64 * 1024,
            invalid_dlq_max: 100,
            deadline: Duration::from_secs(4),
            max_in_flight: 1024,
            dedupe_ttl: Duration::from_secs(172_800),
            account_cache_hit: Duration::from_secs(60),
            account_cache_miss: Duration::from_secs(1),
            min_replicas_ack: 0,
            wait_timeout: Duration::from_millis(500),
        },
        callbacks: callbacks::Settings {
            signed_request_max_age: Duration::from_secs(600),
        },
        server: server::Settings {
            port: 0,
            shutdown_timeout: Duration::from_secs(5),
        },
        admin: admin_api::Settings {
            token: Secret::new(ADMIN),
            cors_allowed_origins: vec!["https://dashboard.example".into()],
        },
    }
}

pub async fn fake_meta() -> FakeMeta {
    FakeMeta::start(FakeMetaConfig {
        client_id: APP_ID.into(),
        client_secret: IG_SECRET.into(),
        ..FakeMetaConfig::default()
    })
    .await
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut IngressSettings)) -> Harness {
        let db = TestDb::migrated().await;
        let redis = TestRedis::lease().await;
        let fake = fake_meta().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let mut s = settings(&base, &db, &redis.url(), &fake);
        adjust(&mut s);
        let state = build_state(s).await;
        let app_db = state.db.clone();
        let served = state.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router(served)).await;
        });
        Harness {
            base,
            state,
            db,
            redis,
            fake,
            app_db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A merchant with a connected account `account_id` (token under the test key ring).
    pub async fn merchant_with_account(&self, account_id: &str) -> MerchantId {
        let m = MerchantId::new_random();
        let vault = Vault::new(&key_ring());
        let account = Account::new(&vault, account_id, "IGAA-seeded-token");
        shops::seed(&self.app_db, m, &Shop::named("Shop").with_account(account))
            .await
            .expect("seed merchant and account");
        m
    }

    pub async fn merchant(&self) -> MerchantId {
        let m = MerchantId::new_random();
        shops::seed(&self.app_db, m, &Shop::named("Shop"))
            .await
            .expect("seed merchant");
        m
    }

    /// Every inbound job (both queues) in this test's Redis database.
    pub async fn jobs(&self) -> Vec<InboundEventV1> {
        jobs_in(&self.redis).await
    }

    /// The inbound jobs on one queue (`inbound_event` or `inbound_signal`).
    pub async fn jobs_on(&self, queue: &str) -> Vec<InboundEventV1> {
        jobs_on(&self.redis, queue).await
    }

    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        self.redis.connection().await
    }
}

pub async fn jobs_in(redis: &TestRedis) -> Vec<InboundEventV1> {
    let mut all = jobs_on(redis, "inbound_event").await;
    all.extend(jobs_on(redis, "inbound_signal").await);
    all
}

/// Both queues carry the same payload (`inbound_signal` is a transparent wrapper).
pub async fn jobs_on(redis: &TestRedis, queue: &str) -> Vec<InboundEventV1> {
    let mut conn = redis.connection().await;
    let all: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{queue}:data"))
        .query_async(&mut conn)
        .await
        .expect("read jobs");
    all.values()
        .map(|v| serde_json::from_str(v).expect("job JSON"))
        .collect()
}

pub async fn build_state(s: IngressSettings) -> AppState {
    let redis = igsales_jobs::redis_conn::connect(&s.redis)
        .await
        .expect("redis");
    let db = Db::connect(&s.db).await.expect("db");
    AppState::new(s, db, redis)
}

/// POST a webhook body signed with `secret`.
pub async fn deliver(h: &Harness, body: &str, secret: &str) -> Answer {
    let sig = igsales_tests::fake_meta::webhook::signature_256(secret, body.as_bytes());
    post(
        h.url("/webhooks/instagram"),
        body.to_owned(),
        vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-Hub-Signature-256".into(), sig),
        ],
    )
    .await
}

/// The value of one counter series in /metrics (0 when absent).
pub async fn counter(h: &Harness, series: &str) -> f64 {
    let text = get(h.url("/metrics"), vec![]).await.body;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

pub fn pg_url(s: &str) -> PgUrl {
    PgUrl::parse(s).expect("pg url")
}

pub fn db_settings_at(url: &str) -> DbSettings {
    igsales_tests::db::db_settings(pg_url(url), 2, Duration::from_millis(300))
}
