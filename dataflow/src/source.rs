//! The Kafka source: each worker reads its own partitions into the dataflow.
//!
//! Worker `i` of `n` (over all processes) owns the partitions `p` with `p mod n == i` and
//! assigns them explicitly, so no consumer-group rebalance can move a partition between
//! workers behind the dataflow's back. Every message goes through [`parse::place`]: a valid
//! one becomes a line at the epoch its partition's clock assigns, an invalid one a dead letter
//! at the partition's earliest open epoch. The worker's capability is held at
//! the earliest epoch any of its partitions may still add to, so an epoch closes only once
//! every partition has passed it.
//!
//! A resumed job starts each partition at its checkpointed offset and watermark, and drops the
//! records it re-reads that the checkpoint counted (their effect is in the restored state) and
//! the dead letters already committed; whether a record was counted is decided by its offset
//! (see [`parse::place`]), so records that arrived after the checkpoint are always counted.
//! Each activation reports, per partition and epoch, the last offset it counted there, so that
//! a checkpoint knows how far its committed epochs reach in each partition. Positions go downstream at the latest epoch their
//! partition has assigned, so the writer checkpoints a position only once every record before
//! it belongs to a committed epoch. A partition's starting position goes out before anything is
//! read from it, so every checkpoint holds every partition the job has read.
//!
//! The source never blocks its worker: it drains what librdkafka has fetched (up to a budget
//! per activation), is woken by librdkafka when a queue becomes non-empty, and otherwise by a
//! backstop timer, so an idle job parks instead of spinning a core.
//!
//! Flow control: each partition has its own librdkafka queue, read the furthest behind first.
//! While what the process has read for open epochs is over `--max-buffered` (see [`flow`]), a
//! partition whose latest epoch is past the sources' frontier (the oldest epoch any worker's
//! source still reads, beyond the lateness) is left unread, and librdkafka stops fetching it
//! once its queue is full; the source parks until either frontier moves. The sources' frontier,
//! not the dataflow's, so that the partitions at the oldest epoch are read while the aggregates
//! work through what was read before; and a partition not held at the start of an activation
//! reads for all of it, so that closing epochs does not cost a round trip of progress each.
//! Records of epochs that cannot close yet are what the aggregates have to hold, so this
//! bounds memory by the budget rather than by how unevenly the partitions are read, and costs
//! nothing while they are read evenly.
//!
//! [`flow`]: crate::flow

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::generic::{OperatorInfo, OutputBuilder, OutputBuilderSession};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::scheduling::{Activator, SyncActivator};
use tracing::{debug, info, warn};

use crate::aggregate::{AlertRules, Closing, Line, Saved};
use crate::checkpoint::Resume;
use crate::epoch::{EpochClock, PartitionClock};
use crate::flow::Buffered;
use crate::native::fetch::{BatchQueue, Fetched};
use crate::parse::{self, Parsed, Placed, Rules};
use crate::retention::{Closed, OpenInvoices, RestoredInvoice};
use retail_common::kafka::{ClientSettings, is_end_of_partition, is_undecodable};

/// Messages handled per activation before the source yields to other operators.
const BUDGET: usize = 8192;
/// How soon an idle source looks again even if librdkafka did not wake it.
const BACKSTOP: Duration = Duration::from_millis(100);
/// How long a partition whose records wait may deliver nothing before its fetch is restarted
/// (see [`is_stalled`]).
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// Fetch restarts after which a partition that still delivers nothing stops the job for a
/// restart (a new Kafka client), if a new client reaches the broker: a minute of silence.
const RESTARTS_BEFORE_STOP: u32 = 5;
/// How long a new client may take to reach the broker, to tell a stuck client from an outage.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a worker that owns no partition looks whether the topic grew one for it.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where to start reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// What every worker's source needs to know.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub settings: ClientSettings,
    pub topic: String,
    /// Partition count of the topic when the job started.
    pub partitions: i32,
    /// The topic's current partition count, kept up to date by a metadata watcher while a
    /// live job runs: partitions added to the topic are read from their start.
    pub watch: Arc<AtomicI32>,
    pub from: StartFrom,
    /// Read up to the end offsets seen at start, then close.
    pub until_end: bool,
    pub clock: EpochClock,
    /// A caught-up partition silent this long stops holding epochs open.
    pub idle_timeout: Option<Duration>,
    pub max_message_bytes: usize,
    /// Flow control: what this process's sources have read for open epochs, against
    /// `--max-buffered`.
    pub buffered: Arc<Buffered>,
    pub group_id: String,
    /// `--invoice-retention` in epochs (`None`: invoices never close).
    pub retention: Option<u64>,
    /// The alert rules: an open invoice remembers the alerts its lines raised, to settle them
    /// when it closes.
    pub rules: AlertRules,
    /// Checkpoints are on: the open invoices' changes go to the writer as state.
    pub save: bool,
    /// Set when resuming from a checkpoint.
    pub resume: Option<SourceResume>,
}

/// Where a resumed job picks up.
#[derive(Clone, Debug, Default)]
pub struct SourceResume {
    /// The last committed epoch.
    pub committed: u64,
    /// Checkpointed position of each partition (others start from `--from`).
    pub partitions: BTreeMap<i32, Resume>,
    /// Per partition, the offset of the last record counted in a committed epoch.
    pub counted_through: BTreeMap<i32, i64>,
    /// Per partition, the offset of the last committed dead letter.
    pub dead_through: BTreeMap<i32, i64>,
    /// Per partition, the invoices open at the committed epoch.
    pub open: BTreeMap<i32, Vec<RestoredInvoice>>,
}

/// Counters the progress line reads; shared by the workers of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub lines: AtomicU64,
    pub late: AtomicU64,
    pub dead: AtomicU64,
    /// Re-read after a restart and dropped: already counted in the restored state.
    pub replayed: AtomicU64,
    pub bytes: AtomicU64,
    /// Messages between each worker's position and the end of its partitions.
    pub lag: AtomicI64,
    /// Why a source stopped the job (the first reason).
    pub fatal: Mutex<Option<Stop>>,
    /// Each partition read by this process, as of its worker's last activation (`/metrics`).
    pub partitions: Mutex<BTreeMap<i32, PartitionGauges>>,
    /// Dead letters by reason, added once per activation (`/metrics`).
    pub dead_reasons: Mutex<BTreeMap<String, u64>>,
    /// Message bytes read for epochs still open, against `--max-buffered` (`/metrics`).
    pub buffered: AtomicU64,
    /// Partitions held back by flow control at each worker's last activation (`/metrics`).
    pub held: AtomicI64,
}

/// What `/metrics` shows of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionGauges {
    /// Records read (including re-read ones a resumed job drops).
    pub read: u64,
    /// Records between the position and the partition's last stable offset, when known.
    pub lag: Option<i64>,
    /// Start of the earliest epoch the partition may still add to (seconds since 1970), once it
    /// has shown a record.
    pub watermark_secs: Option<i64>,
}

/// Why a source stopped the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A fetched batch cannot be decoded: librdkafka would fetch it again for ever.
    Undecodable(String),
    /// The topic grew and a new partition falls to a worker that has released its epochs; a
    /// restart resumes from the checkpoint and reads it.
    Restart(String),
    /// A source could not start (its partitions' offsets stayed out of reach).
    Failed(String),
}

impl Stop {
    /// What the user is told.
    pub fn message(&self) -> &str {
        match self {
            Stop::Undecodable(m) | Stop::Restart(m) | Stop::Failed(m) => m,
        }
    }

    /// The exit status the stop means: a restart goes on from the checkpoint.
    pub fn exit_code(&self) -> u8 {
        match self {
            Stop::Restart(_) => retail_common::exit::RESTART,
            Stop::Undecodable(_) | Stop::Failed(_) => retail_common::exit::ERROR,
        }
    }
}

impl Metrics {
    /// Why a source stopped the job, if one did.
    pub fn fatal(&self) -> Option<Stop> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the job for `stop` (the first reason is kept): logs it and tells every source of
    /// this process to stop, holding its epochs open.
    fn stop_job(&self, stop: Stop, shutdown: &AtomicBool) {
        tracing::error!("{}", stop.message());
        let mut slot = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(stop);
        shutdown.store(true, Ordering::Relaxed);
    }
}

/// librdkafka context that records each partition's last stable offset from the client
/// statistics, so lag can be shown without a blocking request on the worker thread.
struct LagContext {
    last_stable: Arc<Mutex<Vec<i64>>>,
}

impl ClientContext for LagContext {
    /// End of partition is a normal event here (it ends bounded runs), not an error to log.
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_end_of_partition(&error) {
            warn!(%error, reason, "Kafka client error");
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut last_stable = self.last_stable.lock().unwrap_or_else(|e| e.into_inner());
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
struct PartitionState {
    partition: i32,
    clock: PartitionClock,
    next_offset: i64,
    /// End offset for a bounded run.
    end: Option<i64>,
    done: bool,
    /// The last record counted in a committed epoch (resumed jobs): see [`Rules`].
    counted_through: i64,
    /// Per epoch, the last offset counted there since the last report (checkpoints only).
    counted: Vec<(u64, i64)>,
    /// Dead letters at or before this offset are committed already (resumed jobs).
    dead_through: i64,
    /// At the end of what the broker has (an EOF was seen and nothing came since).
    caught_up: bool,
    last_message: Instant,
    /// Since when its queue, read, has delivered nothing at all (no record, end or error), and
    /// the consumer has reported no error.
    silent_since: Option<Instant>,
    /// Fetch restarts since it last delivered anything or the consumer last reported an error.
    restarts: u32,
    /// Not read, by flow control.
    held: bool,
    /// Open invoices, with `--invoice-retention`.
    invoices: OpenInvoices,
    /// Records read so far (for `/metrics`).
    read: u64,
}

impl PartitionState {
    /// Notes that the record at `offset` was counted in `epoch` (offsets only grow, so the
    /// note of an epoch is its last offset; an activation fills a handful of epochs at most).
    fn count(&mut self, epoch: u64, offset: i64) {
        match self.counted.iter_mut().rev().find(|(e, _)| *e == epoch) {
            Some((_, last)) => *last = offset,
            None => self.counted.push((epoch, offset)),
        }
    }

    /// Whether its queue and the consumer have been silent for [`STALLED_AFTER`] by `now`.
    fn silent_too_long(&self, now: Instant) -> bool {
        (self.silent_since).is_some_and(|since| now.duration_since(since) >= STALLED_AFTER)
    }

    /// A partition read from `next_offset` (to `end` in a bounded run) with `clock`.
    fn new(partition: i32, clock: PartitionClock, next_offset: i64, end: Option<i64>) -> Self {
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
        }
    }
}

/// Partitions owned by worker `index` of `peers`.
pub fn owned_partitions(partitions: i32, index: usize, peers: usize) -> Vec<i32> {
    (0..partitions)
        .filter(|p| *p as usize % peers == index)
        .collect()
}

/// What the source emits besides lines (dead letters, positions, closings, its own state) at
/// their epoch, with a count.
pub type Batches = Vec<(Parsed, u64, isize)>;
/// The source's lines at their epoch, with a count: nearly all it emits, on an output of their
/// own so that no operator has to split them from the rest.
pub type Lines = Vec<(Line, u64, isize)>;
type Output<'a, C> = OutputBuilderSession<'a, u64, CapacityContainerBuilder<C>>;
type SourceLogic = Box<dyn FnMut(&mut Output<'_, Lines>, &mut Output<'_, Batches>)>;

/// The source's capabilities, one for each output, always at the same epoch.
struct Caps {
    lines: Capability<u64>,
    other: Capability<u64>,
}

impl Caps {
    fn time(&self) -> &u64 {
        self.lines.time()
    }

    fn downgrade(&mut self, to: &u64) {
        self.lines.downgrade(to);
        self.other.downgrade(to);
    }
}

/// What an activation of the source has filed under each epoch, for its two outputs.
#[derive(Default)]
struct Filed {
    lines: BTreeMap<u64, Lines>,
    other: BTreeMap<u64, Batches>,
}

impl Filed {
    /// Files a line. A new epoch's batch has room for the rest of the activation's messages
    /// (with `handled` handled), so that it never grows by copying: unused room is never
    /// touched.
    fn line(&mut self, line: Line, epoch: u64, handled: usize) {
        self.lines
            .entry(epoch)
            .or_insert_with(|| Vec::with_capacity(BUDGET + 1 - handled.min(BUDGET)))
            .push((line, epoch, 1));
    }

    /// The batch of everything else at `epoch`.
    fn other(&mut self, epoch: u64) -> &mut Batches {
        self.other.entry(epoch).or_default()
    }
}

/// timely's `source`, with two outputs: lines, and everything else.
fn two_output_source<'scope, B, L>(
    scope: Scope<'scope, u64>,
    name: &str,
    constructor: B,
) -> (Stream<'scope, u64, Lines>, Stream<'scope, u64, Batches>)
where
    B: FnOnce(Caps, OperatorInfo) -> L,
    L: FnMut(&mut Output<'_, Lines>, &mut Output<'_, Batches>) + 'static,
{
    let mut builder = OperatorBuilder::new(name.to_owned(), scope);
    let info = builder.operator_info();
    let (lines_output, lines) = builder.new_output();
    let (other_output, other) = builder.new_output();
    let mut lines_output = OutputBuilder::from(lines_output);
    let mut other_output = OutputBuilder::from(other_output);
    builder.build(move |mut capabilities| {
        let other = capabilities.pop().expect("a capability for each output");
        let lines = capabilities.pop().expect("a capability for each output");
        let mut logic = constructor(Caps { lines, other }, info);
        move |_frontier| logic(&mut lines_output.activate(), &mut other_output.activate())
    });
    (lines, other)
}

/// Wakes this worker's source, while flow control holds it back, when the dataflow's frontier
/// moves (the writer sees it move) or the sources' (see `watch_sources`), so a held source
/// parks instead of polling the frontiers.
#[derive(Clone, Default)]
pub struct ProgressWake {
    held: Rc<Cell<bool>>,
    source: Rc<RefCell<Option<Activator>>>,
}

impl ProgressWake {
    /// The frontier moved: a held source looks again.
    pub fn frontier_moved(&self) {
        if self.held.get()
            && let Some(source) = self.source.borrow().as_ref()
        {
            source.activate();
        }
    }
}

/// Builds the source operator for this worker; `progress` is the dataflow's frontier, and the
/// returned [`ProgressWake`] is to be told when it moves.
pub fn kafka_source<'scope>(
    scope: Scope<'scope, u64>,
    config: Arc<SourceConfig>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    progress: ProbeHandle<u64>,
) -> (
    Stream<'scope, u64, Lines>,
    Stream<'scope, u64, Batches>,
    ProgressWake,
) {
    let index = scope.index();
    let peers = scope.peers();
    let worker = scope.worker();
    let wake_on_progress = ProgressWake::default();
    let progress_wake = wake_on_progress.clone();
    // The earliest epoch any worker's source may still add to: the sources' own frontier,
    // which runs ahead of the dataflow's while the aggregates work through what was read.
    let reading = Rc::new(Cell::new(Some(0_u64)));
    let sources = Rc::clone(&reading);
    let (lines, other) = two_output_source(scope, "KafkaSource", move |mut cap, info| {
        if let Some(r) = &config.resume {
            // Committed epochs are in the restored state; nothing is added to them.
            cap.downgrade(&(r.committed + 1));
        }
        let owned = owned_partitions(config.partitions, index, peers);
        let activator = scope.activator_for(info.address.clone());
        progress_wake.source.replace(Some(activator.clone()));
        if owned.is_empty() {
            // Nothing to read: release the capability at once so epochs can close. A live job
            // keeps watching: should the topic grow a partition this worker owns, it cannot
            // take it without its capability, so it stops the job for a restart that does.
            debug!(worker = index, "owns no partition");
            drop(cap);
            if config.until_end {
                return Box::new(|_: &mut Output<'_, Lines>, _: &mut Output<'_, Batches>| {})
                    as SourceLogic;
            }
            return Box::new(
                move |_: &mut Output<'_, Lines>, _: &mut Output<'_, Batches>| {
                    if shutdown.load(Ordering::Relaxed) {
                        return;
                    }
                    let now = config.watch.load(Ordering::Relaxed);
                    if let Some(p) = (config.partitions..now).find(|p| *p as usize % peers == index)
                    {
                        let message = format!(
                            "topic {} grew to {now} partitions; partition {p} falls to worker \
                         {index}, which owns no partition and has released its epochs: \
                         stopping so that a restart reads it from the checkpoint",
                            config.topic
                        );
                        metrics.stop_job(Stop::Restart(message), &shutdown);
                        return;
                    }
                    activator.activate_after(WATCH_EVERY);
                },
            ) as SourceLogic;
        }
        let wake = worker.sync_activator_for(info.address.to_vec());
        let mut reader = match Reader::open(&config, &owned, index, wake) {
            Ok(reader) => reader,
            Err(e) => {
                // Holding the capability keeps every process from closing epochs without
                // these partitions; the job stops (see `Stop`).
                let message = format!("worker {index}: cannot start the Kafka source: {e:#}");
                metrics.stop_job(Stop::Failed(message), &shutdown);
                return Box::new(
                    move |_: &mut Output<'_, Lines>, _: &mut Output<'_, Batches>| {
                        let _ = &cap;
                    },
                ) as SourceLogic;
            }
        };
        // Every partition's starting position goes out before anything is read from it, at
        // the first epoch (a grown topic's new partitions: when they are taken): a checkpoint
        // must never hold records of a partition without its position, or a restart would take
        // the partition for a new one and read it all again.
        let mut filed = Filed::default();
        reader.queue_positions(*cap.time(), &mut filed);
        let mut cap = Some(cap);
        Box::new(
            move |lines: &mut Output<'_, Lines>, other: &mut Output<'_, Batches>| {
                let Some(c) = cap.as_mut() else { return };
                if shutdown.load(Ordering::Relaxed) {
                    if metrics.fatal().is_some() {
                        // The job stops without closing the epochs a source could not finish:
                        // holding the capability keeps every process from writing them.
                        return;
                    }
                    info!(worker = index, "stopping the source: closing open epochs");
                    cap = None;
                    return;
                }
                // Epochs before the dataflow's frontier are complete everywhere: what was read
                // for them is no longer held. Over the budget, a partition may not run past the
                // sources' frontier (beyond the lateness), so the partitions at the oldest epoch
                // any source still reads are always read, even while the aggregates lag.
                let frontier = progress.with_frontier(|f| f.first().copied());
                let over = config
                    .buffered
                    .is_over(config.buffered.update(frontier, []));
                let limit = sources
                    .get()
                    .filter(|_| over)
                    .map(|f| f.saturating_add(config.clock.lateness_epochs));
                if !config.until_end {
                    let now = config.watch.load(Ordering::Relaxed);
                    if now > reader.known {
                        reader.grow(&config, now, index, peers, *c.time());
                        reader.queue_positions(*c.time(), &mut filed);
                    }
                }
                let held = reader.hold_back(limit);
                progress_wake.held.set(held > 0);
                metrics.held.fetch_add(
                    held - std::mem::replace(&mut reader.reported_held, held),
                    Ordering::Relaxed,
                );
                let mut read = BTreeMap::new();
                let handled = reader.poll_into(&config, *c.time(), &mut filed, &mut read, &metrics);
                if let Some(message) = reader.restart_stalled(&config.settings, Instant::now()) {
                    metrics.stop_job(Stop::Restart(message), &shutdown);
                    return;
                }
                let buffered = config.buffered.update(frontier, read);
                metrics.buffered.store(buffered, Ordering::Relaxed);
                if let Some(message) = reader.undecodable.take() {
                    // librdkafka would fetch the same batch for ever: stop the whole job instead.
                    metrics.stop_job(Stop::Undecodable(message), &shutdown);
                    return;
                }
                reader.queue_positions(*c.time(), &mut filed);
                for (time, mut batch) in std::mem::take(&mut filed.lines) {
                    lines
                        .session(&c.lines.delayed(&time))
                        .give_container(&mut batch);
                }
                for (time, mut batch) in std::mem::take(&mut filed.other) {
                    other
                        .session(&c.other.delayed(&time))
                        .give_container(&mut batch);
                }
                match reader.frontier(&config, *c.time()) {
                    Some(low) => {
                        if low > *c.time() {
                            c.downgrade(&low);
                        }
                    }
                    None => {
                        info!(worker = index, "read every owned partition to its end");
                        cap = None;
                        return;
                    }
                }
                if handled == BUDGET {
                    activator.activate();
                } else {
                    // A held source is woken when the frontier moves (see `ProgressWake`).
                    activator.activate_after(BACKSTOP);
                }
            },
        ) as SourceLogic
    });
    let other = watch_sources(other, reading, wake_on_progress.clone());
    (lines, other, wake_on_progress)
}

/// Passes the sources' second output through, keeping in `at` the earliest epoch any worker's
/// source may still add to, and wakes a held source when it moves: the partition at that
/// epoch may be its own.
fn watch_sources<'scope>(
    other: Stream<'scope, u64, Batches>,
    at: Rc<Cell<Option<u64>>>,
    wake: ProgressWake,
) -> Stream<'scope, u64, Batches> {
    other.unary_frontier::<CapacityContainerBuilder<Batches>, _, _, _>(
        Pipeline,
        "SourcesFrontier",
        move |_, _| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| output.session(&cap).give_container(data));
                let now = frontier.frontier().first().copied();
                if now != at.get() {
                    at.set(now);
                    wake.frontier_moved();
                }
            }
        },
    )
}

/// One worker's consumer and the state of its partitions.
struct Reader {
    consumer: Arc<BaseConsumer<LagContext>>,
    /// Each owned partition's own queue (same order as `parts`).
    queues: Vec<Option<OwnQueue>>,
    topic: String,
    parts: Vec<PartitionState>,
    /// Position in `parts` of each partition number.
    slot: Vec<Option<usize>>,
    /// The topic's partition count as this reader knows it (it grows with the topic).
    known: i32,
    /// Called when a partition's queue becomes non-empty.
    wake: SyncActivator,
    /// Not before this instant is a grown topic's partition tried again.
    grow_after: Option<Instant>,
    last_stable: Arc<Mutex<Vec<i64>>>,
    worker: usize,
    reported_lag: i64,
    /// Partitions held back as last reported.
    reported_held: i64,
    /// Next offset last reported downstream, per owned partition (same order as `parts`).
    reported: Vec<i64>,
    /// Set when a fetched batch cannot be decoded: what to tell the user.
    undecodable: Option<String>,
}

impl Reader {
    /// Assigns the `owned` partitions; `wake` is activated whenever one of their queues
    /// becomes non-empty.
    fn open(
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
            .config(&[
                ("fetch.wait.max.ms", fetch_wait),
                ("group.id", &config.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("isolation.level", "read_committed"),
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", "1000"),
                // Read-ahead: fetches of up to 128 KB per partition (or one whole batch, if
                // larger), refilled while less than 512 KB waits in the partition's queue. What a
                // partition holds is its queue plus its decompressed batches, so these bound the
                // consumer's memory: 256 KB fetches and a 1 MB queue cost about 20 MiB more peak
                // memory on 10M records, and were 6-7% faster only where the job outruns the
                // broker (the bench topic without checkpoints). librdkafka's default is to
                // postpone a fetch by a whole second once a queue is full, which left a busy
                // worker idle for about 40% of a replay; 5 ms keeps the queues topped up instead.
                ("fetch.max.bytes", "52428800"),
                ("max.partition.fetch.bytes", "131072"),
                ("queued.max.messages.kbytes", "512"),
                ("fetch.queue.backoff.ms", "5"),
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
    fn grow(&mut self, config: &SourceConfig, now: i32, index: usize, peers: usize, current: u64) {
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

    fn pause(&self, partition: i32) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let _ = self.consumer.pause(&tpl);
    }

    /// Flow control: marks the open partitions whose latest epoch is past `limit` as held
    /// (they are not read until they are within it again). Returns how many are held.
    fn hold_back(&mut self, limit: Option<u64>) -> i64 {
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

    /// Drains available messages into per-epoch batches, the partitions furthest behind
    /// first and none that flow control holds, adding each epoch's message bytes to `read`;
    /// returns how many it handled. A partition not held reads on for the whole activation,
    /// even past the limit: stopping it there would close one epoch per activation, with a
    /// round trip of progress between them.
    fn poll_into(
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
            let mut reasons = metrics
                .dead_reasons
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for reason in tally.dead_reasons {
                *reasons.entry(reason).or_default() += 1;
            }
        }
        self.report_lag(metrics, &config.clock);
        read.append(&mut tally.read);
        tally.handled
    }

    /// Restarts the fetch of each partition that [`is_stalled`], by seeking it to its next
    /// offset: the first record not handled, so nothing is read twice or skipped. A partition
    /// still stalled after [`RESTARTS_BEFORE_STOP`] restarts, while a new client reaches the
    /// broker, is what to stop the job for: the Kafka client itself is stuck, and a restart
    /// resumes from the checkpoint with a new one. While the broker stays out of reach, the
    /// job waits for it as before.
    fn restart_stalled(&mut self, settings: &ClientSettings, now: Instant) -> Option<String> {
        if !self.parts.iter().any(|s| s.silent_too_long(now)) {
            return None;
        }
        // A copy: librdkafka's statistics callback takes the lock, and seeking waits for
        // librdkafka.
        let stable = (self.last_stable.lock().unwrap_or_else(|e| e.into_inner())).clone();
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

    /// Queues the position (next offset and clock) of each partition that moved since the last
    /// call, or was never reported, at the latest epoch the partition has assigned.
    /// Also queues, at each epoch, the last offset of each partition counted there since the
    /// last call.
    fn queue_positions(&mut self, now: u64, filed: &mut Filed) {
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
    fn frontier(&self, config: &SourceConfig, current: u64) -> Option<u64> {
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
    fn report_lag(&mut self, metrics: &Metrics, clock: &EpochClock) {
        let last_stable = self.last_stable.lock().unwrap_or_else(|e| e.into_inner());
        let mut gauges = metrics.partitions.lock().unwrap_or_else(|e| e.into_inner());
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
struct OwnQueue {
    /// Kept for its callback, which wakes the source when the queue becomes non-empty.
    _wake: PartitionQueue<LagContext>,
    /// The same queue, read in batches.
    read: BatchQueue<LagContext>,
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

/// Whether a partition's fetch is stuck: it is read (not done, not held), records wait for it
/// (before its end in a bounded run, or before the last stable offset librdkafka reported),
/// no end was seen since its last record, and for [`STALLED_AFTER`] its queue has delivered
/// nothing and the consumer has reported no error. librdkafka has been seen to leave every
/// partition of a consumer unfetched for good after the broker restarted within a second of
/// the job's start, with no error after the first second.
fn is_stalled(state: &PartitionState, last_stable: i64, now: Instant) -> bool {
    let waiting = state.end.unwrap_or(last_stable) > state.next_offset;
    !state.done && !state.held && !state.caught_up && waiting && state.silent_too_long(now)
}

/// Whether a partition has run past the flow-control `limit`.
fn is_past(state: &PartitionState, limit: Option<u64>) -> bool {
    state.clock.has_data() && limit.is_some_and(|l| state.clock.latest() > l)
}

/// What placing a record in an epoch needs to know in one activation.
struct Placing<'a> {
    config: &'a SourceConfig,
    /// The worker's current epoch.
    frontier: u64,
    now: Instant,
    /// The last committed epoch of a resumed job.
    committed: Option<u64>,
}

/// Counts of one activation, added to the [`Metrics`] at its end.
#[derive(Default)]
struct Tally {
    handled: usize,
    lines: u64,
    late: u64,
    dead: u64,
    replayed: u64,
    bytes: u64,
    /// Message bytes filed under each epoch (flow control).
    read: BTreeMap<u64, u64>,
    /// The reason of each dead letter.
    dead_reasons: Vec<String>,
}

/// Handles one message (or end of partition) of `state`'s partition: parses and validates it
/// and files the line or dead letter under its epoch. Partitions of a bounded run that reach
/// their end are added to `finished`.
fn handle(
    state: &mut PartitionState,
    polled: Option<Fetched<'_>>,
    place: &Placing<'_>,
    tally: &mut Tally,
    filed: &mut Filed,
    finished: &mut Vec<i32>,
) {
    let config = place.config;
    let Some(message) = polled else {
        // The end of the partition.
        state.caught_up = true;
        if state.end.is_some() && !state.done {
            state.done = true;
            finished.push(state.partition);
        }
        return;
    };
    let (p, offset) = (message.partition, message.offset);
    // Before the next offset: handled already (a restarted fetch starts there; librdkafka
    // drops what the old one had queued, and this keeps it so).
    if state.done || state.end.is_some_and(|e| offset >= e) || offset < state.next_offset {
        return;
    }
    tally.handled += 1;
    state.read += 1;
    if state.caught_up
        && config
            .idle_timeout
            .is_some_and(|t| place.now.duration_since(state.last_message) >= t)
    {
        // The partition was skipped as idle; it may not add to closed epochs.
        state.clock.raise_floor(place.frontier);
    }
    state.caught_up = false;
    state.last_message = place.now;
    state.next_offset = offset + 1;
    let payload = message.payload.unwrap_or_default();
    tally.bytes += payload.len() as u64;
    let rules = Rules {
        clock: &config.clock,
        max_message_bytes: config.max_message_bytes,
        frontier: place.frontier,
        committed: place.committed,
        counted_through: state.counted_through,
        dead_through: state.dead_through,
        retention: config.retention,
    };
    let filed_at = match parse::place(&rules, &mut state.clock, p, offset, message.key, payload) {
        Placed::Line(line) => {
            tally.lines += 1;
            tally.late += u64::from(line.late);
            let epoch = line.epoch;
            let alerts = config.retention.map(|_| config.rules.line_alerts(&line));
            if let Some(alerts) = alerts
                && let Some(moved) = state.invoices.add(&line.invoice, epoch, alerts)
                && config.save
            {
                let open = |last| Saved::Open {
                    partition: p,
                    invoice: line.invoice.clone(),
                    last,
                };
                let batch = filed.other(epoch);
                if let Some(from) = moved.from {
                    batch.push((Parsed::Saved(open(from), -1), epoch, 1));
                }
                batch.push((Parsed::Saved(open(moved.to), 1), epoch, 1));
            }
            filed.line(line, epoch, tally.handled);
            Some(epoch)
        }
        Placed::Dead(letter, epoch) => {
            tally.dead += 1;
            tally.dead_reasons.push(letter.reason.clone());
            filed.other(epoch).push((Parsed::Dead(letter), epoch, 1));
            Some(epoch)
        }
        Placed::Committed => None,
    };
    match filed_at {
        Some(epoch) => {
            *tally.read.entry(epoch).or_default() += payload.len() as u64;
            if config.save {
                state.count(epoch, offset);
            }
        }
        // Re-read after a restart: its effect is in the restored state already.
        None => tally.replayed += 1,
    }
    if let Some(retention) = config.retention {
        close_expired(state, retention, place, filed);
    }
    if state.end.is_some_and(|e| offset + 1 >= e) {
        state.done = true;
        finished.push(p);
    }
}

/// Closes the invoices of `state`'s partition that its watermark has left `retention` epochs
/// behind, at the partition's earliest open epoch. A resumed job re-derives closings of
/// committed epochs; their effect is in the restored state, so they are dropped.
fn close_expired(
    state: &mut PartitionState,
    retention: u64,
    place: &Placing<'_>,
    filed: &mut Filed,
) {
    let open_from = state.clock.open_from(&place.config.clock);
    let mut closed = Vec::new();
    state.invoices.expire(open_from, retention, &mut closed);
    if closed.is_empty() {
        return;
    }
    let at = open_from.max(place.frontier);
    if place.committed.is_some_and(|c| at <= c) {
        return;
    }
    let batch = filed.other(at);
    for Closed {
        invoice,
        last,
        alerts,
    } in closed
    {
        for alert in alerts {
            batch.push((Parsed::Close(Closing::LineAlert(alert)), at, 1));
        }
        if place.config.save {
            let open = Saved::Open {
                partition: state.partition,
                invoice: invoice.clone(),
                last,
            };
            batch.push((Parsed::Saved(open, -1), at, 1));
        }
        batch.push((Parsed::Close(Closing::Invoice(invoice)), at, 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
