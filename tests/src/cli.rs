//! Running the real binaries with a controlled environment.

use std::process::Command;

/// What a finished command left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "exit code\n--- stdout\n{}--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

impl Outcome {
    /// Asserts stderr has a line saying `var` is invalid, mentioning `form`.
    #[track_caller]
    pub fn assert_invalid(&self, var: &str, form: &str) {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains(&format!("{var} is invalid")))
            .unwrap_or_else(|| panic!("{var} not named as invalid: {}", self.stderr));
        assert!(line.contains(form), "expected {form:?} in: {line}");
    }
}

/// Runs `bin` with exactly `env` (plus PATH), never inheriting the caller's variables.
pub fn run(bin: &str, args: &[&str], env: &[(&str, String)]) -> Outcome {
    let mut cmd = Command::new(bin);
    cmd.args(args).env_clear();
    if let Ok(path) = std::env::var("PATH") {
        cmd.env("PATH", path);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {bin}: {e}"));
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A 32-byte key ring entry, base64, from a fill byte.
pub fn key_entry(version: u32, fill: u8) -> String {
    use base64::Engine as _;
    format!(
        "{version}:{}",
        base64::engine::general_purpose::STANDARD.encode([fill; 32])
    )
}
