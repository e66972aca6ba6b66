//! The single writer: turns each closed epoch's changes into console, JSON-lines, Kafka and
//! PostgreSQL output, and keeps the final state for `summary.json`.
//!
//! All output and dead letters are routed to worker 0, which stashes them by epoch. Once the
//! frontier passes an epoch, its updates are consolidated and sorted, so what is written depends
//! only on the input, not on the worker count or on timing.
//!
//! Record shapes (one JSON object per line, the same bytes in files and in `<job-id>.aggregates`):
//! - keyed streams `totals`, `by_country`, `top_products`, `epochs`:
//!   `{"epoch":"<epoch start>","stream":S,"key":K,"value":V}`, `V` the new value or `null` when
//!   the key disappeared;
//! - `alerts`, a set: `{"epoch":..,"stream":"alerts","key":K,"diff":1|-1,"alert":{..}}`;
//! - `dlq.jsonl`: `{"epoch":..,"partition":P,"offset":O,"reason":R,"detail":D,"key":..,
//!   "payload":..}` (`payload_hex` instead of `payload` when the bytes are not UTF-8).

pub(crate) mod console;
pub(crate) mod jsonl;
pub(crate) mod kafka;
pub mod postgres;
pub(crate) mod publish;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use differential_dataflow::consolidation::consolidate;
use serde::Serialize;
use serde_json::{Value, json};

use retail_common::kafka::ClientSettings;

use crate::aggregate::{Alert, AlertRules, Output, Sums, Text};
use crate::epoch::EpochClock;
use crate::parse::DeadLetter;
pub(crate) use crate::state::State;
use crate::state::{ranked_json, sums_json, totals_json};

/// What the writer and its sinks are set up with: the part of the command line they read
/// ([`Config::sink_config`](crate::cli::Config::sink_config)).
#[derive(Clone, Debug)]
pub(crate) struct SinkConfig {
    pub settings: ClientSettings,
    /// The source topic: the checkpoint and the dead letters' headers name it.
    pub topic: String,
    pub clock: EpochClock,
    /// `--invoice-retention` in whole epochs (`None`: off).
    pub retention: Option<u64>,
    /// The alert thresholds, recorded in the checkpoint's identity.
    pub rules: AlertRules,
    pub job_id: String,
    /// The consumer group whose offsets each commit moves.
    pub group_id: String,
    /// `--reset`: a fresh run takes the job's PostgreSQL rows over.
    pub reset: bool,
    pub checkpoint_topic: String,
    /// Commit outputs with checkpoints in transactions (exactly-once).
    pub checkpoint: bool,
    pub output_dir: PathBuf,
    pub console: bool,
    pub jsonl: bool,
    pub kafka: bool,
    pub postgres: Option<postgres::PgTarget>,
    pub aggregates_topic: String,
    pub dlq_topic: String,
}

/// An output stream: a file `<name>.jsonl`, the `stream` field of its lines and the key prefix
/// of its records in `<job-id>.aggregates`. Ordered as written within an epoch; serialises as
/// its [`name`](OutputStream::name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OutputStream {
    Totals,
    ByCountry,
    TopProducts,
    Epochs,
    /// A set: its lines carry a `diff` rather than a new value.
    Alerts,
}

impl OutputStream {
    /// Every stream, in the order they are written within an epoch.
    pub const ALL: [OutputStream; 5] = [
        OutputStream::Totals,
        OutputStream::ByCountry,
        OutputStream::TopProducts,
        OutputStream::Epochs,
        OutputStream::Alerts,
    ];

    /// The name in file names, lines and record keys.
    pub fn name(self) -> &'static str {
        match self {
            OutputStream::Totals => "totals",
            OutputStream::ByCountry => "by_country",
            OutputStream::TopProducts => "top_products",
            OutputStream::Epochs => "epochs",
            OutputStream::Alerts => "alerts",
        }
    }
}

impl fmt::Display for OutputStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One rendered change.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Change {
    pub stream: OutputStream,
    pub key: String,
    /// The full JSON line.
    pub line: String,
}

/// Everything written for one closed epoch.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    pub epoch: u64,
    pub label: String,
    pub changes: Vec<Change>,
    pub dead: Vec<(DeadLetter, String)>,
    /// Typed changes of the epoch, for the console.
    pub updates: Vec<(Output, isize)>,
    /// The totals as of this epoch (what `totals.jsonl` holds after it), for the console.
    pub totals: Sums,
    /// Alerts open as of this epoch, for the console.
    pub alerts_open: usize,
    /// The epoch's own row in `epochs.jsonl` (its value), for the page.
    pub row: Option<Value>,
    /// The alerts the epoch opened, key and value, in the order of `changes`, for the page.
    pub opened: Vec<(String, Value)>,
    /// The names of the products its rankings hold (PostgreSQL).
    pub names: BTreeMap<Text, Text>,
}

/// How the keys of `cancellation_burst` alerts begin: then the epoch's label and the customer.
const BURST_KEYS: &str = "cancellation_burst/";

/// Stream and key of an output row, and its rendered value, with the products' `names`; none
/// for a name, which is no row of its own.
fn describe(
    o: &Output,
    clock: &EpochClock,
    names: &BTreeMap<Text, Text>,
) -> Option<(OutputStream, String, Value)> {
    Some(match o {
        Output::Name(..) => return None,
        Output::Totals(s) => (OutputStream::Totals, "totals".into(), totals_json(s)),
        Output::Country(c, s) => (OutputStream::ByCountry, c.to_string(), sums_json(s)),
        Output::TopProducts(r) => (
            OutputStream::TopProducts,
            "top_products".into(),
            ranked_json(r, names),
        ),
        Output::Epoch(e, s, r) => (
            OutputStream::Epochs,
            clock.label(*e).to_string(),
            json!({
                "lines": s.lines,
                "units": s.units,
                "revenue_milli": s.revenue_milli,
                "invoices": s.invoices,
                "late_lines": s.late_lines,
                "top_products": ranked_json(r, names),
            }),
        ),
        Output::Alert(a) => {
            let mut key = a.key();
            let mut v = serde_json::to_value(a).expect("alerts serialise");
            // `{"LargeInvoice": {..}}` -> `{"rule": "large_invoice", ..}`
            let body = v
                .as_object_mut()
                .and_then(|m| m.values_mut().next())
                .map(Value::take)
                .unwrap_or(Value::Null);
            let mut obj = serde_json::Map::new();
            obj.insert("rule".into(), Value::from(a.rule()));
            if let Value::Object(fields) = body {
                obj.extend(fields);
            }
            // Epochs appear by their start time, as everywhere else in the output.
            if let crate::aggregate::Alert::CancellationBurst {
                epoch, customer, ..
            } = a
            {
                let label = clock.label(*epoch).to_string();
                key = format!("{BURST_KEYS}{label}/{customer}");
                obj.insert("epoch".into(), Value::from(label));
            }
            (OutputStream::Alerts, key, Value::Object(obj))
        }
    })
}

fn dead_json(d: &DeadLetter, label: &str) -> String {
    let mut v = json!({
        "epoch": label,
        "partition": d.partition,
        "offset": d.offset,
        "reason": d.reason,
        "detail": d.detail,
        "key": d.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
    });
    match std::str::from_utf8(&d.payload) {
        Ok(text) => v["payload"] = Value::from(text),
        Err(_) => {
            let hex: String = d.payload.iter().map(|b| format!("{b:02x}")).collect();
            v["payload_hex"] = Value::from(hex);
        }
    }
    v.to_string()
}

/// Renders one epoch and applies it to the state.
pub(crate) struct Renderer {
    pub clock: EpochClock,
    pub state: State,
}

impl Renderer {
    /// Consolidates the epoch's updates and dead letters into a [`Batch`].
    pub fn render(
        &mut self,
        epoch: u64,
        mut updates: Vec<(Output, isize)>,
        mut dead: Vec<DeadLetter>,
    ) -> Batch {
        consolidate(&mut updates);
        dead.sort();
        let label = self.clock.label(epoch).to_string();
        // Keyed streams: the +1 row of a key is its new value; a key with only -1 is gone.
        let mut keyed: BTreeMap<(OutputStream, String), Option<Value>> = BTreeMap::new();
        let mut changes = Vec::new();
        // Names first: the epoch's rankings show the names as of the epoch.
        let mut names = BTreeMap::new();
        for (o, diff) in &updates {
            match o {
                Output::Name(code, name) => self.name(code, name, *diff),
                Output::TopProducts(r) | Output::Epoch(_, _, r) if *diff > 0 => {
                    names.extend(r.iter().map(|(code, _)| (code.clone(), Text::default())));
                }
                _ => {}
            }
        }
        names.retain(|code, name| match self.state.names.get(code) {
            Some(known) => {
                name.clone_from(known);
                true
            }
            None => false,
        });
        for (o, diff) in &updates {
            let Some((stream, key, value)) = describe(o, &self.clock, &self.state.names) else {
                continue;
            };
            self.apply(o, *diff, &key, &value);
            if stream == OutputStream::Alerts {
                let line = json!({"epoch": label, "stream": stream, "key": key, "diff": diff, "alert": value});
                let opened = (*diff == 1).then_some(value);
                changes.push((stream, key, line.to_string(), opened));
                continue;
            }
            let slot = keyed.entry((stream, key)).or_insert(None);
            if *diff > 0 {
                *slot = Some(value);
            }
        }
        let mut row = None;
        for ((stream, key), value) in keyed {
            let line = json!({"epoch": label, "stream": stream, "key": key, "value": value});
            if stream == OutputStream::Epochs && key == label {
                row.clone_from(&value);
            }
            changes.push((stream, key, line.to_string(), None));
        }
        // By stream (in `OutputStream::ALL` order, alerts last), then key, then line.
        changes.sort_by(|a, b| (a.0, &a.1, &a.2).cmp(&(b.0, &b.1, &b.2)));
        let opened = (changes.iter_mut())
            .filter_map(|(_, key, _, value)| Some((key.clone(), value.take()?)))
            .collect();
        for d in &dead {
            // Keyed by code (the summary's `by_reason`); a key is allocated once per reason.
            let code = d.reason.code();
            match self.state.dead_letters.get_mut(code) {
                Some(n) => *n += 1,
                None => {
                    self.state.dead_letters.insert(code.to_owned(), 1);
                }
            }
        }
        Batch {
            epoch,
            changes: changes
                .into_iter()
                .map(|(stream, key, line, _)| Change { stream, key, line })
                .collect(),
            dead: dead
                .into_iter()
                .map(|d| {
                    let line = dead_json(&d, &label);
                    (d, line)
                })
                .collect(),
            label,
            updates,
            totals: self.state.totals,
            alerts_open: self.state.alerts.len(),
            row,
            opened,
            names,
        }
    }

    /// Applies a change of a product's name.
    fn name(&mut self, code: &Text, name: &Text, diff: isize) {
        let names = &mut self.state.names;
        if diff > 0 {
            names.insert(code.clone(), name.clone());
        } else if names.get(code) == Some(name) {
            names.remove(code);
        }
    }

    /// The open `cancellation_burst` alerts of epochs more than `retention` epochs before
    /// `epoch`. Under `--invoice-retention` they are settled like the alerts of closed invoices,
    /// so the open alerts do not grow with history. (A burst is final once its epoch closes.)
    pub fn expired_bursts(&self, epoch: u64, retention: u64) -> Vec<Alert> {
        let Some(horizon) = epoch.checked_sub(retention) else {
            return Vec::new();
        };
        // Keys hold the epoch's fixed-width label, so they sort by epoch.
        let end = format!("{BURST_KEYS}{}", self.clock.label(horizon));
        let range = (Bound::Included(BURST_KEYS), Bound::Excluded(end.as_str()));
        self.state
            .alerts
            .range::<str, _>(range)
            .filter_map(|(_, v)| {
                Some(Alert::CancellationBurst {
                    epoch: self.clock.epoch_of_label(v.get("epoch")?.as_str()?)?,
                    customer: v.get("customer")?.as_str()?.into(),
                    lines: v.get("lines")?.as_i64()?,
                })
            })
            .collect()
    }

    fn apply(&mut self, o: &Output, diff: isize, key: &str, value: &Value) {
        let s = &mut self.state;
        match o {
            Output::Totals(t) if diff > 0 => s.totals = *t,
            Output::Country(c, t) if diff > 0 => {
                s.by_country.insert(c.clone(), *t);
            }
            Output::Country(c, t) if s.by_country.get(c) == Some(t) => {
                s.by_country.remove(c);
            }
            Output::TopProducts(r) if diff > 0 => s.top_products = r.clone(),
            Output::Epoch(..) if diff > 0 => s.epochs += 1,
            Output::Epoch(..) => s.epochs -= 1,
            Output::Alert(_) if diff > 0 => {
                s.alerts.insert(key.to_owned(), value.clone());
            }
            Output::Alert(_) if s.alerts.get(key) == Some(value) => {
                s.alerts.remove(key);
            }
            _ => {}
        }
    }
}

/// Writes `summary.json` atomically (temp file + rename).
pub(crate) fn write_summary(dir: &Path, state: &State) -> io::Result<PathBuf> {
    let path = dir.join("summary.json");
    let tmp = dir.join("summary.json.tmp");
    let mut text = serde_json::to_string_pretty(&state.summary()).expect("summary serialises");
    text.push('\n');
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use retail_common::record::RejectKind;

    /// The name is what files, lines and record keys show; serde must agree with it.
    #[test]
    fn output_streams_serialise_as_their_names() {
        let names: Vec<&str> = OutputStream::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            ["totals", "by_country", "top_products", "epochs", "alerts"]
        );
        for stream in OutputStream::ALL {
            let text = serde_json::to_string(&stream).unwrap();
            assert_eq!(text, format!("\"{stream}\""));
        }
    }

    fn renderer() -> Renderer {
        Renderer {
            clock: EpochClock {
                epoch_secs: 3600,
                lateness_epochs: 0,
            },
            state: State::default(),
        }
    }

    #[test]
    fn bursts_behind_the_retention_horizon_are_settled_once() {
        let mut r = renderer();
        let burst = |epoch, customer: &str| Alert::CancellationBurst {
            epoch,
            customer: customer.into(),
            lines: 7,
        };
        let raised = vec![
            (Output::Alert(burst(10, "b")), 1),
            (Output::Alert(burst(10, "a")), 1),
            (Output::Alert(burst(12, "a")), 1),
        ];
        r.render(12, raised, vec![]);
        // Epoch 14 with a retention of 4 epochs: nothing is more than 4 epochs old yet.
        assert!(r.expired_bursts(14, 4).is_empty());
        assert!(r.expired_bursts(3, 4).is_empty());
        // At 15, epoch 10 is 5 behind: both of its bursts go, the one of epoch 12 stays.
        let expired = r.expired_bursts(15, 4);
        assert_eq!(expired, [burst(10, "a"), burst(10, "b")]);
        let settle = expired
            .into_iter()
            .map(|a| (Output::Alert(a), -1))
            .collect();
        let batch = r.render(15, settle, vec![]);
        assert_eq!(batch.changes.len(), 2);
        assert!(
            batch
                .changes
                .iter()
                .all(|c| c.line.contains(r#""diff":-1"#))
        );
        assert_eq!(r.state.alerts.len(), 1);
        assert!(r.expired_bursts(16, 4).is_empty());
        assert_eq!(r.expired_bursts(17, 4), [burst(12, "a")]);
    }

    #[test]
    fn keyed_changes_carry_the_new_value_and_alerts_their_diff() {
        let mut r = renderer();
        let old = Sums {
            lines: 1,
            ..Sums::default()
        };
        let new = Sums {
            lines: 2,
            ..Sums::default()
        };
        let alert = Alert::LargeInvoice {
            invoice: "1".into(),
            value_milli: 9,
        };
        let batch = r.render(
            1,
            vec![
                (Output::Country("France".into(), new), 1),
                (Output::Country("France".into(), old), -1),
                (Output::Country("Spain".into(), old), -1),
                (Output::Alert(alert), 1),
                (Output::Totals(new), 1),
            ],
            vec![],
        );
        let lines: Vec<&str> = batch.changes.iter().map(|c| c.line.as_str()).collect();
        assert_eq!(
            lines,
            [
                r#"{"epoch":"1970-01-01T01:00:00","key":"totals","stream":"totals","value":{"cancellation_lines":0,"cancellation_value_milli":0,"customers":0,"invoices":0,"late_lines":0,"lines":2,"revenue_milli":0,"units":0}}"#,
                r#"{"epoch":"1970-01-01T01:00:00","key":"France","stream":"by_country","value":{"lines":2,"revenue_milli":0,"units":0}}"#,
                r#"{"epoch":"1970-01-01T01:00:00","key":"Spain","stream":"by_country","value":null}"#,
                r#"{"alert":{"invoice":"1","rule":"large_invoice","value_milli":9},"diff":1,"epoch":"1970-01-01T01:00:00","key":"large_invoice/1","stream":"alerts"}"#,
            ]
        );
        assert_eq!(r.state.by_country["France"], new);
        assert_eq!(r.state.alerts.len(), 1);
        assert_eq!(r.state.totals, new);
    }

    #[test]
    fn dead_letters_keep_non_utf8_bytes_as_hex() {
        let d = DeadLetter {
            partition: 3,
            offset: 7,
            reason: RejectKind::NotUtf8,
            detail: "x".into(),
            key: None,
            payload: vec![0xff, 0x41],
        };
        let line = dead_json(&d, "e");
        assert!(line.contains(r#""payload_hex":"ff41""#), "{line}");
    }
}
