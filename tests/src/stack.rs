//! The whole system as processes: the real `ingress` and `worker` binaries, with the fake Meta
//! (which also delivers the echoes of sent messages back to the webhook, as Meta does) and an
//! OpenAI-compatible model (the fake one unless a real one is given). Used by the acceptance
//! suite and by the sandbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fake_llm::{FakeLlm, FakeLlmConfig};
use crate::fake_meta::{FakeAccount, FakeMeta, FakeMetaConfig, webhook as wh};
use crate::http::{self, Answer};
use crate::process::{Process, free_port};

pub const IG_SECRET: &str = "sandbox-ig-app-secret";
pub const APP_ID: &str = "990602627938098";
pub const ADMIN_TOKEN: &str = "sandbox-admin-token-0123456789abcdef";

/// The directory holding the built `ingress` and `worker` (next to the running executable, or
/// `IGSALES_BIN_DIR`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IGSALES_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    // Test executables live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.parent().expect("profile dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A real OpenAI-compatible API to use instead of the fake one.
#[derive(Clone, Debug)]
pub struct RealModel {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
}

pub struct StackConfig {
    /// The app's login role on a migrated database.
    pub database_url: String,
    pub redis_url: String,
    pub model: Option<RealModel>,
    /// Extra environment for the worker (shorter waits in tests).
    pub worker_env: Vec<(&'static str, String)>,
}

pub struct Stack {
    pub fake: FakeMeta,
    pub llm: Option<FakeLlm>,
    pub ingress: Process,
    pub worker: Process,
    pub base: String,
    pub account: FakeAccount,
    bins: PathBuf,
    database_url: String,
    worker_env: Vec<(&'static str, String)>,
}

fn location(a: &Answer) -> anyhow::Result<String> {
    a.header("location")
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no redirect (HTTP {})", a.status))
}

impl Stack {
    pub async fn start(cfg: StackConfig) -> anyhow::Result<Stack> {
        let bins = bin_dir();
        for bin in ["ingress", "worker"] {
            anyhow::ensure!(
                bins.join(bin).exists(),
                "{} is not built (cargo build --bin {bin})",
                bins.join(bin).display()
            );
        }
        let fake = FakeMeta::start(FakeMetaConfig {
            client_id: APP_ID.into(),
            client_secret: IG_SECRET.into(),
            ..FakeMetaConfig::default()
        })
        .await;
        // A distinct account per stack, so runs against one database never collide.
        let suffix = uuid::Uuid::new_v4().as_u128() % 100_000_000;
        let account = FakeAccount {
            user_id: format!("1784140{suffix:010}"),
            app_scoped_id: format!("2764087{suffix:010}"),
            username: "lojaazul".into(),
        };
        fake.set_account(account.clone());
        let (llm, model) = match &cfg.model {
            Some(real) => (None, real.clone()),
            None => {
                let llm = FakeLlm::start(FakeLlmConfig::default()).await;
                let model = RealModel {
                    base_url: llm.base_url(),
                    api_key: FakeLlmConfig::default().api_key,
                    model: "fake-model".into(),
                };
                (Some(llm), model)
            }
        };
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        fake.deliver_echoes_to(&format!("{base}/webhooks/instagram"), IG_SECRET);
        let key = crate::cli::key_entry(1, 0x42);
        let common = vec![
            ("DATABASE_URL", cfg.database_url.clone()),
            ("REDIS_URL", cfg.redis_url.clone()),
            ("ENCRYPTION_KEY", key),
            ("IG_APP_SECRET", IG_SECRET.to_owned()),
            ("GRAPH_API_VERSION", "v26.0".to_owned()),
            ("GRAPH_API_BASE_URL", fake.base_url()),
            (
                "RUST_LOG",
                std::env::var("IGSALES_TEST_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ];
        let mut ingress_env = common.clone();
        ingress_env.extend([
            ("META_APP_ID", APP_ID.to_owned()),
            ("API_BASE_URL", base.clone()),
            ("PORT", port.to_string()),
            (
                "META_WEBHOOK_VERIFY_TOKEN",
                "sandbox-verify-token".to_owned(),
            ),
            ("ADMIN_API_TOKEN", ADMIN_TOKEN.to_owned()),
            ("OAUTH_SUCCESS_REDIRECT_URL", format!("{base}/healthz")),
            ("OAUTH_FAILURE_REDIRECT_URL", format!("{base}/healthz")),
            ("IG_OAUTH_BASE_URL", fake.base_url()),
            (
                "IG_AUTHORIZE_URL",
                format!("{}/oauth/authorize", fake.base_url()),
            ),
            ("ACCOUNT_CACHE_MISS_SECS", "1".to_owned()),
        ]);
        let metrics_port = free_port();
        let mut worker_env = common;
        worker_env.extend([
            ("OPENAI_API_KEY", model.api_key.clone()),
            ("OPENAI_BASE_URL", model.base_url.clone()),
            ("OPENAI_MODEL", model.model.clone()),
            ("METRICS_PORT", metrics_port.to_string()),
            ("WORKER_POLL_INTERVAL_MS", "50".to_owned()),
        ]);
        for (k, v) in cfg.worker_env {
            worker_env.retain(|(e, _)| *e != k);
            worker_env.push((k, v));
        }
        let ingress = Process::start(
            &bins.join("ingress").display().to_string(),
            &[],
            &ingress_env,
            port,
        );
        let worker = Process::start(
            &bins.join("worker").display().to_string(),
            &["run"],
            &worker_env,
            metrics_port,
        );
        let worker_env = worker_env.clone();
        Ok(Stack {
            fake,
            llm,
            ingress,
            worker,
            base,
            account,
            bins,
            database_url: cfg.database_url,
            worker_env,
        })
    }

    /// Runs a `worker` CLI command against the stack's database, with the worker's token key
    /// and Graph settings (the fake Meta) for the commands that call Meta; its stdout.
    pub fn worker_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut env = vec![("DATABASE_URL", self.database_url.clone())];
        env.extend(
            self.worker_env
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        *k,
                        "ENCRYPTION_KEY" | "GRAPH_API_VERSION" | "GRAPH_API_BASE_URL"
                    )
                })
                .cloned(),
        );
        let out = crate::cli::run(&self.bins.join("worker").display().to_string(), args, &env);
        anyhow::ensure!(
            out.code == Some(0),
            "worker {args:?} failed: {}",
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    /// The Instagram connect flow as a merchant's browser goes through it, against the fake
    /// Instagram: connect → start (cookie) → authorize → callback. Returns the final redirect.
    pub async fn connect_account(&self, merchant: &str) -> anyhow::Result<String> {
        let base = self.base.clone();
        let merchant = merchant.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let agent = http::agent(Duration::from_secs(10));
            let r = http::try_answer(
                agent
                    .post(&format!("{base}/v1/merchants/{merchant}/instagram/connect"))
                    .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
                    .send_empty(),
            )?;
            anyhow::ensure!(r.status == 201, "connect: HTTP {}", r.status);
            let body: serde_json::Value = serde_json::from_str(&r.body)?;
            let start_url = body["start_url"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no start_url"))?;
            let start = http::try_answer(agent.get(start_url).call())?;
            let cookie = start
                .header("set-cookie")
                .and_then(|c| c.split(';').next())
                .ok_or_else(|| anyhow::anyhow!("no flow cookie"))?
                .to_owned();
            let authorize = http::try_answer(agent.get(&location(&start)?).call())?;
            let callback = location(&authorize)?;
            let callback = callback.split('#').next().unwrap_or(&callback).to_owned();
            let done = http::try_answer(agent.get(&callback).header("Cookie", &cookie).call())?;
            location(&done)
        })
        .await?
    }

    /// A customer's DM, delivered to the ingress as Meta delivers it (signed). HTTP status.
    pub async fn send_dm(&self, customer: &str, text: &str) -> anyhow::Result<u16> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mid = format!("mid-{}", uuid::Uuid::new_v4().simple());
        let body = wh::envelope(&[wh::messaging_entry(
            &self.account.user_id,
            now,
            vec![wh::text_message(
                customer,
                &self.account.user_id,
                &mid,
                text,
                now,
            )],
        )]);
        let url = format!("{}/webhooks/instagram", self.base);
        let (status, _) =
            tokio::task::spawn_blocking(move || wh::deliver(&url, IG_SECRET, &body)).await?;
        Ok(status)
    }

    /// Waits for the account's next message to `customer` after the first `seen` ones.
    pub async fn next_reply(
        &self,
        customer: &str,
        seen: usize,
        within: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + within;
        let texts = || -> Vec<String> {
            self.fake
                .sent_messages()
                .into_iter()
                .filter(|m| m.recipient_id == customer)
                .filter_map(|m| m.text)
                .collect()
        };
        loop {
            if texts().len() > seen {
                // A long answer comes in parts, a moment apart.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Some(texts()[seen..].join("\n"));
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Text messages the account sent `customer` (cards and other attachments not counted).
    pub fn replies_to(&self, customer: &str) -> usize {
        self.fake
            .sent_messages()
            .iter()
            .filter(|m| m.recipient_id == customer && m.text.is_some())
            .count()
    }

    /// Every message the account sent `customer`, in order: the Send API `message` objects.
    pub fn messages_to(&self, customer: &str) -> Vec<serde_json::Value> {
        self.fake
            .sent_messages()
            .into_iter()
            .filter(|m| m.recipient_id == customer)
            .map(|m| m.body.get("message").cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until the account sent `customer` more than `seen` messages of any kind, and no
    /// more for a moment (the parts of one reply come a moment apart); all of them, in order.
    pub async fn messages_after(
        &self,
        customer: &str,
        seen: usize,
        within: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        let mut last = 0;
        let mut still_since = Instant::now();
        loop {
            let n = self.messages_to(customer).len();
            if n != last {
                last = n;
                still_since = Instant::now();
            }
            if n > seen && still_since.elapsed() > Duration::from_millis(1500) {
                return self.messages_to(customer);
            }
            if Instant::now() > deadline {
                return self.messages_to(customer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A tap on a card's postback button (`postback`) or a quick reply (a message with
    /// `quick_reply.payload`), delivered as Meta delivers it. HTTP status.
    pub async fn send_tap(
        &self,
        customer: &str,
        postback: bool,
        title: &str,
        payload: &str,
    ) -> anyhow::Result<u16> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mid = format!("mid-{}", uuid::Uuid::new_v4().simple());
        let account = &self.account.user_id;
        let event = if postback {
            wh::postback(customer, account, &mid, title, payload, now)
        } else {
            serde_json::json!({
                "sender": {"id": customer},
                "recipient": {"id": account},
                "timestamp": now,
                "message": {"mid": mid, "text": title, "quick_reply": {"payload": payload}},
            })
        };
        let body = wh::envelope(&[wh::messaging_entry(account, now, vec![event])]);
        let url = format!("{}/webhooks/instagram", self.base);
        let (status, _) =
            tokio::task::spawn_blocking(move || wh::deliver(&url, IG_SECRET, &body)).await?;
        Ok(status)
    }

    /// Messaging `events` (built with `fake_meta::webhook`) in one entry for the account,
    /// delivered as Meta delivers them (signed). HTTP status.
    pub async fn send_events(&self, events: Vec<serde_json::Value>) -> anyhow::Result<u16> {
        let now = wh::now_ms();
        self.deliver(wh::envelope(&[wh::messaging_entry(
            &self.account.user_id,
            now,
            events,
        )]))
        .await
    }

    /// A webhook body delivered to the ingress as Meta delivers it (signed). HTTP status.
    pub async fn deliver(&self, body: String) -> anyhow::Result<u16> {
        let url = format!("{}/webhooks/instagram", self.base);
        let (status, _) =
            tokio::task::spawn_blocking(move || wh::deliver(&url, IG_SECRET, &body)).await?;
        Ok(status)
    }

    /// One more `worker run` on the same queues and database (its own metrics port).
    pub fn another_worker(&self) -> Process {
        let port = free_port();
        let mut env = self.worker_env.clone();
        env.retain(|(k, _)| *k != "METRICS_PORT");
        env.push(("METRICS_PORT", port.to_string()));
        Process::start(
            &self.bins.join("worker").display().to_string(),
            &["run"],
            &env,
            port,
        )
    }

    pub fn bins(&self) -> &Path {
        &self.bins
    }
}
