//! What a commit holds: the checkpoint record (positions, counted and dead-letter offsets,
//! the writer's small state), the identity of the job that wrote it, and the keys and binary
//! encoding of the state entries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
/// not tell a new record from a replayed one. Version 5: the state holds the products' names.
pub const FORMAT: u32 = 5;

/// A state entry's payload: [`Saved`] in postcard's binary encoding, about a fifth of its JSON.
/// (The writer appends to a reused buffer with [`encode_entry_into`]; tests use this.)
#[cfg(test)]
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
            names: BTreeMap::new(),
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
pub(super) const ALERT: &str = "alert:";

/// Identity of the writer's alert `key` among the entries.
pub fn alert_identity(key: &str) -> String {
    format!("{ALERT}{key}")
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
