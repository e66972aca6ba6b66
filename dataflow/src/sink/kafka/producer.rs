//! The Kafka producer of the outputs and checkpoints: aggregate changes and dead letters as
//! records, and with checkpoints one transaction per commit holding them, the state entries,
//! the checkpoint record and the group's offsets; which of its errors are retried, which abort
//! the transaction, which are fatal.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use retail_common::kafka::{ClientSettings, DeliveryCounter, partitions_in, send_waiting};

use super::KafkaOutError;
use super::committer::SendEntry;
use crate::checkpoint::Checkpoint;
use crate::sink::Batch;

/// How long a transaction step may keep retrying while Kafka is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Where the aggregate changes and dead letters go.
pub struct OutputTopics {
    pub aggregates: String,
    pub dlq: String,
    pub source: String,
    /// Partitions of the DLQ topic: a dead letter keeps its source partition when it exists.
    pub dlq_partitions: i32,
}

/// Where checkpoints and state entries go, and the group that shows the job's progress.
pub struct CheckpointTarget {
    pub topic: String,
    pub state_topic: String,
    pub job_id: String,
    /// The source topic, whose offsets are committed for `group_id`.
    pub source: String,
    pub group_id: String,
}

/// A [`CheckpointTarget`] with its group's metadata.
struct CheckpointTopic {
    target: CheckpointTarget,
    group: ConsumerGroupMetadata,
    /// The state topic has a single partition (as the job creates it): its records then go to
    /// partition 0 without hashing each key to choose.
    state_single_partition: bool,
}

pub struct KafkaOut {
    producer: BaseProducer<DeliveryCounter>,
    outputs: Option<OutputTopics>,
    checkpoint: Option<CheckpointTopic>,
}

impl KafkaOut {
    /// A producer for the outputs and/or the checkpoints, connected; transactional when
    /// checkpointing, but its transactions are not initialised yet ([`KafkaOut::init`]).
    pub fn connect(
        settings: &ClientSettings,
        outputs: Option<OutputTopics>,
        checkpoint: Option<CheckpointTarget>,
    ) -> Result<KafkaOut, KafkaOutError> {
        let context = DeliveryCounter::new("Kafka output delivery failed", false);
        let mut defaults = vec![
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            ("linger.ms", "5".to_owned()),
            // Only failures are counted: a report for every record delivered would be work
            // for nothing (a transaction's commit waits for its records either way).
            ("delivery.report.only.error", "true".to_owned()),
            // The job creates its topics itself, the state topic compacted: a request naming
            // a topic not created yet must not create it with the broker's defaults.
            ("allow.auto.create.topics", "false".to_owned()),
        ];
        let mut target = None;
        if let Some(checkpoint) = checkpoint {
            defaults.push((
                "transactional.id",
                format!("retail-stream-{}", checkpoint.job_id),
            ));
            defaults.push(("transaction.timeout.ms", "60000".to_owned()));
            // A consumer handle only to name the group the offsets are committed for.
            let group: BaseConsumer = settings
                .config(&[("group.id", &checkpoint.group_id)])
                .create()?;
            let group = (group.group_metadata())
                .ok_or_else(|| KafkaOutError::NoGroup(checkpoint.group_id.clone()))?;
            target = Some(CheckpointTopic {
                target: checkpoint,
                group,
                state_single_partition: false,
            });
        }
        let defaults: Vec<(&str, &str)> = defaults.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let producer: BaseProducer<DeliveryCounter> =
            settings.config(&defaults).create_with_context(context)?;
        if let Some(t) = &target {
            // Connected first: initialising transactions while no broker is up waits for
            // librdkafka's next look for the coordinator, half a second later. The first
            // request goes through the bootstrap address and names the cluster's brokers; the
            // second waits until a connection to one of them is up. They name the source
            // topic: the state topic may still be being created.
            for _ in 0..2 {
                let _ = (producer.client())
                    .fetch_metadata(Some(&t.target.source), Duration::from_secs(30));
            }
        }
        Ok(KafkaOut {
            producer,
            outputs,
            checkpoint: target,
        })
    }

    /// Initialises transactions when checkpointing: fences (and aborts the open transaction
    /// of) an earlier producer of the same job id, so only once the job knows its checkpoint
    /// is its own.
    pub fn init(&mut self) -> Result<(), KafkaOutError> {
        if let Some(t) = &mut self.checkpoint {
            // The state topic exists by now.
            let metadata = (self.producer.client())
                .fetch_metadata(Some(&t.target.state_topic), Duration::from_secs(30));
            t.state_single_partition =
                metadata.is_ok_and(|m| partitions_in(&m, &t.target.state_topic) == Some(1));
            retry("initialising transactions", || {
                self.producer.init_transactions(Duration::from_secs(30))
            })?;
        }
        Ok(())
    }

    /// Sends a record, polling for delivery reports while the local queue is full.
    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaOutError> {
        send_waiting(&self.producer, record, Duration::from_millis(50)).map_err(classify)
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
                    value: Some(d.reason.code()),
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

    /// Writes the batches, and with them in one transaction when checkpointing, the changed
    /// state entries (key, new payload or `None` to delete) and the checkpoint.
    pub(super) fn commit(
        &self,
        batches: &[Batch],
        entries: impl FnOnce(&mut SendEntry<'_>) -> Result<(), KafkaOutError>,
        checkpoint: &Checkpoint,
    ) -> Result<(), KafkaOutError> {
        let Some(CheckpointTopic {
            target,
            group,
            state_single_partition,
        }) = &self.checkpoint
        else {
            for batch in batches {
                self.send_batch(batch)?;
            }
            self.producer.poll(Duration::ZERO);
            return Ok(());
        };
        let started = Instant::now();
        retry("beginning a transaction", || {
            self.producer.begin_transaction()
        })?;
        // Where a commit's time goes (`RUST_LOG=dataflow::sink=debug`): producing its
        // records, adding the offsets, committing.
        let mut produced = started;
        let mut offsets_added = started;
        let result = (|| {
            for batch in batches {
                self.send_batch(batch)?;
            }
            entries(&mut |key, payload| {
                let mut record = BaseRecord::to(&target.state_topic).key(key);
                if let Some(p) = payload {
                    record = record.payload(p);
                }
                if *state_single_partition {
                    record = record.partition(0);
                }
                self.send(record)
            })?;
            let payload = serde_json::to_vec(checkpoint).expect("checkpoint serialises");
            self.send(
                BaseRecord::to(&target.topic)
                    .key(target.job_id.as_bytes())
                    .payload(&payload),
            )?;
            produced = Instant::now();
            offsets_added = produced;
            if !checkpoint.partitions.is_empty() {
                let mut offsets = TopicPartitionList::new();
                for (p, o) in checkpoint.offsets() {
                    offsets
                        .add_partition_offset(&target.source, p, Offset::Offset(o))
                        .map_err(classify)?;
                }
                retry("sending offsets to the transaction", || {
                    self.producer.send_offsets_to_transaction(
                        &offsets,
                        group,
                        Duration::from_secs(30),
                    )
                })?;
                offsets_added = Instant::now();
            }
            retry("committing a transaction", || {
                self.deliver_outstanding(Duration::from_secs(60));
                self.producer.commit_transaction(Duration::from_secs(60))
            })
        })();
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let done = Instant::now();
        debug!(
            epoch = ?checkpoint.epoch,
            produce_ms = ms(started, produced),
            offsets_ms = ms(produced, offsets_added),
            commit_ms = ms(offsets_added, done),
            "transaction"
        );
        if let Err(KafkaOutError::Aborted(reason)) = &result {
            warn!(reason = %reason, "aborting the transaction");
            let _ = self.producer.abort_transaction(Duration::from_secs(30));
        }
        result
    }

    /// Waits up to `limit` until every record sent is delivered, serving the producer's events
    /// every millisecond. `commit_transaction` flushes first as well, but its flush polls in
    /// steps of 100 ms that no event cuts short (only failed deliveries are reported), so every
    /// commit would wait 100 ms however soon its records were delivered. Whatever is still
    /// outstanding after `limit` is left to that flush and its errors.
    fn deliver_outstanding(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(1));
        }
    }

    /// Waits for every outstanding record (non-transactional mode) and reports failures.
    pub fn finish(&self) -> Result<(), KafkaOutError> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(classify)?;
        match self.producer.context().failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(KafkaOutError::Undelivered(n)),
        }
    }
}

/// Sorts a producer error into retry-later, abort-and-resume, or fatal.
fn classify(e: KafkaError) -> KafkaOutError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => KafkaOutError::Fatal(e),
        _ => KafkaOutError::Aborted(e),
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
