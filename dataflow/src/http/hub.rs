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
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
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
use crate::checkpoint::Resume;
use crate::epoch::EpochClock;
use crate::metrics::Snapshot;
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
            metrics,
        }
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
        shown.batches += update.epochs.len() as u64;
        shown.last_commit = Some((last.label.clone(), SystemTime::now()));
        let event = self.view(&shown, Some(&progress), 60);
        push_event(&mut shown, "epoch", &event);
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
        self.lock().state.clone()
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
mod tests {
    use super::*;
    use crate::aggregate::{Alert, Output, Sums};
    use crate::sink::Renderer;
    use crate::state::State;

    fn sums(lines: i64, revenue_milli: i64) -> Sums {
        Sums {
            lines,
            revenue_milli,
            ..Sums::default()
        }
    }

    #[test]
    fn a_published_commit_shows_each_epoch_the_state_after_it_and_a_progress_entry() {
        let clock = EpochClock {
            epoch_secs: 3600,
            lateness_epochs: 0,
        };
        let mut renderer = Renderer {
            clock,
            state: State::default(),
        };
        let hub = Hub::new(
            clock,
            "sales".into(),
            "job".into(),
            &BTreeMap::new(),
            CommitMetrics::default(),
        );
        let mut update = Update::begin();
        for (epoch, lines) in [(1u64, 2i64), (2, 3)] {
            let total = sums(lines + if epoch == 2 { 2 } else { 0 }, 1000 * epoch as i64);
            let mut outputs = vec![
                (Output::Totals(total), 1),
                (
                    Output::Epoch(epoch, sums(lines, 500), vec![("A".into(), 500)]),
                    1,
                ),
            ];
            if epoch == 2 {
                outputs.push((Output::Totals(sums(2, 1000)), -1));
                let alert = Alert::LargeInvoice {
                    invoice: "9".into(),
                    value_milli: 7,
                };
                outputs.push((Output::Alert(alert), 1));
            }
            let batch = renderer.render(epoch, outputs, vec![]);
            update.add(&batch);
        }
        // The health shown is the sources as the writer saw them at the commit.
        let source = Snapshot {
            messages: 7,
            late: 1,
            dead_reasons: BTreeMap::from([("not_json", 2)]),
            partitions: BTreeMap::from([(0, Default::default())]),
        };
        update.close(&renderer.state, &BTreeMap::new(), source);
        hub.publish(update);

        let state = hub.state().expect("a state");
        assert_eq!(state["epoch"], "1970-01-01T02:00:00");
        assert_eq!(state["totals"]["lines"], 5);
        assert_eq!(state["epochs"], 2);
        assert_eq!(state["open_alerts"][0]["rule"], "large_invoice");
        assert_eq!(state["open_alerts"][0]["key"], "large_invoice/9");
        let rows = hub.epochs(10);
        assert_eq!(rows.as_array().unwrap().len(), 2);
        assert_eq!(rows[1]["epoch"], "1970-01-01T02:00:00");
        assert_eq!(rows[1]["lines"], 3);
        assert_eq!(hub.epochs(1)[0], rows[1]);
        let progress = hub.progress_entries(5);
        assert_eq!(progress.as_array().unwrap().len(), 1);
        assert_eq!(progress[0]["numInputRows"], 5);
        assert_eq!(progress[0]["batchId"], 1);
        assert_eq!(
            progress[0]["epochs"],
            json!(["1970-01-01T01:00:00", "1970-01-01T02:00:00"])
        );
        // One event for the commit, with both epochs' rows and the alert the second opened.
        let mut changed = hub.subscribe();
        let (seq, events) = hub.events_since(0);
        assert_eq!(seq, 1);
        assert_eq!(events.len(), 1);
        let event = std::str::from_utf8(&events[0]).unwrap();
        assert!(event.starts_with("event: epoch\ndata: {"));
        assert!(event.contains("\"opened_in\":\"1970-01-01T02:00:00\""));
        assert!(event.contains("\"epoch\":\"1970-01-01T01:00:00\""));
        let (_, current) = hub.current();
        assert_eq!(
            current, events[0],
            "a new stream starts with the latest view"
        );
        let current = std::str::from_utf8(&current).unwrap();
        let view: Value = serde_json::from_str(&current["event: epoch\ndata: ".len()..])
            .expect("the current view");
        let health = &view["health"];
        assert_eq!(health["records_read"], 7);
        assert_eq!(health["late_lines"], 1);
        assert_eq!(health["dead_letters"], json!({"not_json": 2}));
        assert_eq!(health["partitions"][0]["partition"], 0);
        assert!(hub.events_since(1).1.is_empty());
        assert!(!changed.has_changed().unwrap());
        hub.finish();
        assert!(
            changed.has_changed().unwrap(),
            "streams are told of the event"
        );
        assert_eq!(*changed.borrow_and_update(), 2);
        let (_, events) = hub.events_since(1);
        assert!(events[0].starts_with(b"event: finished\n"));
        assert_eq!(hub.metrics().epochs.get(), 2);
    }
}
