//! The single writer, on worker 0 of process 0: takes each closed epoch (several at once when
//! the frontier jumps), renders its changes in a deterministic order, hands them to the
//! console, JSON-lines and Kafka sinks, and builds the checkpoint that commits them.
//!
//! Everything the writer needs crosses to it as an [`Emit`]: aggregate changes, dead letters,
//! partition positions and the state changes a checkpoint keeps. It stashes them by epoch and
//! writes an epoch only once the frontier has passed it, so the output depends only on the
//! input, never on the worker count or on timing. With checkpoints, each commit is one Kafka
//! transaction (the `checkpoint` module says what it holds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::Probe;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::{ProbeHandle, Stream};
use tracing::error;

use super::console::ConsoleSink;
use super::jsonl::JsonlSink;
use super::kafka::{
    CheckpointTarget, Commit, Committer, KafkaOut, KafkaOutError, OutputTopics, StateChanges,
};
use super::postgres::{PgError, PostgresSink};
use super::publish::{Publisher, Update};
use super::{OutputStream, Renderer, SinkConfig};
use crate::aggregate::{Output, Saved};
use crate::checkpoint::{self, Checkpoint, JobIdentity};
use crate::epoch::{PartitionClock, take_closed};
use crate::metrics::Metrics;
use crate::parse::{DeadLetter, Parsed};
use crate::source::ProgressWake;

/// Why the writer could not write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write output in {dir}")]
    Output {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kafka(#[from] KafkaOutError),
    #[error(transparent)]
    Postgres(#[from] PgError),
}

/// What crosses from the aggregates and the source to the single writer. Mostly state
/// entries: the few large variants are boxed, so that an epoch's stash of items is small.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Emit {
    Out(Box<Output>, u64, isize),
    Dead(Box<DeadLetter>, u64),
    /// A partition's next offset and watermark state.
    Position(i32, i64, PartitionClock, u64),
    /// The last offset of a partition counted at this epoch.
    Counted(i32, i64, u64),
    /// A change of the state a checkpoint keeps.
    Saved(Saved, u64, isize),
}

impl Emit {
    /// The epoch the item belongs to. Differential keeps times in the data: a message's
    /// capability is only a lower bound for the times it carries.
    pub fn time(&self) -> u64 {
        match self {
            Emit::Out(_, t, _)
            | Emit::Dead(_, t)
            | Emit::Position(_, _, _, t)
            | Emit::Counted(_, _, t)
            | Emit::Saved(_, t, _) => *t,
        }
    }

    /// What the source emits at `time` besides lines and closings (which go to the
    /// aggregates), as the writer takes it.
    pub fn from_source(item: Parsed, time: u64) -> Emit {
        match item {
            Parsed::Dead(letter) => Emit::Dead(Box::new(letter), time),
            Parsed::Position(p, next, clock) => Emit::Position(p, next, clock, time),
            Parsed::Counted(p, offset) => Emit::Counted(p, offset, time),
            Parsed::Saved(entry, r) => Emit::Saved(entry, time, r),
            Parsed::Close(..) | Parsed::Name(..) => {
                unreachable!("closings and names go to the aggregates")
            }
        }
    }
}

/// Adds the writer to the end of the dataflow: every item is exchanged to worker 0, stashed
/// by epoch, and written once the frontier passes its epoch. Only worker 0 has a `writer`; a
/// failure is left in `failure` and stops further writing. Every worker's writer tells `wake`
/// when the frontier moves.
pub fn write<'scope>(
    items: Stream<'scope, u64, Vec<Emit>>,
    writer: Option<Writer>,
    failure: Arc<Mutex<Option<WriteError>>>,
    probe: &ProbeHandle<u64>,
    wake: ProgressWake,
) {
    let mut writer = writer;
    let mut stash: BTreeMap<u64, Vec<Emit>> = BTreeMap::new();
    let mut finished = false;
    let mut seen = Some(0);
    items.probe_with(probe).sink(
        Exchange::new(|_: &Emit| 0),
        "Writer",
        move |(input, frontier)| {
            let now = frontier.frontier().first().copied();
            if now != seen {
                seen = now;
                wake.frontier_moved();
            }
            input.for_each(|_, data| {
                for item in data.drain(..) {
                    stash.entry(item.time()).or_default().push(item);
                }
            });
            let Some(w) = writer.as_mut() else { return };
            let closed = take_closed(&mut stash, frontier);
            if !closed.is_empty()
                && let Err(e) = w.commit(closed)
            {
                error!(error = %e, "output failed; stopping");
                *crate::locked(&failure) = Some(e);
                // A live job would read on for ever: stop the sources.
                w.shutdown.store(true, Ordering::Relaxed);
            }
            if frontier.is_empty() && !finished {
                finished = true;
                if let Err(e) = w.finish() {
                    error!(error = %e, "output failed at the end");
                    *crate::locked(&failure) = Some(e);
                }
            }
        },
    );
}

/// What this run is built from, as its checkpoint records it.
pub fn identity(config: &SinkConfig, partitions: i32) -> JobIdentity {
    let output_dir = std::path::absolute(&config.output_dir)
        .unwrap_or_else(|_| config.output_dir.clone())
        .display()
        .to_string();
    JobIdentity {
        format: checkpoint::FORMAT,
        topic: config.topic.clone(),
        partitions,
        epoch_secs: config.clock.epoch_secs,
        lateness_secs: config.clock.lateness_epochs * config.clock.epoch_secs,
        output_dir,
        aggregates_topic: config.aggregates_topic.clone(),
        dlq_topic: config.dlq_topic.clone(),
        alert_invoice_value_milli: config.rules.invoice_value_milli,
        alert_quantity: config.rules.quantity,
        alert_cancellations: config.rules.cancellations_per_epoch,
        invoice_retention_secs: config.retention.map(|r| r * config.clock.epoch_secs),
    }
}

/// The sinks of worker 0, the state they render from, and what is committed.
pub struct Writer {
    renderer: Renderer,
    jsonl: Option<JsonlSink>,
    console: Option<ConsoleSink>,
    /// Kafka outputs and checkpoints, committed on a thread of their own.
    kafka: Option<Committer>,
    /// `--sinks postgres`: written before Kafka commits (see `sink/postgres`).
    postgres: Option<PostgresSink>,
    /// The last checkpoint written (or read at start): epochs up to its epoch are not written
    /// again.
    checkpoint: Option<Checkpoint>,
    /// The next checkpoint, with the positions of epochs that held nothing else and so were
    /// not committed: they go with the next commit.
    carried: Option<Checkpoint>,
    /// Several processes: set once every one is known to have resumed the same checkpoint;
    /// nothing is committed before.
    agreed: Option<Arc<AtomicBool>>,
    /// Entries of older runs, deleted by the next commit.
    stale: Vec<String>,
    /// A fresh job's start is handed to the commit thread, not yet known committed: no file
    /// is written before it is.
    start_pending: bool,
    /// Set by Ctrl-C: with checkpoints, nothing more is committed.
    shutdown: Arc<AtomicBool>,
    /// A commit failed: write nothing more.
    failed: bool,
    /// Where a source records that it stopped the job: then nothing more is written.
    metrics: Arc<Metrics>,
    /// The output directory, for errors.
    dir: PathBuf,
    /// `--http`: where confirmed commits are queued to be shown.
    http: Option<Publisher>,
    /// `--invoice-retention` in epochs: cancellation bursts older than this are settled.
    retention: Option<u64>,
}

impl Writer {
    pub fn empty(
        config: &SinkConfig,
        checkpoint: Option<Checkpoint>,
        shutdown: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Writer {
        let state = checkpoint
            .as_ref()
            .map(|c| c.state.clone())
            .unwrap_or_default();
        Writer {
            renderer: Renderer {
                clock: config.clock,
                state,
            },
            jsonl: None,
            console: None,
            kafka: None,
            postgres: None,
            checkpoint,
            carried: None,
            agreed: None,
            stale: Vec::new(),
            start_pending: false,
            shutdown,
            failed: false,
            metrics,
            dir: config.output_dir.clone(),
            http: None,
            retention: config.retention,
        }
    }

    /// Shows every confirmed commit on `hub` (`--http`).
    pub fn show_on(&mut self, publisher: Publisher) {
        if let Some(c) = &self.checkpoint {
            publisher.set_run(c.run);
        }
        self.http = Some(publisher);
    }

    /// Commits nothing before `agreed` is set: the processes of the job resumed the same
    /// checkpoint.
    pub fn wait_for_peers(&mut self, agreed: Arc<AtomicBool>) {
        self.agreed = Some(agreed);
    }

    fn committed(&self) -> Option<u64> {
        self.checkpoint.as_ref().and_then(|c| c.epoch)
    }

    /// Renders the closed epochs after the checkpoint and writes them: the files first, then
    /// one Kafka transaction with their changes, dead letters, state entries and checkpoint.
    fn commit(&mut self, closed: Vec<(u64, Vec<Emit>)>) -> Result<(), WriteError> {
        let stopping = self.checkpoint.is_some() && self.shutdown.load(Ordering::Relaxed);
        if self.failed || stopping || self.metrics.fatal().is_some() {
            return Ok(());
        }
        // The peers' agreement comes with their first heartbeats after the connection (a
        // second at most); a process that resumed another checkpoint stops the job before.
        while let Some(agreed) = &self.agreed {
            if agreed.load(Ordering::Relaxed) {
                self.agreed = None;
            } else if self.shutdown.load(Ordering::Relaxed) {
                return Ok(());
            } else {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let mut next =
            (self.carried.take()).unwrap_or_else(|| self.checkpoint.clone().unwrap_or_default());
        let mut saved_changes = StateChanges::default();
        let mut batches = Vec::new();
        let mut update = self.http.as_ref().map(|_| Update::begin());
        for (epoch, items) in closed {
            // Only the restored state arrives at committed epochs; the writer holds it already.
            if self.committed().is_some_and(|c| epoch <= c) {
                continue;
            }
            let mut updates = Vec::new();
            let mut dead = Vec::new();
            let mut saved = Vec::new();
            for item in items {
                match item {
                    Emit::Out(o, _, r) => updates.push((*o, r)),
                    Emit::Dead(d, _) => {
                        next.dead_letter(d.partition, d.offset);
                        dead.push(*d);
                    }
                    Emit::Position(p, offset, clock, _) => next.position(p, offset, clock),
                    Emit::Counted(p, offset, _) => next.counted(p, offset),
                    Emit::Saved(entry, _, r) => saved.push((entry, r)),
                }
            }
            // An epoch that holds nothing but positions (a bounded run's start or a resume that
            // found nothing new) is not committed: its positions go with the next commit.
            if updates.is_empty() && dead.is_empty() && saved.is_empty() {
                continue;
            }
            // Bursts behind the retention horizon are settled at the next epoch with outputs
            // (a choice of epochs that depends on the data only, never on timing).
            if let Some(retention) = self.retention
                && !updates.is_empty()
            {
                let expired = self.renderer.expired_bursts(epoch, retention);
                updates.extend(expired.into_iter().map(|a| (Output::Alert(a), -1)));
            }
            // Each entry is kept by one worker and changes at most once an epoch.
            saved_changes.absorb(StateChanges::of_epoch(saved));
            let batch = self.renderer.render(epoch, updates, dead);
            if let Some(u) = &mut update {
                u.add(&batch);
            }
            batches.push(batch);
        }
        let Some(last) = batches.last().map(|b| (b.epoch, b.label.clone())) else {
            self.carried = Some(next);
            return Ok(());
        };
        let state = &self.renderer.state;
        if let Some(jsonl) = &mut self.jsonl {
            if self.start_pending {
                if let Some(kafka) = &self.kafka
                    && let Err(e) = kafka.wait_confirmed(1)
                {
                    self.failed = true;
                    return Err(e.into());
                }
                self.start_pending = false;
            }
            for batch in &batches {
                jsonl.write(batch).map_err(output_error(&self.dir))?;
            }
        }
        if let Some(console) = &mut self.console {
            for batch in &batches {
                if let Err(e) = console.write(batch) {
                    // `dataflow | head`: the reader left; the other sinks go on.
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(output_error(&self.dir)(e));
                    }
                    self.console = None;
                    break;
                }
            }
        }
        let checkpoints = self.checkpoint.is_some();
        let mut alerts = BTreeMap::new();
        if checkpoints {
            for change in batches.iter().flat_map(|b| &b.changes) {
                if change.stream == OutputStream::Alerts {
                    alerts.insert(change.key.clone(), state.alerts.get(&change.key).cloned());
                }
            }
            let files = match &mut self.jsonl {
                Some(j) => j.lengths().map_err(output_error(&self.dir))?,
                None => BTreeMap::new(),
            };
            next.seal(last.0, last.1, files, state);
        }
        // Shown once committed: after the Kafka transaction, or now that the files are written.
        let mut show = update.zip(self.http.clone()).map(|(mut u, hub)| {
            u.close(state, &next.partitions, self.metrics.snapshot());
            move || hub.publish(u)
        });
        // PostgreSQL commits these epochs before the Kafka transaction that checkpoints past
        // them, so it never lags the checkpoint: a replay after a crash is skipped there.
        let committed = self.committed();
        if let Some(pg) = &mut self.postgres {
            match pg.write(&batches, committed) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.failed = true;
                    return Err(e.into());
                }
            }
        }
        if let Some(kafka) = &mut self.kafka {
            let after = show.take().map(|f| Box::new(f) as Box<dyn FnOnce() + Send>);
            let commit = Commit {
                after: after.into_iter().collect(),
                batches,
                saved: saved_changes,
                alerts,
                stale: std::mem::take(&mut self.stale),
                checkpoint: next.clone(),
            };
            if let Err(e) = kafka.send(commit) {
                self.failed = true;
                return Err(e.into());
            }
        }
        if let Some(show) = show {
            show();
        }
        if checkpoints {
            self.checkpoint = Some(next);
        }
        Ok(())
    }

    /// After the last epoch: flush, and write summary.json unless the run was interrupted.
    fn finish(&mut self) -> Result<(), WriteError> {
        // Commits already queued complete, whatever happens next.
        let committed = self.kafka.as_mut().map_or(Ok(()), Committer::finish);
        if self.failed {
            return Ok(());
        }
        // A commit that failed is reported even when the job is stopping (the commit thread
        // stops it when one fails).
        committed?;
        let stopping = self.shutdown.load(Ordering::Relaxed) && self.kafka_checkpoints();
        if stopping || self.metrics.fatal().is_some() {
            return Ok(());
        }
        let state = &self.renderer.state;
        if let Some(console) = &mut self.console {
            let _ = console.finish();
        }
        if let Some(jsonl) = &mut self.jsonl {
            jsonl.finish(state).map_err(output_error(&self.dir))?;
        }
        if let Some(publisher) = &self.http {
            publisher.finish();
        }
        Ok(())
    }

    fn kafka_checkpoints(&self) -> bool {
        self.checkpoint.is_some()
    }
}

/// Turns an I/O error of the output directory `dir` into a [`WriteError`].
fn output_error(dir: &Path) -> impl Fn(std::io::Error) -> WriteError + '_ {
    move |source| WriteError::Output {
        dir: dir.to_owned(),
        source,
    }
}

/// Connects the writer's Kafka producer, when it writes outputs or checkpoints to Kafka;
/// slow enough (about 0.15 s) to run while the job reads its checkpoint.
pub fn connect_kafka(
    config: &SinkConfig,
    dlq_partitions: i32,
) -> Option<JoinHandle<Result<KafkaOut, KafkaOutError>>> {
    let outputs = config.kafka.then(|| OutputTopics {
        aggregates: config.aggregates_topic.clone(),
        dlq: config.dlq_topic.clone(),
        source: config.topic.clone(),
        dlq_partitions,
    });
    let target = config.checkpoint.then(|| CheckpointTarget {
        topic: config.checkpoint_topic.clone(),
        state_topic: checkpoint::state_topic(&config.checkpoint_topic, &config.job_id),
        job_id: config.job_id.clone(),
        source: config.topic.clone(),
        group_id: config.group_id.clone(),
    });
    if outputs.is_none() && target.is_none() {
        return None;
    }
    let settings = config.settings.clone();
    Some(std::thread::spawn(move || {
        KafkaOut::connect(&settings, outputs, target)
    }))
}

/// The writer, with the producer [`connect_kafka`] is connecting (joined here).
pub fn open_writer(
    config: &SinkConfig,
    partitions: i32,
    kafka: Option<JoinHandle<Result<KafkaOut, KafkaOutError>>>,
    resume: Option<Checkpoint>,
    stale: Vec<String>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<Writer, WriteError> {
    let checkpoint = config.checkpoint.then(|| {
        let mut checkpoint = resume.clone().unwrap_or_else(|| Checkpoint {
            job_id: config.job_id.clone(),
            run: new_run(),
            ..Checkpoint::default()
        });
        checkpoint.identity = Some(identity(config, partitions));
        checkpoint
    });
    let mut writer = Writer::empty(config, checkpoint, Arc::clone(&shutdown), metrics);
    // Connected and checked first: a wrong password or table fails the start before any
    // commit. It holds every epoch the checkpoint has, or the job does not start.
    if let Some(target) = &config.postgres {
        let run = writer.checkpoint.as_ref().map(|c| c.run);
        let committed = resume.as_ref().and_then(|c| c.epoch);
        let mut pg = PostgresSink::open(
            target,
            &config.job_id,
            run,
            committed,
            config.clock,
            shutdown,
        )?;
        if config.reset && run.is_none() {
            pg.reset()?;
        }
        writer.postgres = Some(pg);
    }
    if config.jsonl {
        let committed = resume.as_ref().map(|c| &c.files);
        let sink = JsonlSink::open(config.output_dir.clone(), committed)
            .map_err(output_error(&config.output_dir))?;
        writer.jsonl = Some(sink);
    }
    if let Some(connecting) = kafka {
        let mut kafka = connecting
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        kafka.init()?;
        let mut committer = Committer::spawn(kafka, Arc::clone(&writer.shutdown));
        // A fresh or reset job commits its empty start (deleting an older run's entries), so
        // that a crash before its first epoch cannot fall back to an older run's checkpoint:
        // the commit thread runs it while the job starts, and the writer writes no file
        // before it is committed.
        match &writer.checkpoint {
            Some(checkpoint) if resume.is_none() => {
                let mut start = checkpoint.clone();
                if let Some(j) = &mut writer.jsonl {
                    start.files = j.lengths().map_err(output_error(&config.output_dir))?;
                }
                committer.send(Commit {
                    batches: Vec::new(),
                    saved: StateChanges::default(),
                    alerts: BTreeMap::new(),
                    stale,
                    checkpoint: start,
                    after: Vec::new(),
                })?;
                writer.start_pending = true;
            }
            _ => writer.stale = stale,
        }
        // A new run takes the job's rows over once its start is committed: never before, so
        // that a crash in between resumes the old run with its rows intact.
        if let Some(pg) = &mut writer.postgres
            && writer
                .checkpoint
                .as_ref()
                .is_some_and(|c| c.epoch.is_none())
        {
            if resume.is_none() {
                committer.wait_confirmed(1)?;
            }
            pg.write(&[], None)?;
        }
        writer.kafka = Some(committer);
    }
    if config.console {
        writer.console = Some(ConsoleSink::new());
    }
    Ok(writer)
}

/// A number for a new run of a job: its start time in nanoseconds.
fn new_run() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
