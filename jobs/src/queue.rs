//! Pushing typed jobs to their apalis queues.

use apalis::prelude::TaskSink;
use apalis_redis::{Config, RedisStorage};
use redis::aio::ConnectionManager;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A job type: its payload and its stable queue name.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    const NAME: &'static str;
}

#[derive(Debug, thiserror::Error)]
#[error("Redis did not accept the {queue} job: {reason}")]
pub struct EnqueueError {
    pub queue: &'static str,
    pub reason: String,
}

/// The queue of one job type. Cheap to clone (the connection is shared and multiplexed).
pub struct JobQueue<J: Job> {
    storage: RedisStorage<J>,
}

impl<J: Job> Clone for JobQueue<J> {
    fn clone(&self) -> Self {
        JobQueue {
            storage: self.storage.clone(),
        }
    }
}

impl<J: Job> JobQueue<J> {
    pub fn new(conn: ConnectionManager) -> Self {
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
