//! Config groups: the only way a setting is declared.
//!
//! A group is one concern (the database pool, Redis, Graph, the model, the retry policy…). Each
//! of its variables is declared once, in one line of [`group!`](crate::group!): the variable,
//! the field it becomes, its type, whether it is required, optional or has a default, and its
//! form (what it accepts, which is also what an error says was expected). A binary or a
//! subcommand names the groups it needs by flattening their `Args`; each group's `check` reads
//! its variables into the [`Checker`](crate::Checker), which reports every problem of the run
//! at once and never a value.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use crate::check::Unit;
use crate::values::Secret;

/// What a variable accepts: the text an error names, and the parse.
pub trait Form<T> {
    fn describe(&self) -> String;
    /// `Err(detail)`: `detail` (often empty) is added to the form; it never holds the value.
    fn read(&self, s: &str) -> Result<T, String>;
}

/// A whole number within `min..=max`, maybe named by what it counts ("a count", "bytes", …).
#[derive(Debug, Clone, Copy)]
pub struct Int<T> {
    noun: Option<&'static str>,
    min: T,
    max: T,
}

/// "an integer 1–100".
pub const fn int<T>(min: T, max: T) -> Int<T> {
    Int {
        noun: None,
        min,
        max,
    }
}

/// "a count, 1–4096", "bytes, 1024–…".
pub const fn amount<T>(noun: &'static str, min: T, max: T) -> Int<T> {
    Int {
        noun: Some(noun),
        min,
        max,
    }
}

impl<T: FromStr + PartialOrd + Copy + Display> Form<T> for Int<T> {
    fn describe(&self) -> String {
        match self.noun {
            None => format!("an integer {}–{}", self.min, self.max),
            Some(noun) => format!("{noun}, {}–{}", self.min, self.max),
        }
    }
    fn read(&self, s: &str) -> Result<T, String> {
        s.parse::<T>()
            .ok()
            .filter(|v| *v >= self.min && *v <= self.max)
            .ok_or_else(String::new)
    }
}

/// A duration written in whole `unit`s within `min..=max`.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    unit: Unit,
    min: u64,
    max: u64,
}

pub const fn millis(min: u64, max: u64) -> Span {
    Span {
        unit: Unit::Millis,
        min,
        max,
    }
}

pub const fn secs(min: u64, max: u64) -> Span {
    Span {
        unit: Unit::Secs,
        min,
        max,
    }
}

pub const fn minutes(min: u64, max: u64) -> Span {
    Span {
        unit: Unit::Minutes,
        min,
        max,
    }
}

pub const fn days(min: u64, max: u64) -> Span {
    Span {
        unit: Unit::Days,
        min,
        max,
    }
}

impl Form<Duration> for Span {
    fn describe(&self) -> String {
        format!("{}, {}–{}", self.unit.name(), self.min, self.max)
    }
    fn read(&self, s: &str) -> Result<Duration, String> {
        s.parse::<u64>()
            .ok()
            .filter(|v| (self.min..=self.max).contains(v))
            .and_then(|v| self.unit.of(v))
            .ok_or_else(String::new)
    }
}

/// Any other form: a description and a parse function.
pub struct Parsed<T> {
    form: &'static str,
    parse: fn(&str) -> Result<T, String>,
}

pub const fn parsed<T>(form: &'static str, parse: fn(&str) -> Result<T, String>) -> Parsed<T> {
    Parsed { form, parse }
}

impl<T> Form<T> for Parsed<T> {
    fn describe(&self) -> String {
        self.form.to_owned()
    }
    fn read(&self, s: &str) -> Result<T, String> {
        (self.parse)(s)
    }
}

/// A secret, described as `form` (any non-blank text).
pub const fn secret(form: &'static str) -> Parsed<Secret> {
    parsed(form, |s| Ok(Secret::new(s)))
}

/// Plain text, described as `form` (any non-blank text).
pub const fn text(form: &'static str) -> Parsed<String> {
    parsed(form, |s| Ok(s.to_owned()))
}

/// Declares one config group as a module holding `Args` (what clap reads: every variable as
/// raw text, so the checker and not clap judges it — clap would stop at the first bad value
/// and echo it), `Settings` (the typed values) and `Partial` (the values as read, `None` where
/// missing or invalid, for the group's cross-field `rules`).
///
/// ```text
/// igsales_config::group! {
///     /// The Redis connection.
///     pub mod redis {
///         @app_env app_env;          // the group behaves differently in production
///         @rules production_rules;   // fn(&Partial, Option<AppEnv>, &mut Checker)
///         /// Help text.
///         REDIS_URL => url: RedisUrl = required, parsed(RedisUrl::FORM, RedisUrl::parse);
///         REDIS_CONNECT_TIMEOUT_MS => connect_timeout: Duration = default "3000", millis(1, 600_000);
///     }
/// }
/// ```
///
/// A variable is `required`, `optional` (its type is then `Option<T>`) or has a
/// `default "…"`. Its raw field is named after the variable, so clap's flag is its kebab-case
/// (`--redis-url`) and the environment variable its own name.
#[macro_export]
macro_rules! group {
    (
        $(#[doc = $gdoc:literal])*
        $vis:vis mod $name:ident {
            $(@app_env $app_env:ident;)?
            $(@rules $rules:path;)?
            $(
                $(#[doc = $doc:literal])*
                $var:ident => $field:ident : $ty:ty = $mode:ident $($default:literal)?, $form:expr;
            )*
        }
    ) => {
        $(#[doc = $gdoc])*
        $vis mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::group::*;

            #[derive(Debug, Clone, ::clap::Args)]
            #[group(skip)]
            #[allow(non_snake_case)]
            pub struct Args {
                $(
                    $(#[doc = $doc])*
                    #[arg(long, env, hide_env_values = true $(, default_value = $default)?)]
                    pub $var: Option<String>,
                )*
            }

            #[derive(Debug, Clone)]
            pub struct Settings {
                $(
                    /// `APP_ENV`: this group behaves differently in production.
                    pub $app_env: $crate::AppEnv,
                )?
                $(
                    $(#[doc = $doc])*
                    pub $field: $ty,
                )*
            }

            #[derive(Debug)]
            pub struct Partial {
                $(pub $field: Option<$ty>,)*
            }

            impl Args {
                /// Reads every variable of the group into `c`; `None` when any was wrong.
                pub fn check(
                    &self,
                    c: &mut $crate::Checker,
                    env: Option<$crate::AppEnv>,
                ) -> Option<Settings> {
                    let read = Partial {
                        $($field: $crate::__read!(
                            $mode $($default)?, c, stringify!($var), self.$var.as_deref(), $form
                        ),)*
                    };
                    $($rules(&read, env, c);)?
                    let _ = env;
                    Some(Settings {
                        $($app_env: env?,)?
                        $($field: read.$field?,)*
                    })
                }
            }
        }
    };
}

/// Declares what a command reads as a set of groups: `Args` flattening each group's args for
/// clap, `Settings` holding each group's settings, and `check`, which checks every group (so
/// all their problems are named in one run).
///
/// ```text
/// igsales_config::groups! {
///     /// What `worker run` reads.
///     pub struct RunArgs => RunSettings {
///         db: DbArgs => DbSettings,
///         redis: RedisArgs => RedisSettings,
///     }
/// }
/// ```
#[macro_export]
macro_rules! groups {
    (
        $(#[doc = $doc:literal])*
        $vis:vis struct $Args:ident => $Settings:ident {
            $($field:ident : $FieldArgs:ty => $FieldSettings:ty),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, ::clap::Args)]
        $vis struct $Args {
            $(
                #[command(flatten)]
                $field: $FieldArgs,
            )*
        }

        $(#[doc = $doc])*
        #[derive(Debug, Clone)]
        $vis struct $Settings {
            $(pub $field: $FieldSettings,)*
        }

        impl $Args {
            $vis fn check(
                &self,
                c: &mut $crate::Checker,
                env: ::core::option::Option<$crate::AppEnv>,
            ) -> ::core::option::Option<$Settings> {
                $(let $field = self.$field.check(c, env);)*
                Some($Settings {
                    $($field: $field?,)*
                })
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __read {
    (required, $c:ident, $var:expr, $raw:expr, $form:expr) => {{
        let form = $form;
        $c.required($var, $raw, &$crate::group::Form::describe(&form), |s| {
            $crate::group::Form::read(&form, s)
        })
    }};
    (optional, $c:ident, $var:expr, $raw:expr, $form:expr) => {{
        let form = $form;
        $c.optional($var, $raw, &$crate::group::Form::describe(&form), |s| {
            $crate::group::Form::read(&form, s)
        })
    }};
    (default $default:literal, $c:ident, $var:expr, $raw:expr, $form:expr) => {{
        let form = $form;
        $c.value(
            $var,
            $raw.unwrap_or($default),
            &$crate::group::Form::describe(&form),
            |s| $crate::group::Form::read(&form, s),
        )
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Checker;

    crate::group! {
        /// A group for the tests.
        mod sample {
            @app_env app_env;
            @rules sample_rules;
            /// Required.
            SAMPLE_NAME => name: String = required, text("a name");
            /// Optional.
            SAMPLE_KEY => key: Option<Secret> = optional, secret("a key");
            SAMPLE_WAIT_MS => wait: Duration = default "15", millis(1, 20);
            SAMPLE_COUNT => count: u32 = default "3", amount("a count", 1, 9);
        }
    }

    fn sample_rules(p: &sample::Partial, env: Option<crate::AppEnv>, c: &mut Checker) {
        if env.is_some_and(crate::AppEnv::is_production)
            && p.key.as_ref().is_some_and(Option::is_none)
        {
            c.invalid("SAMPLE_KEY", "set when APP_ENV=production");
        }
    }

    fn args(name: Option<&str>, key: Option<&str>, wait: Option<&str>) -> sample::Args {
        sample::Args {
            SAMPLE_NAME: name.map(str::to_owned),
            SAMPLE_KEY: key.map(str::to_owned),
            SAMPLE_WAIT_MS: wait.map(str::to_owned),
            SAMPLE_COUNT: None,
        }
    }

    #[test]
    fn a_group_reads_its_variables_with_their_defaults_and_carries_the_app_env() {
        let mut c = Checker::new();
        let s = args(Some(" shop "), None, None)
            .check(&mut c, Some(crate::AppEnv::Development))
            .expect("valid");
        assert!(c.is_ok());
        assert_eq!(s.name, "shop");
        assert!(s.key.is_none());
        assert_eq!(s.wait, Duration::from_millis(15));
        assert_eq!(s.count, 3);
        assert_eq!(s.app_env, crate::AppEnv::Development);
    }

    #[test]
    fn every_problem_of_a_group_is_named_with_its_form_and_never_its_value() {
        let mut c = Checker::new();
        let s = args(None, None, Some("planted-21")).check(&mut c, Some(crate::AppEnv::Production));
        assert!(s.is_none());
        let err = c.finish().expect_err("three problems").to_string();
        assert!(err.contains("3 problems"), "{err}");
        assert!(
            err.contains("SAMPLE_NAME is missing: expected a name"),
            "{err}"
        );
        assert!(
            err.contains("SAMPLE_WAIT_MS is invalid: expected milliseconds, 1–20"),
            "{err}"
        );
        assert!(
            err.contains("SAMPLE_KEY is invalid: expected set when APP_ENV=production"),
            "{err}"
        );
        assert!(!err.contains("planted"), "{err}");
    }

    #[test]
    fn integers_and_durations_name_their_range() {
        assert_eq!(amount("a count", 1u32, 9).describe(), "a count, 1–9");
        assert_eq!(int(1u32, 9).describe(), "an integer 1–9");
        assert_eq!(int(1u32, 9).read("10"), Err(String::new()));
        assert_eq!(days(1, 59).read("2"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(minutes(1, 60).describe(), "minutes, 1–60");
        assert_eq!(secs(0, 10).read("0"), Ok(Duration::ZERO));
    }
}
