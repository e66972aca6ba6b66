//! What the writer publishes for `--http`: an [`Update`] per commit (one [`EpochView`] per
//! closed epoch, the state after the commit's last epoch with the same shaping as
//! `summary.json`, and a snapshot of this process's sources), queued on a [`Publisher`] once
//! the commit is confirmed. The state is rendered once per commit, however many epochs it
//! holds: at `--epoch 1s` a catching-up commit holds thousands. `http` reads only this: the
//! dependency goes from `http` to `sink`, never back.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aggregate::Text;
use crate::checkpoint::Resume;
use crate::metrics::Snapshot;
use crate::sink::Batch;
use crate::state::State;

/// How long the end of a run waits for what it queued to be shown.
const DRAIN: Duration = Duration::from_secs(10);

/// What the writer hands to the page's thread, in order.
pub enum Published {
    /// The run number, for the progress entries (before any commit).
    Run(u64),
    /// A confirmed commit.
    Commit(Update),
    /// The run is over; answered once everything before it is shown.
    Finish(Sender<()>),
}

/// Queues what the writer publishes; the reader (`http`) shows it on a thread of its own, so
/// the worker that writes (or the Kafka commit thread) never waits for a page or a scrape.
#[derive(Clone)]
pub struct Publisher {
    queue: Sender<Published>,
}

impl Publisher {
    /// A publisher and the end its reader takes what is published from.
    pub fn channel() -> (Publisher, Receiver<Published>) {
        let (queue, published) = mpsc::channel();
        (Publisher { queue }, published)
    }

    /// Queues a confirmed commit.
    pub fn publish(&self, update: Update) {
        // The reader lives as long as the process.
        let _ = self.queue.send(Published::Commit(update));
    }

    /// Marks the run finished once everything queued is shown, and waits for that (briefly:
    /// the run is over), so that the final state is served when the job reports.
    pub fn finish(&self) {
        let (done, shown) = mpsc::channel();
        if self.queue.send(Published::Finish(done)).is_ok() {
            let _ = shown.recv_timeout(DRAIN);
        }
    }

    /// Records the run number for the progress entries.
    pub fn set_run(&self, run: u64) {
        let _ = self.queue.send(Published::Run(run));
    }
}

/// One closed epoch as committed: its row and the alerts it opened.
#[derive(Clone, Debug)]
pub struct EpochView {
    pub label: String,
    /// The epoch's row as `epochs.jsonl` last holds it (`{"epoch": label, ...value}`).
    pub row: Option<Value>,
    /// Alerts the epoch opened, with their rule.
    pub alerts: Vec<Value>,
    /// Lines and dead letters of the epoch: the records it took in.
    pub input_rows: u64,
}

/// What one commit makes visible.
#[derive(Clone, Debug)]
pub struct Update {
    pub epochs: Vec<EpochView>,
    /// Each partition's next offset and watermark state after the commit.
    pub positions: BTreeMap<i32, Resume>,
    /// The state after the commit's last epoch, shaped like `summary.json` plus `epoch` and
    /// `open_alerts` (each open alert with its `key`).
    pub state: Value,
    /// State entries the writer holds after the commit.
    pub state_entries: usize,
    /// Every product's name as of the commit's last epoch, to name the products of the open
    /// epoch's running figures.
    pub names: BTreeMap<Text, Text>,
    /// When the writer began rendering the commit.
    pub started: Instant,
    /// This process's sources as the commit was made, for the page's health and progress.
    pub source: Snapshot,
}

impl Update {
    /// An empty update begun now.
    pub fn begin() -> Update {
        Update {
            epochs: Vec::new(),
            positions: BTreeMap::new(),
            state: Value::Null,
            state_entries: 0,
            names: BTreeMap::new(),
            started: Instant::now(),
            source: Snapshot::default(),
        }
    }

    /// Adds a rendered epoch.
    pub fn add(&mut self, batch: &Batch) {
        let row = batch.row.clone().map(|mut v| {
            v["epoch"] = Value::from(batch.label.clone());
            v
        });
        let alerts = (batch.opened.iter())
            .map(|(key, value)| {
                let mut alert = value.clone();
                alert["key"] = Value::from(key.clone());
                alert["opened_in"] = Value::from(batch.label.clone());
                alert
            })
            .collect();
        let lines = row.as_ref().and_then(|r| r["lines"].as_u64()).unwrap_or(0);
        self.epochs.push(EpochView {
            label: batch.label.clone(),
            row,
            alerts,
            input_rows: lines + batch.dead.len() as u64,
        });
    }

    /// Completes the update with what holds after its last epoch, and the sources now.
    pub fn close(&mut self, state: &State, positions: &BTreeMap<i32, Resume>, source: Snapshot) {
        self.positions = positions.clone();
        self.source = source;
        if let Some(last) = self.epochs.last() {
            let mut shown = state_json(state, &last.label);
            shown["open_alerts"] = open_alerts(state);
            self.state = shown;
            self.names = state.names.clone();
        }
        self.state_entries = state_entries(state);
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
