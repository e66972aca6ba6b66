//! One activation's reading: drains the messages librdkafka has fetched, from the consumer's
//! main queue and then each partition's own queue, the furthest behind first and none that
//! flow control holds, up to the budget; and adds what it read to the process's counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tracing::warn;

use super::place::{Placing, Tally, handle};
use super::reader::{OwnQueue, Reader};
use super::{BUDGET, Filed, Metrics, SourceConfig};
use crate::native::fetch::Fetched;
use retail_common::kafka::{is_end_of_partition, is_undecodable};

impl Reader {
    /// Drains available messages into per-epoch batches, the partitions furthest behind
    /// first and none that flow control holds, adding each epoch's message bytes to `read`;
    /// returns how many it handled. A partition not held reads on for the whole activation,
    /// even past the limit: stopping it there would close one epoch per activation, with a
    /// round trip of progress between them.
    pub(super) fn poll_into(
        &mut self,
        config: &SourceConfig,
        frontier: u64,
        filed: &mut Filed,
        read: &mut BTreeMap<u64, u64>,
        metrics: &Metrics,
    ) -> usize {
        let place = Placing {
            config,
            frontier,
            now: Instant::now(),
            committed: config.resume.as_ref().map(|r| r.committed),
        };
        let mut tally = Tally::default();
        let mut finished = Vec::new();
        // The main queue serves client events, and messages fetched before the partition
        // queues were split.
        while tally.handled < BUDGET {
            let (p, polled) = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => (m.partition(), Some(m)),
                Some(Err(KafkaError::PartitionEOF(p))) => (p, None),
                Some(Err(e)) if is_undecodable(&e) => {
                    // Not tied to one partition here: name where each owned one stands.
                    let at: Vec<String> = self
                        .parts
                        .iter()
                        .filter(|s| !s.done)
                        .map(|s| format!("{} at offset {}", s.partition, s.next_offset))
                        .collect();
                    let which = match at.as_slice() {
                        [one] => format!("partition {one}"),
                        _ => format!("one of partitions {}", at.join(", ")),
                    };
                    self.undecodable = Some(undecodable_message(&e, &self.topic, &which));
                    return tally.handled;
                }
                Some(Err(e)) => {
                    // Broker outages and the like: librdkafka retries on its own. While it
                    // reports them, silent partitions are not stalled (see `is_stalled`).
                    warn!(worker = self.worker, error = %e, "Kafka consumer error; retrying");
                    for state in &mut self.parts {
                        state.silent_since = None;
                        state.restarts = 0;
                    }
                    break;
                }
            };
            if let Some(i) = self.slot.get(p as usize).copied().flatten() {
                let fetched = polled.as_ref().map(|m| Fetched {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key(),
                    payload: m.payload(),
                });
                handle(
                    &mut self.parts[i],
                    fetched,
                    &place,
                    &mut tally,
                    filed,
                    &mut finished,
                );
            }
        }
        // Each partition's own queue, the one furthest behind first, so that partitions read
        // at different speeds stay aligned.
        let mut order: Vec<usize> = (0..self.parts.len()).collect();
        order.sort_by_key(|&i| (self.parts[i].clock.has_data(), self.parts[i].clock.latest()));
        let worker = self.worker;
        for i in order {
            let Some(OwnQueue { read: queue, .. }) = &mut self.queues[i] else {
                continue;
            };
            let state = &mut self.parts[i];
            let (mut undecodable, mut erred) = (None, false);
            let read = !state.done && !state.held && tally.handled < BUDGET;
            let mut delivered = false;
            while undecodable.is_none()
                && !erred
                && tally.handled < BUDGET
                && !state.done
                && !state.held
            {
                let taken = queue.consume(BUDGET - tally.handled, |polled| match polled {
                    // The job stops: what follows in the batch is never handled.
                    _ if undecodable.is_some() => {}
                    Err(e) if is_undecodable(&e) => undecodable = Some(e),
                    Err(e) if !is_end_of_partition(&e) => {
                        // The rest of the batch is handled; the partition rests until the
                        // next activation.
                        warn!(worker, partition = state.partition, error = %e,
                            "Kafka consumer error; retrying");
                        erred = true;
                    }
                    polled => {
                        let fetched = polled.ok();
                        handle(state, fetched, &place, &mut tally, filed, &mut finished);
                    }
                });
                if taken == 0 {
                    break;
                }
                delivered = true;
            }
            if read && delivered {
                state.silent_since = None;
                state.restarts = 0;
            } else if read {
                state.silent_since = state.silent_since.or(Some(place.now));
            }
            if let Some(e) = undecodable {
                // The batch starts at the partition's next offset: everything before it was
                // delivered through this queue.
                let at = format!(
                    "partition {} at offset {}",
                    state.partition, state.next_offset
                );
                self.undecodable = Some(undecodable_message(&e, &self.topic, &at));
                return tally.handled;
            }
        }
        for p in finished {
            self.pause(p);
        }
        metrics
            .messages
            .fetch_add(tally.handled as u64, Ordering::Relaxed);
        metrics.lines.fetch_add(tally.lines, Ordering::Relaxed);
        metrics.late.fetch_add(tally.late, Ordering::Relaxed);
        metrics.dead.fetch_add(tally.dead, Ordering::Relaxed);
        metrics
            .replayed
            .fetch_add(tally.replayed, Ordering::Relaxed);
        metrics.bytes.fetch_add(tally.bytes, Ordering::Relaxed);
        if !tally.dead_reasons.is_empty() {
            let mut reasons = crate::locked(&metrics.dead_reasons);
            for reason in tally.dead_reasons {
                *reasons.entry(reason.code()).or_default() += 1;
            }
        }
        self.report_lag(metrics, &config.clock);
        read.append(&mut tally.read);
        tally.handled
    }
}

/// What the user is told when a batch at `at` of `topic` cannot be decoded.
fn undecodable_message(error: &KafkaError, topic: &str, at: &str) -> String {
    format!(
        "cannot decode a record batch of topic {topic}, {at}: {error}. The batch is corrupt or \
         uses a codec or message format this job cannot read (it reads gzip, snappy, lz4 and \
         zstd); librdkafka would fetch it again for ever, so the job stops. Check the \
         producer's compression.type and the broker's log; restarting resumes from the last \
         checkpoint"
    )
}
