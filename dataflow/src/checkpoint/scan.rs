//! Reading the checkpoint topic and the job's state topic: every committed keyed record, in
//! order, to the end of each partition.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use retail_common::kafka::{ClientSettings, KafkaSetupError, ReadToEnd, is_undecodable};

use super::{CheckpointError, Stored, state_topic};

/// Topic settings of the checkpoint topic: only the latest record per job matters.
pub const TOPIC_CONFIG: [(&str, &str); 3] = [
    ("cleanup.policy", "compact"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// Reads the latest committed checkpoint of `job_id` from `topic` and, if `entries` says so
/// once that is done, the job's entries from its state topic (the caller may create the state
/// topic meanwhile: `entries` is when to have finished).
pub fn read(
    settings: &ClientSettings,
    topic: &str,
    job_id: &str,
    entries: impl FnOnce() -> Result<bool, CheckpointError>,
    timeout: Duration,
) -> Result<Stored, CheckpointError> {
    let mut stored = Stored::default();
    // A null payload (tombstone) forgets the job or the entry.
    scan(settings, topic, timeout, |key, payload| {
        if key == job_id.as_bytes() {
            stored.checkpoint = payload.map(<[u8]>::to_vec);
        }
    })?;
    if entries()? {
        scan(
            settings,
            &state_topic(topic, job_id),
            timeout,
            |key, payload| {
                let key = String::from_utf8_lossy(key).into_owned();
                match payload {
                    None => stored.entries.remove(&key),
                    Some(p) => stored.entries.insert(key, p.to_vec()),
                };
            },
        )?;
    }
    Ok(stored)
}

/// Reads every committed keyed record of `topic` (if it exists) in order.
fn scan(
    settings: &ClientSettings,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), KafkaSetupError> {
    // The reader settings' 5 ms queue back-off matters here: with librdkafka's second, a
    // restart after 10M records read its state in 34 s instead of 9.
    let consumer: BaseConsumer<ReadToEnd> = settings
        .reader_config(&[
            ("group.id", "retail-stream-checkpoint-reader"),
            // The end of a partition is found by an empty fetch, which the broker would
            // otherwise hold for the default 500 ms: at every start, for every topic read.
            ("fetch.wait.max.ms", "10"),
        ])
        .create_with_context(ReadToEnd {
            what: "Kafka client error while reading checkpoints",
        })
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
        return Ok(());
    }
    consumer.assign(&tpl).map_err(metadata_error)?;
    let deadline = std::time::Instant::now() + timeout.max(Duration::from_secs(300));
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
            Some(Err(error)) if is_undecodable(&error) => {
                return Err(KafkaSetupError::Undecodable {
                    topic: topic.to_owned(),
                    source: error,
                });
            }
            Some(Err(error)) => {
                // A broker restarting or a lost connection: librdkafka reconnects on its own.
                warn!(%error, "Kafka error while reading checkpoints; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Some(Ok(m)) => {
                if let Some(key) = m.key() {
                    each(key, m.payload());
                }
            }
        }
    }
    Ok(())
}
