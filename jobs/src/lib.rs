//! Job contracts shared by `ingress` (which enqueues) and `worker` (which runs them), and the
//! Redis connection both use, and the probes both answer (`/healthz`, `/readyz`, `/metrics`).
//!
//! Each job has a stable snake_case name, which is also its apalis queue name. Payloads are
//! versioned serde structs: a compatible change adds a `#[serde(default)]` field; a breaking
//! change is a new job (`…_v2`) so ingress and workers can be deployed apart.

mod canary;
pub mod delivery;
pub mod forget;
mod inbound;
pub mod ingest;
pub mod names;
pub mod probes;
pub mod queue;
pub mod redis_conn;
mod send;
mod tokens;

pub use canary::{CanaryFailure, CanaryV1};
pub use delivery::{DeadLetter, DeadReason, Delivery, cap_dead_letters, dlq_key, push_dead_letter};
pub use inbound::{InboundEventV1, InboundSignalV1};
pub use names::{
    DEAD_LETTER_LISTS, DEAD_LETTER_NAMES, DeadLetterList, QUEUES, REPLAYABLE, WEBHOOK_INVALID,
};
pub use queue::{Job, JobQueue};
pub use redis_conn::RedisConn;
pub use send::{SendChannel, SendMessageV1};
pub use tokens::{HousekeepingV1, RefreshTokenV1, TokenRefreshSweepV1};
