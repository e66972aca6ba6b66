//! Runs one process of the job: checks Kafka, builds the dataflow on every worker, drives it to
//! completion and reports.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use differential_dataflow::input::Input;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use tracing::{info, warn};

use retail_common::exit;
use retail_common::kafka::{ClientSettings, builtin_features, count_partitions};

use crate::aggregate::{self, Alert, Saved, Sums, Text};
use crate::checkpoint::{self, CheckpointError, Restored};
use crate::cli::Config;
use crate::flow::Buffered;
use crate::parse::Parsed;
use crate::peers::PeerWatch;
use crate::retention::RestoredInvoice;
use crate::sink::console::group;
use crate::sink::kafka::KafkaOutError;
use crate::sink::writer::{self, Emit, WriteError};
use crate::source::{Metrics, SourceConfig, SourceResume, Stop, kafka_source};

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
    /// The heartbeat socket of a multi-process job cannot be bound.
    #[error(transparent)]
    Peers(#[from] std::io::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("a worker failed: {0}")]
    Worker(String),
    #[error(
        "the checkpoint of job {job_id:?} was written by a different job:\n  - {}\n\
         Start this job over with --reset, or give it its own --job-id.",
        differences.join("\n  - ")
    )]
    Mismatch {
        job_id: String,
        differences: Vec<String>,
    },
    #[error(
        "the checkpoint of job {job_id:?} has counted sales through the epoch starting {epoch}, \
         but its state topic {topic} holds no state: the topic was deleted or emptied, and \
         resuming would start the aggregates from nothing.\n\
         Start this job over with --reset, or give it its own --job-id."
    )]
    StateLost {
        job_id: String,
        epoch: String,
        topic: String,
    },
    /// A source stopped the job.
    #[error("{}", .0.message())]
    Stopped(Stop),
    #[error(transparent)]
    Http(#[from] retail_common::metrics::ServeError),
}

impl JobError {
    /// The process exit status this error means.
    pub fn exit_code(&self) -> u8 {
        match self {
            JobError::Write(WriteError::Kafka(KafkaOutError::Undelivered(_))) => exit::UNDELIVERED,
            JobError::Mismatch { .. } | JobError::StateLost { .. } => exit::USAGE,
            // Start again, and the job resumes from its checkpoint.
            JobError::Write(WriteError::Kafka(
                KafkaOutError::Aborted(_) | KafkaOutError::Fatal(_),
            )) => exit::RESTART,
            JobError::Stopped(stop) => stop.exit_code(),
            _ => exit::ERROR,
        }
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
    /// Where `--http` serves, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// Runs this process's part of the job until a bounded run ends or `shutdown` is set.
pub fn run(config: Config, shutdown: Arc<AtomicBool>) -> Result<Report, JobError> {
    let started = Instant::now();
    // Several processes watch each other from the start: one that fails, freezes or never
    // comes stops the others, whatever they are doing (timely would wait for it for ever).
    let peers = match config.peers.clone() {
        Some(peers) => Some(PeerWatch::start(peers, |fault| {
            tracing::error!("{fault}");
            std::process::exit(i32::from(exit::RESTART));
        })?),
        None => None,
    };
    let partitions = config
        .settings
        .partition_count(&config.topic, METADATA_TIMEOUT)?
        .ok_or_else(|| JobError::NoTopic {
            topic: config.topic.clone(),
            bootstrap: config.settings.bootstrap.clone(),
        })?;
    let writes = config.process == 0;
    // The checkpoint is read and checked before anything is created, committed or written: a
    // start refused by the identity check leaves the broker and the output as they were.
    let mut resume: Option<Restored> = None;
    let mut stale = Vec::new();
    let state = checkpoint::state_topic(&config.checkpoint_topic, &config.job_id);
    if config.checkpoint {
        let read_entries = writes || config.retention.is_some();
        // Every process reads where its partitions resume; process 0 also reads the state (or,
        // on --reset, the entries of the old run to delete), and with invoice retention every
        // process reads it for its partitions' open invoices. A topic that does not exist yet
        // reads as empty.
        if writes || !config.reset {
            let stored = checkpoint::read(
                &config.settings,
                &config.checkpoint_topic,
                &config.job_id,
                || Ok(read_entries),
                METADATA_TIMEOUT,
            )?;
            (resume, stale) = stored.restore(config.reset)?;
        }
        if let Some(r) = &resume {
            let differences = r
                .checkpoint
                .mismatch(&writer::identity(&config, partitions));
            if !differences.is_empty() {
                return Err(JobError::Mismatch {
                    job_id: config.job_id.clone(),
                    differences,
                });
            }
            // Counted sales leave entries (their totals at least) wherever entries are read.
            if read_entries && r.saved.is_empty() && r.checkpoint.state.totals != Sums::default() {
                return Err(JobError::StateLost {
                    job_id: config.job_id.clone(),
                    epoch: r.checkpoint.epoch_start.clone(),
                    topic: state.clone(),
                });
            }
        }
    }
    // Every process must resume the same checkpoint: the peers compare which one they read.
    if let Some(peers) = &peers {
        let checkpoint = resume.as_ref().map(|r| &r.checkpoint);
        peers.resumed(checkpoint.map_or(0, |c| c.run.rotate_left(17) ^ c.commits));
    }
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
    // The writer's producer connects while the checkpoint topics are made.
    let kafka = if writes {
        writer::connect_kafka(&config, dlq_partitions)
    } else {
        None
    };
    if config.checkpoint && writes {
        for topic in [&config.checkpoint_topic, &state] {
            config.settings.ensure_topic_created(
                topic,
                1,
                &checkpoint::TOPIC_CONFIG,
                METADATA_TIMEOUT,
            )?;
        }
    }
    if config.checkpoint {
        match &resume {
            Some(r) => info!(
                job = %config.job_id,
                epoch = %r.checkpoint.epoch_start,
                commits = r.checkpoint.commits,
                entries = r.saved.len(),
                "resuming after the last checkpoint"
            ),
            None if config.reset => {
                info!(job = %config.job_id, "--reset: starting over from the beginning")
            }
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
    let buffered = Arc::new(Buffered::new(config.max_buffered));
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
        buffered: Arc::clone(&buffered),
        group_id: config.group_id.clone(),
        retention: config.retention,
        rules: config.rules,
        save: config.checkpoint,
        resume: resume.as_ref().and_then(|r| {
            let c = &r.checkpoint;
            c.epoch.map(|committed| SourceResume {
                committed,
                partitions: c.partitions.clone(),
                counted_through: c.counted_through.clone(),
                dead_through: c.dead_through.clone(),
                open: open_invoices(&r.saved),
            })
        }),
    });
    if config.process != 0
        && let Some(r) = &mut resume
    {
        // Other processes needed the state only for the open invoices.
        r.saved = Vec::new();
    }
    // The restored state enters the dataflow once, on worker 0 of process 0, at the committed
    // epoch; the writer holds it already and writes nothing for that epoch.
    let restored_at = resume.as_ref().and_then(|r| r.checkpoint.epoch);
    let (resume, saved) = match resume {
        Some(r) => (Some(r.checkpoint), r.saved),
        None => (None, Vec::new()),
    };
    let saved = Arc::new(Mutex::new(Some(saved)));
    let metrics = Arc::new(Metrics::default());
    // `/readyz`: the dataflow runs with every process connected.
    let ready = Arc::new(AtomicBool::new(false));
    let (http, hub) = match &config.http {
        Some(addr) => {
            let resumed = source_config.resume.as_ref().map(|r| &r.partitions);
            let ready = Arc::clone(&ready);
            let (local, hub) = crate::http::serve_job(&config, addr, &metrics, resumed, ready)?;
            (Some(local), hub)
        }
        None => (None, None),
    };
    // The writer (worker 0 of process 0) is ready before any worker starts: setting up its
    // producer (and a fresh job's first commit) would otherwise hold worker 0 while the others
    // read ahead, and every epoch closed after that would sort through what they read.
    let writer = if writes {
        let mut writer = writer::open_writer(
            &config,
            partitions,
            kafka,
            resume,
            stale,
            Arc::clone(&shutdown),
            Arc::clone(&metrics),
        )?;
        if let Some(publisher) = hub {
            writer.show_on(publisher);
        }
        if let Some(peers) = &peers
            && config.checkpoint
        {
            writer.wait_for_peers(peers.agreed());
        }
        Some(writer)
    } else {
        None
    };
    let writer = Arc::new(Mutex::new(writer));
    let failure: Arc<Mutex<Option<WriteError>>> = Arc::new(Mutex::new(None));
    info!(builtin = %builtin_features(), "librdkafka features");
    {
        // A source that stops the job (a batch it cannot decode, a partition it cannot take)
        // holds its epochs open, so that no process writes what it could not read, and this
        // process exits: the job fails as a whole (the other processes lose their peer).
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
                writer.lock().unwrap().take()
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
                let (lines, other, wake) =
                    kafka_source(scope, source_config, metrics, shutdown, probe.clone());
                // Lines and closed invoices go to the aggregates; dead letters, positions and the
                // source's state straight to the writer.
                #[allow(clippy::result_large_err)]
                let (closed, other) = other.ok_err(|(item, time, diff)| match item {
                    Parsed::Close(closing) => Ok((closing, time, diff)),
                    other => Err((other, time)),
                });
                let built = aggregate::build(
                    lines.as_collection(),
                    closed.as_collection(),
                    restored,
                    rules,
                    save,
                );
                let mut outputs = built
                    .outputs
                    .inner
                    .map(|(o, t, r)| Emit::Out(Box::new(o), t, r));
                if let Some(saved) = built.saved {
                    // Only the new values of changed entries (and the retractions of removed
                    // ones) cross to the writer.
                    let newest = saved
                        .inner
                        .unary::<CapacityContainerBuilder<Vec<Emit>>, _, _, _>(
                            Pipeline,
                            "NewestSaved",
                            |_, _| {
                                move |input, output| {
                                    input.for_each(|cap, data| {
                                        aggregate::drop_superseded(data);
                                        output.session(&cap).give_iterator(
                                            data.drain(..).map(|(s, t, r)| Emit::Saved(s, t, r)),
                                        );
                                    });
                                }
                            },
                        );
                    outputs = outputs.concat(newest);
                }
                let dead = other.map(|(item, t)| match item {
                    Parsed::Dead(letter) => Emit::Dead(Box::new(letter), t),
                    Parsed::Position(p, next, clock) => Emit::Position(p, next, clock, t),
                    Parsed::Counted(p, offset) => Emit::Counted(p, offset, t),
                    Parsed::Saved(entry, r) => Emit::Saved(entry, t, r),
                    Parsed::Close(..) => {
                        unreachable!("closings were split off")
                    }
                });
                writer::write(outputs.concat(dead), writer, failure, &probe, wake);
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
    // timely::execute returns once the processes are connected.
    if let Some(peers) = &peers {
        peers.connected();
    }
    ready.store(true, Ordering::Relaxed);
    let results = guards.join();
    done.store(true, Ordering::Relaxed);
    if let Some(handle) = progress {
        let _ = handle.join();
    }
    if let Some(stop) = metrics.fatal() {
        return Err(JobError::Stopped(stop));
    }
    for result in results {
        result.map_err(JobError::Worker)?;
    }
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e.into());
    }
    // This process's part is done: its peers are told, so that its exit is no fault.
    if let Some(peers) = &peers
        && !shutdown.load(Ordering::Relaxed)
    {
        peers.finish();
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
        http,
    })
}

/// The open invoices of a checkpoint's state, per partition: each `Open` entry with the
/// alerts its invoice's lines raised.
fn open_invoices(saved: &[Saved]) -> BTreeMap<i32, Vec<RestoredInvoice>> {
    let mut alerts: HashMap<&Text, Vec<Alert>> = HashMap::new();
    for s in saved {
        if let Saved::LineAlert(a) = s
            && let Some(invoice) = a.invoice()
        {
            alerts.entry(invoice).or_default().push(Alert::clone(a));
        }
    }
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
    every(WATCH_PARTITIONS_EVERY, done, || {
        // A failed look (a broker restarting) is simply tried again.
        let Ok(Some(now)) = count_partitions(&client, topic, METADATA_TIMEOUT) else {
            return;
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
    });
}

/// Calls `f` every `period` until `done`, looking at `done` every 100 ms so that the thread
/// ends soon after the job.
fn every(period: Duration, done: &AtomicBool, mut f: impl FnMut()) {
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited >= period {
            waited = Duration::ZERO;
            f();
        }
    }
}

/// Exits the process once a source has stopped the job (after a moment for the logs): its
/// dataflow cannot complete, since the source holds its epochs open.
fn fatal_watchdog(metrics: &Metrics, done: &AtomicBool) {
    let tick = Duration::from_millis(100);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        if let Some(stop) = metrics.fatal() {
            std::thread::sleep(Duration::from_millis(300));
            eprintln!("error: {}", stop.message());
            std::process::exit(i32::from(stop.exit_code()));
        }
    }
}

/// Prints a progress line to stderr every `period` until `done`.
fn progress_loop(metrics: &Metrics, done: &AtomicBool, period: Duration, started: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    every(period, done, || {
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
    });
}
