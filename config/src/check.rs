use std::fmt;
use std::time::Duration;

/// The unit a duration setting is written in.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    Millis,
    Secs,
    Minutes,
    Days,
}

impl Unit {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Unit::Millis => "milliseconds",
            Unit::Secs => "seconds",
            Unit::Minutes => "minutes",
            Unit::Days => "days",
        }
    }

    pub(crate) fn of(self, n: u64) -> Option<Duration> {
        let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        match self {
            Unit::Millis => Some(Duration::from_millis(n)),
            Unit::Secs => Some(Duration::from_secs(n)),
            Unit::Minutes => secs(60),
            Unit::Days => secs(86_400),
        }
    }
}

/// One thing wrong with the environment. Holds the variable and the expected form, never the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing { var: &'static str, form: String },
    Invalid { var: &'static str, form: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { var, form } => write!(f, "{var} is missing: expected {form}"),
            Problem::Invalid { var, form } => write!(f, "{var} is invalid: expected {form}"),
        }
    }
}

/// All configuration problems of one run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "configuration error ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Collects problems while variables are parsed, so all of them are reported together.
#[derive(Debug, Default)]
pub struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    /// A required variable: missing (absent or blank) or unparseable both become a problem.
    pub fn required<T>(
        &mut self,
        var: &'static str,
        raw: Option<&str>,
        form: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => {
                self.problems.push(Problem::Missing {
                    var,
                    form: form.to_owned(),
                });
                None
            }
            Some(s) => self.parse(var, s, form, parse),
        }
    }

    /// An optional variable: blank counts as absent; `Some(None)` means absent, `None` invalid.
    pub fn optional<T>(
        &mut self,
        var: &'static str,
        raw: Option<&str>,
        form: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => Some(None),
            Some(s) => self.parse(var, s, form, parse).map(Some),
        }
    }

    /// A variable with a default (clap fills it in), so only its form can be wrong.
    pub fn value<T>(
        &mut self,
        var: &'static str,
        raw: &str,
        form: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        self.parse(var, raw.trim(), form, parse)
    }

    /// A required variable found neither under its name nor its fallback.
    pub fn missing(&mut self, var: &'static str, form: impl Into<String>) {
        self.problems.push(Problem::Missing {
            var,
            form: form.into(),
        });
    }

    /// A cross-field or environment rule that failed.
    pub fn invalid(&mut self, var: &'static str, form: impl Into<String>) {
        self.problems.push(Problem::Invalid {
            var,
            form: form.into(),
        });
    }

    fn parse<T>(
        &mut self,
        var: &'static str,
        s: &str,
        form: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match parse(s) {
            Ok(v) => Some(v),
            Err(detail) => {
                // `detail` is written by our parsers and never contains the value itself.
                let form = if detail.is_empty() {
                    form.to_owned()
                } else {
                    format!("{form} ({detail})")
                };
                self.problems.push(Problem::Invalid { var, form });
                None
            }
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.problems))
        }
    }
}

/// Unwraps the typed values once [`Checker::finish`] succeeded; a `None` here is a bug.
pub fn must<T>(v: Option<T>) -> T {
    match v {
        Some(v) => v,
        None => unreachable!("Checker::finish succeeded, so every checked value is present"),
    }
}
