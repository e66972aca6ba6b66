//! Which partitions are not read, and which are stuck. Flow control holds back a partition
//! that has run past the sources' frontier; a partition whose fetch delivers nothing while its
//! records wait has its fetch restarted, and stops the job for a restart once its Kafka client
//! looks stuck for good.

use std::time::Instant;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use tracing::warn;

use super::reader::{PartitionState, Reader};
use super::{BACKSTOP, PROBE_TIMEOUT, RESTARTS_BEFORE_STOP, STALLED_AFTER};
use retail_common::kafka::ClientSettings;

impl PartitionState {
    /// Whether its queue and the consumer have been silent for [`STALLED_AFTER`] by `now`.
    fn silent_too_long(&self, now: Instant) -> bool {
        (self.silent_since).is_some_and(|since| now.duration_since(since) >= STALLED_AFTER)
    }
}

impl Reader {
    /// Flow control: marks the open partitions whose latest epoch is past `limit` as held
    /// (they are not read until they are within it again). Returns how many are held.
    pub(super) fn hold_back(&mut self, limit: Option<u64>) -> i64 {
        let mut held = 0;
        for state in self.parts.iter_mut().filter(|s| !s.done) {
            let ahead = is_past(state, limit);
            if state.held && !ahead {
                // Time spent held is not silence: it must not make the partition look idle
                // (see --idle-timeout), nor a queue that delivers nothing.
                state.last_message = Instant::now();
                state.silent_since = None;
            }
            state.held = ahead;
            held += i64::from(ahead);
        }
        held
    }

    /// Restarts the fetch of each partition that [`is_stalled`], by seeking it to its next
    /// offset: the first record not handled, so nothing is read twice or skipped. A partition
    /// still stalled after [`RESTARTS_BEFORE_STOP`] restarts, while a new client reaches the
    /// broker, is what to stop the job for: the Kafka client itself is stuck, and a restart
    /// resumes from the checkpoint with a new one. While the broker stays out of reach, the
    /// job waits for it as before.
    pub(super) fn restart_stalled(
        &mut self,
        settings: &ClientSettings,
        now: Instant,
    ) -> Option<String> {
        if !self.parts.iter().any(|s| s.silent_too_long(now)) {
            return None;
        }
        // A copy: librdkafka's statistics callback takes the lock, and seeking waits for
        // librdkafka.
        let stable = crate::locked(&self.last_stable).clone();
        // Probed once a call, and only when a partition has been restarted enough.
        let mut reachable = None;
        for state in self.parts.iter_mut() {
            let last_stable = stable.get(state.partition as usize).copied().unwrap_or(-1);
            if !is_stalled(state, last_stable, now) {
                continue;
            }
            if state.restarts >= RESTARTS_BEFORE_STOP
                && *reachable.get_or_insert_with(|| {
                    (settings.partition_count(&self.topic, PROBE_TIMEOUT))
                        .is_ok_and(|n| n.is_some())
                })
            {
                return Some(format!(
                    "worker {}: partition {} of {} has delivered nothing for {:?} though its \
                     records wait from offset {}, and its Kafka client reports no error while a \
                     new one reaches the broker: stopping so that a restart resumes from the \
                     checkpoint with a new client",
                    self.worker,
                    state.partition,
                    self.topic,
                    STALLED_AFTER * (RESTARTS_BEFORE_STOP + 1),
                    state.next_offset
                ));
            }
            warn!(
                worker = self.worker,
                partition = state.partition,
                offset = state.next_offset,
                "partition delivered nothing for {STALLED_AFTER:?} though its records wait; restarting its fetch"
            );
            let at = Offset::Offset(state.next_offset);
            if let Err(error) = (self.consumer).seek(&self.topic, state.partition, at, BACKSTOP) {
                warn!(worker = self.worker, partition = state.partition, %error,
                    "cannot restart the partition's fetch; trying again later");
            }
            state.silent_since = None;
            state.restarts += 1;
        }
        None
    }
}

/// Whether a partition's fetch is stuck: it is read (not done, not held), records wait for it
/// (before its end in a bounded run, or before the last stable offset librdkafka reported),
/// no end was seen since its last record, and for [`STALLED_AFTER`] its queue has delivered
/// nothing and the consumer has reported no error. librdkafka has been seen to leave every
/// partition of a consumer unfetched for good after the broker restarted within a second of
/// the job's start, with no error after the first second.
pub(super) fn is_stalled(state: &PartitionState, last_stable: i64, now: Instant) -> bool {
    let waiting = state.end.unwrap_or(last_stable) > state.next_offset;
    !state.done && !state.held && !state.caught_up && waiting && state.silent_too_long(now)
}

/// Whether a partition has run past the flow-control `limit`.
fn is_past(state: &PartitionState, limit: Option<u64>) -> bool {
    state.clock.has_data() && limit.is_some_and(|l| state.clock.latest() > l)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::epoch::{EpochClock, PartitionClock};

    #[test]
    fn a_partition_is_stalled_only_when_read_behind_and_silent_long_enough() {
        let now = Instant::now();
        let long_ago = now - STALLED_AFTER;
        // Bounded: records wait before its end; no last stable offset is needed.
        let mut bounded = PartitionState::new(0, PartitionClock::default(), 10, Some(20));
        assert!(!is_stalled(&bounded, -1, now), "never silent");
        bounded.silent_since = Some(now - STALLED_AFTER / 2);
        assert!(!is_stalled(&bounded, -1, now), "not silent long enough");
        bounded.silent_since = Some(long_ago);
        assert!(is_stalled(&bounded, -1, now));
        for quiet in [
            |s: &mut PartitionState| s.held = true,
            |s: &mut PartitionState| s.done = true,
            |s: &mut PartitionState| s.caught_up = true,
            |s: &mut PartitionState| s.next_offset = 20,
        ] {
            let mut s = PartitionState::new(0, PartitionClock::default(), 10, Some(20));
            s.silent_since = Some(long_ago);
            quiet(&mut s);
            assert!(!is_stalled(&s, -1, now));
        }
        // Live: records wait only before the last stable offset librdkafka reported.
        let mut live = PartitionState::new(1, PartitionClock::default(), 10, None);
        live.silent_since = Some(long_ago);
        assert!(!is_stalled(&live, -1, now), "nothing known to wait");
        assert!(
            !is_stalled(&live, 10, now),
            "read up to the last stable offset"
        );
        assert!(is_stalled(&live, 11, now));
    }

    #[test]
    fn a_partition_is_past_the_limit_only_once_a_record_lands_beyond_it() {
        let clock = EpochClock::new(Duration::from_secs(3600), Duration::ZERO).unwrap();
        let mut state = PartitionState::new(0, PartitionClock::default(), 0, None);
        assert!(!is_past(&state, Some(0)), "nothing shown yet");
        state.clock.assign(&clock, 4);
        assert!(!is_past(&state, None), "no limit: under the budget");
        assert!(!is_past(&state, Some(4)));
        assert!(!is_past(&state, Some(5)));
        assert!(is_past(&state, Some(3)));
    }
}
