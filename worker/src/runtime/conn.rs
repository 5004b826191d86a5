//! The Redis connection apalis-redis uses for a queue, with one fix.
//!
//! apalis-redis 1.0's fetch script moves *every* due job from `{q}:scheduled` to `{q}:active`
//! with one `RPUSH … unpack(ids)`, and Lua's `unpack` fails at about 8,000 values: after an
//! outage with a backlog that size, every fetch errors and the queue stalls for good. Every
//! push lands in `{q}:scheduled`, so a backlog is all it takes. This wrapper recognises the
//! fetch (by its keys) and first moves due jobs over in chunks of at most 1,000, doing for them
//! exactly what the fetch would (push to active, remove from scheduled, raise the signal).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use apalis_redis::Config;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

const CHUNK: usize = 1000;

/// KEYS: scheduled zset, active list, signal list. ARGV: now (s), chunk size.
const MOVE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due == 0 then return 0 end
redis.call('RPUSH', KEYS[2], unpack(due))
redis.call('ZREM', KEYS[1], unpack(due))
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[3], 1)
return #due
";

struct Keys {
    workers: String,
    active: String,
    scheduled: String,
    signal: String,
}

#[derive(Clone)]
pub struct QueueConn {
    inner: ConnectionManager,
    keys: Arc<Keys>,
    mover: Arc<redis::Script>,
}

impl QueueConn {
    pub fn new(inner: ConnectionManager, config: &Config) -> Self {
        QueueConn {
            inner,
            keys: Arc::new(Keys {
                workers: config.workers_set(),
                active: config.active_jobs_list(),
                scheduled: config.scheduled_jobs_set(),
                signal: config.signal_list(),
            }),
            mover: Arc::new(redis::Script::new(MOVE_DUE)),
        }
    }

    /// The fetch script is invoked with 7 keys: workers, active, inflight, data, signal, meta,
    /// scheduled.
    fn is_fetch(&self, cmd: &Cmd) -> bool {
        let mut args = cmd.args_iter().filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        });
        let (Some(name), Some(_script), Some(numkeys), Some(first), Some(second)) = (
            args.next(),
            args.next(),
            args.next(),
            args.next(),
            args.next(),
        ) else {
            return false;
        };
        (name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL"))
            && numkeys == b"7"
            && first == self.keys.workers.as_bytes()
            && second == self.keys.active.as_bytes()
    }

    async fn move_due(&mut self) -> redis::RedisResult<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        loop {
            let moved: usize = self
                .mover
                .key(&self.keys.scheduled)
                .key(&self.keys.active)
                .key(&self.keys.signal)
                .arg(now)
                .arg(CHUNK)
                .invoke_async(&mut self.inner)
                .await?;
            if moved < CHUNK {
                return Ok(());
            }
        }
    }
}

impl ConnectionLike for QueueConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        if self.is_fetch(cmd) {
            Box::pin(async move {
                self.move_due().await?;
                self.inner.req_packed_command(cmd).await
            })
        } else {
            self.inner.req_packed_command(cmd)
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
