//! Runs one process of the job: checks Kafka, builds the dataflow on every worker, drives it to
//! completion and reports.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use tracing::{error, info};

use crate::aggregate::{self, Output};
use crate::checkpoint::{self, Checkpoint};
use crate::cli::Config;
use crate::sink::console::{ConsoleSink, group};
use crate::sink::jsonl::JsonlSink;
use crate::sink::kafka::{KafkaOut, KafkaOutError, OutputTopics};
use crate::sink::{Renderer, Sink, State};
use crate::source::{DeadLetter, Metrics, Parsed, SourceConfig, kafka_source};

/// How long to wait for Kafka metadata at start.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Kafka(#[from] retail_common::kafka::KafkaSetupError),
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
}

/// What a finished process reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub process: usize,
    pub messages: u64,
    pub lines: u64,
    pub late: u64,
    pub dead_letters: u64,
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
    /// A partition's next offset.
    Position(i32, i64, u64),
}

impl Emit {
    /// The epoch the item belongs to. Differential keeps times in the data: a message's
    /// capability is only a lower bound for the times it carries.
    fn time(&self) -> u64 {
        match self {
            Emit::Out(_, t, _) | Emit::Dead(_, t) | Emit::Position(_, _, t) => *t,
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
    let mut resume = None;
    if writes && config.checkpoint {
        config.settings.ensure_topic(
            &config.checkpoint_topic,
            1,
            &checkpoint::TOPIC_CONFIG,
            METADATA_TIMEOUT,
        )?;
        if !config.reset {
            resume = checkpoint::read_latest(
                &config.settings,
                &config.checkpoint_topic,
                &config.job_id,
                METADATA_TIMEOUT,
            )?;
        }
        match &resume {
            Some(c) => info!(
                job = %config.job_id,
                epoch = %c.epoch_start,
                commits = c.commits,
                "resuming after the last checkpoint: re-reading the topic to rebuild the state"
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

    let source_config = Arc::new(SourceConfig {
        settings: config.settings.clone(),
        topic: config.topic.clone(),
        partitions,
        from: config.from,
        until_end: config.until_end,
        clock: config.clock,
        idle_timeout: config.idle_timeout,
        max_message_bytes: config.max_message_bytes,
        group_id: config.group_id.clone(),
    });
    let metrics = Arc::new(Metrics::default());
    let failure: Arc<Mutex<Option<JobError>>> = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
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
                let opened =
                    open_writer(&job, dlq_partitions, resume.clone(), Arc::clone(&shutdown));
                Some(opened.unwrap_or_else(|e| {
                    *failure.lock().unwrap() = Some(e);
                    shutdown.store(true, Ordering::Relaxed);
                    Writer::empty(&job, None, Arc::clone(&shutdown))
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
            let rules = job.rules;
            worker.dataflow::<u64, _, _>(move |scope| {
                let parsed = kafka_source(scope, source_config, metrics, shutdown);
                // Lines go to the aggregates; dead letters and positions straight to the writer.
                #[allow(clippy::result_large_err)]
                let (lines, other) = parsed.ok_err(|(item, time, diff)| match item {
                    Parsed::Line(line) => Ok((line, time, diff)),
                    other => Err((other, time)),
                });
                let outputs = aggregate::build(lines.as_collection(), rules)
                    .inner
                    .map(|(o, t, r)| Emit::Out(o, t, r));
                let dead = other.map(|(item, t)| match item {
                    Parsed::Dead(letter) => Emit::Dead(letter, t),
                    Parsed::Position(p, next) => Emit::Position(p, next, t),
                    Parsed::Line(_) => unreachable!("lines were split off"),
                });
                let mut writer = writer;
                let mut stash: BTreeMap<u64, Vec<Emit>> = BTreeMap::new();
                let mut finished = false;
                outputs.concat(dead).sink(
                    Exchange::new(|_: &Emit| 0),
                    "Writer",
                    move |(input, frontier)| {
                        input.for_each(|_, data| {
                            for item in data.drain(..) {
                                stash.entry(item.time()).or_default().push(item);
                            }
                        });
                        let Some(w) = writer.as_mut() else { return };
                        let mut closed = Vec::new();
                        while let Some(entry) = stash.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let epoch = *entry.key();
                            closed.push((epoch, entry.remove()));
                        }
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
            });
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
    kafka: Option<KafkaOut>,
    /// The last checkpoint written (or read at start): epochs up to its epoch are not written
    /// again.
    checkpoint: Option<Checkpoint>,
    /// Set by Ctrl-C: with checkpoints, nothing more is committed.
    shutdown: Arc<AtomicBool>,
    /// A commit failed: write nothing more.
    failed: bool,
    job_id: String,
}

impl Writer {
    fn empty(config: &Config, checkpoint: Option<Checkpoint>, shutdown: Arc<AtomicBool>) -> Writer {
        Writer {
            renderer: Renderer {
                clock: config.clock,
                state: State::default(),
            },
            jsonl: None,
            console: None,
            kafka: None,
            checkpoint,
            shutdown,
            failed: false,
            job_id: config.job_id.clone(),
        }
    }

    fn committed(&self) -> Option<u64> {
        self.checkpoint.as_ref().and_then(|c| c.epoch)
    }

    /// Renders the closed epochs, then writes those after the checkpoint: the files first,
    /// then one Kafka transaction with their changes, dead letters and the new checkpoint.
    fn commit(&mut self, closed: Vec<(u64, Vec<Emit>)>) -> Result<(), JobError> {
        let stopping = self.checkpoint.is_some() && self.shutdown.load(Ordering::Relaxed);
        if self.failed || stopping {
            return Ok(());
        }
        let mut offsets = self
            .checkpoint
            .as_ref()
            .map(|c| c.offsets.clone())
            .unwrap_or_default();
        let mut batches = Vec::new();
        for (epoch, items) in closed {
            let mut updates = Vec::new();
            let mut dead = Vec::new();
            for item in items {
                match item {
                    Emit::Out(o, _, r) => updates.push((o, r)),
                    Emit::Dead(d, _) => dead.push(d),
                    Emit::Position(p, next, _) => {
                        let o = offsets.entry(p).or_insert(next);
                        *o = (*o).max(next);
                    }
                }
            }
            // Epochs already committed still update the state, but are not written again.
            let batch = self.renderer.render(epoch, updates, dead);
            if self.committed().is_none_or(|c| epoch > c) {
                batches.push(batch);
            }
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
        let files = match &mut self.jsonl {
            Some(j) => j.lengths().map_err(output_error)?,
            None => BTreeMap::new(),
        };
        let checkpoint = Checkpoint {
            job_id: self.job_id.clone(),
            epoch: Some(last.0),
            epoch_start: last.1,
            files,
            offsets,
            commits: self.checkpoint.as_ref().map_or(0, |c| c.commits) + 1,
        };
        if let Some(kafka) = &self.kafka
            && let Err(e) = kafka.commit(&batches, &checkpoint)
        {
            self.failed = true;
            return Err(kafka_error(e));
        }
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// After the last epoch: flush, and write summary.json unless the run was interrupted.
    fn finish(&mut self) -> Result<(), JobError> {
        if self.failed || self.shutdown.load(Ordering::Relaxed) && self.kafka_checkpoints() {
            return Ok(());
        }
        let state = &self.renderer.state;
        if let Some(kafka) = &self.kafka {
            kafka.finish().map_err(kafka_error)?;
        }
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
    dlq_partitions: i32,
    resume: Option<Checkpoint>,
    shutdown: Arc<AtomicBool>,
) -> Result<Writer, JobError> {
    let checkpoint = config.checkpoint.then(|| {
        resume.clone().unwrap_or_else(|| Checkpoint {
            job_id: config.job_id.clone(),
            ..Checkpoint::default()
        })
    });
    let mut writer = Writer::empty(config, checkpoint, shutdown);
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
    let target = config.checkpoint.then(|| {
        (
            config.checkpoint_topic.clone(),
            config.job_id.clone(),
            config.topic.clone(),
            config.group_id.clone(),
        )
    });
    if outputs.is_some() || target.is_some() {
        let kafka = KafkaOut::create(&config.settings, outputs, target).map_err(kafka_error)?;
        writer.kafka = Some(kafka);
    }
    if config.console {
        writer.console = Some(ConsoleSink::new());
    }
    // A fresh or reset job commits its empty start, so that a crash before its first epoch
    // cannot fall back to an older run's checkpoint.
    if resume.is_none()
        && let (Some(kafka), Some(checkpoint)) = (&writer.kafka, &writer.checkpoint)
    {
        let mut start = checkpoint.clone();
        if let Some(j) = &mut writer.jsonl {
            start.files = j.lengths().map_err(output_error)?;
        }
        kafka.commit(&[], &start).map_err(kafka_error)?;
    }
    Ok(writer)
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
