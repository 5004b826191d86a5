use serde::{Deserialize, Serialize};

use crate::delivery::Delivery;
use crate::queue::Job;

/// A synthetic job that checks the pool end to end: operators (and the runtime benchmark) push
/// canaries to measure pickup latency and throughput, and to rehearse failure handling. The
/// handler records each run in Redis (`canary:{id}:runs`, `canary:{id}:started_ms`) and
/// behaves as the payload asks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryV1 {
    pub id: String,
    /// Push time, epoch milliseconds (for pickup latency).
    #[serde(default)]
    pub pushed_ms: i64,
    /// Time spent "working" per run.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail this many runs first, the way `fail_as` says.
    #[serde(default)]
    pub fail_first: u32,
    #[serde(default)]
    pub fail_as: CanaryFailure,
    /// For `fail_as = wait`: how long to ask to wait.
    #[serde(default)]
    pub wait_secs: u64,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryFailure {
    #[default]
    Retry,
    Permanent,
    Wait,
}

impl Job for CanaryV1 {
    const NAME: &'static str = "canary";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}
