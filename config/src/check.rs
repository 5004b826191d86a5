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
    fn name(self) -> &'static str {
        match self {
            Unit::Millis => "milliseconds",
            Unit::Secs => "seconds",
            Unit::Minutes => "minutes",
            Unit::Days => "days",
        }
    }

    fn of(self, n: u64) -> Option<Duration> {
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

    /// A duration in whole `unit`s within `min..=max` (a variable with a default).
    pub fn duration(
        &mut self,
        var: &'static str,
        raw: &str,
        unit: Unit,
        min: u64,
        max: u64,
    ) -> Option<Duration> {
        let form = format!("{}, {min}–{max}", unit.name());
        self.value(var, raw, &form, |s| {
            s.parse::<u64>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .and_then(|v| unit.of(v))
                .ok_or_else(String::new)
        })
    }

    /// [`Checker::duration`] in milliseconds.
    pub fn millis(&mut self, var: &'static str, raw: &str, min: u64, max: u64) -> Option<Duration> {
        self.duration(var, raw, Unit::Millis, min, max)
    }

    /// [`Checker::duration`] in seconds.
    pub fn secs(&mut self, var: &'static str, raw: &str, min: u64, max: u64) -> Option<Duration> {
        self.duration(var, raw, Unit::Secs, min, max)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_in_their_unit_and_named_with_their_range() {
        let mut c = Checker::new();
        assert_eq!(
            c.duration("A_DAYS", "2", Unit::Days, 1, 59),
            Some(Duration::from_secs(2 * 86_400))
        );
        assert_eq!(
            c.duration("A_MINUTES", " 3 ", Unit::Minutes, 1, 60),
            Some(Duration::from_secs(180))
        );
        assert_eq!(c.secs("A_SECS", "0", 0, 10), Some(Duration::ZERO));
        assert_eq!(
            c.millis("A_MS", "15", 1, 20),
            Some(Duration::from_millis(15))
        );
        assert!(c.is_ok());
        assert_eq!(c.secs("B_SECS", "11", 0, 10), None);
        assert_eq!(c.duration("B_DAYS", "x", Unit::Days, 1, 59), None);
        let err = c.finish().expect_err("two problems").to_string();
        assert!(
            err.contains("B_SECS is invalid: expected seconds, 0–10"),
            "{err}"
        );
        assert!(
            err.contains("B_DAYS is invalid: expected days, 1–59"),
            "{err}"
        );
    }
}
