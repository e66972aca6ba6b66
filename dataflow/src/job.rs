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
use crate::cli::Config;
use crate::sink::console::{ConsoleSink, group};
use crate::sink::jsonl::JsonlSink;
use crate::sink::kafka::{KafkaSink, Undelivered};
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
}

impl Emit {
    /// The epoch the item belongs to. Differential keeps times in the data: a message's
    /// capability is only a lower bound for the times it carries.
    fn time(&self) -> u64 {
        match self {
            Emit::Out(_, t, _) | Emit::Dead(_, t) => *t,
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
    if writes && config.jsonl {
        std::fs::create_dir_all(&config.output_dir)
            .map_err(|e| JobError::Output(format!("{}: {e}", config.output_dir.display())))?;
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
                Some(open_writer(&job, dlq_partitions).unwrap_or_else(|e| {
                    *failure.lock().unwrap() = Some(e);
                    shutdown.store(true, Ordering::Relaxed);
                    Writer::empty(&job)
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
                let (lines, dead) = parsed.ok_err(|(item, time, diff)| match item {
                    Parsed::Line(line) => Ok((line, time, diff)),
                    Parsed::Dead(letter) => Err((letter, time)),
                });
                let outputs = aggregate::build(lines.as_collection(), rules)
                    .inner
                    .map(|(o, t, r)| Emit::Out(o, t, r));
                let dead = dead.map(|(letter, t)| Emit::Dead(letter, t));
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
                        while let Some(entry) = stash.first_entry() {
                            if frontier.less_equal(entry.key()) {
                                break;
                            }
                            let epoch = *entry.key();
                            let items = entry.remove();
                            if let Err(e) = w.epoch(epoch, items) {
                                error!(error = %e, "output failed; stopping");
                                *failure.lock().unwrap() = Some(e);
                            }
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

/// The sinks of worker 0 and the state they render from.
struct Writer {
    renderer: Renderer,
    sinks: Vec<Box<dyn Sink>>,
}

impl Writer {
    fn empty(config: &Config) -> Writer {
        Writer {
            renderer: Renderer {
                clock: config.clock,
                state: State::default(),
            },
            sinks: Vec::new(),
        }
    }

    fn epoch(&mut self, epoch: u64, items: Vec<Emit>) -> Result<(), JobError> {
        let mut updates = Vec::new();
        let mut dead = Vec::new();
        for item in items {
            match item {
                Emit::Out(o, _, r) => updates.push((o, r)),
                Emit::Dead(d, _) => dead.push(d),
            }
        }
        let batch = self.renderer.render(epoch, updates, dead);
        let state = &self.renderer.state;
        let mut result = Ok(());
        self.sinks
            .retain_mut(|sink| match sink.write(&batch, state) {
                Ok(()) => true,
                // `dataflow | head`: the reader left; the other sinks go on.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
                Err(e) => {
                    result = Err(output_error(e));
                    true
                }
            });
        result
    }

    fn finish(&mut self) -> Result<(), JobError> {
        let state = &self.renderer.state;
        for sink in &mut self.sinks {
            sink.finish(state).map_err(output_error)?;
        }
        Ok(())
    }
}

/// Classifies a sink's error: undelivered Kafka output has its own exit status.
fn output_error(e: std::io::Error) -> JobError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Undelivered>())
    {
        Some(Undelivered(n)) => JobError::Delivery(*n),
        None => JobError::Output(e.to_string()),
    }
}

fn open_writer(config: &Config, dlq_partitions: i32) -> Result<Writer, JobError> {
    let mut writer = Writer::empty(config);
    if config.jsonl {
        let sink = JsonlSink::create(config.output_dir.clone())
            .map_err(|e| JobError::Output(format!("{}: {e}", config.output_dir.display())))?;
        writer.sinks.push(Box::new(sink));
    }
    if config.kafka {
        let sink = KafkaSink::create(
            &config.settings,
            config.aggregates_topic.clone(),
            config.topic.clone(),
            config.dlq_topic.clone(),
            dlq_partitions,
        )
        .map_err(|e| JobError::Output(format!("Kafka producer: {e}")))?;
        writer.sinks.push(Box::new(sink));
    }
    if config.console {
        writer.sinks.push(Box::new(ConsoleSink::new()));
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
