//! Where records go: a Kafka topic through an idempotent rdkafka [`BaseProducer`], or JSON
//! lines on stdout or in a file (`--dry-run`, `--output`).
//!
//! Kafka: the producer is keyed by InvoiceNo and uses librdkafka's `murmur2_random`
//! partitioner, the Java client's, so an invoice lands where a Java producer would put it and
//! its lines keep their order (idempotence keeps it across retries). Payloads are borrowed
//! (librdkafka copies them), delivery reports are counted by [`DeliveryCounter`], the producer
//! is polled every few sends, and a full queue is polled until the same record fits (as
//! rust-rdkafka's `BaseProducer` documentation prescribes). [`Sink::finish`] returns only when
//! every message has been acknowledged or has failed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use retail_common::kafka::{DeliveryCounter, send_waiting};

use crate::cli::{Compression, SinkConfig};
use crate::error::IngestError;

/// How long to wait for the cluster's metadata when checking or creating the topic.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The producer settings ingest needs; `-X` pairs are applied after these and win.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("client.id", "retail-ingest"),
    // No duplicates and no reordering on retries; acks=all is implied but stated.
    ("enable.idempotence", "true"),
    ("acks", "all"),
    // The Java client's partitioner (murmur2 of the key), so placement matches Java producers.
    ("partitioner", "murmur2_random"),
    // Batches fill in 10 ms at full speed and add little latency with --rate.
    ("linger.ms", "10"),
    // A large queue so reading rarely waits on the network; bounded, so memory stays flat.
    ("queue.buffering.max.messages", "500000"),
    ("queue.buffering.max.kbytes", "262144"),
];

/// How long one poll waits while the producer queue is full or while flushing.
const POLL_WAIT: Duration = Duration::from_millis(5);
/// Serve delivery reports after this many sends. One report event covers a whole batch, so
/// this keeps up, and it spares the clock reads a poll costs (2% of the time when polling
/// after every send).
const POLL_EVERY: u64 = 64;

/// What a sink did, once it is finished.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages acknowledged by Kafka, or lines written.
    pub published: u64,
    /// Payload bytes of those.
    pub bytes: u64,
    /// Messages that could not be delivered.
    pub failed: u64,
    /// The first delivery error.
    pub first_error: Option<String>,
}

/// A Kafka topic behind an idempotent producer.
pub struct KafkaSink {
    producer: BaseProducer<DeliveryCounter>,
    topic: String,
    /// Messages handed to the producer, to poll every [`POLL_EVERY`].
    sent: u64,
}

impl KafkaSink {
    /// Checks the broker, creates the topic if it is missing, and makes the producer.
    pub fn open(
        client: &retail_common::kafka::ClientSettings,
        compression: Compression,
        topic: &str,
        partitions: i32,
    ) -> Result<KafkaSink, IngestError> {
        let count = client.ensure_topic(topic, partitions, &[], METADATA_TIMEOUT)?;
        tracing::info!(
            bootstrap = %client.bootstrap,
            topic,
            partitions = count,
            "connected to Kafka"
        );
        let mut settings = PRODUCER_DEFAULTS.to_vec();
        settings.push(("compression.type", compression.name()));
        let producer = client
            .config(&settings)
            .create_with_context(DeliveryCounter::new(
                "a message was not delivered; stopping",
                true,
            ))
            .map_err(|source| IngestError::Producer {
                bootstrap: client.bootstrap.clone(),
                source,
            })?;
        Ok(KafkaSink {
            producer,
            topic: topic.to_owned(),
            sent: 0,
        })
    }

    fn send(&mut self, key: &str, payload: &[u8]) {
        let record = BaseRecord::to(&self.topic).key(key).payload(payload);
        // Refused outright (too large, unknown partition...): a failed delivery.
        if let Err(error) = send_waiting(&self.producer, record, POLL_WAIT) {
            self.counter().fail(format!("{error} (key {key})"));
        }
        self.sent += 1;
        if self.sent.is_multiple_of(POLL_EVERY) {
            self.producer.poll(Duration::ZERO);
        }
    }

    fn counter(&self) -> &DeliveryCounter {
        self.producer.context()
    }

    /// Polls until every message is acknowledged or failed (librdkafka gives up on a message
    /// after `message.timeout.ms`, so this ends).
    fn flush(&self) {
        let started = Instant::now();
        let mut next_log = started + Duration::from_secs(5);
        loop {
            let in_flight = self.producer.in_flight_count();
            if in_flight == 0 {
                break;
            }
            if Instant::now() >= next_log {
                tracing::info!(in_flight, "waiting for acknowledgements");
                next_log += Duration::from_secs(5);
            }
            self.producer.poll(POLL_WAIT);
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "flushed");
    }
}

/// JSON lines on stdout or in a file.
pub struct LineSink {
    out: BufWriter<Box<dyn Write>>,
    /// How the target is named in errors.
    target: String,
    written: u64,
    bytes: u64,
}

impl LineSink {
    fn send(&mut self, payload: &[u8]) -> Result<(), IngestError> {
        self.out
            .write_all(payload)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| IngestError::output(&self.target, e))?;
        self.written += 1;
        self.bytes += payload.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), IngestError> {
        self.out
            .flush()
            .map_err(|e| IngestError::output(&self.target, e))
    }
}

/// The destination of the records.
pub enum Sink {
    Kafka(KafkaSink),
    Lines(LineSink),
}

impl Sink {
    /// Opens the destination: for Kafka, reaches the broker and makes sure the topic exists.
    pub fn open(config: &SinkConfig) -> Result<Sink, IngestError> {
        let lines = |out: Box<dyn Write>, target: String| {
            Sink::Lines(LineSink {
                out: BufWriter::with_capacity(1 << 16, out),
                target,
                written: 0,
                bytes: 0,
            })
        };
        Ok(match config {
            SinkConfig::Kafka {
                client,
                compression,
                topic,
                partitions,
            } => Sink::Kafka(KafkaSink::open(client, *compression, topic, *partitions)?),
            SinkConfig::Stdout => lines(Box::new(io::stdout()), "stdout".into()),
            SinkConfig::File(path) => {
                let file = File::create(path).map_err(|source| IngestError::Output {
                    target: path.display().to_string(),
                    source,
                })?;
                lines(Box::new(file), path.display().to_string())
            }
        })
    }

    /// Sends one record keyed by `key`. A Kafka delivery failure is not an error here: it is
    /// counted, and [`Sink::has_failed`] turns true.
    pub fn send(&mut self, key: &str, payload: &[u8]) -> Result<(), IngestError> {
        match self {
            Sink::Kafka(kafka) => {
                kafka.send(key, payload);
                Ok(())
            }
            Sink::Lines(lines) => lines.send(payload),
        }
    }

    /// Waits for `duration` (pacing), serving delivery reports meanwhile, and returning early
    /// when `shutdown` is set.
    pub fn wait(&mut self, duration: Duration, shutdown: &AtomicBool) -> Result<(), IngestError> {
        let deadline = Instant::now() + duration;
        if let Sink::Lines(lines) = self {
            // Whoever reads the lines should see them as they are paced, not per 64 KiB.
            lines.flush()?;
        }
        loop {
            let now = Instant::now();
            if now >= deadline || shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            match self {
                // The producer's poll counts whole milliseconds: a shorter rest is slept, not
                // spun on with polls that return at once.
                Sink::Kafka(kafka) if step >= Duration::from_millis(1) => {
                    kafka.producer.poll(step);
                }
                _ => std::thread::sleep(step),
            }
        }
    }

    /// True once a message could not be delivered.
    pub fn has_failed(&self) -> bool {
        match self {
            Sink::Kafka(kafka) => kafka.counter().failed.load(Ordering::Relaxed) > 0,
            Sink::Lines(_) => false,
        }
    }

    /// Records acknowledged (Kafka) or written so far.
    pub fn published(&self) -> u64 {
        match self {
            Sink::Kafka(kafka) => kafka.counter().delivered.load(Ordering::Relaxed),
            Sink::Lines(lines) => lines.written,
        }
    }

    /// Records that could not be delivered so far.
    pub fn failed(&self) -> u64 {
        match self {
            Sink::Kafka(kafka) => kafka.counter().failed.load(Ordering::Relaxed),
            Sink::Lines(_) => 0,
        }
    }

    /// Records sent and not yet acknowledged.
    pub fn in_flight(&self) -> i64 {
        match self {
            Sink::Kafka(kafka) => i64::from(kafka.producer.in_flight_count()),
            Sink::Lines(_) => 0,
        }
    }

    /// The topic, for the summary.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Sink::Kafka(kafka) => Some(&kafka.topic),
            Sink::Lines(_) => None,
        }
    }

    /// Waits until everything sent is acknowledged (or written) and reports the outcome.
    pub fn finish(self) -> Result<Outcome, IngestError> {
        match self {
            Sink::Kafka(kafka) => {
                kafka.flush();
                let counter = kafka.counter();
                Ok(Outcome {
                    published: counter.delivered.load(Ordering::Relaxed),
                    bytes: counter.bytes.load(Ordering::Relaxed),
                    failed: counter.failed.load(Ordering::Relaxed),
                    first_error: counter.first_error.get().cloned(),
                })
            }
            Sink::Lines(mut lines) => {
                lines.flush()?;
                Ok(Outcome {
                    published: lines.written,
                    bytes: lines.bytes,
                    failed: 0,
                    first_error: None,
                })
            }
        }
    }
}
