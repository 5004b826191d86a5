//! Pushing typed jobs to their apalis queues.

use std::time::SystemTime;

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::{Config, RedisStorage};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::delivery::Delivery;
use crate::redis_conn::RedisConn;

/// A job type: its payload, its stable queue name, and its delivery bookkeeping.
pub trait Job: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static {
    const NAME: &'static str;
    fn delivery(&self) -> &Delivery;
    fn delivery_mut(&mut self) -> &mut Delivery;
}

#[derive(Debug, thiserror::Error)]
#[error("Redis did not accept the {queue} job: {reason}")]
pub struct EnqueueError {
    pub queue: &'static str,
    pub reason: String,
}

/// The queue of one job type. Cheap to clone (the connection is shared and multiplexed).
pub struct JobQueue<J: Job> {
    storage: RedisStorage<J, RedisConn>,
}

impl<J: Job> Clone for JobQueue<J> {
    fn clone(&self) -> Self {
        JobQueue {
            storage: self.storage.clone(),
        }
    }
}

impl<J: Job> JobQueue<J> {
    pub fn new(conn: RedisConn) -> Self {
        // The queue name must be set: apalis's default is the Rust type name.
        JobQueue {
            storage: RedisStorage::new(conn).with_config(Config::default().queue(J::NAME)),
        }
    }

    /// Pushes one job; returns once Redis has acknowledged it.
    pub async fn push(&self, job: J) -> Result<(), EnqueueError> {
        let mut storage = self.storage.clone();
        storage.push(job).await.map_err(|e| EnqueueError {
            queue: J::NAME,
            reason: e.to_string(),
        })
    }

    /// A queue whose pushes can carry an idempotency key, remembered for `ttl` (cron ticks).
    pub fn with_idempotency(conn: RedisConn, ttl: std::time::Duration) -> Self {
        JobQueue {
            storage: RedisStorage::new(conn)
                .with_config(Config::default().queue(J::NAME).idempotency_ttl(Some(ttl))),
        }
    }

    /// Pushes unless a push with the same key happened within the queue's idempotency TTL
    /// (atomic in Redis, so replicas racing on one cron tick make one job).
    pub async fn push_once(&self, job: J, key: String) -> Result<(), EnqueueError> {
        let mut storage = self.storage.clone();
        storage
            .push_task(TaskBuilder::new(job).idempotency_key(key).build())
            .await
            .map_err(|e| EnqueueError {
                queue: J::NAME,
                reason: e.to_string(),
            })
    }

    /// Pushes a job that must not run before `run_at` (a re-scheduled retry or wait).
    pub async fn push_at(&self, job: J, run_at: SystemTime) -> Result<(), EnqueueError> {
        let mut storage = self.storage.clone();
        storage
            .push_task(TaskBuilder::new(job).run_at_time(run_at).build())
            .await
            .map_err(|e| EnqueueError {
                queue: J::NAME,
                reason: e.to_string(),
            })
    }

    /// Pushes several jobs in one round trip; returns once Redis has acknowledged all of them.
    pub async fn push_all(&self, jobs: Vec<J>) -> Result<(), EnqueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut storage = self.storage.clone();
        storage.push_bulk(jobs).await.map_err(|e| EnqueueError {
            queue: J::NAME,
            reason: e.to_string(),
        })
    }
}
