//! Isolated Redis databases for tests: a test leases one of the logical databases 1–15 (a
//! `SET NX` lease in database 0, so parallel test processes never share one), finds it empty,
//! and gives it back when dropped. Queues, dedupe claims and `dlq:*` lists are then the test's own.

use std::time::Duration;

const LEASE_SECS: u64 = 600;

/// Timeouts for test clients: generous, because a loaded CI machine can take longer than the
/// redis crate's 500 ms default to answer.
pub fn test_client_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)))
}

/// The app's connection type for tests (a fixed master), with the same generous timeouts.
pub async fn manager(url: &str) -> igsales_jobs::RedisConn {
    let manager = redis::Client::open(url)
        .expect("redis url")
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(10)))
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("connect to test Redis");
    igsales_jobs::RedisConn::fixed(manager)
}

/// `redis://127.0.0.1:6379` unless `IGSALES_TEST_REDIS` says otherwise (no database index).
pub fn server() -> String {
    std::env::var("IGSALES_TEST_REDIS")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

pub struct TestRedis {
    pub db: u8,
    lease_key: String,
    token: String,
}

impl TestRedis {
    pub async fn lease() -> TestRedis {
        let client = redis::Client::open(format!("{}/0", server())).expect("redis url");
        let mut admin = client
            .get_multiplexed_async_connection_with_config(&test_client_config())
            .await
            .expect("connect to test Redis");
        let token = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
        for _attempt in 0..600 {
            for db in 1..=15u8 {
                let lease_key = format!("igsales:test-lease:{db}");
                let won: Option<String> = redis::cmd("SET")
                    .arg(&lease_key)
                    .arg(&token)
                    .arg("NX")
                    .arg("EX")
                    .arg(LEASE_SECS)
                    .query_async(&mut admin)
                    .await
                    .expect("lease");
                if won.is_some() {
                    let leased = TestRedis {
                        db,
                        lease_key,
                        token,
                    };
                    let mut conn = leased.connection().await;
                    let _: () = redis::cmd("FLUSHDB")
                        .query_async(&mut conn)
                        .await
                        .expect("flushdb");
                    return leased;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no free test Redis database within a minute");
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server(), self.db)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection_with_config(&test_client_config())
            .await
            .expect("connect to test Redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Only our own lease is released (compare-and-delete).
        let script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        if let Ok(client) = redis::Client::open(format!("{}/0", server()))
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            let _: Result<i32, _> = redis::cmd("EVAL")
                .arg(script)
                .arg(1)
                .arg(&self.lease_key)
                .arg(&self.token)
                .query(&mut conn);
        }
    }
}

/// A Redis server of the test's own, on a free port, that the test can stop and start again
/// (the shared server must stay up for every other test).
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    /// With AOF on (as in production), its data directory.
    aof_dir: Option<std::path::PathBuf>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut r = PrivateRedis {
            port,
            child: None,
            aof_dir: None,
        };
        r.restart();
        r
    }

    /// A server with AOF on (`appendfsync everysec`), as production runs it: a graceful
    /// restart keeps every acknowledged write.
    pub fn start_persistent() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let dir = std::env::temp_dir().join(format!("igsales-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = PrivateRedis {
            port,
            child: None,
            aof_dir: Some(dir),
        };
        r.restart();
        r
    }

    /// Stops the server as an operator or orchestrator would (SIGTERM: it flushes its AOF),
    /// then starts it again on the same port.
    pub fn restart_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        self.restart();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        match &self.aof_dir {
            Some(dir) => cmd
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                ])
                .arg("--dir")
                .arg(dir),
            None => cmd.args(["--save", "", "--appendonly", "no"]),
        };
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let up = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok();
            if up {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.aof_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
