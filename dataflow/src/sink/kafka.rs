//! The Kafka sink: aggregate changes to `retail-aggregates` (keyed `<stream>/<key>`), dead
//! letters to `<topic>.dlq` with their original key and bytes and the reason in headers.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use tracing::error;

use retail_common::kafka::ClientSettings;

use super::{Batch, Sink, State};

/// Some records could not be delivered (after librdkafka's own retries).
#[derive(Debug, thiserror::Error)]
#[error("{0} Kafka output records were not delivered")]
pub struct Undelivered(pub u64);

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

pub struct KafkaSink {
    producer: BaseProducer<DeliveryCounter>,
    aggregates_topic: String,
    dlq_topic: String,
    source_topic: String,
    /// Partitions of the DLQ topic: a dead letter keeps its source partition when it exists.
    dlq_partitions: i32,
    pub failed: Arc<AtomicU64>,
}

impl KafkaSink {
    pub fn create(
        settings: &ClientSettings,
        aggregates_topic: String,
        source_topic: String,
        dlq_topic: String,
        dlq_partitions: i32,
    ) -> Result<KafkaSink, KafkaError> {
        let context = DeliveryCounter::default();
        let failed = Arc::clone(&context.failed);
        let producer = settings
            .config(&[
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("linger.ms", "5"),
            ])
            .create_with_context(context)?;
        Ok(KafkaSink {
            producer,
            aggregates_topic,
            dlq_topic,
            source_topic,
            dlq_partitions,
            failed,
        })
    }

    /// Sends a record, polling for delivery reports while the local queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> io::Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(io::Error::other(e)),
            }
        }
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, batch: &Batch, _state: &State) -> io::Result<()> {
        for change in &batch.changes {
            let key = format!("{}/{}", change.stream, change.key);
            self.send(
                BaseRecord::to(&self.aggregates_topic)
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
                    value: Some(self.source_topic.as_str()),
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
            let mut record = BaseRecord::to(&self.dlq_topic)
                .payload(d.payload.as_slice())
                .headers(headers);
            if let Some(key) = &d.key {
                record = record.key(key.as_slice());
            }
            if d.partition < self.dlq_partitions {
                record = record.partition(d.partition);
            }
            self.send(record)?;
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn finish(&mut self, _state: &State) -> io::Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(io::Error::other)?;
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            return Err(io::Error::other(Undelivered(failed)));
        }
        Ok(())
    }
}
