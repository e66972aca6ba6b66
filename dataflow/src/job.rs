//! Runs one process of the job: checks Kafka, builds the dataflow on every worker, drives it to
//! completion and reports. Only wiring: each step is a call into the room that does it.
//!
//! The process runs on a thread of its own while the caller waits for its result, a peer's
//! fault or a source's stop, whichever comes first: those two stop the job while its dataflow
//! cannot complete (timely waits for a lost peer for ever, and a stopped source holds its
//! epochs open so that no process writes what it could not read). [`run`] then returns the
//! stop as an error; the caller (`main`) exits, which ends the threads left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use differential_dataflow::AsCollection;
use differential_dataflow::input::Input;
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{ProbeHandle, Stream};
use tracing::info;

use retail_common::kafka::builtin_features;

use crate::aggregate::{self, Saved};
use crate::checkpoint;
use crate::cli::Config;
use crate::metrics::Metrics;
use crate::parse::Parsed;
use crate::peers::PeerWatch;
use crate::sink::console::spawn_progress;
use crate::sink::writer::{self, Emit, WriteError};
use crate::source::{kafka_source, watch_partitions};

pub use crate::outcome::{JobError, Report};

/// How long to wait for Kafka metadata at start.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs this process's part of the job until a bounded run ends or `shutdown` is set.
pub fn run(config: Config, shutdown: Arc<AtomicBool>) -> Result<Report, JobError> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::default());
    let (outcome, result) = mpsc::channel();
    // Several processes watch each other from the start: one that fails, freezes or never
    // comes stops the others, whatever they are doing (timely would wait for it for ever).
    let peers = match config.peers.clone() {
        Some(peers) => {
            let outcome = outcome.clone();
            Some(PeerWatch::start(peers, move |fault| {
                let _ = outcome.send(Err(JobError::Peer(fault)));
            })?)
        }
        None => None,
    };
    let theirs = Arc::clone(&metrics);
    std::thread::Builder::new()
        .name("job".into())
        .spawn(move || {
            let _ = outcome.send(run_process(config, shutdown, peers, theirs, started));
        })
        .map_err(JobError::Peers)?;
    wait(&result, &metrics)
}

/// The process's result, or the stop that came first (see the module's doc).
fn wait(
    result: &Receiver<Result<Report, JobError>>,
    metrics: &Metrics,
) -> Result<Report, JobError> {
    loop {
        match result.recv_timeout(Duration::from_millis(100)) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(stop) = metrics.fatal() {
                    // A moment for the logs of the other threads.
                    std::thread::sleep(Duration::from_millis(300));
                    return result.try_recv().unwrap_or(Err(JobError::Stopped(stop)));
                }
            }
            // The job thread panicked: the panic hook ends the process.
            Err(RecvTimeoutError::Disconnected) => {
                return Err(JobError::Worker("the job thread stopped".into()));
            }
        }
    }
}

/// The process itself, on the thread [`run`] starts.
fn run_process(
    config: Config,
    shutdown: Arc<AtomicBool>,
    peers: Option<PeerWatch>,
    metrics: Arc<Metrics>,
    started: Instant,
) -> Result<Report, JobError> {
    let partitions = config
        .settings
        .partition_count(&config.topic, METADATA_TIMEOUT)?
        .ok_or_else(|| JobError::NoTopic {
            topic: config.topic.clone(),
            bootstrap: config.settings.bootstrap.clone(),
        })?;
    let writes = config.process == 0;
    let sinks = config.sink_config();
    let identity = writer::identity(&sinks, partitions);
    let checkpoint_config = config.checkpoint_config();
    let resumed = checkpoint::resume(&checkpoint_config, &identity, METADATA_TIMEOUT)?;
    // Every process must resume the same checkpoint: the peers compare which one they read.
    if let Some(peers) = &peers {
        let checkpoint = resumed.restored.as_ref().map(|r| &r.checkpoint);
        peers.resumed(checkpoint.map_or(0, |c| c.run.rotate_left(17) ^ c.commits));
    }
    let mut dlq_partitions = partitions;
    if writes && config.kafka {
        let settings = &config.settings;
        settings.ensure_topic(&config.aggregates_topic, 1, &[], METADATA_TIMEOUT)?;
        dlq_partitions =
            settings.ensure_topic(&config.dlq_topic, partitions, &[], METADATA_TIMEOUT)?;
    }
    // The writer's producer connects while the checkpoint topics are made.
    let kafka = writes
        .then(|| writer::connect_kafka(&sinks, dlq_partitions))
        .flatten();
    if config.checkpoint && writes {
        checkpoint::create_topics(&checkpoint_config, METADATA_TIMEOUT)?;
    }
    if config.checkpoint {
        resumed.log(&checkpoint_config);
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

    let done = Arc::new(AtomicBool::new(false));
    let restored = resumed.restored;
    let source = config.source_config(partitions, restored.as_ref());
    watch_partitions(&source, &done);
    let source_config = Arc::new(source);
    // The restored state enters the dataflow once, on worker 0 of process 0, at the committed
    // epoch; the writer holds it already and writes nothing for that epoch. Other processes
    // needed the state only for the open invoices.
    let restored_at = restored.as_ref().and_then(|r| r.checkpoint.epoch);
    let (resume, saved) = match restored {
        Some(r) if writes => (Some(r.checkpoint), r.saved),
        Some(r) => (Some(r.checkpoint), Vec::new()),
        None => (None, Vec::new()),
    };
    let saved = Arc::new(Mutex::new(Some(saved)));
    // `/readyz`: the dataflow runs with every process connected.
    let ready = Arc::new(AtomicBool::new(false));
    let (http, hub) = match config.http_config() {
        Some(http) => {
            let resumed = source_config.resume.as_ref().map(|r| &r.partitions);
            let ready = Arc::clone(&ready);
            let (local, hub) = crate::http::serve_job(&http, &metrics, resumed, ready)?;
            (Some(local), hub)
        }
        None => (None, None),
    };
    // The writer (worker 0 of process 0) is ready before any worker starts: setting up its
    // producer (and a fresh job's first commit) would otherwise hold worker 0 while the others
    // read ahead, and every epoch closed after that would sort through what they read.
    let writer = if writes {
        let (shutdown, metrics) = (Arc::clone(&shutdown), Arc::clone(&metrics));
        let mut writer = writer::open_writer(
            &sinks,
            partitions,
            kafka,
            resume,
            resumed.stale,
            shutdown,
            metrics,
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
    let progress =
        (config.progress_interval).map(|every| spawn_progress(&metrics, &done, every, started));

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
                crate::locked(&writer).take()
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
                #[allow(clippy::type_complexity)]
                let (names, other): (
                    _,
                    Stream<'_, u64, Vec<(Parsed, u64, isize)>>,
                ) = other.ok_err(|(item, time, diff)| match item {
                    Parsed::Name(code, name) => Ok((code, time, name)),
                    other => Err((other, time, diff)),
                });
                let (closed, other) = other.ok_err(|(item, time, diff)| match item {
                    Parsed::Close(closing) => Ok((closing, time, diff)),
                    other => Err((other, time)),
                });
                let built = aggregate::build(
                    lines.as_collection(),
                    closed.as_collection(),
                    names.as_collection(),
                    restored,
                    rules,
                    save,
                );
                let mut outputs = built
                    .outputs
                    .inner
                    .map(|(o, t, r)| Emit::Out(Box::new(o), t, r));
                if let Some(saved) = built.saved {
                    outputs = outputs.concat(aggregate::newest_saved(saved, Emit::Saved));
                }
                let other = other.map(|(item, t)| Emit::from_source(item, t));
                writer::write(outputs.concat(other), writer, failure, &probe, wake);
                state
            });
            if let (0, Some(at)) = (index, restored_at)
                && let Some(entries) = crate::locked(&saved).take()
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
    if let Some(e) = crate::locked(&failure).take() {
        return Err(e.into());
    }
    // This process's part is done: its peers are told, so that its exit is no fault.
    if let Some(peers) = &peers
        && !shutdown.load(Ordering::Relaxed)
    {
        peers.finish();
    }
    let interrupted = shutdown.load(Ordering::Relaxed);
    Ok(Report::of(
        job.process,
        &metrics,
        started,
        interrupted,
        http,
    ))
}
