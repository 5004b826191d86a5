//! Every job name, in one list: the queues the worker pool serves, the dead-letter lists there
//! are, and which of those can be replayed.

use crate::queue::Job;
use crate::{
    CanaryV1, HousekeepingV1, InboundEventV1, InboundSignalV1, RefreshTokenV1, SendMessageV1,
    TokenRefreshSweepV1,
};

/// The ingress parks signed webhooks it cannot read in `dlq:webhook_invalid`: a dead-letter
/// list with no job queue behind it, so nothing to replay.
pub const WEBHOOK_INVALID: &str = "webhook_invalid";

/// One dead-letter list `dlq:{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterList {
    pub name: &'static str,
    /// A job of that name, whose apalis queue (of the same name) the worker pool serves.
    pub queue: bool,
    /// Its records can be pushed back to their queue (`worker dlq replay`).
    pub replayable: bool,
}

impl DeadLetterList {
    const fn job<J: Job>(replayable: bool) -> Self {
        DeadLetterList {
            name: J::NAME,
            queue: true,
            replayable,
        }
    }
}

/// Every dead-letter list: one per job, then the ingress's unreadable webhooks. The cron jobs
/// are not replayed: their next tick does the same work.
pub const DEAD_LETTER_LISTS: &[DeadLetterList] = &[
    DeadLetterList::job::<InboundEventV1>(true),
    DeadLetterList::job::<InboundSignalV1>(true),
    DeadLetterList::job::<SendMessageV1>(true),
    DeadLetterList::job::<RefreshTokenV1>(true),
    DeadLetterList::job::<TokenRefreshSweepV1>(false),
    DeadLetterList::job::<HousekeepingV1>(false),
    DeadLetterList::job::<CanaryV1>(true),
    DeadLetterList {
        name: WEBHOOK_INVALID,
        queue: false,
        replayable: false,
    },
];

/// Which lists a name slice keeps (closures cannot run in a `const`).
#[derive(Clone, Copy)]
enum Pick {
    All,
    Queues,
    Replayable,
}

impl Pick {
    const fn keeps(self, list: &DeadLetterList) -> bool {
        match self {
            Pick::All => true,
            Pick::Queues => list.queue,
            Pick::Replayable => list.replayable,
        }
    }

    const fn count(self) -> usize {
        let (mut i, mut n) = (0, 0);
        while i < DEAD_LETTER_LISTS.len() {
            if self.keeps(&DEAD_LETTER_LISTS[i]) {
                n += 1;
            }
            i += 1;
        }
        n
    }

    const fn names<const N: usize>(self) -> [&'static str; N] {
        let mut out = [""; N];
        let (mut i, mut n) = (0, 0);
        while i < DEAD_LETTER_LISTS.len() {
            if self.keeps(&DEAD_LETTER_LISTS[i]) {
                out[n] = DEAD_LETTER_LISTS[i].name;
                n += 1;
            }
            i += 1;
        }
        out
    }
}

/// Every queue a worker process serves (every job's name).
pub const QUEUES: &[&str] = &Pick::Queues.names::<{ Pick::Queues.count() }>();

/// The name of every dead-letter list (`dlq:{name}`).
pub const DEAD_LETTER_NAMES: &[&str] = &Pick::All.names::<{ Pick::All.count() }>();

/// Dead-letter lists whose records can be pushed back to their queue.
pub const REPLAYABLE: &[&str] = &Pick::Replayable.names::<{ Pick::Replayable.count() }>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_lists_follow_the_one_table() {
        assert_eq!(
            QUEUES,
            [
                "inbound_event",
                "inbound_signal",
                "send_message",
                "refresh_token",
                "token_refresh_sweep",
                "housekeeping",
                "canary"
            ]
        );
        assert_eq!(DEAD_LETTER_NAMES[..QUEUES.len()], *QUEUES);
        assert_eq!(DEAD_LETTER_NAMES[QUEUES.len()..], [WEBHOOK_INVALID]);
        assert_eq!(
            REPLAYABLE,
            [
                "inbound_event",
                "inbound_signal",
                "send_message",
                "refresh_token",
                "canary"
            ]
        );
    }
}
