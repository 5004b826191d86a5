//! `worker dlq list | replay | drain`: the dead-letter lists `dlq:{job}`.
//!
//! Records are read straight from Redis. Replay pushes the payload back to its queue as a new
//! job and only then removes the record, so a crash in between leaves the record in place (a
//! second replay may push it twice; every job is idempotent by its own keys).

use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use igsales_config::RedisSettings;
use igsales_jobs::RedisConn;
use igsales_jobs::{
    CanaryV1, DeadLetter, InboundEventV1, InboundSignalV1, Job, JobQueue, RefreshTokenV1,
    SendMessageV1, dlq_key,
};
use redis::AsyncCommands;
use serde_json::Value;

/// Queues whose dead letters can be pushed back.
pub use igsales_jobs::REPLAYABLE;

/// The record as stored (kept verbatim so it can be removed exactly) and parsed.
struct Stored {
    raw: String,
    record: Result<DeadLetter, Value>,
}

async fn connect(settings: &RedisSettings) -> anyhow::Result<RedisConn> {
    Ok(igsales_jobs::redis_conn::connect(settings).await?)
}

async fn read(conn: &mut RedisConn, queue: &str, limit: isize) -> anyhow::Result<Vec<Stored>> {
    let raws: Vec<String> = conn
        .lrange(dlq_key(queue), 0, limit - 1)
        .await
        .context("reading the dead-letter list")?;
    Ok(raws
        .into_iter()
        .map(|raw| {
            let record = serde_json::from_str::<DeadLetter>(&raw)
                .map_err(|_| serde_json::from_str::<Value>(&raw).unwrap_or(Value::Null));
            Stored { raw, record }
        })
        .collect())
}

/// Replaces message text (any `text` field, at any depth) unless asked to show payloads.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if matches!(k.as_str(), "text" | "title" | "body" | "body_base64")
                    && child.is_string()
                {
                    *child = Value::String("[redacted]".into());
                } else {
                    redact(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

pub async fn list(
    settings: &RedisSettings,
    queue: Option<&str>,
    limit: usize,
    json: bool,
    show_payload: bool,
) -> anyhow::Result<()> {
    let mut conn = connect(settings).await?;
    let queues: Vec<&str> = match queue {
        Some(q) => vec![q],
        // Every list: each queue the pool serves, and the ingress's unreadable webhooks.
        None => igsales_jobs::DEAD_LETTER_NAMES.to_vec(),
    };
    let take = isize::try_from(limit).unwrap_or(isize::MAX);
    let mut values: Vec<(Option<chrono::DateTime<Utc>>, Value)> = Vec::new();
    let mut total = 0usize;
    for q in &queues {
        for s in read(&mut conn, q, take).await? {
            let mut v = match s.record {
                Ok(r) => serde_json::to_value(r).unwrap_or(Value::Null),
                Err(v) => v,
            };
            if let Value::Object(map) = &mut v {
                map.insert("queue".into(), Value::String((*q).to_owned()));
            }
            let at = v
                .get("failed_at")
                .or_else(|| v.get("received_at"))
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc));
            values.push((at, v));
        }
        let n: usize = conn.llen(dlq_key(q)).await.context("counting")?;
        total += n;
    }
    // Newest first across queues; the sort is stable, so each list keeps its own order.
    values.sort_by_key(|v| std::cmp::Reverse(v.0));
    values.truncate(limit);
    let mut values: Vec<Value> = values.into_iter().map(|(_, v)| v).collect();
    if !show_payload {
        values.iter_mut().for_each(redact);
    }
    if json {
        println!("{}", Value::Array(values));
        return Ok(());
    }
    println!(
        "{:<16} {:<28} {:<15} {:>8}  {:<24} error",
        "queue", "id", "reason", "attempts", "failed_at"
    );
    for v in &values {
        let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let mut error = field("error");
        if error.chars().count() > 60 {
            error = error.chars().take(59).collect::<String>() + "…";
        }
        println!(
            "{:<16} {:<28} {:<15} {:>8}  {:<24} {error}",
            field("queue"),
            field("id"),
            field("reason"),
            v.get("attempts").and_then(Value::as_u64).unwrap_or(0),
            field("failed_at"),
        );
    }
    let lists = match queue {
        Some(q) => dlq_key(q),
        None => format!("{} dead-letter lists", queues.len()),
    };
    eprintln!("{} of {total} record(s) in {lists}", values.len());
    Ok(())
}

/// Pushes a dead payload back as a fresh job of its queue (its attempts start again).
async fn push_back(conn: &RedisConn, queue: &str, payload: &Value) -> anyhow::Result<()> {
    async fn typed<J: Job>(conn: &RedisConn, payload: &Value) -> anyhow::Result<()> {
        let mut job: J = serde_json::from_value(payload.clone())
            .with_context(|| format!("the record's payload is not a {} job", J::NAME))?;
        *job.delivery_mut() = Default::default();
        JobQueue::<J>::new(conn.clone()).push(job).await?;
        Ok(())
    }
    match queue {
        InboundEventV1::NAME => typed::<InboundEventV1>(conn, payload).await,
        InboundSignalV1::NAME => typed::<InboundSignalV1>(conn, payload).await,
        SendMessageV1::NAME => typed::<SendMessageV1>(conn, payload).await,
        RefreshTokenV1::NAME => typed::<RefreshTokenV1>(conn, payload).await,
        CanaryV1::NAME => typed::<CanaryV1>(conn, payload).await,
        other => bail!("dead letters of {other} cannot be replayed"),
    }
}

pub async fn replay(settings: &RedisSettings, queue: &str, id: Option<&str>) -> anyhow::Result<()> {
    let mut conn = connect(settings).await?;
    let stored = read(&mut conn, queue, isize::MAX).await?;
    let chosen: Vec<&Stored> = stored
        .iter()
        .filter(|s| match (&s.record, id) {
            (Ok(r), Some(id)) => r.id == id,
            (Ok(_), None) => true,
            (Err(_), _) => false,
        })
        .collect();
    if chosen.is_empty() {
        bail!(
            "no dead letter{} in {}",
            id.map(|i| format!(" with id {i}")).unwrap_or_default(),
            dlq_key(queue)
        );
    }
    let mut replayed = 0;
    for (i, s) in chosen.iter().enumerate() {
        let Ok(record) = &s.record else { continue };
        push_back(&conn, queue, &record.payload).await?;
        // Removed only after the push was acknowledged.
        let _: i64 = conn
            .lrem(dlq_key(queue), 1, &s.raw)
            .await
            .context("removing the replayed record")?;
        replayed += 1;
        eprintln!("[{}/{}] replayed {}", i + 1, chosen.len(), record.id);
    }
    println!(
        "replayed {replayed} record(s) from {} to {queue}",
        dlq_key(queue)
    );
    Ok(())
}

/// `30s`, `30m`, `12h`, `7d`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| "expected a number and a unit: 30s, 30m, 12h, 7d".to_owned())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err("expected a unit s, m, h or d: 30s, 30m, 12h, 7d".to_owned()),
    };
    Ok(Duration::from_secs(secs))
}

pub async fn drain(
    settings: &RedisSettings,
    queue: &str,
    older_than: Option<Duration>,
) -> anyhow::Result<()> {
    let mut conn = connect(settings).await?;
    let stored = read(&mut conn, queue, isize::MAX).await?;
    let cutoff = older_than
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| Utc::now() - d);
    let mut drained = 0;
    for s in &stored {
        let old_enough = match (&s.record, cutoff) {
            (_, None) => true,
            (Ok(r), Some(cutoff)) => r.failed_at < cutoff,
            // Records of another shape (dlq:webhook_invalid) carry `received_at`.
            (Err(v), Some(cutoff)) => v
                .get("received_at")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t < cutoff),
        };
        if old_enough {
            let n: i64 = conn
                .lrem(dlq_key(queue), 1, &s.raw)
                .await
                .context("removing a record")?;
            drained += n;
        }
    }
    println!("drained {drained} record(s) from {}", dlq_key(queue));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units() {
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_age("1s"), Ok(Duration::from_secs(1)));
        assert!(parse_age("12").is_err() && parse_age("h").is_err() && parse_age("3w").is_err());
    }

    #[test]
    fn message_text_is_redacted_at_any_depth() {
        let mut v = serde_json::json!({"event": {"message": {"mid": "m", "text": "my address is…"}}, "parts": [{"text": "x"}]});
        redact(&mut v);
        assert_eq!(v["event"]["message"]["text"], "[redacted]");
        assert_eq!(v["event"]["message"]["mid"], "m");
        assert_eq!(v["parts"][0]["text"], "[redacted]");
    }
}
