//! What the page and the query API show: the committed results, handed over by the writer.
//!
//! The writer builds an [`Update`] per commit (one
//! [`EpochView`](crate::sink::publish::EpochView) per closed epoch, rendered from the same
//! state and with the same shaping as `summary.json`, and a snapshot of this process's
//! sources) and hands it to the [`Hub`] once the commit is confirmed: by the Kafka commit
//! thread after its transaction, or right after the files are written when the job does not
//! commit to Kafka. So nothing shown here can be taken back by a crash, and the hub reads
//! nothing but what the writer published (no source lock). The server reads the hub under a
//! short lock; event streams learn of a new event from a `watch` channel of the sequence
//! number, which the publishing thread bumps without waiting for any of them. A worker never
//! waits for a reader.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::shapes::{
    Durations, EventTime, Health, Offsets, PartitionHealth, Progress, Sink, SourceMetrics,
    SourceProgress, StateOperator,
};
use crate::aggregate::Text;
use crate::checkpoint::Resume;
use crate::epoch::EpochClock;
use crate::metrics::Snapshot;
use crate::provisional::{Provisional, Sample};
use crate::sink::publish::Update;

/// Epoch rows kept for `/api/epochs` and the chart.
pub const KEEP_EPOCHS: usize = 1000;
/// Progress entries kept for `/api/progress`.
pub const KEEP_PROGRESS: usize = 200;
/// Latest alerts kept for the page.
const KEEP_ALERTS: usize = 20;
/// SSE events kept for readers that fall behind (older ones are skipped, not waited for).
const KEEP_EVENTS: usize = 64;

/// The metrics the hub updates as commits are confirmed.
#[derive(Clone, Debug)]
pub struct CommitMetrics {
    pub epochs: Counter,
    pub duration: Histogram,
    pub state_entries: Gauge,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            epochs: Counter::default(),
            // 1 ms to about 33 s.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 16,
            )),
            state_entries: Gauge::default(),
        }
    }
}

/// What is shown, as of the last confirmed commit.
struct Shown {
    /// Bumped by every change; SSE readers wait for it to move.
    seq: u64,
    /// The SSE events, newest last, with their sequence number (shared by every stream).
    events: VecDeque<(u64, Bytes)>,
    /// The current view as an event, for a stream that starts; rendered once per change.
    current: Option<Bytes>,
    /// The open epoch's running figures as last sampled (`provisional` of `/api/state`, and
    /// the last `provisional` event), kept apart from every committed figure.
    provisional: Option<Sample>,
    provisional_shown: Value,
    provisional_event: Option<Bytes>,
    /// Every product's name as of the last commit: the open epoch's products are named by
    /// them (a product first sold in the open epoch has none until its epoch commits).
    names: BTreeMap<Text, Text>,
    state: Option<Value>,
    /// Epoch rows by label (labels sort as times).
    epochs: BTreeMap<String, Value>,
    progress: VecDeque<Value>,
    alerts: VecDeque<Value>,
    /// Last committed position and watermark state of each partition.
    positions: BTreeMap<i32, Resume>,
    last_commit: Option<(String, SystemTime)>,
    last_at: Option<Instant>,
    /// Records this process had read at the last commit, and the rate since the one before.
    read_at_commit: (Instant, u64),
    read_rate: f64,
    /// This process's sources as of the last commit (the writer's snapshot).
    source: Snapshot,
    batches: u64,
    finished: bool,
}

/// The committed results the server shows, and the readers of the event stream.
pub struct Hub {
    shown: Mutex<Shown>,
    /// The sequence number of the newest event, for the event streams to wait on.
    changed: watch::Sender<u64>,
    clock: EpochClock,
    topic: String,
    job_id: String,
    run_id: AtomicU64,
    metrics: CommitMetrics,
    /// The open epoch's running figures, which the workers of this process add to (process 0
    /// with `--http`).
    provisional: Option<Arc<Provisional>>,
}

impl Hub {
    pub fn new(
        clock: EpochClock,
        topic: String,
        job_id: String,
        resumed: &BTreeMap<i32, Resume>,
        metrics: CommitMetrics,
    ) -> Hub {
        let shown = Shown {
            positions: resumed.clone(),
            read_at_commit: (Instant::now(), 0),
            read_rate: 0.0,
            source: Snapshot::default(),
            seq: 0,
            events: VecDeque::new(),
            current: None,
            provisional: None,
            provisional_shown: Value::Null,
            provisional_event: None,
            names: BTreeMap::new(),
            state: None,
            epochs: BTreeMap::new(),
            progress: VecDeque::new(),
            alerts: VecDeque::new(),
            last_commit: None,
            last_at: None,
            batches: 0,
            finished: false,
        };
        Hub {
            shown: Mutex::new(shown),
            changed: watch::Sender::new(0),
            clock,
            topic,
            job_id,
            run_id: AtomicU64::new(0),
            provisional: None,
            metrics,
        }
    }

    /// Shows the open epoch's running figures of `provisional` too (sampled by
    /// [`Hub::sample_every`]).
    pub fn with_provisional(mut self, provisional: Arc<Provisional>) -> Hub {
        self.provisional = Some(provisional);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shown> {
        crate::locked(&self.shown)
    }

    /// Makes a confirmed commit visible: one event per epoch in it, and a progress entry.
    pub fn publish(&self, update: Update) {
        let Some(last) = update.epochs.last() else {
            return;
        };
        let now = Instant::now();
        let took = now.duration_since(update.started);
        self.metrics.duration.observe(took.as_secs_f64());
        self.metrics.epochs.inc_by(update.epochs.len() as u64);
        self.metrics.state_entries.set(update.state_entries as i64);
        let lags = update.source.lags();
        let mut shown = self.lock();
        let since = shown.last_at.map(|t| now.duration_since(t));
        let mut positions = shown.positions.clone();
        positions.extend(update.positions.clone());
        let progress = self.progress(&shown, &update, &positions, took, since, &lags);
        shown.last_at = Some(now);
        shown.positions = positions;
        let read = update.source.messages;
        let (then, before) = shown.read_at_commit;
        let secs = now.duration_since(then).as_secs_f64();
        if secs > 0.0 {
            shown.read_rate = round((read - before) as f64 / secs);
        }
        shown.read_at_commit = (now, read);
        shown.source = update.source.clone();
        for view in &update.epochs {
            if let Some(row) = &view.row {
                shown.epochs.insert(view.label.clone(), row.clone());
            }
            while shown.epochs.len() > KEEP_EPOCHS {
                shown.epochs.pop_first();
            }
            for alert in &view.alerts {
                shown.alerts.push_back(alert.clone());
                if shown.alerts.len() > KEEP_ALERTS {
                    shown.alerts.pop_front();
                }
            }
        }
        // One event per commit, whatever the epochs in it: it carries their rows.
        shown.state = Some(update.state.clone());
        shown.names = update.names;
        shown.batches += update.epochs.len() as u64;
        shown.last_commit = Some((last.label.clone(), SystemTime::now()));
        let event = self.view(&shown, Some(&progress), 60);
        push_event(&mut shown, "epoch", &event);
        // The committed epochs leave the running figures at once, not at the next sample.
        if let Some(provisional) = &self.provisional
            && let Some(epoch) = self.clock.epoch_of_label(&last.label)
        {
            provisional.committed(epoch);
            self.show_provisional(&mut shown, provisional.sample());
        }
        shown.progress.push_back(progress);
        while shown.progress.len() > KEEP_PROGRESS {
            shown.progress.pop_front();
        }
        let seq = shown.seq;
        drop(shown);
        self.changed.send_replace(seq);
    }

    /// The run is over and its final state is shown: readers are told so.
    pub fn finish(&self) {
        let mut shown = self.lock();
        shown.finished = true;
        let progress = shown.progress.back().cloned();
        let event = self.view(&shown, progress.as_ref(), 60);
        push_event(&mut shown, "finished", &event);
        let seq = shown.seq;
        drop(shown);
        self.changed.send_replace(seq);
    }

    /// Samples the open epoch's running figures every `every` (a task of the server), until the
    /// process ends; without them, returns at once.
    pub async fn sample_every(self: Arc<Self>, every: Duration) {
        if self.provisional.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample_provisional();
        }
    }

    /// Shows the open epoch's running figures when they changed: a `provisional` event, and
    /// `provisional` of `/api/state`.
    pub fn sample_provisional(&self) {
        let Some(provisional) = &self.provisional else {
            return;
        };
        let sample = provisional.sample();
        let mut shown = self.lock();
        if self.show_provisional(&mut shown, sample) {
            let seq = shown.seq;
            drop(shown);
            self.changed.send_replace(seq);
        }
    }

    /// Makes `sample` the running figures shown; false when they are those shown already.
    fn show_provisional(&self, shown: &mut Shown, sample: Option<Sample>) -> bool {
        if sample == shown.provisional {
            return false;
        }
        shown.provisional_shown = sample.as_ref().map_or(Value::Null, |s| {
            let top: Vec<Value> = (s.top.iter())
                .map(|(code, revenue)| {
                    json!({
                        "stock_code": code,
                        "description": shown.names.get(code),
                        "revenue_milli": revenue,
                    })
                })
                .collect();
            json!({
                "epoch": self.clock.label(s.epoch).to_string(),
                "epoch_seconds": self.clock.epoch_secs,
                "lines": s.lines,
                "revenue_milli": s.revenue_milli,
                "top_products": top,
                "as_of": iso_now(),
            })
        });
        shown.provisional = sample;
        let event = event_text("provisional", &shown.provisional_shown);
        shown.provisional_event = Some(event.clone());
        shown.seq += 1;
        let seq = shown.seq;
        keep_event(shown, seq, event);
        true
    }

    /// The last `provisional` event, for a stream that starts.
    pub fn provisional_event(&self) -> Option<Bytes> {
        self.lock().provisional_event.clone()
    }

    /// The open epoch's running figures as shown (null when there are none).
    pub fn provisional(&self) -> Value {
        self.lock().provisional_shown.clone()
    }

    /// A progress entry for a commit, in the shape of Spark's `StreamingQueryProgress`.
    fn progress(
        &self,
        shown: &Shown,
        update: &Update,
        positions: &BTreeMap<i32, Resume>,
        took: Duration,
        since: Option<Duration>,
        lags: &BTreeMap<i32, Option<i64>>,
    ) -> Value {
        let rows: u64 = update.epochs.iter().map(|e| e.input_rows).sum();
        let per_sec = |d: Duration| {
            let secs = d.as_secs_f64();
            if secs > 0.0 { rows as f64 / secs } else { 0.0 }
        };
        let offsets = |m: &BTreeMap<i32, Resume>| -> Offsets {
            let by_partition = m.iter().map(|(p, r)| (p.to_string(), r.offset)).collect();
            BTreeMap::from([(self.topic.clone(), by_partition)])
        };
        let watermark = positions
            .values()
            .filter(|r| r.clock.has_data())
            .map(|r| r.clock.open_from(&self.clock))
            .min()
            .map(|e| self.clock.label(e).to_string());
        let known: Vec<i64> = lags.values().filter_map(|l| *l).collect();
        let last = update.epochs.last().expect("an update has epochs");
        let input_per_sec = round(since.map_or(0.0, per_sec));
        let processed_per_sec = round(per_sec(took));
        let progress = Progress {
            id: self.job_id.clone(),
            run_id: self
                .run_id
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
            name: "retail-stream",
            timestamp: iso_now(),
            batch_id: shown.batches + update.epochs.len() as u64 - 1,
            epoch: last.label.clone(),
            epochs: update.epochs.iter().map(|e| e.label.clone()).collect(),
            num_input_rows: rows,
            input_rows_per_second: input_per_sec,
            processed_rows_per_second: processed_per_sec,
            duration_ms: Durations {
                trigger_execution: took.as_millis() as u64,
            },
            event_time: EventTime { watermark },
            state_operators: vec![StateOperator {
                operator_name: "writer",
                num_rows_total: update.state_entries,
            }],
            sources: vec![SourceProgress {
                description: format!("KafkaSource[Subscribe[{}]]", self.topic),
                start_offset: offsets(&shown.positions),
                end_offset: offsets(positions),
                num_input_rows: rows,
                input_rows_per_second: input_per_sec,
                processed_rows_per_second: processed_per_sec,
                metrics: SourceMetrics {
                    consumer_lag: lags.iter().map(|(p, l)| (p.to_string(), *l)).collect(),
                    max_offsets_behind_latest: known.iter().max().copied(),
                    avg_offsets_behind_latest: (!known.is_empty())
                        .then(|| round(known.iter().sum::<i64>() as f64 / known.len() as f64)),
                },
            }],
            sink: Sink {
                description: "retail-stream writer (JSON lines, Kafka)",
            },
        };
        serde_json::to_value(progress).expect("progress serialises")
    }

    /// What one SSE event carries: the state, the last `epochs` epoch rows, the latest alerts,
    /// the latest progress and the health of this process's source.
    fn view(&self, shown: &Shown, progress: Option<&Value>, epochs: usize) -> Value {
        let rows: Vec<&Value> = shown.epochs.values().rev().take(epochs).rev().collect();
        json!({
            "state": shown.state,
            "epochs": rows,
            "alerts": shown.alerts.iter().rev().collect::<Vec<_>>(),
            "progress": progress,
            "health": self.health(shown),
            "finished": shown.finished,
        })
    }

    /// The source's health as this process saw it at the last commit, and that commit.
    fn health(&self, shown: &Shown) -> Value {
        let source = &shown.source;
        let health = Health {
            records_read: source.messages,
            records_per_sec: shown.read_rate,
            late_lines: source.late,
            dead_letters: source.dead_reasons.clone(),
            partitions: (source.partitions.iter())
                .map(|(p, g)| PartitionHealth {
                    partition: *p,
                    read: g.read,
                    lag: g.lag,
                    watermark: g.watermark_secs.map(label_secs),
                })
                .collect(),
            last_epoch: shown.last_commit.as_ref().map(|(l, _)| l.clone()),
            last_commit_at: shown.last_commit.as_ref().map(|(_, t)| iso(*t)),
            epochs_committed: shown.batches,
        };
        serde_json::to_value(health).expect("health serialises")
    }

    /// The current view and its sequence number, for a reader that just connected.
    pub fn current(&self) -> (u64, Bytes) {
        let mut shown = self.lock();
        let current = match &shown.current {
            Some(current) => current.clone(),
            None => {
                let progress = shown.progress.back().cloned();
                let name = if shown.finished { "finished" } else { "epoch" };
                let text = event_text(name, &self.view(&shown, progress.as_ref(), 60));
                shown.current.insert(text).clone()
            }
        };
        (shown.seq, current)
    }

    /// Tells of every new event: the receiver sees the sequence number change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The events after `seq` (those still kept), and the newest sequence number.
    pub fn events_since(&self, seq: u64) -> (u64, Vec<Bytes>) {
        let shown = self.lock();
        let events = shown
            .events
            .iter()
            .filter(|(s, _)| *s > seq)
            .map(|(_, e)| e.clone())
            .collect();
        (shown.seq, events)
    }

    /// `/api/state`: the last committed state (with its open alerts), `None` before the first
    /// commit.
    pub fn state(&self) -> Option<Value> {
        let shown = self.lock();
        let mut state = shown.state.clone()?;
        if let Some(fields) = state.as_object_mut() {
            fields.insert("provisional".into(), shown.provisional_shown.clone());
        }
        Some(state)
    }

    /// `/api/epochs`: the last `n` epoch rows, oldest first.
    pub fn epochs(&self, n: usize) -> Value {
        let shown = self.lock();
        let rows: Vec<&Value> = shown.epochs.values().rev().take(n).rev().collect();
        json!(rows)
    }

    /// `/api/progress`: the last `n` progress entries, oldest first.
    pub fn progress_entries(&self, n: usize) -> Value {
        let shown = self.lock();
        let skip = shown.progress.len().saturating_sub(n);
        json!(shown.progress.iter().skip(skip).collect::<Vec<_>>())
    }

    /// The commit metrics the hub updates, for the registry.
    pub fn metrics(&self) -> &CommitMetrics {
        &self.metrics
    }

    /// Records the run number (as the checkpoint has it) for the progress entries.
    pub fn set_run(&self, run: u64) {
        self.run_id.store(run, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Appends an SSE event (and drops the oldest past [`KEEP_EVENTS`]); it is the current view
/// too.
fn push_event(shown: &mut Shown, name: &str, data: &Value) {
    shown.seq += 1;
    let seq = shown.seq;
    let event = event_text(name, data);
    shown.current = Some(event.clone());
    keep_event(shown, seq, event);
}

/// Keeps an event for the streams (and drops the oldest past [`KEEP_EVENTS`]).
fn keep_event(shown: &mut Shown, seq: u64, event: Bytes) {
    shown.events.push_back((seq, event));
    while shown.events.len() > KEEP_EVENTS {
        shown.events.pop_front();
    }
}

/// One server-sent event: its name and its JSON on one `data:` line.
fn event_text(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn iso(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

fn iso_now() -> String {
    iso(SystemTime::now())
}

/// Seconds since 1970 in the labels' form.
fn label_secs(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| {
            t.naive_utc()
                .format(retail_common::time::WIRE_FORMAT)
                .to_string()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
