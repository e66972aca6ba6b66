//! What one commit makes visible: the writer renders an [`Update`] per commit (one
//! [`EpochView`] per closed epoch, from the same state and with the same shaping as
//! `summary.json`) and the hub shows it once the commit is confirmed.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use crate::checkpoint::Resume;
use crate::sink::{Batch, OutputStream};
use crate::state::State;

/// One closed epoch as committed: its row and the state after it.
#[derive(Clone, Debug)]
pub struct EpochView {
    pub epoch: u64,
    pub label: String,
    /// The epoch's row as `epochs.jsonl` last holds it (`{"epoch": label, ...value}`).
    pub row: Option<Value>,
    /// The state after the epoch, shaped like `summary.json` plus `epoch`.
    pub state: Value,
    /// Alerts the epoch opened, with their rule.
    pub alerts: Vec<Value>,
    /// Lines and dead letters of the epoch: the records it took in.
    pub input_rows: u64,
    /// State entries the writer holds after the epoch.
    pub state_entries: usize,
}

/// What one commit makes visible.
#[derive(Clone, Debug)]
pub struct Update {
    pub epochs: Vec<EpochView>,
    /// Each partition's next offset and watermark state after the commit.
    pub positions: BTreeMap<i32, Resume>,
    /// The alerts open after the commit, each with its `key` (built once per commit: they
    /// can be many).
    pub open_alerts: Value,
    /// When the writer began rendering the commit.
    pub started: Instant,
}

impl Update {
    /// An empty update begun now.
    pub fn begin() -> Update {
        Update {
            epochs: Vec::new(),
            positions: BTreeMap::new(),
            open_alerts: Value::Null,
            started: Instant::now(),
        }
    }

    /// Adds a rendered epoch and the writer's state after it.
    pub fn add(&mut self, batch: &Batch, state: &State) {
        let mut row = None;
        let mut alerts = Vec::new();
        for change in &batch.changes {
            if change.stream != OutputStream::Epochs && change.stream != OutputStream::Alerts {
                continue;
            }
            let Ok(line) = serde_json::from_str::<Value>(&change.line) else {
                continue;
            };
            if change.stream == OutputStream::Epochs && change.key == batch.label {
                row = line.get("value").filter(|v| !v.is_null()).map(|v| {
                    let mut v = v.clone();
                    v["epoch"] = Value::from(batch.label.clone());
                    v
                });
            } else if change.stream == OutputStream::Alerts && line["diff"].as_i64() == Some(1) {
                let mut alert = line["alert"].clone();
                alert["key"] = line["key"].clone();
                alert["opened_in"] = Value::from(batch.label.clone());
                alerts.push(alert);
            }
        }
        let lines = row.as_ref().and_then(|r| r["lines"].as_u64()).unwrap_or(0);
        self.epochs.push(EpochView {
            epoch: batch.epoch,
            label: batch.label.clone(),
            row,
            state: state_json(state, &batch.label),
            alerts,
            input_rows: lines + batch.dead.len() as u64,
            state_entries: state_entries(state),
        });
    }

    /// Completes the update with what holds after its last epoch.
    pub fn close(&mut self, state: &State, positions: &BTreeMap<i32, Resume>) {
        self.positions = positions.clone();
        self.open_alerts = open_alerts(state);
    }
}

/// The state in the shape of `summary.json`, plus the epoch it is as of.
pub fn state_json(state: &State, label: &str) -> Value {
    let mut v = state.summary();
    v["epoch"] = Value::from(label);
    v
}

/// The open alerts, each with its `key`.
fn open_alerts(state: &State) -> Value {
    Value::Array(
        state
            .alerts
            .iter()
            .map(|(key, alert)| {
                let mut a = alert.clone();
                a["key"] = Value::from(key.clone());
                a
            })
            .collect(),
    )
}

/// Entries of the writer's state: totals, countries, ranked products, open alerts and
/// dead-letter reasons.
fn state_entries(state: &State) -> usize {
    1 + state.by_country.len()
        + state.top_products.len()
        + state.alerts.len()
        + state.dead_letters.len()
}
