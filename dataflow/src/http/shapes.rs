//! The shapes the page and the API serve besides the state: a commit's progress entry, in the
//! shape of Spark's `StreamingQueryProgress` (so tools that read Spark's progress read ours),
//! and this process's health. Serialised through `serde_json::Value`, whose maps sort their
//! keys: the JSON reads the same whatever the field order here.

use std::collections::BTreeMap;

use serde::Serialize;

/// A progress entry for one commit.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub id: String,
    pub run_id: String,
    pub name: &'static str,
    pub timestamp: String,
    pub batch_id: u64,
    /// The commit's last epoch, and all of them.
    pub epoch: String,
    pub epochs: Vec<String>,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    pub duration_ms: Durations,
    pub event_time: EventTime,
    pub state_operators: Vec<StateOperator>,
    pub sources: Vec<SourceProgress>,
    pub sink: Sink,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Durations {
    pub trigger_execution: u64,
}

#[derive(Debug, Serialize)]
pub struct EventTime {
    /// The earliest epoch any partition may still add to.
    pub watermark: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateOperator {
    pub operator_name: &'static str,
    pub num_rows_total: usize,
}

/// Offsets by topic, then by partition (as text, as Spark writes them).
pub type Offsets = BTreeMap<String, BTreeMap<String, i64>>;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceProgress {
    pub description: String,
    pub start_offset: Offsets,
    pub end_offset: Offsets,
    pub num_input_rows: u64,
    pub input_rows_per_second: f64,
    pub processed_rows_per_second: f64,
    pub metrics: SourceMetrics,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceMetrics {
    /// Per partition (as text), the lag last seen, when known.
    pub consumer_lag: BTreeMap<String, Option<i64>>,
    pub max_offsets_behind_latest: Option<i64>,
    pub avg_offsets_behind_latest: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Sink {
    pub description: &'static str,
}

/// This process's source as the writer saw it at the last commit, and that commit.
#[derive(Debug, Serialize)]
pub struct Health {
    pub records_read: u64,
    pub records_per_sec: f64,
    pub late_lines: u64,
    pub dead_letters: BTreeMap<&'static str, u64>,
    pub partitions: Vec<PartitionHealth>,
    pub last_epoch: Option<String>,
    pub last_commit_at: Option<String>,
    pub epochs_committed: u64,
}

#[derive(Debug, Serialize)]
pub struct PartitionHealth {
    pub partition: i32,
    pub read: u64,
    pub lag: Option<i64>,
    /// The partition's watermark as an epoch label.
    pub watermark: Option<String>,
}
