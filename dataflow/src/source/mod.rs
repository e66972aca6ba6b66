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
//! a checkpoint knows how far its committed epochs reach in each partition. Positions go
//! downstream at the latest epoch their partition has assigned, so the writer checkpoints a
//! position only once every record before it belongs to a committed epoch. A partition's starting position goes out before anything is
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
//! One module per job: this one builds the timely operator and holds the configuration;
//! `reader` opens the consumer and keeps each partition's state, `poll` drains the
//! partitions' queues, `place` files each record under its epoch (and closes invoices),
//! `stall` decides which partitions are held back or stuck, and `metrics` holds the
//! process-wide counters and why the job stopped.
//!
//! [`flow`]: crate::flow
//! [`parse::place`]: crate::parse::place

mod place;
mod poll;
mod reader;
mod stall;
mod watch;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::generic::{OperatorInfo, OutputBuilder, OutputBuilderSession};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::scheduling::Activator;
use tracing::{debug, info};

use crate::aggregate::{Alert, AlertRules, Line, Saved, Text};
use crate::checkpoint::{Restored, Resume};
use crate::epoch::EpochClock;
use crate::flow::Buffered;
use crate::parse::Parsed;
use crate::retention::RestoredInvoice;
use reader::Reader;
use retail_common::kafka::ClientSettings;

use crate::metrics::{Metrics, PartitionGauges, Stop};
pub use reader::owned_partitions;
pub use watch::{every, watch_partitions};

/// Messages handled per activation before the source yields to other operators.
const BUDGET: usize = 8192;
/// How soon an idle source looks again even if librdkafka did not wake it.
const BACKSTOP: Duration = Duration::from_millis(100);
/// How long a partition whose records wait may deliver nothing before its fetch is restarted
/// (see [`is_stalled`](stall::is_stalled)).
const STALLED_AFTER: Duration = Duration::from_secs(10);
/// Fetch restarts after which a partition that still delivers nothing stops the job for a
/// restart (a new Kafka client), if a new client reaches the broker: a minute of silence.
const RESTARTS_BEFORE_STOP: u32 = 5;
/// How long a new client may take to reach the broker, to tell a stuck client from an outage.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a worker that owns no partition looks whether the topic grew one for it.
const WATCH_EVERY: Duration = Duration::from_secs(1);

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

/// Where the sources start reading a partition that no checkpoint positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    /// The oldest retained message of every partition.
    Earliest,
    /// Only messages produced after the job starts.
    Latest,
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
    /// The alerts of invoices that were not open at the committed epoch (their open entries
    /// are in later epochs, read again): given to every partition, which keeps them for the
    /// invoice should one of its lines open it.
    pub reopening: Vec<(Text, Vec<Alert>)>,
}

impl SourceResume {
    /// Where the sources pick up after `restored`, unless nothing was committed yet.
    pub(crate) fn of(restored: &Restored) -> Option<SourceResume> {
        let c = &restored.checkpoint;
        c.epoch.map(|committed| SourceResume {
            committed,
            partitions: c.partitions.clone(),
            counted_through: c.counted_through.clone(),
            dead_through: c.dead_through.clone(),
            open: open_invoices(&restored.saved),
            reopening: reopening_invoices(&restored.saved),
        })
    }
}

/// The alerts of a checkpoint's state, by the invoice whose line raised them.
fn line_alerts(saved: &[Saved]) -> HashMap<&Text, Vec<Alert>> {
    let mut alerts: HashMap<&Text, Vec<Alert>> = HashMap::new();
    for s in saved {
        if let Saved::LineAlert(a) = s
            && let Some(invoice) = a.invoice()
        {
            alerts.entry(invoice).or_default().push(Alert::clone(a));
        }
    }
    alerts
}

/// The alerts of a checkpoint's state whose invoices have no `Open` entry (none without
/// `--invoice-retention`, which writes no `Open` entries and settles no alerts).
fn reopening_invoices(saved: &[Saved]) -> Vec<(Text, Vec<Alert>)> {
    let open: HashSet<&Text> = saved
        .iter()
        .filter_map(|s| match s {
            Saved::Open { invoice, .. } => Some(invoice),
            _ => None,
        })
        .collect();
    if open.is_empty() {
        return Vec::new();
    }
    let mut reopening: Vec<(Text, Vec<Alert>)> = line_alerts(saved)
        .into_iter()
        .filter(|(invoice, _)| !open.contains(invoice))
        .map(|(invoice, alerts)| (invoice.clone(), alerts))
        .collect();
    reopening.sort_by(|a, b| a.0.cmp(&b.0));
    reopening
}

/// The open invoices of a checkpoint's state, per partition: each `Open` entry with the
/// alerts its invoice's lines raised.
fn open_invoices(saved: &[Saved]) -> BTreeMap<i32, Vec<RestoredInvoice>> {
    let alerts = line_alerts(saved);
    let mut open: BTreeMap<i32, Vec<RestoredInvoice>> = BTreeMap::new();
    for s in saved {
        if let Saved::Open {
            partition,
            invoice,
            last,
        } = s
        {
            open.entry(*partition).or_default().push(RestoredInvoice {
                invoice: invoice.clone(),
                last: *last,
                alerts: alerts.get(invoice).cloned().unwrap_or_default(),
            });
        }
    }
    open
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
                    if config.save {
                        // The writer commits nothing more: the next run reads it again.
                        info!(
                            worker = index,
                            "stopping the source: what was read after the last committed epoch \
                             is not committed"
                        );
                    } else {
                        info!(worker = index, "stopping the source: closing open epochs");
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn price_alert(invoice: &str) -> Alert {
        Alert::NonPositivePrice {
            invoice: invoice.into(),
            stock_code: "P".into(),
            unit_price_milli: 0,
            quantity: 1,
        }
    }

    #[test]
    fn alerts_of_invoices_without_an_open_entry_are_kept_for_their_reopening() {
        let open = |invoice: &str| Saved::Open {
            partition: 2,
            invoice: invoice.into(),
            last: 7,
        };
        let alert = |invoice: &str| Saved::LineAlert(Box::new(price_alert(invoice)));
        let saved = vec![open("1"), alert("1"), alert("2"), alert("3"), open("4")];
        let restored = open_invoices(&saved);
        assert_eq!(restored[&2].len(), 2);
        assert_eq!(restored[&2][0].alerts, vec![price_alert("1")]);
        assert!(restored[&2][1].alerts.is_empty());
        assert_eq!(
            reopening_invoices(&saved),
            vec![
                ("2".into(), vec![price_alert("2")]),
                ("3".into(), vec![price_alert("3")]),
            ]
        );
        // Without --invoice-retention there are no open entries, and nothing to settle.
        assert!(reopening_invoices(&[alert("1")]).is_empty());
    }
}
