//! Instagram account → merchant, through the `SECURITY DEFINER` resolver, cached in process:
//! a hit for at most `ACCOUNT_CACHE_HIT_SECS` (≤ 60 s), a miss for at most
//! `ACCOUNT_CACHE_MISS_SECS` (≤ 5 s), so a newly connected account routes within seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use igsales_schema::{Db, DbError, MerchantId};
use moka::Expiry;
use moka::future::Cache;

struct HitOrMiss {
    hit: Duration,
    miss: Duration,
}

impl Expiry<String, Option<MerchantId>> for HitOrMiss {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Option<MerchantId>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(if value.is_some() { self.hit } else { self.miss })
    }
}

#[derive(Clone)]
pub struct AccountResolver {
    db: Db,
    cache: Cache<String, Option<MerchantId>>,
}

impl AccountResolver {
    pub fn new(db: Db, hit: Duration, miss: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(200_000)
            .expire_after(HitOrMiss { hit, miss })
            .build();
        AccountResolver { db, cache }
    }

    /// Concurrent lookups of one account share a single database query.
    pub async fn resolve(&self, account: &str) -> Result<Option<MerchantId>, Arc<DbError>> {
        let db = self.db.clone();
        let key = account.to_owned();
        self.cache
            .try_get_with(key.clone(), async move {
                db.merchant_for_instagram_account(&key).await
            })
            .await
    }

    /// Forgets an account (it was just connected or disconnected here).
    pub async fn forget(&self, account: &str) {
        self.cache.invalidate(account).await;
    }
}
