//! The Kafka sink: aggregate changes to `<job-id>.aggregates` (keyed `<stream>/<key>`), dead
//! letters to `<job-id>.dlq` with their original key and bytes and the reason in headers, and,
//! when the job checkpoints, the checkpoint record, all in one transaction per commit.
//!
//! With checkpoints the producer is transactional (`transactional.id` derived from the job id,
//! so a restarted job fences its predecessor and aborts its open transaction): readers with
//! `isolation.level=read_committed` see each commit whole or not at all. The same transaction
//! sends the read offsets to the consumer group, so `kafka-consumer-groups.sh --describe` shows
//! the job's lag.
//!
//! Layout: `producer` the producer, its records and transactions, and how its errors are
//! retried; `changes` which state entries a commit writes (pure); `committer` the thread that
//! runs the commits in order.

mod changes;
mod committer;
mod producer;

pub use changes::StateChanges;
pub use committer::{Commit, Committer};
pub use producer::{CheckpointTarget, KafkaOut, OutputTopics};

use rdkafka::error::KafkaError;

/// Some records could not be delivered (after librdkafka's own retries).
#[derive(Debug, thiserror::Error)]
pub enum KafkaOutError {
    #[error("{0} Kafka output records were not delivered")]
    Undelivered(u64),
    /// The transaction was aborted; restarting resumes from the last checkpoint.
    #[error("Kafka transaction aborted; restart to resume from the last checkpoint")]
    Aborted(#[source] KafkaError),
    /// Fenced by a newer instance of the job, or another fatal producer error.
    #[error("fatal Kafka producer error")]
    Fatal(#[source] KafkaError),
    /// The producer has no metadata for the consumer group its offsets are committed for.
    #[error("fatal Kafka producer error: no metadata for consumer group {0}")]
    NoGroup(String),
    /// The commit thread ended without a word (it panicked).
    #[error("fatal Kafka producer error: the commit thread {0}")]
    CommitThread(&'static str),
    #[error("cannot create a Kafka client")]
    Setup(#[from] KafkaError),
}
