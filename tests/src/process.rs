//! A service binary (ingress, worker) running as a child process for a test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Process {
    pub child: Child,
    /// The port that answers once the process is up.
    pub port: u16,
}

impl Process {
    /// Starts `bin args` with exactly `env` (plus PATH) and waits until `port` accepts.
    pub fn start(bin: &str, args: &[&str], env: &[(&'static str, String)], port: u16) -> Process {
        Process::try_start(bin, args, env, port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Process::start`], but an error when the process exits before it is ready (a
    /// dependency it checks at start is down): the caller may retry, as an orchestrator would.
    pub fn try_start(
        bin: &str,
        args: &[&str],
        env: &[(&'static str, String)],
        port: u16,
    ) -> Result<Process, String> {
        let mut cmd = Command::new(bin);
        // IGSALES_TEST_LOGS=1 shows the processes' logs when a test needs looking into.
        let logs = std::env::var_os("IGSALES_TEST_LOGS").is_some();
        let out = || {
            if logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            }
        };
        cmd.args(args).env_clear().stdout(out()).stderr(out());
        if let Ok(path) = std::env::var("PATH") {
            cmd.env("PATH", path);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Process {
            child: cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}")),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !p.ready() {
            if p.child.try_wait().expect("poll").is_some() {
                return Err(format!("{bin} exited at start"));
            }
            assert!(Instant::now() < deadline, "{bin} did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    pub fn ready(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// `kill -TERM` / `kill -KILL` …
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the process to end; its exit code (None: ended by a signal).
    pub fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().expect("poll").map(|s| s.code())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The fakes' binaries, once serving: print `line` (whoever started us waits for it, possibly
/// through a pipe), then wait for SIGTERM or Ctrl-C.
pub async fn announce_then_wait_for_stop(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);
    #[cfg(unix)]
    {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        use anyhow::Context as _;
        tokio::signal::ctrl_c().await.context("wait for Ctrl-C")?;
    }
    Ok(())
}

/// Starts a fake's binary (`name`: fake-meta, fake-llm) and reads the URL its first line
/// announces (see [`announce_then_wait_for_stop`]).
pub fn start_announced(bin: &str, name: &str, args: &[&str]) -> (Child, String) {
    use std::io::BufRead as _;
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let url = line
        .trim_end()
        .strip_prefix(&format!("{name} listening on "))
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (child, url)
}

/// `kill -TERM` and the exit code it ends with (None: ended by a signal).
pub fn terminate(mut child: Child) -> Option<i32> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    child.wait().expect("wait for the process").code()
}
