//! When an idle worker looks for work.
//!
//! apalis's built-in interval sometimes stops re-arming its timer, and then a pushed job waits
//! for the next heartbeat. This strategy drains the tokio interval until it is pending, so a
//! waker is always registered. It also fetches only while the queue's own run permits have
//! room: apalis's concurrency limit is set above ours, so fetched jobs never wait in apalis's
//! buffer — a worker whose buffer is full stops heartbeating and is then declared dead.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use tokio::sync::Semaphore;
use tokio::time::{Interval, MissedTickBehavior};

pub struct Gated {
    interval: Interval,
    permits: Arc<Semaphore>,
}

impl Gated {
    pub fn new(period: Duration, permits: Arc<Semaphore>) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Gated { interval, permits }
    }
}

impl PollStrategy for Gated {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut fired = false;
        while self.interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        // A full house skips this tick; the interval's waker brings us back next period.
        if fired && self.permits.available_permits() > 0 {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
