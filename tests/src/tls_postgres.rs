//! A throwaway Postgres cluster that accepts only TLS over TCP (`hostssl` in pg_hba.conf),
//! with a certificate from a CA made for it, on its own loopback port and in its own temp dir.
//! Never the machine's shared Postgres. It listens on 127.0.0.1 and 127.0.0.2: the certificate
//! names only the first, so the second shows what checking the host name changes.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs;
use crate::process::free_port;

/// The superuser's password (SCRAM over TLS, so the password travels only inside the session).
pub const PASSWORD: &str = "tls-pg-planted-secret";

/// A running TLS-only cluster, stopped and removed when dropped.
pub struct TlsPostgres {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl TlsPostgres {
    /// `postgres://postgres:PASSWORD@HOST:PORT/postgres?QUERY` (the query as given, may be "").
    pub fn url(&self, host: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres{sep}{query}",
            self.port
        )
    }

    /// The CA that signed the server's certificate (PEM).
    pub fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    /// A CA that signed nothing this server shows (PEM).
    pub fn other_ca(&self) -> String {
        self.dir.join("other-ca.pem").display().to_string()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster takes its backends down with it.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server's `bin` directory (Debian: /usr/lib/postgresql/N/bin).
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (Debian's postgresql package)")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
        .1
}

/// The user the server runs as: `postgres` when we are root (Postgres refuses root), else us.
fn server_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        assert!(
            out.status.success(),
            "no postgres user to run the test server as"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn command(bin: &Path, user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    if std::env::var_os("IGSALES_TEST_LOGS").is_none() {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    cmd
}

fn chown_all(dir: &Path, user: Option<(u32, u32)>) {
    let Some((uid, gid)) = user else { return };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown dir");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown file");
    }
}

/// Makes the CAs and the certificate, initialises a cluster and starts it; returns once it
/// accepts connections.
pub fn tls_postgres() -> TlsPostgres {
    let bin = bin_dir();
    let user = server_user();
    let dir = std::env::temp_dir().join(format!(
        "igsales-tls-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    certs::ca(&dir, "ca");
    certs::ca(&dir, "other-ca");
    certs::server_cert(&dir, "ca", "server");
    // Postgres refuses a key others can read.
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod key");
    std::fs::write(dir.join("pw"), PASSWORD).expect("pwfile");
    chown_all(&dir, user);

    let data = dir.join("data");
    let ok = command(&bin.join("initdb"), user, &dir)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile=pw",
        ])
        .status()
        .expect("run initdb")
        .success();
    assert!(ok, "initdb failed (IGSALES_TEST_LOGS=1 shows why)");
    // TCP only over TLS (SCRAM); the Unix socket in `dir` stays trusted, as Debian's is.
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
    )
    .expect("pg_hba.conf");

    let port = free_port();
    let setting = |k: &str, v: &str| ["-c".to_owned(), format!("{k}={v}")];
    let child = command(&bin.join("postgres"), user, &dir)
        .arg("-D")
        .arg(&data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(&dir)
        .args(setting("listen_addresses", "127.0.0.1,127.0.0.2"))
        .args(setting("ssl", "on"))
        .args(setting(
            "ssl_cert_file",
            &dir.join("server.pem").display().to_string(),
        ))
        .args(setting(
            "ssl_key_file",
            &dir.join("server.key").display().to_string(),
        ))
        .args(setting("fsync", "off"))
        .args(setting("shared_buffers", "16MB"))
        .args(setting("max_connections", "20"))
        .spawn()
        .expect("start postgres");
    let mut pg = TlsPostgres { child, dir, port };
    // The postmaster writes "ready" into postmaster.pid once it accepts connections.
    let pid_file = data.join("postmaster.pid");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::fs::read_to_string(&pid_file).is_ok_and(|s| s.lines().any(|l| l.trim() == "ready"))
        {
            return pg;
        }
        if let Ok(Some(status)) = pg.child.try_wait() {
            panic!("test postgres exited at start ({status}); IGSALES_TEST_LOGS=1 shows why");
        }
        assert!(Instant::now() < deadline, "test postgres did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}
