//! The client pieces that ingest and the dataflow's sources, checkpoint reader and sinks share:
//! a context for readers that read partitions to their end, the settings every such reader
//! uses, a producer context that counts deliveries, and the send that waits out a full queue.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use super::{ClientSettings, is_end_of_partition};

/// Logs a client error at WARN as `what`, unless it is the end of a partition: readers with
/// `enable.partition.eof` stop there, which is no error.
pub fn warn_client_error(error: &KafkaError, reason: &str, what: &str) {
    if !is_end_of_partition(error) {
        tracing::warn!(%error, reason, "{what}");
    }
}

/// The context of a consumer that reads partitions to their end (see [`warn_client_error`]);
/// `what` names its client errors in the log.
pub struct ReadToEnd {
    pub what: &'static str,
}

impl ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        warn_client_error(&error, reason, self.what);
    }
}

impl ConsumerContext for ReadToEnd {}

/// What every consumer of the project sets: it commits its positions itself (with its
/// transactions, or not at all), stops at the end of a partition, reads committed records only,
/// and refills a partition's queue 5 ms after it was full (librdkafka's default of a second
/// left readers idle while they emptied the queue in a fraction of that).
const READER: [(&str, &str); 4] = [
    ("enable.auto.commit", "false"),
    ("enable.partition.eof", "true"),
    ("isolation.level", "read_committed"),
    ("fetch.queue.backoff.ms", "5"),
];

impl ClientSettings {
    /// A consumer config: the bootstrap address, the shared reader settings, then `defaults`, then the
    /// user's `-X`.
    pub fn reader_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut all: Vec<(&str, &str)> = READER.to_vec();
        all.extend_from_slice(defaults);
        self.config(&all)
    }
}

/// Counts delivery reports (librdkafka calls it from [`BaseProducer::poll`]) and logs the
/// first failure at ERROR as `what`, with the message's place when `detailed`.
pub struct DeliveryCounter {
    pub delivered: AtomicU64,
    /// Payload bytes of the delivered messages.
    pub bytes: AtomicU64,
    pub failed: AtomicU64,
    /// The first failure, for the error message.
    pub first_error: OnceLock<String>,
    what: &'static str,
    detailed: bool,
}

impl DeliveryCounter {
    /// A counter that logs the first failure as `what`; `detailed` adds the topic, partition
    /// and key of the message to it.
    pub fn new(what: &'static str, detailed: bool) -> DeliveryCounter {
        DeliveryCounter {
            delivered: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: OnceLock::new(),
            what,
            detailed,
        }
    }

    /// Counts a failed message; the first failure is logged and kept.
    pub fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error.get_or_init(|| {
            tracing::error!(%error, "{}", self.what);
            error
        });
    }
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        // Transport errors are retried by librdkafka; a fatal one fails the messages, which
        // the delivery reports then count.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(%error, reason, "fatal Kafka producer error");
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
        }
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.bytes
                    .fetch_add(message.payload_len() as u64, Ordering::Relaxed);
            }
            Err((error, message)) if self.detailed => self.fail(format!(
                "{error} (topic {}, partition {}, key {})",
                message.topic(),
                message.partition(),
                String::from_utf8_lossy(message.key().unwrap_or_default())
            )),
            Err((error, _)) => self.fail(error.to_string()),
        }
    }
}

/// Sends `record`; while the producer's local queue is full, polls it for `wait` (serving
/// delivery reports, which make room) and tries the same record again, as rust-rdkafka's
/// `BaseProducer` documentation prescribes. Any other error is returned.
pub fn send_waiting<'a, C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    wait: Duration,
) -> Result<(), KafkaError>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(wait);
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}
