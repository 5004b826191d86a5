//! What every job carries about its own delivery, and what a dead job leaves behind.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Retry bookkeeping that travels inside the payload: a long wait is a new push with a run-at
/// (the worker does not sleep through it), so the count and the first enqueue time have to
/// come along. A fresh job leaves it out of its JSON entirely.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Attempts already used (0 for a fresh job).
    #[serde(default)]
    pub attempt: u32,
    /// When the job was first enqueued (absent: this push is the first).
    #[serde(default)]
    pub first_enqueued_at: Option<DateTime<Utc>>,
}

impl Delivery {
    pub fn is_fresh(&self) -> bool {
        self.attempt == 0 && self.first_enqueued_at.is_none()
    }
}

/// Why a job went to its dead-letter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadReason {
    Exhausted,
    Permanent,
    WindowExpired,
    NeedsReauth,
    SendUnknown,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Exhausted => "exhausted",
            DeadReason::Permanent => "permanent",
            DeadReason::WindowExpired => "window_expired",
            DeadReason::NeedsReauth => "needs_reauth",
            DeadReason::SendUnknown => "send_unknown",
        }
    }
}

/// One record of `dlq:{job}` (SPEC §5.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The apalis task id of the last run.
    pub id: String,
    pub job: String,
    pub payload: serde_json::Value,
    pub error: String,
    pub reason: DeadReason,
    pub attempts: u32,
    #[serde(with = "rfc3339")]
    pub first_enqueued_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub failed_at: DateTime<Utc>,
    pub worker: String,
}

/// The Redis list of a job's dead letters.
pub fn dlq_key(job: &str) -> String {
    format!("dlq:{job}")
}

/// Adds to `pipe` the `LTRIM` that keeps `dlq:{list}` at its newest `cap` records.
pub fn cap_dead_letters<'p>(
    pipe: &'p mut redis::Pipeline,
    list: &str,
    cap: usize,
) -> &'p mut redis::Pipeline {
    pipe.ltrim(dlq_key(list), 0, cap as isize - 1).ignore()
}

/// Pushes one record onto `dlq:{list}` (newest first) and caps the list at `cap` records, in
/// one MULTI: the list never holds more than `cap` between the two.
pub async fn push_dead_letter(
    redis: &mut impl redis::aio::ConnectionLike,
    list: &str,
    record: &str,
    cap: usize,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    pipe.atomic().lpush(dlq_key(list), record).ignore();
    cap_dead_letters(&mut pipe, list, cap);
    pipe.query_async(redis).await
}

/// RFC 3339 UTC with a `Z`, to the millisecond.
mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_has_every_spec_field_with_utc_times() {
        let t = DateTime::parse_from_rfc3339("2026-11-26T05:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let rec = DeadLetter {
            id: "01J".into(),
            job: "send_message".into(),
            payload: serde_json::json!({"a": 1}),
            error: "HTTP 500".into(),
            reason: DeadReason::Exhausted,
            attempts: 8,
            first_enqueued_at: t,
            failed_at: t,
            worker: "send_message-host-1-0".into(),
        };
        let v = serde_json::to_value(&rec).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempts",
                "error",
                "failed_at",
                "first_enqueued_at",
                "id",
                "job",
                "payload",
                "reason",
                "worker"
            ]
        );
        assert_eq!(v["failed_at"], "2026-11-26T05:00:00.000Z");
        assert_eq!(v["reason"], "exhausted");
        let back: DeadLetter = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, rec);
    }
}
