//! Helpers shared by the integration tests: run the real `ingest` binary in a temp dir, find
//! the shared data files, make unique topic names, and read a topic back with a real consumer.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The broker the tests use (`scripts/kafka up` starts it on localhost:9092).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".into())
}

/// A topic name no other test or run uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "ingest-test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes test topics (best effort) so repeated runs do not fill the broker's disk; a test
/// calls it at its end, so a failing test leaves its topic to look at.
pub fn delete_topics(topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    if let Err(e) = futures_executor::block_on(admin.delete_topics(topics, &options)) {
        eprintln!("could not delete {topics:?}: {e}");
    }
}

/// A file of the shared test data (`RETAIL_DATA_DIR`, or `shared/data` beside the repo).
pub fn data_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("RETAIL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; set RETAIL_DATA_DIR to the folder with the test data",
        path.display()
    );
    path
}

/// The `ingest` command, run in `dir`, talking to the test broker.
pub fn ingest(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    command
        .current_dir(dir)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env("RUST_LOG", "warn")
        // Keep the test independent of the developer's environment.
        .env_remove("INGEST_TOPIC")
        .env_remove("INGEST_FILE")
        .env_remove("INGEST_GENERATE")
        .env_remove("INGEST_DRY_RUN")
        .env_remove("INGEST_RATE");
    command
}

/// Runs the command and returns its output, with stderr shown on failure of `expect_code`.
pub fn run(command: &mut Command, expect_code: i32) -> Output {
    let output = command.output().expect("run ingest");
    assert_eq!(
        output.status.code(),
        Some(expect_code),
        "{command:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The JSON summary: the last line of `text`.
pub fn summary(text: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no summary ({e}) in:\n{text}"))
}

/// One message read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: String,
}

fn consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique_topic("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Partition count of `topic`.
pub fn partitions(topic: &str) -> i32 {
    let metadata = consumer()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// (low, high) watermarks of each partition.
pub fn watermarks(topic: &str) -> Vec<(i64, i64)> {
    let consumer = consumer();
    (0..partitions(topic))
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

/// Every message of `topic`, read from the beginning up to the high watermarks, ordered by
/// (partition, offset).
pub fn read_topic(topic: &str) -> Vec<Record> {
    let marks = watermarks(topic);
    let consumer = consumer();
    let mut assignment = TopicPartitionList::new();
    let mut expected = 0;
    for (p, (low, high)) in marks.iter().enumerate() {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
        expected += high - low;
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::with_capacity(expected as usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while (records.len() as i64) < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} messages of {topic}",
            records.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            Some(Ok(message)) => {
                if message.offset() >= marks[message.partition() as usize].1 {
                    continue;
                }
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: String::from_utf8(message.key().expect("a key").to_vec()).unwrap(),
                    payload: String::from_utf8(message.payload().expect("a payload").to_vec())
                        .unwrap(),
                });
            }
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// The `invoice_no` of a JSON payload.
pub fn invoice_no(payload: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
    value["invoice_no"].as_str().expect("invoice_no").to_owned()
}
