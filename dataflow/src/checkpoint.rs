//! Checkpoints: what the job has committed, so that a restart neither repeats nor skips output.
//!
//! Every commit of the writer is one Kafka transaction holding the closed epochs' aggregate
//! changes, their dead letters, and a checkpoint record in the compacted topic
//! `--checkpoint-topic`, keyed by `--job-id`. The record says which epoch was committed last,
//! how long each JSON-lines file was at that point, and how far each partition had been read
//! (the same offsets are committed to the consumer group, so standard tools show the lag).
//!
//! Recovery relies on the job being deterministic: a restarted job reads its topic from the
//! start again, rebuilds the same state, and writes only epochs after the checkpoint's, after
//! cutting the JSON-lines files back to their committed length. The checkpoint therefore stays
//! a few hundred bytes whatever the volume; the price is that recovery re-reads the topic.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use retail_common::kafka::{ClientSettings, KafkaSetupError};

/// The record committed with each transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job_id: String,
    /// The last committed epoch; `None` when nothing is committed yet (a fresh or reset job).
    pub epoch: Option<u64>,
    /// Its start, for people reading the topic.
    pub epoch_start: String,
    /// Byte length of each JSON-lines file after the committed epochs.
    pub files: BTreeMap<String, u64>,
    /// Next offset to read of each source partition when the epoch closed.
    pub offsets: BTreeMap<i32, i64>,
    /// Commits so far (1 for the first).
    pub commits: u64,
}

/// Topic settings of the checkpoint topic: only the latest record per job matters.
pub const TOPIC_CONFIG: [(&str, &str); 3] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// Reads the latest committed checkpoint of `job_id`, if any.
pub fn read_latest(
    settings: &ClientSettings,
    topic: &str,
    job_id: &str,
    timeout: Duration,
) -> Result<Option<Checkpoint>, KafkaSetupError> {
    let consumer: BaseConsumer = settings
        .config(&[
            ("group.id", "retail-stream-checkpoint-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
        ])
        .create()
        .map_err(|source| KafkaSetupError::Client {
            bootstrap: settings.bootstrap.clone(),
            source,
        })?;
    let metadata_error = |source| KafkaSetupError::Metadata {
        bootstrap: settings.bootstrap.clone(),
        source,
    };
    let partitions = settings.partition_count(topic, timeout)?.unwrap_or(0);
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0;
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(metadata_error)?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(metadata_error)?;
            remaining += 1;
        }
    }
    if remaining == 0 {
        return Ok(None);
    }
    consumer.assign(&tpl).map_err(metadata_error)?;
    let mut latest = None;
    let deadline = std::time::Instant::now() + timeout.max(Duration::from_secs(60));
    while remaining > 0 {
        if std::time::Instant::now() > deadline {
            return Err(KafkaSetupError::Timeout {
                what: format!("reading checkpoints from {topic}"),
                bootstrap: settings.bootstrap.clone(),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => remaining -= 1,
            Some(Err(source)) => return Err(metadata_error(source)),
            // A null payload (tombstone) forgets the job.
            Some(Ok(m)) if m.key() == Some(job_id.as_bytes()) => {
                latest = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Checkpoint>(p).ok());
            }
            Some(Ok(_)) => {}
        }
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_as_json() {
        let c = Checkpoint {
            job_id: "j".into(),
            epoch: Some(42),
            epoch_start: "1970-01-02T18:00:00".into(),
            files: [("totals.jsonl".to_owned(), 120)].into(),
            offsets: [(0, 17), (3, 9)].into(),
            commits: 3,
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
    }
}
