//! What only `ingest`'s integration tests need, on top of the workspace's test kit: the
//! `ingest` command with a clean environment, its JSON summary, and messages read back as text.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::Path;
use std::process::Command;

use rdkafka::Message;
pub use retail_testkit::*;

/// The `ingest` command, run in `dir`, talking to the test broker.
pub fn ingest(dir: &Path) -> Command {
    let mut command = Command::new(binary("ingest"));
    command
        .current_dir(dir)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap())
        .env("RUST_LOG", "warn")
        // Keep the test independent of the developer's environment.
        .env_remove("INGEST_TOPIC")
        .env_remove("INGEST_FILE")
        .env_remove("INGEST_GENERATE")
        .env_remove("INGEST_DRY_RUN")
        .env_remove("INGEST_RATE")
        .env_remove("INGEST_REJECTS");
    command
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

/// Every message of `topic`, each with a key and a payload, ordered by (partition, offset).
pub fn read_records(topic: &str) -> Vec<Record> {
    read_topic(topic, true)
        .iter()
        .map(|message| Record {
            partition: message.partition(),
            offset: message.offset(),
            key: String::from_utf8(message.key().expect("a key").to_vec()).unwrap(),
            payload: String::from_utf8(message.payload().expect("a payload").to_vec()).unwrap(),
        })
        .collect()
}

/// The `invoice_no` of a JSON payload.
pub fn invoice_no(payload: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(payload).expect("JSON payload");
    value["invoice_no"].as_str().expect("invoice_no").to_owned()
}
