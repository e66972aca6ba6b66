//! One worker's consumer and the partitions it reads: which partitions a worker owns,
//! assigning them at their starting offsets (checkpointed or `--from`), taking on those a grown
//! topic adds, and what it reports of them: positions downstream, the epoch it holds, lag.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use timely::scheduling::SyncActivator;
use tracing::{debug, info, warn};

use super::{Filed, Metrics, PartitionGauges, SourceConfig, StartFrom};
use crate::aggregate::names::Namer;
use crate::epoch::{EpochClock, PartitionClock};
use crate::native::fetch::BatchQueue;
use crate::parse::Parsed;
use crate::retention::OpenInvoices;
use retail_common::kafka::warn_client_error;

/// librdkafka context that records each partition's last stable offset from the client
/// statistics, so lag can be shown without a blocking request on the worker thread.
pub(super) struct LagContext {
    last_stable: Arc<Mutex<Vec<i64>>>,
}

impl ClientContext for LagContext {
    /// End of partition is a normal event here (it ends bounded runs), not an error to log.
    fn error(&self, error: KafkaError, reason: &str) {
        warn_client_error(&error, reason, "Kafka client error");
    }

    fn stats(&self, statistics: Statistics) {
        let mut last_stable = crate::locked(&self.last_stable);
        for topic in statistics.topics.values() {
            for p in topic.partitions.values() {
                if let Ok(i) = usize::try_from(p.partition)
                    && p.ls_offset >= 0
                {
                    if i >= last_stable.len() {
                        last_stable.resize(i + 1, -1);
                    }
                    last_stable[i] = p.ls_offset;
                }
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// Read state of one owned partition.
pub(super) struct PartitionState {
    pub(super) partition: i32,
    pub(super) clock: PartitionClock,
    pub(super) next_offset: i64,
    /// End offset for a bounded run.
    pub(super) end: Option<i64>,
    pub(super) done: bool,
    /// The last record counted in a committed epoch (resumed jobs): see
    /// [`Rules`](crate::parse::Rules).
    pub(super) counted_through: i64,
    /// Per epoch, the last offset counted there since the last report (checkpoints only).
    counted: Vec<(u64, i64)>,
    /// Dead letters at or before this offset are committed already (resumed jobs).
    pub(super) dead_through: i64,
    /// At the end of what the broker has (an EOF was seen and nothing came since).
    pub(super) caught_up: bool,
    pub(super) last_message: Instant,
    /// Since when its queue, read, has delivered nothing at all (no record, end or error), and
    /// the consumer has reported no error.
    pub(super) silent_since: Option<Instant>,
    /// Fetch restarts since it last delivered anything or the consumer last reported an error.
    pub(super) restarts: u32,
    /// Not read, by flow control.
    pub(super) held: bool,
    /// Open invoices, with `--invoice-retention`.
    pub(super) invoices: OpenInvoices,
    /// Records read so far (for `/metrics`).
    pub(super) read: u64,
    /// What the partition's lines have offered as their products' names.
    pub(super) names: Namer,
}

impl PartitionState {
    /// Notes that the record at `offset` was counted in `epoch` (offsets only grow, so the
    /// note of an epoch is its last offset; an activation fills a handful of epochs at most).
    pub(super) fn count(&mut self, epoch: u64, offset: i64) {
        match self.counted.iter_mut().rev().find(|(e, _)| *e == epoch) {
            Some((_, last)) => *last = offset,
            None => self.counted.push((epoch, offset)),
        }
    }

    /// A partition read from `next_offset` (to `end` in a bounded run) with `clock`.
    pub(super) fn new(
        partition: i32,
        clock: PartitionClock,
        next_offset: i64,
        end: Option<i64>,
    ) -> Self {
        PartitionState {
            partition,
            clock,
            next_offset,
            end,
            done: end.is_some_and(|e| next_offset >= e),
            counted_through: -1,
            counted: Vec::new(),
            dead_through: -1,
            caught_up: false,
            last_message: Instant::now(),
            silent_since: None,
            restarts: 0,
            held: false,
            invoices: OpenInvoices::default(),
            read: 0,
            names: Namer::default(),
        }
    }
}

/// Partitions owned by worker `index` of `peers`.
pub fn owned_partitions(partitions: i32, index: usize, peers: usize) -> Vec<i32> {
    (0..partitions)
        .filter(|p| *p as usize % peers == index)
        .collect()
}

/// One worker's consumer and the state of its partitions.
pub(super) struct Reader {
    pub(super) consumer: Arc<BaseConsumer<LagContext>>,
    /// Each owned partition's own queue (same order as `parts`).
    pub(super) queues: Vec<Option<OwnQueue>>,
    pub(super) topic: String,
    pub(super) parts: Vec<PartitionState>,
    /// Position in `parts` of each partition number.
    pub(super) slot: Vec<Option<usize>>,
    /// The topic's partition count as this reader knows it (it grows with the topic).
    pub(super) known: i32,
    /// Called when a partition's queue becomes non-empty.
    wake: SyncActivator,
    /// Not before this instant is a grown topic's partition tried again.
    grow_after: Option<Instant>,
    pub(super) last_stable: Arc<Mutex<Vec<i64>>>,
    pub(super) worker: usize,
    reported_lag: i64,
    /// Partitions held back as last reported.
    pub(super) reported_held: i64,
    /// Next offset last reported downstream, per owned partition (same order as `parts`).
    reported: Vec<i64>,
    /// Set when a fetched batch cannot be decoded: what to tell the user.
    pub(super) undecodable: Option<String>,
}

impl Reader {
    /// Assigns the `owned` partitions; `wake` is activated whenever one of their queues
    /// becomes non-empty.
    pub(super) fn open(
        config: &SourceConfig,
        owned: &[i32],
        worker: usize,
        wake: SyncActivator,
    ) -> anyhow::Result<Reader> {
        let last_stable = Arc::new(Mutex::new(vec![-1; config.partitions as usize]));
        let context = LagContext {
            last_stable: Arc::clone(&last_stable),
        };
        // How long the broker may hold a fetch that finds nothing new. librdkafka has one fetch
        // in flight per broker: a fetch for partitions read to their end (their newer records
        // fetched, not yet handled) while the others' queues were full kept those others waiting
        // out the whole hold, librdkafka's default 500 ms, near the end of a replay. A bounded
        // run never waits for new records; a live job waits 100 ms at most, and a record that
        // arrives sooner ends the wait anyway.
        let fetch_wait = if config.until_end { "10" } else { "100" };
        let mut consumer: BaseConsumer<LagContext> = config
            .settings
            .reader_config(&[
                ("fetch.wait.max.ms", fetch_wait),
                ("group.id", &config.group_id),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", "1000"),
                // Read-ahead: fetches of up to 128 KB per partition (or one whole batch, if
                // larger), refilled while less than 512 KB waits in the partition's queue. What a
                // partition holds is its queue plus its decompressed batches, so these bound the
                // consumer's memory: 256 KB fetches and a 1 MB queue cost about 20 MiB more peak
                // memory on 10M records, and were 6-7% faster only where the job outruns the
                // broker (the bench topic without checkpoints). The reader settings' 5 ms queue
                // back-off matters here too: librdkafka's second left a busy worker idle for
                // about 40% of a replay.
                ("fetch.max.bytes", "52428800"),
                ("max.partition.fetch.bytes", "131072"),
                ("queued.max.messages.kbytes", "512"),
            ])
            .create_with_context(context)?;
        let mut assignment = TopicPartitionList::new();
        let mut parts = Vec::new();
        let mut slot = vec![None; config.partitions as usize];
        for &p in owned {
            let (low, high) = watermarks(&consumer, &config.topic, p)?;
            let resumed = config.resume.as_ref().and_then(|r| r.partitions.get(&p));
            let start = match (resumed, config.from) {
                (Some(r), _) => r.offset.max(low),
                // Resuming, a partition the checkpoint does not know was added to the topic
                // since: all of it is new.
                (None, _) if config.resume.is_some() => low,
                (None, StartFrom::Earliest) => low,
                (None, StartFrom::Latest) => high,
            };
            if let Some(r) = resumed
                && r.offset < low
            {
                warn!(
                    partition = p,
                    checkpoint = r.offset,
                    earliest = low,
                    "records after the checkpoint were deleted by retention; resuming at the earliest offset"
                );
            }
            assignment.add_partition_offset(&config.topic, p, Offset::Offset(start))?;
            let end = config.until_end.then_some(high);
            slot[p as usize] = Some(parts.len());
            let clock = match (resumed, &config.resume) {
                (Some(r), _) => r.clock.clone(),
                // New since the checkpoint: its records may not reach committed epochs.
                (None, Some(r)) => floored(r.committed + 1),
                (None, None) => PartitionClock::default(),
            };
            let mut state = PartitionState::new(p, clock, start, end);
            if let Some(r) = &config.resume {
                state.counted_through = r.counted_through.get(&p).copied().unwrap_or(-1);
                state.dead_through = r.dead_through.get(&p).copied().unwrap_or(-1);
            }
            for restored in config
                .resume
                .as_ref()
                .and_then(|r| r.open.get(&p))
                .into_iter()
                .flatten()
            {
                state.invoices.restore(restored.clone());
            }
            if config.retention.is_some()
                && let Some(r) = &config.resume
            {
                for (invoice, alerts) in &r.reopening {
                    state.invoices.restore_alerts(invoice, alerts);
                }
            }
            parts.push(state);
            debug!(worker, partition = p, start, ?end, "assigned");
        }
        consumer.assign(&assignment)?;
        // One queue per partition, so that flow control can leave a partition unread (and
        // librdkafka stops fetching it once its queue is full) without pausing it.
        let main = wake.clone();
        consumer.set_nonempty_callback(move || {
            let _ = main.activate();
        });
        let consumer = Arc::new(consumer);
        let queues = parts
            .iter()
            .map(|s| partition_queue(&consumer, &config.topic, s.partition, &wake))
            .collect();
        let reader = Reader {
            consumer,
            queues,
            topic: config.topic.clone(),
            parts,
            slot,
            known: config.partitions,
            wake,
            grow_after: None,
            last_stable,
            worker,
            reported_lag: 0,
            reported_held: 0,
            reported: Vec::new(),
            undecodable: None,
        };
        for state in reader.parts.iter().filter(|s| s.done) {
            reader.pause(state.partition);
        }
        Ok(reader)
    }

    /// Takes on the partitions of a grown topic that this worker owns, read from their start.
    /// Their records may not reach epochs before `current`, which may be closed already.
    pub(super) fn grow(
        &mut self,
        config: &SourceConfig,
        now: i32,
        index: usize,
        peers: usize,
        current: u64,
    ) {
        if self.grow_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let owns = |p: i32| p as usize % peers == index;
        if (self.known..now).any(owns) {
            // The consumer learns of new partitions from metadata; ask for it now rather than
            // at its next periodic refresh, minutes away.
            let _ = self
                .consumer
                .fetch_metadata(Some(&self.topic), Duration::from_secs(5));
        }
        for p in self.known..now {
            if !owns(p) {
                self.known = p + 1;
                continue;
            }
            let low = match self
                .consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
            {
                Ok((low, _)) => low,
                Err(e) => {
                    // Metadata may lag the new partition for a moment: try again soon.
                    debug!(worker = self.worker, partition = p, error = %e,
                        "new partition not ready yet");
                    self.grow_after = Some(Instant::now() + Duration::from_millis(500));
                    return;
                }
            };
            let mut tpl = TopicPartitionList::new();
            let assigned = tpl
                .add_partition_offset(&self.topic, p, Offset::Offset(low))
                .and_then(|()| self.consumer.incremental_assign(&tpl));
            if let Err(e) = assigned {
                warn!(worker = self.worker, partition = p, error = %e,
                    "cannot assign the new partition yet");
                self.grow_after = Some(Instant::now() + Duration::from_millis(500));
                return;
            }
            if self.slot.len() <= p as usize {
                self.slot.resize(p as usize + 1, None);
            }
            self.slot[p as usize] = Some(self.parts.len());
            self.parts
                .push(PartitionState::new(p, floored(current), low, None));
            self.queues
                .push(partition_queue(&self.consumer, &self.topic, p, &self.wake));
            info!(worker = self.worker, topic = %config.topic, partition = p, offset = low,
                "reading a partition added to the topic, from its start");
            self.known = p + 1;
        }
    }

    pub(super) fn pause(&self, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let _ = self.consumer.pause(&tpl);
    }

    /// Queues the position (next offset and clock) of each partition that moved since the last
    /// call, or was never reported, at the latest epoch the partition has assigned.
    /// Also queues, at each epoch, the last offset of each partition counted there since the
    /// last call.
    pub(super) fn queue_positions(&mut self, now: u64, filed: &mut Filed) {
        if self.reported.len() != self.parts.len() {
            self.reported = vec![-1; self.parts.len()];
        }
        for (state, reported) in self.parts.iter_mut().zip(self.reported.iter_mut()) {
            for (epoch, offset) in state.counted.drain(..) {
                let counted = Parsed::Counted(state.partition, offset);
                filed.other(epoch).push((counted, epoch, 1));
            }
            if state.next_offset != *reported {
                *reported = state.next_offset;
                // Valid as a checkpoint only once the latest epoch it has assigned is committed.
                let at = state.clock.latest().max(now);
                let position =
                    Parsed::Position(state.partition, state.next_offset, state.clock.clone());
                filed.other(at).push((position, at, 1));
            }
        }
    }

    /// The earliest epoch any owned partition may still add to, or `None` once every
    /// partition of a bounded run is done. Partitions idle past `--idle-timeout` (caught up and
    /// silent) do not hold epochs open; a partition that has shown nothing yet holds `current`.
    pub(super) fn frontier(&self, config: &SourceConfig, current: u64) -> Option<u64> {
        let now = Instant::now();
        let open: Vec<&PartitionState> = self.parts.iter().filter(|s| !s.done).collect();
        if open.is_empty() {
            return None;
        }
        let idle = |s: &PartitionState| {
            s.caught_up
                && !s.held
                && config
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(s.last_message) >= t)
        };
        let hold = |s: &PartitionState| {
            if s.clock.has_data() {
                s.clock.open_from(&config.clock)
            } else {
                current
            }
        };
        let active = open.iter().filter(|s| !idle(s)).map(|s| hold(s)).min();
        // With every open partition idle, hold at the furthest any of them has shown.
        let low = active.unwrap_or_else(|| open.iter().map(|s| hold(s)).max().unwrap_or(current));
        Some(low.max(current))
    }

    /// Adds the change of this worker's lag to the process's, and records each partition's
    /// read count, lag and watermark (one lock per activation).
    pub(super) fn report_lag(&mut self, metrics: &Metrics, clock: &EpochClock) {
        let last_stable = crate::locked(&self.last_stable);
        let mut gauges = crate::locked(&metrics.partitions);
        let mut lag = 0;
        for s in &self.parts {
            let stable = last_stable.get(s.partition as usize).copied().unwrap_or(-1);
            let behind = if s.done {
                Some(0)
            } else {
                (stable >= 0).then(|| (stable - s.next_offset).max(0))
            };
            lag += behind.unwrap_or(0);
            gauges.insert(
                s.partition,
                PartitionGauges {
                    read: s.read,
                    lag: behind,
                    watermark_secs: s
                        .clock
                        .has_data()
                        .then(|| clock.start_secs(s.clock.open_from(clock))),
                },
            );
        }
        drop(gauges);
        metrics
            .lag
            .fetch_add(lag - self.reported_lag, Ordering::Relaxed);
        self.reported_lag = lag;
    }
}

/// The low and high offsets of a partition. Right after a broker restart a partition may
/// have no leader for a few seconds: that is waited out (for up to a minute), not fatal.
fn watermarks<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), KafkaError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return Ok(w),
            Err(e) if Instant::now() < deadline => {
                debug!(partition, error = %e, "offsets not available yet; retrying");
                // A client that asked while the broker was restarting can keep the partition
                // as unknown until its next periodic metadata refresh (minutes): ask now.
                let _ = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A clock that assigns nothing before `epoch`.
fn floored(epoch: u64) -> PartitionClock {
    let mut clock = PartitionClock::default();
    clock.raise_floor(epoch);
    clock
}

/// A partition's own queue, split off the consumer's main queue.
pub(super) struct OwnQueue {
    /// Kept for its callback, which wakes the source when the queue becomes non-empty.
    _wake: PartitionQueue<LagContext>,
    /// The same queue, read in batches.
    pub(super) read: BatchQueue<LagContext>,
}

/// The partition's own queue.
fn partition_queue(
    consumer: &Arc<BaseConsumer<LagContext>>,
    topic: &str,
    partition: i32,
    wake: &SyncActivator,
) -> Option<OwnQueue> {
    let mut queue = consumer.split_partition_queue(topic, partition)?;
    let wake = wake.clone();
    queue.set_nonempty_callback(move || {
        let _ = wake.activate();
    });
    Some(OwnQueue {
        _wake: queue,
        read: BatchQueue::new(consumer, topic, partition)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::Assignment;

    #[test]
    fn partitions_spread_round_robin_over_all_workers() {
        assert_eq!(owned_partitions(8, 0, 3), [0, 3, 6]);
        assert_eq!(owned_partitions(8, 2, 3), [2, 5]);
        assert_eq!(owned_partitions(2, 3, 4), Vec::<i32>::new());
        let all: Vec<i32> = (0..6)
            .flat_map(|w| owned_partitions(8, w, 6))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_floored_clock_assigns_nothing_before_its_floor() {
        let clock = EpochClock::new(Duration::from_secs(3600), Duration::ZERO).unwrap();
        let mut new = floored(5);
        assert!(!new.has_data(), "a floor is no record");
        assert_eq!(new.open_from(&clock), 5);
        let late = Assignment {
            epoch: 5,
            late: true,
        };
        assert_eq!(new.assign(&clock, 3), late);
        let on_time = Assignment {
            epoch: 7,
            late: false,
        };
        assert_eq!(new.assign(&clock, 7), on_time);
        assert_eq!(floored(0), PartitionClock::default());
    }

    #[test]
    fn each_epoch_notes_the_last_offset_counted_there() {
        let mut state = PartitionState::new(0, PartitionClock::default(), 0, None);
        state.count(3, 10);
        state.count(3, 11);
        state.count(4, 12);
        state.count(3, 13);
        assert_eq!(state.counted, [(3, 13), (4, 12)]);
    }

    #[test]
    fn a_bounded_partition_starting_at_its_end_is_done_from_the_start() {
        let new = |next, end| PartitionState::new(0, PartitionClock::default(), next, end);
        assert!(new(20, Some(20)).done);
        assert!(new(25, Some(20)).done);
        assert!(!new(19, Some(20)).done);
        assert!(!new(20, None).done, "a live partition is never done");
    }
}
