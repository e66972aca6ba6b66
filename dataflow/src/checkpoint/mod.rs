//! Checkpoints: what the job has committed, so that a restart neither repeats nor skips output
//! nor re-reads what it has already counted.
//!
//! Every commit of the writer is one Kafka transaction holding the closed epochs' aggregate
//! changes, their dead letters, and, in the compacted topic `--checkpoint-topic`:
//! - the checkpoint record, keyed by `--job-id`: the last committed epoch, the length of each
//!   JSON-lines file, where each source partition resumes (next offset and watermark state),
//!   the last committed dead letter of each partition, and the writer's small state (totals,
//!   countries, top products, counts);
//! - in the job's own compacted state topic `<checkpoint-topic>.<job-id>` (as Kafka Streams
//!   keeps a changelog topic per application), one entry per aggregate key whose state changed,
//!   keyed `<run>/<identity>`: the accumulated input of the arrangements for that key
//!   ([`Saved`](crate::aggregate::Saved), in postcard's binary encoding) and the writer's open alerts (JSON).
//!   Compaction keeps the newest value of each key, so the topic holds one record per
//!   distinct key, however many records were read.
//!
//! A resumed job feeds the entries back into the dataflow at the committed epoch, seeks every
//! partition to its checkpointed offset with the checkpointed watermark, and drops the records
//! it re-reads that belong to committed epochs (their effect is in the state). The positions
//! committed to the consumer group are the same offsets, so standard tools show the lag.
//! `<run>` changes when a job starts over: entries of older runs are deleted (tombstones) by
//! the first commit of the new one.
//!
//! Layout: `record` what a commit holds (the checkpoint record, the job's identity, the state
//! entries' keys and encoding); `restore` what a starting process resumes from; `scan` reading
//! the checkpoint and state topics.

mod record;
mod restore;
mod scan;

#[cfg(test)]
pub use record::encode_entry;
pub use record::{
    Checkpoint, FORMAT, JobIdentity, Resume, alert_identity, decode_entry, encode_entry_into,
    entry_key, state_topic,
};
pub use restore::{Restored, Stored, resume};
pub use scan::{TOPIC_CONFIG, read};

use std::time::Duration;

use retail_common::kafka::{ClientSettings, KafkaSetupError};

/// What the checkpoint reads of the job's configuration (built by `cli`).
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    pub settings: ClientSettings,
    pub checkpoint_topic: String,
    pub job_id: String,
    /// This process's index: process 0 writes the checkpoint.
    pub process: usize,
    /// Checkpoints are on (not `--no-checkpoint`).
    pub checkpoint: bool,
    pub reset: bool,
    /// `--invoice-retention` in epochs: every process then reads the state for its open invoices.
    pub retention: Option<u64>,
}

/// Creates the checkpoint topic and the job's state topic (compacted, one partition each)
/// unless they exist.
pub fn create_topics(config: &CheckpointConfig, timeout: Duration) -> Result<(), KafkaSetupError> {
    let state = state_topic(&config.checkpoint_topic, &config.job_id);
    for topic in [&config.checkpoint_topic, &state] {
        (config.settings).ensure_topic_created(topic, 1, &TOPIC_CONFIG, timeout)?;
    }
    Ok(())
}

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("{what} is unreadable ({source}); start over with --reset or use another --job-id")]
    Corrupt {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
}
