//! What Redis may keep of customers' data, and for how long (SPEC §4.3, §6): job payloads carry
//! message text, so finished jobs' data goes within minutes, dead letters go after
//! `DLQ_RETENTION_DAYS`, and a data-deletion request scrubs every job and dead letter that names
//! the customer or the account. Everything works in bounded batches: nothing here blocks Redis
//! for long, and a run cut short simply leaves work for the next one.

use chrono::{DateTime, SecondsFormat, Utc};
use redis::aio::ConnectionLike;

use crate::delivery::dlq_key;
use crate::names::DEAD_LETTER_NAMES;

/// Ids per SSCAN/HSCAN/LRANGE round trip.
const BATCH: usize = 500;

/// KEYS: a done or dead set, the data hash, the meta prefix. ARGV: ids from that set. An id
/// still in the set loses its data, its meta and its place there; one already gone is left.
const FORGET_FINISHED: &str = r"
local n = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  if redis.call('SREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    redis.call('DEL', KEYS[3] .. ':' .. id)
    n = n + 1
  end
end
return n
";

/// KEYS: a dead-letter list. ARGV: the cutoff (RFC 3339, UTC, ms), the most to drop. Records are
/// pushed newest first, so the oldest are at the tail: drops from there while they are older than
/// the cutoff. A record that is not one of ours (no timestamp) cannot be judged: dropped too.
const DROP_OLD: &str = r"
local n = 0
while n < tonumber(ARGV[2]) do
  local last = redis.call('LINDEX', KEYS[1], -1)
  if not last then break end
  local ok, record = pcall(cjson.decode, last)
  local at = nil
  if ok and type(record) == 'table' then at = record['failed_at'] or record['received_at'] end
  if type(at) == 'string' and at >= ARGV[1] then break end
  redis.call('RPOP', KEYS[1])
  n = n + 1
end
return n
";

/// KEYS: data hash, meta prefix, active list, scheduled set, done set, dead set. ARGV: ids whose
/// data names the person. A waiting or finished job is removed whole; a running one (in some
/// worker's in-flight set, none of these) is counted and left to finish.
const SCRUB_JOBS: &str = r"
local removed, running = 0, 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local held = redis.call('LREM', KEYS[3], 0, id) + redis.call('ZREM', KEYS[4], id)
    + redis.call('SREM', KEYS[5], id) + redis.call('SREM', KEYS[6], id)
  if held > 0 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('DEL', KEYS[2] .. ':' .. id)
    removed = removed + 1
  else
    running = running + 1
  end
end
return {removed, running}
";

/// Forgets the finished (done and dead) jobs of `queue`: their data, meta and set entries.
/// Their outcome is already in Postgres and, for dead ones, in `dlq:{queue}`.
pub async fn forget_finished(
    redis: &mut (impl ConnectionLike + Send),
    queue: &str,
) -> redis::RedisResult<u64> {
    let cfg = apalis_redis::Config::default().queue(queue);
    let script = redis::Script::new(FORGET_FINISHED);
    let mut forgotten = 0;
    for set in [cfg.done_jobs_set(), cfg.dead_jobs_set()] {
        let mut cursor = 0u64;
        loop {
            let (next, ids): (u64, Vec<String>) = redis::cmd("SSCAN")
                .arg(&set)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(redis)
                .await?;
            if !ids.is_empty() {
                let mut inv = script.key(&set);
                inv.key(cfg.job_data_hash()).key(cfg.job_meta_hash());
                for id in &ids {
                    inv.arg(id);
                }
                forgotten += inv.invoke_async::<u64>(redis).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(forgotten)
}

/// Drops every dead letter that failed (or, for unreadable webhooks, arrived) before `cutoff`.
pub async fn drop_dead_letters_before(
    redis: &mut (impl ConnectionLike + Send),
    cutoff: DateTime<Utc>,
) -> redis::RedisResult<u64> {
    let cutoff = cutoff.to_rfc3339_opts(SecondsFormat::Millis, true);
    let script = redis::Script::new(DROP_OLD);
    let mut dropped = 0;
    for list in DEAD_LETTER_NAMES {
        loop {
            let n: u64 = script
                .key(dlq_key(list))
                .arg(&cutoff)
                .arg(BATCH)
                .invoke_async(redis)
                .await?;
            dropped += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    Ok(dropped)
}

/// What a scrub removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    /// Waiting and finished jobs removed, data and all.
    pub jobs: u64,
    /// Jobs running at that moment: left to finish (as if the request had come a moment later).
    pub running: u64,
    pub dead_letters: u64,
}

/// Whether `text` holds the numeric id `id` as a whole number (not inside a longer one): how a
/// Meta id appears in a payload, whether as a JSON string, a number or an escaped string.
fn names(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(i, _)| {
        let before = text[..i].bytes().next_back();
        let after = text[i + id.len()..].bytes().next();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

/// Removes every job of `queues` and every dead letter whose data names `id` (a customer's
/// IGSID or an account's id: Meta ids are digits; anything else names nothing and is refused).
pub async fn scrub(
    redis: &mut (impl ConnectionLike + Send),
    queues: &[&str],
    id: &str,
) -> redis::RedisResult<Scrubbed> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "a scrub needs a numeric Meta id",
        )));
    }
    let mut done = Scrubbed::default();
    let script = redis::Script::new(SCRUB_JOBS);
    for queue in queues {
        let cfg = apalis_redis::Config::default().queue(queue);
        let mut cursor = 0u64;
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(cfg.job_data_hash())
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(redis)
                .await?;
            let matching: Vec<&String> = pairs
                .iter()
                .filter(|(_, data)| names(data, id))
                .map(|(task, _)| task)
                .collect();
            if !matching.is_empty() {
                let mut inv = script.key(cfg.job_data_hash());
                inv.key(cfg.job_meta_hash())
                    .key(cfg.active_jobs_list())
                    .key(cfg.scheduled_jobs_set())
                    .key(cfg.done_jobs_set())
                    .key(cfg.dead_jobs_set());
                for task in matching {
                    inv.arg(task);
                }
                let (removed, running): (u64, u64) = inv.invoke_async(redis).await?;
                done.jobs += removed;
                done.running += running;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    for list in DEAD_LETTER_NAMES {
        let key = dlq_key(list);
        let mut start = 0isize;
        loop {
            let records: Vec<String> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(start)
                .arg(start + BATCH as isize - 1)
                .query_async(redis)
                .await?;
            let mut removed_here = 0isize;
            for record in records.iter().filter(|r| names(r, id)) {
                // By value: exact whatever else moved in the list meanwhile.
                let n: isize = redis::cmd("LREM")
                    .arg(&key)
                    .arg(0)
                    .arg(record)
                    .query_async(redis)
                    .await?;
                removed_here += n;
            }
            done.dead_letters += removed_here as u64;
            if records.len() < BATCH {
                break;
            }
            start += BATCH as isize - removed_here;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn an_id_is_found_only_as_a_whole_number() {
        let id = "1789012345678901";
        assert!(names(r#"{"sender":{"id":"1789012345678901"}}"#, id));
        assert!(names(r#"{"payload":"{\"id\":\"1789012345678901\"}"}"#, id));
        assert!(names(r#"{"recipient":1789012345678901}"#, id));
        assert!(!names(r#"{"sender":{"id":"17890123456789012"}}"#, id));
        assert!(!names(r#"{"sender":{"id":"91789012345678901"}}"#, id));
        assert!(!names(r#"{"sender":{"id":"5550001"}}"#, id));
    }
}
