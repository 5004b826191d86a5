//! The groups the job handlers own, and all the groups `worker run` names (SPEC §3),
//! validated before anything connects.

use std::str::FromStr as _;
use std::time::Duration;

use igsales_config::{
    AppEnv, DbArgs, DbSettings, GraphArgs, GraphSettings, KeyArgs, RedisArgs, RedisSettings, dns,
    keys,
};

use crate::runtime::settings::{retry, worker_pool};
use crate::sales::graph::limits;
use crate::sales::llm::model;

fn schedule(s: &str) -> Result<cron::Schedule, String> {
    cron::Schedule::from_str(s).map_err(|_| String::new())
}

const CRON_FORM: &str = "a cron expression with seconds, e.g. 0 0 * * * * (hourly)";

igsales_config::group! {
    /// How conversations are handed between the assistant and people.
    pub mod conversation {
        HUMAN_TAKEOVER_MINUTES => human_takeover: Duration = default "720", minutes(1, 43_200);
        ECHO_CONFIRM_SECS => echo_confirm: Duration = default "60", secs(1, 3600);
    }
}

igsales_config::group! {
    /// Which tokens are renewed.
    pub mod token_refresh {
        TOKEN_REFRESH_WINDOW_DAYS => window: Duration = default "10", days(1, 59);
    }
}

igsales_config::group! {
    /// The crons (six fields, with seconds, UTC).
    pub mod schedule {
        TOKEN_REFRESH_CRON => token_refresh: cron::Schedule = default "0 0 * * * *",
            parsed(CRON_FORM, schedule);
        HOUSEKEEPING_CRON => housekeeping: cron::Schedule = default "0 30 3 * * *",
            parsed(CRON_FORM, schedule);
    }
}

igsales_config::group! {
    /// What housekeeping keeps.
    pub mod retention {
        RETENTION_DAYS => retention: Duration = default "30", days(1, 3650);
        /// Dead letters (which hold the jobs' payloads, customer text among them) are dropped
        /// this long after they failed: replay or inspect them before.
        DLQ_RETENTION_DAYS => dlq_retention: Duration = default "14", days(1, 3650);
        /// Rows one retention DELETE removes: each batch is its own short transaction, so the
        /// sweep stays inside the statement timeout and a retry resumes where it stopped.
        HOUSEKEEPING_BATCH_SIZE => batch: i64 = default "5000", int(1, 1_000_000);
    }
}

igsales_config::groups! {
    /// The groups `worker run` needs.
    pub struct RunArgs => RunSettings {
        db: DbArgs => DbSettings,
        redis: RedisArgs => RedisSettings,
        keys: KeyArgs => keys::Settings,
        graph: GraphArgs => GraphSettings,
        limits: limits::Args => limits::Settings,
        dns: dns::Args => dns::Settings,
        model: model::Args => model::Settings,
        embedding: crate::sales::embed::embedding::Args => crate::sales::embed::embedding::Settings,
        pool: worker_pool::Args => worker_pool::Settings,
        retry: retry::Args => retry::Settings,
        schedule: schedule::Args => schedule::Settings,
        token_refresh: token_refresh::Args => token_refresh::Settings,
        conversation: conversation::Args => conversation::Settings,
        retention: retention::Args => retention::Settings,
    }
}

impl RunSettings {
    /// What `ECHO_CONFIRM_SECS` must exceed. A part whose send outcome is unknown is sent
    /// again when no echo came within it, and the echo may be late by a whole worker
    /// recovery: the worker that sent (and waited out its HTTP timeout) or the one that
    /// fetched the echo may die, and a dead worker's jobs run again only after that.
    pub fn echo_must_exceed(&self) -> Duration {
        self.pool.recovery() + self.graph.timeout
    }

    /// Rules across groups: in production an echo wait too short to outlast a worker
    /// recovery is refused (sends could go out twice); elsewhere `worker run` warns, so
    /// tests that kill no worker may shrink it.
    pub fn checked(self, c: &mut igsales_config::Checker, env: Option<AppEnv>) -> Option<Self> {
        let bound = self.echo_must_exceed();
        if env == Some(AppEnv::Production) && self.conversation.echo_confirm <= bound {
            c.invalid("ECHO_CONFIRM_SECS", echo_form(bound));
            return None;
        }
        Some(self)
    }
}

/// The form `ECHO_CONFIRM_SECS` must have, named in the error or warning.
pub fn echo_form(bound: Duration) -> String {
    format!(
        "more than {} s: WORKER_ORPHAN_TIMEOUT_SECS, a heartbeat and META_HTTP_TIMEOUT_MS, \
         the longest an echo can be held up by a dead worker",
        bound.as_secs_f64().ceil()
    )
}
