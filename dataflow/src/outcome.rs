//! What a run of one process ends with: its report, or the error that stopped it and the exit
//! status that error means (which `main` alone turns into the process's exit).

use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use retail_common::exit;

use crate::checkpoint::CheckpointError;
use crate::metrics::{Metrics, Stop};
use crate::peers::PeerFault;
use crate::sink::kafka::KafkaOutError;
use crate::sink::writer::WriteError;

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
    /// Timely's own words: its configuration and its workers report errors as text.
    #[error("bad timely configuration: {0}")]
    Timely(String),
    /// The heartbeat socket of a multi-process job cannot be bound.
    #[error(transparent)]
    Peers(#[from] std::io::Error),
    /// Another process of the job failed, froze or never came.
    #[error("{0}")]
    Peer(PeerFault),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("a worker failed: {0}")]
    Worker(String),
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
            JobError::Checkpoint(
                CheckpointError::Mismatch { .. } | CheckpointError::StateLost { .. },
            ) => exit::USAGE,
            // Start again, and the job resumes from its checkpoint.
            JobError::Write(WriteError::Kafka(
                KafkaOutError::Aborted(_)
                | KafkaOutError::Fatal(_)
                | KafkaOutError::NoGroup(_)
                | KafkaOutError::CommitThread(_),
            ))
            | JobError::Peer(_) => exit::RESTART,
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

impl Report {
    /// The report of `process`, started at `started`, from its sources' counters.
    pub fn of(
        process: usize,
        metrics: &Metrics,
        started: Instant,
        interrupted: bool,
        http: Option<String>,
    ) -> Report {
        let seconds = started.elapsed().as_secs_f64();
        let messages = metrics.messages.load(Ordering::Relaxed);
        Report {
            process,
            messages,
            lines: metrics.lines.load(Ordering::Relaxed),
            late: metrics.late.load(Ordering::Relaxed),
            dead_letters: metrics.dead.load(Ordering::Relaxed),
            replayed: metrics.replayed.load(Ordering::Relaxed),
            bytes: metrics.bytes.load(Ordering::Relaxed),
            seconds,
            records_per_sec: messages as f64 / seconds.max(1e-9),
            interrupted,
            http,
        }
    }
}
