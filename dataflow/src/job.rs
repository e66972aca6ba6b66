//! Runs one process of the job: checks Kafka, builds the dataflow on every worker, drives it to
//! completion and reports.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::{Concat, OkErr, Probe};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use tracing::{error, info, warn};

use retail_common::kafka::{ClientSettings, builtin_features, count_partitions};

use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::input::Input;

use crate::aggregate::{self, Output, Saved};
use crate::checkpoint::{self, Checkpoint, CheckpointError, JobIdentity, Restored, Resume};
use crate::cli::Config;
use crate::epoch::{PartitionClock, take_closed};
use crate::sink::console::{ConsoleSink, group};
use crate::sink::jsonl::JsonlSink;
use crate::sink::kafka::{
    CheckpointTarget, Commit, Committer, KafkaOut, KafkaOutError, OutputTopics,
};
use crate::sink::{Renderer, Sink, State};
use crate::source::{DeadLetter, Metrics, Parsed, SourceConfig, SourceResume, Stop, kafka_source};

/// How long to wait for Kafka metadata at start.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Kafka(#[from] retail_common::kafka::KafkaSetupError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "topic {topic} does not exist on {bootstrap}; publish sales first (ingest) or check --topic"
    )]
    NoTopic { topic: String, bootstrap: String },
    #[error("bad timely configuration: {0}")]
    Timely(String),
    #[error("cannot write output: {0}")]
    Output(String),
    #[error("a worker failed: {0}")]
    Worker(String),
    #[error("{0} Kafka output records were not delivered")]
    Delivery(u64),
    #[error("{0}")]
    Transaction(String),
    #[error(
        "the checkpoint of job {job_id:?} was written by a different job:\n  - {}\n\
         Start this job over with --reset, or give it its own --job-id.",
        differences.join("\n  - ")
    )]
    Mismatch {
        job_id: String,
        differences: Vec<String>,
    },
    #[error("{0}")]
    Undecodable(String),
    #[error("{0}")]
    Restart(String),
}

impl JobError {
    /// The process exit status this error means.
    pub fn exit_code(&self) -> u8 {
        match self {
            JobError::Delivery(_) => 3,
            JobError::Mismatch { .. } => 2,
            // EX_TEMPFAIL: start again, and the job resumes from its checkpoint.
            JobError::Transaction(_) | JobError::Restart(_) => 75,
            _ => 1,
        }
    }
}

/// What this run is built from, as its checkpoint records it.
fn identity(config: &Config, partitions: i32) -> JobIdentity {
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
    }
}

/// What a finished process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub process: usize,
    pub messages: u64,
    pub lines: u64,
    pub late: u64,
    pub dead_letters: u64,
    /// Records re-read after a restart whose effect was in the restored state.
    pub replayed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub interrupted: bool,
}

/// What crosses from the aggregates and the source to the single writer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Emit {
    Out(Output, u64, isize),
    Dead(DeadLetter, u64),
    /// A partition's next offset and watermark state.
    Position(i32, i64, PartitionClock, u64),
    /// A change of the state a checkpoint keeps.
    Saved(Saved, u64, isize),
}

impl Emit {
    /// The epoch the item belongs to. Differential keeps times in the data: a message's
    /// capability is only a lower bound for the times it carries.
    fn time(&self) -> u64 {
        match self {
            Emit::Out(_, t, _)
            | Emit::Dead(_, t)
            | Emit::Position(_, _, _, t)
            | Emit::Saved(_, t, _) => *t,
        }
    }
}

/// Runs this process's part of the job until a bounded run ends or `shutdown` is set.
pub fn run(config: Config, shutdown: Arc<AtomicBool>) -> Result<Report, JobError> {
    let started = Instant::now();
    let partitions = config
        .settings
        .partition_count(&config.topic, METADATA_TIMEOUT)?
        .ok_or_else(|| JobError::NoTopic {
            topic: config.topic.clone(),
            bootstrap: config.settings.bootstrap.clone(),
        })?;
    let writes = config.process == 0;
    let mut dlq_partitions = partitions;
    if writes && config.kafka {
        config
            .settings
            .ensure_topic(&config.aggregates_topic, 1, &[], METADATA_TIMEOUT)?;
        dlq_partitions =
            config
                .settings
                .ensure_topic(&config.dlq_topic, partitions, &[], METADATA_TIMEOUT)?;
    }
    let mut resume: Option<Restored> = None;
    let mut stale = Vec::new();
    if config.checkpoint {
        if writes {
            for topic in [
                config.checkpoint_topic.clone(),
                checkpoint::state_topic(&config.checkpoint_topic, &config.job_id),
            ] {
                config.settings.ensure_topic(
                    &topic,
                    1,
                    &checkpoint::TOPIC_CONFIG,
                    METADATA_TIMEOUT,
                )?;
            }
        }
        // Every process reads where its partitions resume; process 0 also reads the state (or,
        // on --reset, the entries of the old run to delete).
        if writes || !config.reset {
            let stored = checkpoint::read(
                &config.settings,
                &config.checkpoint_topic,
                &config.job_id,
                writes,
                METADATA_TIMEOUT,
            )?;
            (resume, stale) = stored.restore(config.reset)?;
        }
        if let Some(r) = &resume {
            let differences = r.checkpoint.mismatch(&identity(&config, partitions));
            if !differences.is_empty() {
                return Err(JobError::Mismatch {
                    job_id: config.job_id.clone(),
                    differences,
                });
            }
        }
        match &resume {
            Some(r) => info!(
                job = %config.job_id,
                epoch = %r.checkpoint.epoch_start,
                commits = r.checkpoint.commits,
                entries = r.saved.len(),
                "resuming after the last checkpoint"
            ),
            None => info!(job = %config.job_id, "no checkpoint: starting from the beginning"),
        }
    }
    info!(
        topic = %config.topic,
        partitions,
        process = config.process,
        processes = config.processes,
        "starting"
    );
    let timely_config = timely::Config::from_args(config.timely_args.clone().into_iter())
        .map_err(JobError::Timely)?;

    let watch = Arc::new(AtomicI32::new(partitions));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (settings, topic) = (config.settings.clone(), config.topic.clone());
        let (watch, done, bounded) = (Arc::clone(&watch), Arc::clone(&done), config.until_end);
        std::thread::spawn(move || watch_partitions(&settings, &topic, &watch, &done, bounded));
    }
    let source_config = Arc::new(SourceConfig {
        settings: config.settings.clone(),
        topic: config.topic.clone(),
        partitions,
        watch,
        from: config.from,
        until_end: config.until_end,
        clock: config.clock,
        idle_timeout: config.idle_timeout,
        max_message_bytes: config.max_message_bytes,
        read_ahead: config.read_ahead,
        group_id: config.group_id.clone(),
        resume: resume.as_ref().and_then(|r| {
            let c = &r.checkpoint;
            c.epoch.map(|committed| SourceResume {
                committed,
                partitions: c.partitions.clone(),
                dead_through: c.dead_through.clone(),
            })
        }),
    });
    // The restored state enters the dataflow once, on worker 0 of process 0, at the committed
    // epoch; the writer holds it already and writes nothing for that epoch.
    let restored_at = resume.as_ref().and_then(|r| r.checkpoint.epoch);
    let (resume, saved) = match resume {
        Some(r) => (Some(r.checkpoint), r.saved),
        None => (None, Vec::new()),
    };
    let saved = Arc::new(Mutex::new(Some(saved)));
    let stale = Arc::new(Mutex::new(Some(stale)));
    let metrics = Arc::new(Metrics::default());
    let failure: Arc<Mutex<Option<JobError>>> = Arc::new(Mutex::new(None));
    info!(builtin = %builtin_features(), "librdkafka features");
    {
        // A source that stops the job on a batch it cannot decode stops this process's
        // workers; the other processes of a multi-process job read on. When they have not
        // stopped this one within a few seconds, it exits, and the job fails as a whole.
        let (metrics, done) = (Arc::clone(&metrics), Arc::clone(&done));
        std::thread::spawn(move || fatal_watchdog(&metrics, &done));
    }
    let progress = config.progress_interval.map(|every| {
        let (metrics, done) = (Arc::clone(&metrics), Arc::clone(&done));
        std::thread::spawn(move || progress_loop(&metrics, &done, every, started))
    });

    let job = Arc::new(config);
    let guards = {
        let (metrics, failure, shutdown) = (
            Arc::clone(&metrics),
            Arc::clone(&failure),
            Arc::clone(&shutdown),
        );
        let job = Arc::clone(&job);
        timely::execute(timely_config, move |worker| {
            let index = worker.index();
            let writer = if index == 0 {
                let stale = stale.lock().unwrap().take().unwrap_or_default();
                let opened = open_writer(
                    &job,
                    partitions,
                    dlq_partitions,
                    resume.clone(),
                    stale,
                    Arc::clone(&shutdown),
                    Arc::clone(&metrics),
                );
                Some(opened.unwrap_or_else(|e| {
                    *failure.lock().unwrap() = Some(e);
                    shutdown.store(true, Ordering::Relaxed);
                    Writer::empty(&job, None, Arc::clone(&shutdown), Arc::clone(&metrics))
                }))
            } else {
                None
            };
            let (source_config, metrics, shutdown, failure) = (
                Arc::clone(&source_config),
                Arc::clone(&metrics),
                Arc::clone(&shutdown),
                Arc::clone(&failure),
            );
            let (rules, save) = (job.rules, job.checkpoint);
            let mut state = worker.dataflow::<u64, _, _>(move |scope| {
                let (state, restored) = scope.new_collection::<Saved, isize>();
                // How far the whole dataflow has got: the source's flow control reads it.
                let probe = ProbeHandle::new();
                let parsed = kafka_source(scope, source_config, metrics, shutdown, probe.clone());
                // Lines go to the aggregates; dead letters and positions straight to the writer.
                #[allow(clippy::result_large_err)]
                let (lines, other) = parsed.ok_err(|(item, time, diff)| match item {
                    Parsed::Line(line) => Ok((line, time, diff)),
                    other => Err((other, time)),
                });
                let built = aggregate::build(lines.as_collection(), restored, rules, save);
                let mut outputs = built.outputs.inner.map(|(o, t, r)| Emit::Out(o, t, r));
                if let Some(saved) = built.saved {
                    outputs = outputs.concat(saved.inner.map(|(s, t, r)| Emit::Saved(s, t, r)));
                }
                let dead = other.map(|(item, t)| match item {
                    Parsed::Dead(letter) => Emit::Dead(letter, t),
                    Parsed::Position(p, next, clock) => Emit::Position(p, next, clock, t),
                    Parsed::Line(_) => unreachable!("lines were split off"),
                });
                let mut writer = writer;
                let mut stash: BTreeMap<u64, Vec<Emit>> = BTreeMap::new();
                let mut finished = false;
                outputs.concat(dead).probe_with(&probe).sink(
                    Exchange::new(|_: &Emit| 0),
                    "Writer",
                    move |(input, frontier)| {
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
                            *failure.lock().unwrap() = Some(e);
                        }
                        if frontier.is_empty() && !finished {
                            finished = true;
                            if let Err(e) = w.finish() {
                                error!(error = %e, "output failed at the end");
                                *failure.lock().unwrap() = Some(e);
                            }
                        }
                    },
                );
                state
            });
            if let (0, Some(at)) = (index, restored_at)
                && let Some(entries) = saved.lock().unwrap().take()
            {
                state.advance_to(at);
                for entry in entries {
                    state.insert(entry);
                }
            }
            state.close();
            while worker.has_dataflows() {
                worker.step_or_park(None);
            }
        })
        .map_err(JobError::Timely)?
    };
    let results = guards.join();
    done.store(true, Ordering::Relaxed);
    if let Some(handle) = progress {
        let _ = handle.join();
    }
    match metrics.fatal() {
        Some(Stop::Undecodable(message)) => return Err(JobError::Undecodable(message)),
        Some(Stop::Restart(message)) => return Err(JobError::Restart(message)),
        None => {}
    }
    for result in results {
        result.map_err(JobError::Worker)?;
    }
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    let messages = metrics.messages.load(Ordering::Relaxed);
    Ok(Report {
        process: job.process,
        messages,
        lines: metrics.lines.load(Ordering::Relaxed),
        late: metrics.late.load(Ordering::Relaxed),
        dead_letters: metrics.dead.load(Ordering::Relaxed),
        replayed: metrics.replayed.load(Ordering::Relaxed),
        bytes: metrics.bytes.load(Ordering::Relaxed),
        seconds,
        records_per_sec: messages as f64 / seconds.max(1e-9),
        interrupted: shutdown.load(Ordering::Relaxed),
    })
}

/// The sinks of worker 0, the state they render from, and what is committed.
struct Writer {
    renderer: Renderer,
    jsonl: Option<JsonlSink>,
    console: Option<ConsoleSink>,
    /// Kafka outputs and checkpoints, committed on a thread of their own.
    kafka: Option<Committer>,
    /// The last checkpoint written (or read at start): epochs up to its epoch are not written
    /// again.
    checkpoint: Option<Checkpoint>,
    /// Entries of older runs, deleted by the next commit.
    stale: Vec<String>,
    /// Set by Ctrl-C: with checkpoints, nothing more is committed.
    shutdown: Arc<AtomicBool>,
    /// A commit failed: write nothing more.
    failed: bool,
    /// Where a source records that it stopped the job: then nothing more is written.
    metrics: Arc<Metrics>,
}

impl Writer {
    fn empty(
        config: &Config,
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
            checkpoint,
            stale: Vec::new(),
            shutdown,
            failed: false,
            metrics,
        }
    }

    fn committed(&self) -> Option<u64> {
        self.checkpoint.as_ref().and_then(|c| c.epoch)
    }

    /// Renders the closed epochs after the checkpoint and writes them: the files first, then
    /// one Kafka transaction with their changes, dead letters, state entries and checkpoint.
    fn commit(&mut self, closed: Vec<(u64, Vec<Emit>)>) -> Result<(), JobError> {
        let stopping = self.checkpoint.is_some() && self.shutdown.load(Ordering::Relaxed);
        if self.failed || stopping || self.metrics.fatal().is_some() {
            return Ok(());
        }
        let mut next = self.checkpoint.clone().unwrap_or_default();
        let mut saved_changes = Vec::new();
        let mut batches = Vec::new();
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
                    Emit::Out(o, _, r) => updates.push((o, r)),
                    Emit::Dead(d, _) => {
                        let through = next.dead_through.entry(d.partition).or_insert(d.offset);
                        *through = (*through).max(d.offset);
                        dead.push(d);
                    }
                    Emit::Position(p, offset, clock, _) => {
                        let resume = next.partitions.entry(p).or_default();
                        if offset >= resume.offset {
                            *resume = Resume { offset, clock };
                        }
                    }
                    Emit::Saved(entry, t, r) => saved.push((entry, t, r)),
                }
            }
            consolidate_updates(&mut saved);
            // An entry's old value (-1) goes before its new one (+1).
            saved.sort_by_key(|(_, _, r)| *r);
            saved_changes.extend(saved.into_iter().map(|(entry, _, r)| (entry, r)));
            batches.push(self.renderer.render(epoch, updates, dead));
        }
        let Some(last) = batches.last().map(|b| (b.epoch, b.label.clone())) else {
            return Ok(());
        };
        let state = &self.renderer.state;
        if let Some(jsonl) = &mut self.jsonl {
            for batch in &batches {
                jsonl.write(batch, state).map_err(output_error)?;
            }
        }
        if let Some(console) = &mut self.console {
            for batch in &batches {
                if let Err(e) = console.write(batch, state) {
                    // `dataflow | head`: the reader left; the other sinks go on.
                    if e.kind() != std::io::ErrorKind::BrokenPipe {
                        return Err(output_error(e));
                    }
                    self.console = None;
                    break;
                }
            }
        }
        let checkpoints = self.checkpoint.is_some();
        let mut alerts = Vec::new();
        if checkpoints {
            for change in batches.iter().flat_map(|b| &b.changes) {
                if change.stream == "alerts" {
                    alerts.push((change.key.clone(), state.alerts.get(&change.key).cloned()));
                }
            }
            next.epoch = Some(last.0);
            next.epoch_start = last.1;
            next.files = match &mut self.jsonl {
                Some(j) => j.lengths().map_err(output_error)?,
                None => BTreeMap::new(),
            };
            next.state = State {
                totals: state.totals,
                by_country: state.by_country.clone(),
                top_products: state.top_products.clone(),
                epochs: state.epochs,
                alerts: BTreeMap::new(),
                dead_letters: state.dead_letters.clone(),
            };
            next.commits += 1;
        }
        if let Some(kafka) = &mut self.kafka {
            let commit = Commit {
                batches,
                saved: saved_changes,
                alerts,
                stale: std::mem::take(&mut self.stale),
                checkpoint: next.clone(),
            };
            if let Err(e) = kafka.send(commit) {
                self.failed = true;
                return Err(kafka_error(e));
            }
        }
        if checkpoints {
            self.checkpoint = Some(next);
        }
        Ok(())
    }

    /// After the last epoch: flush, and write summary.json unless the run was interrupted.
    fn finish(&mut self) -> Result<(), JobError> {
        // Commits already queued complete, whatever happens next.
        let committed = self.kafka.as_mut().map_or(Ok(()), Committer::finish);
        let stopping = self.shutdown.load(Ordering::Relaxed) && self.kafka_checkpoints();
        if self.failed || stopping || self.metrics.fatal().is_some() {
            return Ok(());
        }
        committed.map_err(kafka_error)?;
        let state = &self.renderer.state;
        if let Some(console) = &mut self.console {
            let _ = console.finish(state);
        }
        if let Some(jsonl) = &mut self.jsonl {
            jsonl.finish(state).map_err(output_error)?;
        }
        Ok(())
    }

    fn kafka_checkpoints(&self) -> bool {
        self.checkpoint.is_some()
    }
}

fn output_error(e: std::io::Error) -> JobError {
    JobError::Output(e.to_string())
}

fn kafka_error(e: KafkaOutError) -> JobError {
    match e {
        KafkaOutError::Undelivered(n) => JobError::Delivery(n),
        other => JobError::Transaction(other.to_string()),
    }
}

fn open_writer(
    config: &Config,
    partitions: i32,
    dlq_partitions: i32,
    resume: Option<Checkpoint>,
    stale: Vec<String>,
    shutdown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<Writer, JobError> {
    let checkpoint = config.checkpoint.then(|| {
        let mut checkpoint = resume.clone().unwrap_or_else(|| Checkpoint {
            job_id: config.job_id.clone(),
            run: new_run(),
            ..Checkpoint::default()
        });
        checkpoint.identity = Some(identity(config, partitions));
        checkpoint
    });
    let mut writer = Writer::empty(config, checkpoint, shutdown, metrics);
    if config.jsonl {
        let committed = resume.as_ref().map(|c| &c.files);
        let sink = JsonlSink::open(config.output_dir.clone(), committed)
            .map_err(|e| JobError::Output(format!("{}: {e}", config.output_dir.display())))?;
        writer.jsonl = Some(sink);
    }
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
    if outputs.is_some() || target.is_some() {
        let kafka = KafkaOut::create(&config.settings, outputs, target).map_err(kafka_error)?;
        // A fresh or reset job commits its empty start (deleting an older run's entries), so
        // that a crash before its first epoch cannot fall back to an older run's checkpoint.
        match &writer.checkpoint {
            Some(checkpoint) if resume.is_none() => {
                let mut start = checkpoint.clone();
                if let Some(j) = &mut writer.jsonl {
                    start.files = j.lengths().map_err(output_error)?;
                }
                let tombstones: Vec<_> = stale.into_iter().map(|k| (k, None)).collect();
                kafka
                    .commit(&[], &tombstones, &start)
                    .map_err(kafka_error)?;
            }
            _ => writer.stale = stale,
        }
        writer.kafka = Some(Committer::spawn(kafka));
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

/// How often the topic's partition count is read while the job runs.
const WATCH_PARTITIONS_EVERY: Duration = Duration::from_secs(2);

/// Keeps `watch` at the topic's partition count until `done`. A bounded run reads the
/// partitions it saw at start; partitions added during it are reported, and read by the next
/// run of the job.
fn watch_partitions(
    settings: &ClientSettings,
    topic: &str,
    watch: &AtomicI32,
    done: &AtomicBool,
    bounded: bool,
) {
    let client = match settings.metadata_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot watch the topic for new partitions");
            return;
        }
    };
    let mut waited = Duration::ZERO;
    let tick = Duration::from_millis(100);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited < WATCH_PARTITIONS_EVERY {
            continue;
        }
        waited = Duration::ZERO;
        // A failed look (a broker restarting) is simply tried again.
        let Ok(Some(now)) = count_partitions(&client, topic, METADATA_TIMEOUT) else {
            continue;
        };
        let before = watch.load(Ordering::Relaxed);
        if now > before {
            if bounded {
                warn!(
                    topic,
                    before,
                    now,
                    "partitions were added to the topic during this bounded run; it reads the \
                     partitions it saw at start, the next run of the job reads the new ones"
                );
            } else {
                info!(
                    topic,
                    before, now, "the topic grew: reading its new partitions"
                );
            }
            watch.store(now, Ordering::Relaxed);
        }
    }
}

/// Exits the process 5 s after a source has stopped the job, unless it has ended by then.
fn fatal_watchdog(metrics: &Metrics, done: &AtomicBool) {
    let tick = Duration::from_millis(200);
    let mut since: Option<Instant> = None;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        match (metrics.fatal(), since) {
            (Some(_), None) => since = Some(Instant::now()),
            (Some(stop), Some(t)) if t.elapsed() > Duration::from_secs(5) => {
                let (message, code) = match stop {
                    Stop::Undecodable(m) => (m, 1),
                    Stop::Restart(m) => (m, 75),
                };
                eprintln!("error: {message}");
                std::process::exit(code);
            }
            _ => {}
        }
    }
}

/// Prints a progress line to stderr every `every` until `done`.
fn progress_loop(metrics: &Metrics, done: &AtomicBool, every: Duration, started: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited < every {
            continue;
        }
        waited = Duration::ZERO;
        let messages = metrics.messages.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (messages - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, messages);
        let line = format!(
            "[{:>6.1}s] {} records in ({}/s), {} late, {} dead letters, lag {}",
            started.elapsed().as_secs_f64(),
            group(messages),
            group(rate as u64),
            group(metrics.late.load(Ordering::Relaxed)),
            group(metrics.dead.load(Ordering::Relaxed)),
            group(metrics.lag.load(Ordering::Relaxed).max(0) as u64),
        );
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            writeln!(err, "\x1b[2m{line}\x1b[0m")
        } else {
            writeln!(err, "{line}")
        };
    }
}
