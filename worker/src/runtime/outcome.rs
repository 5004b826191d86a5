//! What a job handler can answer besides success, and the retry schedule.

use std::time::Duration;

use igsales_jobs::DeadReason;

/// A handler's failure, saying what should happen next.
#[derive(Debug)]
pub enum JobError {
    /// Transient: try again after the backoff. Uses an attempt.
    Retry(anyhow::Error),
    /// Transient, and the other side said when: not before `after`. Uses an attempt.
    RetryAfter(Duration, anyhow::Error),
    /// Not a failure: come back after `after` (throttling, rate limits, a merchant paused by
    /// Meta). Uses no attempt; bounded by the job's own deadline (e.g. the 24-hour window).
    Wait(Duration, &'static str),
    /// A dependency is down (Postgres unreachable, failing over, read-only): the job waits
    /// `JOB_UNAVAILABLE_WAIT_MS` and runs again without using an attempt, so an outage does not
    /// exhaust healthy work; after 24 h it is a dead letter (`exhausted`).
    Unavailable(anyhow::Error),
    /// Never retry; goes straight to the dead-letter list with this reason.
    Dead(DeadReason, anyhow::Error),
}

impl JobError {
    pub fn retry(e: impl Into<anyhow::Error>) -> Self {
        JobError::Retry(e.into())
    }
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        JobError::Dead(DeadReason::Permanent, e.into())
    }

    /// Redis out of reach (restarting, stalled, failing over) is an outage to wait out, not a
    /// failed attempt; any other Redis error is a retry.
    pub fn redis(e: redis::RedisError) -> Self {
        let outage = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || igsales_jobs::redis_conn::refused_for_now(&e);
        let e = anyhow::anyhow!("Redis: {}", igsales_jobs::redis_conn::describe(&e));
        if outage {
            JobError::Unavailable(e)
        } else {
            JobError::Retry(e)
        }
    }

    /// A push Redis did not acknowledge: Redis is out of reach; wait it out.
    pub fn enqueue(e: igsales_jobs::queue::EnqueueError) -> Self {
        JobError::Unavailable(e.into())
    }
}

/// Exponential backoff with full jitter: a uniform pick in `[0, min(max, base·2^(n-1))]` for
/// the n-th retry (n ≥ 1), so many jobs failing together spread out instead of retrying in step.
pub fn backoff(base: Duration, max: Duration, retry: u32, unit_random: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(30);
    let ceiling = base.saturating_mul(1u32 << exp).min(max);
    ceiling.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// A uniform random number in [0, 1) from the system generator.
pub fn unit_random() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_and_jitters_below_it() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff(base, max, 1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(base, max, 3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(base, max, 20, 1.0), max);
        assert_eq!(backoff(base, max, 3, 0.0), Duration::ZERO);
        assert_eq!(backoff(base, max, 3, 0.5), Duration::from_millis(200));
        let r = unit_random();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn redis_out_of_reach_waits_without_an_attempt() {
        let refused: redis::RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert!(matches!(JobError::redis(refused), JobError::Unavailable(_)));
        let typed: redis::RedisError =
            (redis::ErrorKind::UnexpectedReturnType, "not a number").into();
        assert!(matches!(JobError::redis(typed), JobError::Retry(_)));
    }
}
