//! A Redis primary with replicas, and optionally three Sentinels watching it, all of the test's
//! own on free loopback ports (Debian's `redis-server` and `redis-sentinel`), in a temp dir,
//! killed when dropped. Never the machine's shared Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// The master's name the sentinels monitor.
pub const MASTER: &str = "igsales";

struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct RedisSet {
    dir: PathBuf,
    /// `nodes[0]` starts as the primary, the others as its replicas.
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
}

fn spawn(program: &str, args: &[String]) -> Child {
    let logs = std::env::var_os("IGSALES_TEST_LOGS").is_some();
    let out = || {
        if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        }
    };
    Command::new(program)
        .args(args)
        .stdout(out())
        .stderr(out())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{program}: {e} (apt-get install --no-install-recommends redis-server redis-sentinel)")
        })
}

fn sync_conn(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .ok()?
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut conn = sync_conn(port)?;
    cmd.query(&mut conn).ok()
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl RedisSet {
    /// A primary and `replicas` replicas, their replication links up; no sentinels.
    pub fn replicated(replicas: usize) -> RedisSet {
        let dir = std::env::temp_dir().join(format!(
            "igsales-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut set = RedisSet {
            dir,
            nodes: Vec::new(),
            sentinels: Vec::new(),
        };
        let primary = free_port();
        set.nodes.push(Node {
            port: primary,
            child: None,
        });
        set.start_node(0, None);
        for i in 1..=replicas {
            set.nodes.push(Node {
                port: free_port(),
                child: None,
            });
            set.start_node(i, Some(primary));
        }
        for i in 1..=replicas {
            set.wait_replicating(i);
        }
        set
    }

    /// [`RedisSet::replicated`], then three sentinels (quorum 2) that see the primary, every
    /// replica and each other, so a failover can start as soon as the primary is gone.
    pub fn with_sentinels(replicas: usize) -> RedisSet {
        let mut set = RedisSet::replicated(replicas);
        let primary = set.nodes[0].port;
        for i in 0..3 {
            let port = free_port();
            let conf = set.dir.join(format!("sentinel-{i}.conf"));
            // Sentinel rewrites its own config file: it must be writable, one per sentinel.
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} {replicas}\n",
                    dir = set.dir.display(),
                ),
            )
            .expect("sentinel conf");
            set.sentinels.push(Node {
                port,
                child: Some(spawn("redis-sentinel", &[conf.display().to_string()])),
            });
        }
        for s in &set.sentinels {
            let port = s.port;
            wait_for(
                "every sentinel sees the replicas and the other sentinels",
                Duration::from_secs(20),
                || {
                    let replicas_seen: Option<Vec<redis::Value>> =
                        query(port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER));
                    let sentinels_seen: Option<Vec<redis::Value>> =
                        query(port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER));
                    replicas_seen.is_some_and(|r| r.len() == replicas)
                        && sentinels_seen.is_some_and(|s| s.len() == 2)
                },
            );
        }
        set
    }

    fn start_node(&mut self, i: usize, replica_of: Option<u16>) {
        let port = self.nodes[i].port;
        let node_dir = self.dir.join(format!("node-{port}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.push("--dir".into());
        args.push(node_dir.display().to_string());
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        self.nodes[i].child = Some(spawn("redis-server", &args));
        wait_for("redis-server answers", Duration::from_secs(10), || {
            query::<String>(port, &redis::cmd("PING")).is_some()
        });
    }

    fn wait_replicating(&self, i: usize) {
        let port = self.nodes[i].port;
        wait_for("the replica's link is up", Duration::from_secs(20), || {
            query::<String>(port, redis::cmd("INFO").arg("replication"))
                .is_some_and(|info| info.contains("master_link_status:up"))
        });
    }

    /// `redis://127.0.0.1:PORT/DB` of node `i` (0: the first primary).
    pub fn node_url(&self, i: usize, db: u8) -> String {
        format!("redis://127.0.0.1:{}/{db}", self.nodes[i].port)
    }

    pub fn node_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// `REDIS_SENTINELS` for this set.
    pub fn sentinels(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills node `i` as a crash would (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts the killed node `i` again, empty, as a replica of the node on `primary`.
    pub fn restart_as_replica(&mut self, i: usize, primary: u16) {
        self.start_node(i, Some(primary));
        self.wait_replicating(i);
    }

    /// The master's port as the first answering sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let addr: Option<(String, u16)> = query(
                s.port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER),
            );
            addr.map(|(_, port)| port)
        })
    }

    /// The node a sentinel promoted once node 0 is gone: it answers ROLE as a master.
    pub fn wait_for_promotion(&self, within: Duration) -> u16 {
        let first = self.nodes[0].port;
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = self.master_port().filter(|p| *p != first) {
                let role: Option<redis::Role> = query(port, &redis::cmd("ROLE"));
                if matches!(role, Some(redis::Role::Primary { .. })) {
                    return port;
                }
            }
            assert!(Instant::now() < deadline, "no promotion within {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A connection to whichever node is on `port`.
    pub fn connection(&self, port: u16) -> redis::Connection {
        sync_conn(port).expect("connect to a node of the set")
    }
}

impl Drop for RedisSet {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
