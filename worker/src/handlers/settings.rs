//! The groups the job handlers own, and all the groups `worker run` names (SPEC §3),
//! validated before anything connects.

use std::str::FromStr as _;
use std::time::Duration;

use clap::Args;
use igsales_config::{
    AppEnv, Checker, DbArgs, DbSettings, GraphArgs, GraphSettings, KeyArgs, KeyRing, RedisArgs,
    RedisSettings, dns,
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
    }
}

/// The groups `worker run` needs.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    keys: KeyArgs,
    #[command(flatten)]
    graph: GraphArgs,
    #[command(flatten)]
    limits: limits::Args,
    #[command(flatten)]
    dns: dns::Args,
    #[command(flatten)]
    model: model::Args,
    #[command(flatten)]
    pool: worker_pool::Args,
    #[command(flatten)]
    retry: retry::Args,
    #[command(flatten)]
    schedule: schedule::Args,
    #[command(flatten)]
    token_refresh: token_refresh::Args,
    #[command(flatten)]
    conversation: conversation::Args,
    #[command(flatten)]
    retention: retention::Args,
}

#[derive(Debug, Clone)]
pub struct RunSettings {
    pub db: DbSettings,
    pub redis: RedisSettings,
    pub keys: KeyRing,
    pub graph: GraphSettings,
    pub limits: limits::Settings,
    pub dns: dns::Settings,
    pub model: model::Settings,
    pub pool: worker_pool::Settings,
    pub retry: retry::Settings,
    pub schedule: schedule::Settings,
    pub token_refresh: token_refresh::Settings,
    pub conversation: conversation::Settings,
    pub retention: retention::Settings,
}

impl RunArgs {
    pub fn check(&self, c: &mut Checker, env: Option<AppEnv>) -> Option<RunSettings> {
        let db = self.db.check(c, env);
        let redis = self.redis.check(c, env);
        let keys = self.keys.check(c, env);
        let graph = self.graph.check(c, env);
        let limits = self.limits.check(c, env);
        let dns = self.dns.check(c, env);
        let model = self.model.check(c, env);
        let pool = self.pool.check(c, env);
        let retry = self.retry.check(c, env);
        let schedule = self.schedule.check(c, env);
        let token_refresh = self.token_refresh.check(c, env);
        let conversation = self.conversation.check(c, env);
        let retention = self.retention.check(c, env);
        Some(RunSettings {
            db: db?,
            redis: redis?,
            keys: keys?.ring,
            graph: graph?,
            limits: limits?,
            dns: dns?,
            model: model?,
            pool: pool?,
            retry: retry?,
            schedule: schedule?,
            token_refresh: token_refresh?,
            conversation: conversation?,
            retention: retention?,
        })
    }
}
