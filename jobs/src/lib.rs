//! Job contracts shared by `ingress` (which enqueues) and `worker` (which runs them), and the
//! Redis connection both use.

pub mod redis_conn;
