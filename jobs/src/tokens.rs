use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::Delivery;
use crate::queue::Job;

/// Refresh one connected account's long-lived token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenV1 {
    pub merchant_id: Uuid,
    pub instagram_account_id: String,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
}

impl Job for RefreshTokenV1 {
    const NAME: &'static str = "refresh_token";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}

/// One tick of the token-refresh cron: finds the accounts due and enqueues `refresh_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRefreshSweepV1 {
    /// The cron tick, epoch seconds (also its once-per-tick key).
    pub tick: i64,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
}

impl Job for TokenRefreshSweepV1 {
    const NAME: &'static str = "token_refresh_sweep";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}

/// One tick of the housekeeping cron: retention and trimming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HousekeepingV1 {
    pub tick: i64,
    #[serde(default, skip_serializing_if = "Delivery::is_fresh")]
    pub delivery: Delivery,
}

impl Job for HousekeepingV1 {
    const NAME: &'static str = "housekeeping";
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }
    fn delivery_mut(&mut self) -> &mut Delivery {
        &mut self.delivery
    }
}
