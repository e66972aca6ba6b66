//! The Kafka sink: aggregate changes to `retail-aggregates` (keyed `<stream>/<key>`), dead
//! letters to `<topic>.dlq` with their original key and bytes and the reason in headers, and,
//! when the job checkpoints, the checkpoint record, all in one transaction per commit.
//!
//! With checkpoints the producer is transactional (`transactional.id` derived from the job id,
//! so a restarted job fences its predecessor and aborts its open transaction): readers with
//! `isolation.level=read_committed` see each commit whole or not at all. The same transaction
//! sends the read offsets to the consumer group, so `kafka-consumer-groups.sh --describe` shows
//! the job's lag.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, warn};

use retail_common::kafka::ClientSettings;

use super::Batch;
use crate::checkpoint::Checkpoint;

/// How long a transaction step may keep retrying while Kafka is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Some records could not be delivered (after librdkafka's own retries).
#[derive(Debug, thiserror::Error)]
pub enum KafkaOutError {
    #[error("{0} Kafka output records were not delivered")]
    Undelivered(u64),
    /// The transaction was aborted; restarting resumes from the last checkpoint.
    #[error("Kafka transaction aborted ({0}); restart to resume from the last checkpoint")]
    Aborted(String),
    /// Fenced by a newer instance of the job, or another fatal producer error.
    #[error("fatal Kafka producer error: {0}")]
    Fatal(String),
    #[error("cannot create a Kafka client: {0}")]
    Setup(#[from] KafkaError),
}

/// Counts failed deliveries; the job reports them and exits non-zero.
#[derive(Default)]
pub struct DeliveryCounter {
    pub failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && self.failed.fetch_add(1, Ordering::Relaxed) == 0
        {
            error!(error = %e, "Kafka output delivery failed");
        }
    }
}

/// Where the aggregate changes and dead letters go.
pub struct OutputTopics {
    pub aggregates: String,
    pub dlq: String,
    pub source: String,
    /// Partitions of the DLQ topic: a dead letter keeps its source partition when it exists.
    pub dlq_partitions: i32,
}

/// Where checkpoints go, and the group that shows the job's progress.
pub struct CheckpointTopic {
    pub topic: String,
    pub job_id: String,
    pub source: String,
    group: ConsumerGroupMetadata,
}

pub struct KafkaOut {
    producer: BaseProducer<DeliveryCounter>,
    outputs: Option<OutputTopics>,
    checkpoint: Option<CheckpointTopic>,
    failed: Arc<AtomicU64>,
}

impl KafkaOut {
    /// A producer for the outputs and/or the checkpoints; transactional when checkpointing.
    pub fn create(
        settings: &ClientSettings,
        outputs: Option<OutputTopics>,
        checkpoint: Option<(String, String, String, String)>,
    ) -> Result<KafkaOut, KafkaOutError> {
        let context = DeliveryCounter::default();
        let failed = Arc::clone(&context.failed);
        let mut defaults = vec![
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            ("linger.ms", "5".to_owned()),
        ];
        let mut target = None;
        if let Some((topic, job_id, source, group_id)) = checkpoint {
            defaults.push(("transactional.id", format!("retail-stream-{job_id}")));
            defaults.push(("transaction.timeout.ms", "60000".to_owned()));
            // A consumer handle only to name the group the offsets are committed for.
            let group: BaseConsumer = settings.config(&[("group.id", &group_id)]).create()?;
            let group = group.group_metadata().ok_or_else(|| {
                KafkaOutError::Fatal(format!("no metadata for consumer group {group_id}"))
            })?;
            target = Some(CheckpointTopic {
                topic,
                job_id,
                source,
                group,
            });
        }
        let defaults: Vec<(&str, &str)> = defaults.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let producer: BaseProducer<DeliveryCounter> =
            settings.config(&defaults).create_with_context(context)?;
        if target.is_some() {
            retry("initialising transactions", || {
                producer.init_transactions(Duration::from_secs(30))
            })?;
        }
        Ok(KafkaOut {
            producer,
            outputs,
            checkpoint: target,
            failed,
        })
    }

    /// Sends a record, polling for delivery reports while the local queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaOutError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
    }

    fn send_batch(&self, batch: &Batch) -> Result<(), KafkaOutError> {
        let Some(t) = &self.outputs else {
            return Ok(());
        };
        for change in &batch.changes {
            let key = format!("{}/{}", change.stream, change.key);
            self.send(
                BaseRecord::to(&t.aggregates)
                    .key(key.as_bytes())
                    .payload(change.line.as_bytes()),
            )?;
        }
        for (d, _) in &batch.dead {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "source.topic",
                    value: Some(t.source.as_str()),
                })
                .insert(Header {
                    key: "source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "source.offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "reason",
                    value: Some(d.reason.as_str()),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(d.detail.as_str()),
                });
            let mut record = BaseRecord::to(&t.dlq)
                .payload(d.payload.as_slice())
                .headers(headers);
            if let Some(key) = &d.key {
                record = record.key(key.as_slice());
            }
            if d.partition < t.dlq_partitions {
                record = record.partition(d.partition);
            }
            self.send(record)?;
        }
        Ok(())
    }

    /// Writes the batches, and the checkpoint with them in one transaction when checkpointing.
    pub fn commit(&self, batches: &[Batch], checkpoint: &Checkpoint) -> Result<(), KafkaOutError> {
        let Some(target) = &self.checkpoint else {
            for batch in batches {
                self.send_batch(batch)?;
            }
            self.producer.poll(Duration::ZERO);
            return Ok(());
        };
        retry("beginning a transaction", || {
            self.producer.begin_transaction()
        })?;
        let result = (|| {
            for batch in batches {
                self.send_batch(batch)?;
            }
            let payload = serde_json::to_vec(checkpoint).expect("checkpoint serialises");
            self.send(
                BaseRecord::to(&target.topic)
                    .key(target.job_id.as_bytes())
                    .payload(&payload),
            )?;
            if !checkpoint.offsets.is_empty() {
                let mut offsets = TopicPartitionList::new();
                for (p, o) in &checkpoint.offsets {
                    offsets
                        .add_partition_offset(&target.source, *p, Offset::Offset(*o))
                        .map_err(classify)?;
                }
                retry("sending offsets to the transaction", || {
                    self.producer.send_offsets_to_transaction(
                        &offsets,
                        &target.group,
                        Duration::from_secs(30),
                    )
                })?;
            }
            retry("committing a transaction", || {
                self.producer.commit_transaction(Duration::from_secs(60))
            })
        })();
        if let Err(KafkaOutError::Aborted(reason)) = &result {
            warn!(%reason, "aborting the transaction");
            let _ = self.producer.abort_transaction(Duration::from_secs(30));
        }
        result
    }

    /// Waits for every outstanding record (non-transactional mode) and reports failures.
    pub fn finish(&self) -> Result<(), KafkaOutError> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(classify)?;
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(KafkaOutError::Undelivered(n)),
        }
    }
}

/// Sorts a producer error into retry-later, abort-and-resume, or fatal.
fn classify(e: KafkaError) -> KafkaOutError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => KafkaOutError::Fatal(e.to_string()),
        KafkaError::Transaction(t) if t.txn_requires_abort() => {
            KafkaOutError::Aborted(e.to_string())
        }
        _ => KafkaOutError::Aborted(e.to_string()),
    }
}

/// Runs a transaction step, retrying retriable errors (a broker restarting, a lost connection)
/// with a log line, for up to [`RETRY_FOR`].
fn retry(
    what: &str,
    mut step: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaOutError> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t))
                if t.is_retriable() && started.elapsed() < RETRY_FOR =>
            {
                warn!(error = %t, "Kafka unavailable while {what}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}
