//! Checkpoints: what the job has committed, so that a restart neither repeats nor skips output
//! nor re-reads what it has already counted.
//!
//! Every commit of the writer is one Kafka transaction holding the closed epochs' aggregate
//! changes, their dead letters, and, in the compacted topic `--checkpoint-topic`:
//! - the checkpoint record, keyed by `--job-id`: the last committed epoch, the length of each
//!   JSON-lines file, where each source partition resumes (next offset and watermark state),
//!   the last committed dead letter of each partition, and the writer's small state (totals,
//!   countries, top products, counts);
//! - in the job's own compacted state topic `<checkpoint-topic>.<job-id>` (as Kafka Streams
//!   keeps a changelog topic per application), one entry per aggregate key whose state changed,
//!   keyed `<run>/<identity>`: the accumulated input of the arrangements for that key
//!   ([`Saved`], in postcard's binary encoding) and the writer's open alerts (JSON).
//!   Compaction keeps the newest value of each key, so the topic holds one record per
//!   distinct key, however many records were read.
//!
//! A resumed job feeds the entries back into the dataflow at the committed epoch, seeks every
//! partition to its checkpointed offset with the checkpointed watermark, and drops the records
//! it re-reads that belong to committed epochs (their effect is in the state). The positions
//! committed to the consumer group are the same offsets, so standard tools show the lag.
//! `<run>` changes when a job starts over: entries of older runs are deleted (tombstones) by
//! the first commit of the new one.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::warn;

use retail_common::kafka::{ClientSettings, KafkaSetupError, is_end_of_partition, is_undecodable};

use crate::aggregate::Saved;
use crate::epoch::PartitionClock;
use crate::state::State;

/// The record committed with each transaction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub job_id: String,
    /// This run of the job (set when it starts fresh or is reset); its entries carry it.
    pub run: u64,
    /// The last committed epoch; `None` when nothing is committed yet (a fresh or reset job).
    pub epoch: Option<u64>,
    /// Its start, for people reading the topic.
    pub epoch_start: String,
    /// Byte length of each JSON-lines file after the committed epochs.
    pub files: BTreeMap<String, u64>,
    /// Where each source partition resumes.
    pub partitions: BTreeMap<i32, Resume>,
    /// Per partition, the offset of the last record counted in a committed epoch: a resumed
    /// job drops the records at or before it that fall in committed epochs, and counts every
    /// record after it.
    pub counted_through: BTreeMap<i32, i64>,
    /// Per partition, the offset of the last committed dead letter.
    pub dead_through: BTreeMap<i32, i64>,
    /// The writer's state, except its alerts (those are entries).
    pub state: State,
    /// Commits so far (1 for the first).
    pub commits: u64,
    /// What the job was built from; `None` in checkpoints written before it was recorded.
    #[serde(default)]
    pub identity: Option<JobIdentity>,
}

/// Version of what a checkpoint holds; a checkpoint of another version is not resumed.
/// Version 3: state entries are postcard, no longer JSON. Version 4: the checkpoint records
/// how far each partition was counted (`counted_through`), without which a resumed job could
/// not tell a new record from a replayed one.
pub const FORMAT: u32 = 4;

/// A state entry's payload: [`Saved`] in postcard's binary encoding, about a fifth of its JSON.
pub fn encode_entry(entry: &Saved) -> Vec<u8> {
    encode_entry_into(entry, Vec::new())
}

/// [`encode_entry`], appended to `buffer`.
pub fn encode_entry_into(entry: &Saved, buffer: Vec<u8>) -> Vec<u8> {
    postcard::to_extend(entry, buffer).expect("state entries serialise")
}

/// The entry [`encode_entry`] wrote.
pub fn decode_entry(payload: &[u8]) -> Result<Saved, postcard::Error> {
    postcard::from_bytes(payload)
}

/// What a job is built from: its checkpoint is resumed only by a run built the same way, so a
/// reused `--job-id` can never carry one job's offsets and state into another.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIdentity {
    pub format: u32,
    pub topic: String,
    /// Partition count of the topic when the job last started; a topic may grow, never shrink.
    pub partitions: i32,
    pub epoch_secs: u64,
    /// Lateness as applied: rounded up to whole epochs.
    pub lateness_secs: u64,
    /// Absolute path of the output directory.
    pub output_dir: String,
    pub aggregates_topic: String,
    pub dlq_topic: String,
    pub alert_invoice_value_milli: i64,
    pub alert_quantity: i64,
    pub alert_cancellations: i64,
    /// `--invoice-retention` as applied (whole epochs, in seconds); `None`: off.
    #[serde(default)]
    pub invoice_retention_secs: Option<u64>,
}

impl JobIdentity {
    /// How a run built as `now` differs from the checkpoint's `self`, one line per difference.
    pub fn differences(&self, now: &JobIdentity) -> Vec<String> {
        let secs =
            |s: u64| humantime::format_duration(std::time::Duration::from_secs(s)).to_string();
        let money = |m: i64| retail_common::money::Milli(m).to_string();
        let compared = [
            (
                "checkpoint format",
                self.format.to_string(),
                now.format.to_string(),
            ),
            ("--topic", self.topic.clone(), now.topic.clone()),
            ("--epoch", secs(self.epoch_secs), secs(now.epoch_secs)),
            (
                "--lateness",
                secs(self.lateness_secs),
                secs(now.lateness_secs),
            ),
            (
                "--output-dir",
                self.output_dir.clone(),
                now.output_dir.clone(),
            ),
            (
                "--aggregates-topic",
                self.aggregates_topic.clone(),
                now.aggregates_topic.clone(),
            ),
            ("--dlq-topic", self.dlq_topic.clone(), now.dlq_topic.clone()),
            (
                "--alert-invoice-value",
                money(self.alert_invoice_value_milli),
                money(now.alert_invoice_value_milli),
            ),
            (
                "--alert-quantity",
                self.alert_quantity.to_string(),
                now.alert_quantity.to_string(),
            ),
            (
                "--alert-cancellations",
                self.alert_cancellations.to_string(),
                now.alert_cancellations.to_string(),
            ),
            (
                "--invoice-retention",
                self.invoice_retention_secs.map_or("off".into(), secs),
                now.invoice_retention_secs.map_or("off".into(), secs),
            ),
        ];
        let mut out: Vec<String> = compared
            .into_iter()
            .filter(|(_, then, now)| then != now)
            .map(|(what, then, now)| format!("{what}: checkpoint {then}, this run {now}"))
            .collect();
        if self.topic == now.topic && now.partitions < self.partitions {
            // Kafka partitions can be added, not removed: the topic was deleted and recreated.
            out.push(format!(
                "partitions of {}: checkpoint {}, now {} (the topic was recreated)",
                now.topic, self.partitions, now.partitions
            ));
        }
        out
    }
}

impl Checkpoint {
    /// Why this checkpoint may not be resumed by a run built as `now` (empty when it may).
    pub fn mismatch(&self, now: &JobIdentity) -> Vec<String> {
        match &self.identity {
            Some(identity) => identity.differences(now),
            None => vec![format!(
                "checkpoint format: checkpoint 0 (written before jobs were identified), this run {}",
                now.format
            )],
        }
    }
}

/// Where a partition resumes: every record before `offset` belongs to a committed epoch, and
/// `clock` is the partition's watermark state just before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub offset: i64,
    pub clock: PartitionClock,
}

impl Checkpoint {
    /// A dead letter of a closed epoch: once this checkpoint is committed, a resumed job does
    /// not send it again.
    pub fn dead_letter(&mut self, partition: i32, offset: i64) {
        raise(&mut self.dead_through, partition, offset);
    }

    /// A record of `partition` at `offset` counted in a closed epoch.
    pub fn counted(&mut self, partition: i32, offset: i64) {
        raise(&mut self.counted_through, partition, offset);
    }

    /// A partition's position in a closed epoch: every record before `offset` is in the
    /// committed epochs, so a resumed job starts the partition there with `clock`.
    pub fn position(&mut self, partition: i32, offset: i64, clock: PartitionClock) {
        let resume = self.partitions.entry(partition).or_default();
        if offset >= resume.offset {
            *resume = Resume { offset, clock };
        }
    }

    /// Seals the next commit, which holds the closed epochs up to `epoch` (starting at
    /// `label`): the JSON-lines files' lengths after them and the writer's state (its alerts
    /// are state entries of their own).
    pub fn seal(&mut self, epoch: u64, label: String, files: BTreeMap<String, u64>, state: &State) {
        self.epoch = Some(epoch);
        self.epoch_start = label;
        self.files = files;
        self.state = State {
            totals: state.totals,
            by_country: state.by_country.clone(),
            top_products: state.top_products.clone(),
            epochs: state.epochs,
            alerts: BTreeMap::new(),
            dead_letters: state.dead_letters.clone(),
        };
        self.commits += 1;
    }

    /// The offsets to commit to the consumer group.
    pub fn offsets(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().map(|(p, r)| (*p, r.offset))
    }
}

/// Raises `partition`'s offset in `through` to `offset` (offsets only move forward).
fn raise(through: &mut BTreeMap<i32, i64>, partition: i32, offset: i64) {
    let at = through.entry(partition).or_insert(offset);
    *at = (*at).max(offset);
}

/// The compacted topic that holds the state entries of `job_id`.
pub fn state_topic(checkpoint_topic: &str, job_id: &str) -> String {
    format!("{checkpoint_topic}.{job_id}")
}

/// Key of an entry of run `run`.
pub fn entry_key(run: u64, identity: &str) -> String {
    format!("{run}/{identity}")
}

/// What the identity of an alert entry starts with; the rest is the alert's key.
const ALERT: &str = "alert:";

/// Identity of the writer's alert `key` among the entries.
pub fn alert_identity(key: &str) -> String {
    format!("{ALERT}{key}")
}

/// What a resumed job starts from.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub checkpoint: Checkpoint,
    /// The aggregate state, fed into the dataflow at the committed epoch.
    pub saved: Vec<Saved>,
}

/// What the checkpoint topic holds for a job.
#[derive(Debug, Default)]
pub struct Stored {
    /// The latest checkpoint record, as stored.
    pub checkpoint: Option<Vec<u8>>,
    /// The job's entries (of every run): key and payload.
    pub entries: BTreeMap<String, Vec<u8>>,
}

/// A checkpoint that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("{what} is unreadable ({source}); start over with --reset or use another --job-id")]
    Corrupt {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Stored {
    /// Splits the entries into the state of the checkpoint's run and the keys of other runs
    /// (to delete). With `reset`, or without a checkpoint, every entry is stale.
    pub fn restore(self, reset: bool) -> Result<(Option<Restored>, Vec<String>), CheckpointError> {
        // Read only when resuming: a reset job starts over even from an unreadable checkpoint.
        let checkpoint = match self.checkpoint {
            Some(bytes) if !reset => Some(serde_json::from_slice::<Checkpoint>(&bytes).map_err(
                |source| CheckpointError::Corrupt {
                    what: "the job's checkpoint record".into(),
                    source: source.into(),
                },
            )?),
            _ => None,
        };
        // Entries of a checkpoint in another format are not decoded: the job refuses to resume
        // it and says why (`mismatch`).
        let prefix = checkpoint
            .as_ref()
            .filter(|c| c.identity.as_ref().is_some_and(|i| i.format == FORMAT))
            .map(|c| entry_key(c.run, ""));
        let mut stale = Vec::new();
        let mut saved = Vec::new();
        let mut alerts = BTreeMap::new();
        for (key, payload) in self.entries {
            let Some(identity) = prefix.as_deref().and_then(|p| key.strip_prefix(p)) else {
                stale.push(key);
                continue;
            };
            let corrupt =
                |source: Box<dyn std::error::Error + Send + Sync>| CheckpointError::Corrupt {
                    what: format!("checkpoint entry {key}"),
                    source,
                };
            if let Some(alert) = identity.strip_prefix(ALERT) {
                let value: Value =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(e.into()))?;
                alerts.insert(alert.to_owned(), value);
            } else {
                saved.push(decode_entry(&payload).map_err(|e| corrupt(e.into()))?);
            }
        }
        let restored = checkpoint.map(|mut checkpoint| {
            checkpoint.state.alerts = alerts;
            Restored { checkpoint, saved }
        });
        Ok((restored, stale))
    }
}

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

/// Reaching the end of a partition is how a scan ends, not an error to log.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_end_of_partition(&error) {
            warn!(%error, reason, "Kafka client error while reading checkpoints");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Reads every committed keyed record of `topic` (if it exists) in order.
fn scan(
    settings: &ClientSettings,
    topic: &str,
    timeout: Duration,
    mut each: impl FnMut(&[u8], Option<&[u8]>),
) -> Result<(), KafkaSetupError> {
    let consumer: BaseConsumer<ReaderContext> = settings
        .config(&[
            ("group.id", "retail-stream-checkpoint-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("isolation.level", "read_committed"),
            // The end of a partition is found by an empty fetch, which the broker would
            // otherwise hold for the default 500 ms: at every start, for every topic read.
            ("fetch.wait.max.ms", "10"),
            // A full local queue otherwise pauses fetching for a second, while reading the
            // queue empties it in a fraction of that: a restart after 10M records read its
            // state in 34 s instead of 9.
            ("fetch.queue.backoff.ms", "5"),
        ])
        .create_with_context(ReaderContext)
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
            partitions: [(
                3,
                Resume {
                    offset: 9,
                    clock: PartitionClock::default(),
                },
            )]
            .into(),
            dead_through: [(0, 4)].into(),
            commits: 3,
            ..Checkpoint::default()
        };
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).unwrap(), c);
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;
    use crate::aggregate::{DistinctKey, Text};

    #[test]
    fn entries_of_the_checkpointed_run_restore_and_others_are_stale() {
        let checkpoint = Checkpoint {
            job_id: "j".into(),
            run: 7,
            epoch: Some(3),
            identity: Some(JobIdentity {
                format: FORMAT,
                ..JobIdentity::default()
            }),
            ..Checkpoint::default()
        };
        let seen = Saved::Seen(DistinctKey::Customer(Text::from("12346")));
        let entries = [
            (entry_key(7, &seen.identity()), encode_entry(&seen)),
            (
                entry_key(7, &alert_identity("large_invoice/1")),
                br#"{"rule":"large_invoice"}"#.to_vec(),
            ),
            (entry_key(6, "seen:x"), b"{}".to_vec()),
        ];
        let stored = || Stored {
            checkpoint: Some(serde_json::to_vec(&checkpoint).unwrap()),
            entries: entries.iter().cloned().collect(),
        };
        let (restored, stale) = stored().restore(false).unwrap();
        let restored = restored.unwrap();
        assert_eq!(restored.saved, [seen]);
        assert_eq!(
            restored.checkpoint.state.alerts["large_invoice/1"]["rule"],
            "large_invoice"
        );
        assert_eq!(stale, [entry_key(6, "seen:x")]);
        let (restored, stale) = stored().restore(true).unwrap();
        assert!(restored.is_none());
        assert_eq!(stale.len(), 3);
        // An unreadable checkpoint is an error, unless the job starts over.
        let old = Stored {
            checkpoint: Some(br#"{"job_id":"j","offsets":{}}"#.to_vec()),
            entries: BTreeMap::new(),
        };
        assert!(matches!(
            old.restore(false),
            Err(CheckpointError::Corrupt { .. })
        ));
        let old = Stored {
            checkpoint: Some(b"{}".to_vec()),
            entries: BTreeMap::new(),
        };
        assert!(old.restore(true).unwrap().0.is_none());
        let mut bad = stored();
        bad.entries.insert(entry_key(7, "seen:y"), vec![0x7f]);
        assert!(matches!(
            bad.restore(false),
            Err(CheckpointError::Corrupt { .. })
        ));
        // Entries of a checkpoint in an older format are left undecoded: the job then refuses
        // the checkpoint for its format, not for an unreadable entry.
        let mut older = checkpoint.clone();
        older.identity = Some(JobIdentity {
            format: FORMAT - 1,
            ..JobIdentity::default()
        });
        let mut old = stored();
        old.checkpoint = Some(serde_json::to_vec(&older).unwrap());
        old.entries.insert(
            entry_key(7, "seen:y"),
            br#"{"Seen":{"Customer":"1"}}"#.to_vec(),
        );
        let (restored, _) = old.restore(false).unwrap();
        let restored = restored.unwrap();
        assert!(restored.saved.is_empty());
        let now = JobIdentity {
            format: FORMAT,
            ..JobIdentity::default()
        };
        assert!(restored.checkpoint.mismatch(&now)[0].starts_with("checkpoint format"));
    }
}
