//! The test broker (`scripts/kafka up`): its address, fresh names, topics made, read back and
//! deleted, and what `scripts/kafka` keeps on disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use retail_common::kafka::ClientSettings;

use crate::places::{binary, workspace_root};
use crate::process::run_ok;

/// The broker the tests use: `KAFKA_BOOTSTRAP_SERVERS`, else the one `scripts/kafka up`
/// starts on localhost:9092.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".into())
}

/// A name no other test or run uses (topics, consumer groups, job ids, folders).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates `topic` with `partitions` partitions and the topic `config` (or finds it as it is);
/// returns its partition count.
pub fn create_topic(topic: &str, partitions: i32, config: &[(&str, &str)]) -> i32 {
    ClientSettings::new(bootstrap())
        .ensure_topic(topic, partitions, config, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"))
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

/// Deletes `topic` and every topic a test's jobs over it made: names starting with `topic`
/// (job ids are `<topic>-<run>`, so their dead-letter and aggregates topics) and the state
/// topics `retail-aggregates.checkpoints.<topic>...`. Checkpoint records keyed by those jobs
/// stay in the shared checkpoint topic; compaction keeps one per job.
pub fn delete_topics_of(topic: &str) {
    let state = format!("retail-aggregates.checkpoints.{topic}");
    let made: Vec<String> = topic_names()
        .into_iter()
        .filter(|t| t.starts_with(topic) || t.starts_with(&state))
        .collect();
    let names: Vec<&str> = made.iter().map(String::as_str).collect();
    if !names.is_empty() {
        delete_topics(&names);
    }
}

/// A consumer of its own group that commits nothing and reports the end of each partition.
fn consumer(read_committed: bool) -> BaseConsumer {
    let isolation = if read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer")
}

/// The partition count of `topic`, which must exist.
pub fn partitions(topic: &str) -> i32 {
    let metadata = consumer(true)
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} does not exist");
    partitions
}

/// The names of every topic on the broker.
pub fn topic_names() -> BTreeSet<String> {
    let metadata = consumer(true)
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect()
}

/// The settings of `topic` the broker reports (its own and the broker's defaults), by name.
pub fn topic_config(topic: &str) -> std::collections::BTreeMap<String, String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let resource = ResourceSpecifier::Topic(topic);
    let described = futures_executor::block_on(admin.describe_configs([&resource], &options))
        .unwrap_or_else(|e| panic!("describe {topic}: {e}"));
    let config = described.into_iter().next().expect("one resource");
    let config = config.unwrap_or_else(|e| panic!("describe {topic}: {e}"));
    (config.entries.into_iter())
        .filter_map(|e| Some((e.name, e.value?)))
        .collect()
}

/// The (low, high) watermarks of each partition of `topic`.
pub fn watermarks(topic: &str) -> Vec<(i64, i64)> {
    let consumer = consumer(true);
    (0..partitions(topic))
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

/// Every message of `topic`: all partitions, from the beginning to their current end (with
/// `read_committed`, the last stable offset: committed transactions only), ordered by
/// (partition, offset).
pub fn read_topic(topic: &str, read_committed: bool) -> Vec<OwnedMessage> {
    let partitions = partitions(topic);
    let consumer = consumer(read_committed);
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end = BTreeSet::new();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "reading {topic} timed out after {} messages",
            messages.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                messages.push(m.detach());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    messages
}

/// `scripts/kafka`, the broker's own script.
pub fn scripts_kafka() -> PathBuf {
    workspace_root().join("scripts/kafka")
}

/// Runs `scripts/kafka <args>` (`up`, `down`, `topics --alter ...`), which must succeed.
pub fn kafka_script(args: &[&str]) {
    run_ok(Command::new(scripts_kafka()).args(args));
}

/// A path `scripts/kafka` uses: `var` when set (as `scripts/test` sets it), else `fallback`
/// (its own variable), else `default` under the repository's `.cache/kafka` (or
/// `KAFKA_CACHE_DIR`).
fn kafka_path(var: &str, fallback: &str, default: &str) -> PathBuf {
    let cache = || {
        std::env::var_os("KAFKA_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".cache/kafka"))
    };
    let path = std::env::var_os(var)
        .or_else(|| std::env::var_os(fallback))
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join(default));
    std::path::absolute(path).unwrap()
}

/// The broker's log.dirs (`RETAIL_KAFKA_DATA_DIR`, else `KAFKA_DATA_DIR`, else
/// `.cache/kafka/data`): segment files are at `<dir>/<topic>-<partition>/*.log`.
pub fn kafka_data_dir() -> PathBuf {
    let dir = kafka_path("RETAIL_KAFKA_DATA_DIR", "KAFKA_DATA_DIR", "data");
    assert!(
        dir.is_dir(),
        "the broker's data directory {} is missing: these tests need the local broker of \
         scripts/kafka (run them with scripts/test, or set RETAIL_KAFKA_DATA_DIR)",
        dir.display()
    );
    dir
}

/// The client properties file `scripts/kafka up` writes for a secured listener (`sasl_ssl` or
/// `ssl`): `RETAIL_SASL_SSL_PROPERTIES` / `RETAIL_SSL_PROPERTIES`, else
/// `.cache/kafka/client-<listener>.properties`. Missing, the test fails: a skipped secured
/// test would look like a passed one.
pub fn secured_properties(listener: &str) -> PathBuf {
    let var = format!("RETAIL_{}_PROPERTIES", listener.to_ascii_uppercase());
    let path = kafka_path(&var, &var, &format!("client-{listener}.properties"));
    assert!(
        path.is_file(),
        "{} is missing ({var}): start the broker with its secured listeners, \
         `KAFKA_SECURITY=sasl_ssl,ssl scripts/kafka up` (scripts/test does; a broker already \
         running without them needs `scripts/kafka down` first)",
        path.display()
    );
    path
}

/// The Kafka jars `scripts/kafka` runs the broker from (`<cache>/<version>/libs`), as a
/// Java class path.
pub fn kafka_classpath() -> String {
    let cache = kafka_path("RETAIL_KAFKA_CACHE_DIR", "KAFKA_CACHE_DIR", "");
    let version = std::env::var("KAFKA_VERSION").ok();
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("{}: {e} (the cache of scripts/kafka)", cache.display()))
        .map(|e| e.unwrap().path().join("libs"))
        .filter(|p| p.is_dir())
        .filter(|p| {
            version
                .as_ref()
                .is_none_or(|v| p.parent().unwrap().ends_with(v))
        })
        .collect();
    libs.sort();
    let libs = libs
        .pop()
        .unwrap_or_else(|| panic!("no Kafka jars under {}/<version>/libs", cache.display()));
    format!("{}/*", libs.display())
}

/// The real `ingest` publishing to `topic` on the test broker, run in `dir` (its rejects file
/// goes there), quiet but for warnings; the caller adds the input and `--partitions`.
pub fn ingest_to(topic: &str, dir: &Path) -> Command {
    let mut command = Command::new(binary("ingest"));
    command
        .args(["--topic", topic, "-b", &bootstrap()])
        .arg("--rejects")
        .arg(dir.join("rejects.csv"))
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// Publishes a CSV file or generated sales (`args`) to `topic`, created with 8 partitions,
/// with the real `ingest`; it must succeed.
pub fn publish(topic: &str, args: &[&str], dir: &Path) {
    run_ok(ingest_to(topic, dir).args(["--partitions", "8"]).args(args));
}
