//! A throwaway TLS-only Redis on its own loopback port, with a certificate from a CA made
//! for it, for the production start-up checks. Never the machine's shared Redis.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs;
use crate::process::free_port;

/// A throwaway TLS Redis with its own CA, killed when dropped.
pub struct TlsRedis {
    child: Child,
    port: u16,
    password: String,
    /// The CA that signed the server's certificate.
    ca: std::path::PathBuf,
}

impl TlsRedis {
    /// `REDIS_URL` as production wants it: `rediss://` with the password.
    pub fn url(&self) -> String {
        format!("rediss://:{}@127.0.0.1:{}/0", self.password, self.port)
    }

    /// `SSL_CERT_FILE` that makes a client trust this server's certificate.
    pub fn trust(&self) -> (&'static str, String) {
        ("SSL_CERT_FILE", self.ca.to_string_lossy().into_owned())
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts it with `--maxmemory-policy policy`, requiring `password`.
pub fn tls_redis(policy: &str, password: &str) -> TlsRedis {
    let dir = std::env::temp_dir().join(format!(
        "igsales-tls-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    certs::ca(&dir, "ca");
    certs::server_cert(&dir, "ca", "server");
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--maxmemory-policy", policy])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    TlsRedis {
        child,
        port,
        password: password.to_owned(),
        ca: dir.join("ca.pem"),
    }
}
