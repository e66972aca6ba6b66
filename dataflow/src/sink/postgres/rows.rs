//! What one PostgreSQL transaction writes, computed from the epochs of a commit: the epochs
//! the database already has are skipped (the replay rule), the current-state tables get the
//! newest value of each key across the rest (or lose the keys that disappeared), and the
//! history tables get every row of every epoch. Pure, so that the rules are tested without a
//! database; the columns come out as arrays, one statement per table (`unnest`).
//!
//! Money stays integer thousandths here; the SQL multiplies by 0.001 into `numeric(20,3)`,
//! which is exact.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::aggregate::{Output, Sums, Text};
use crate::sink::{Batch, OutputStream};
use crate::state::ranked_json;

/// PostgreSQL text cannot hold NUL: it is written as U+FFFD (never seen in valid records; a
/// dead letter's payload with NUL goes to `payload_hex` instead).
fn clean(text: &str) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text.to_owned()
    }
}

/// Rows of a keyed current-state table: keys with their new value, keys that went away.
#[derive(Debug, Default, PartialEq)]
pub struct Upserts<T> {
    pub set: Vec<(String, T, String)>,
    pub gone: Vec<String>,
}

impl<T: Clone> Upserts<T> {
    fn from_newest(newest: BTreeMap<String, (Option<T>, String)>) -> Upserts<T> {
        let mut out = Upserts {
            set: Vec::new(),
            gone: Vec::new(),
        };
        for (key, (value, label)) in newest {
            match value {
                Some(v) => out.set.push((key, v, label)),
                None => out.gone.push(key),
            }
        }
        out
    }
}

/// One alert row.
#[derive(Debug, PartialEq)]
pub struct AlertRow {
    pub epoch_start: String,
    pub key: String,
    pub diff: i32,
    pub rule: String,
    pub alert: String,
}

/// One dead letter row.
#[derive(Debug, PartialEq)]
pub struct DeadRow {
    pub epoch_start: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub detail: String,
    pub key: Option<String>,
    pub payload: Option<String>,
    pub payload_hex: Option<String>,
}

/// Everything one transaction writes after the skipped epochs.
/// A ranked product: stock code, name (if it has one) and net revenue in thousandths.
pub type Named = (Text, Option<Text>, i64);

#[derive(Debug, Default, PartialEq)]
pub struct Rows {
    /// The last epoch written, and its start: the progress row's new value.
    pub last: Option<(u64, String)>,
    /// The totals' new value (`None` inside: gone), with the epoch that set it.
    pub totals: Option<(Option<Sums>, String)>,
    pub countries: Upserts<Sums>,
    /// The new ranking (code, name, revenue), with the epoch that set it (an empty ranking
    /// clears the table).
    pub top: Option<(Vec<Named>, String)>,
    /// Epoch rows, keyed by the epoch's start: measures, and the top products as JSON.
    pub epochs: Upserts<(Sums, String)>,
    pub alerts: Vec<AlertRow>,
    pub dead: Vec<DeadRow>,
}

impl Rows {
    /// Whether the transaction has nothing to write.
    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }
}

/// The rows of `batches` (in epoch order) after epoch `done`, the last one the database has.
pub fn rows(batches: &[Batch], done: Option<u64>, label: impl Fn(u64) -> String) -> Rows {
    let mut rows = Rows::default();
    let mut countries = BTreeMap::new();
    let mut epochs = BTreeMap::new();
    for batch in batches.iter().filter(|b| done.is_none_or(|d| b.epoch > d)) {
        let at = &batch.label;
        // Keyed streams: a key's +1 row is its new value; a key with only -1 rows went away.
        let mut totals = None;
        let mut top = None;
        let mut batch_countries = BTreeMap::new();
        let mut batch_epochs = BTreeMap::new();
        for (o, diff) in &batch.updates {
            let new = *diff > 0;
            match o {
                Output::Totals(s) => set(&mut totals, new.then_some(*s)),
                Output::TopProducts(r) => {
                    let named =
                        |(p, rev): &(Text, i64)| (p.clone(), batch.names.get(p).cloned(), *rev);
                    set(&mut top, new.then(|| r.iter().map(named).collect()))
                }
                Output::Country(c, s) => set(
                    batch_countries.entry(clean(c)).or_default(),
                    new.then_some(*s),
                ),
                Output::Epoch(e, s, r) => {
                    let value = new.then(|| (*s, ranked_json(r, &batch.names).to_string()));
                    set(batch_epochs.entry(label(*e)).or_default(), value)
                }
                Output::Alert(_) | Output::Name(..) => {}
            }
        }
        if let Some(t) = totals {
            rows.totals = Some((t, at.clone()));
        }
        if let Some(t) = top {
            rows.top = Some((t.unwrap_or_default(), at.clone()));
        }
        for (key, v) in batch_countries {
            countries.insert(key, (v.flatten(), at.clone()));
        }
        for (key, v) in batch_epochs {
            epochs.insert(key, (v.flatten(), at.clone()));
        }
        // The alerts' rows as the writer rendered them, with their JSON body.
        for change in batch
            .changes
            .iter()
            .filter(|c| c.stream == OutputStream::Alerts)
        {
            let line: Value = serde_json::from_str(&change.line).expect("the writer's own JSON");
            rows.alerts.push(AlertRow {
                epoch_start: at.clone(),
                key: clean(&change.key),
                diff: line["diff"].as_i64().unwrap_or(0) as i32,
                rule: line["alert"]["rule"].as_str().unwrap_or("").to_owned(),
                alert: clean(&line["alert"].to_string()),
            });
        }
        for (d, _) in &batch.dead {
            let text = std::str::from_utf8(&d.payload)
                .ok()
                .filter(|t| !t.contains('\0'));
            rows.dead.push(DeadRow {
                epoch_start: at.clone(),
                partition: d.partition,
                offset: d.offset,
                reason: clean(d.reason.code()),
                detail: clean(&d.detail),
                key: d.key.as_ref().map(|k| clean(&String::from_utf8_lossy(k))),
                payload: text.map(str::to_owned),
                payload_hex: text
                    .is_none()
                    .then(|| d.payload.iter().map(|b| format!("{b:02x}")).collect()),
            });
        }
        rows.last = Some((batch.epoch, at.clone()));
    }
    rows.countries = Upserts::from_newest(countries);
    rows.epochs = Upserts::from_newest(epochs);
    rows
}

/// Records one row of a keyed stream in `slot`: `Some(new)` for a +1 row (which wins), `None`
/// for a retraction unless the new value is already there.
fn set<T>(slot: &mut Option<Option<T>>, value: Option<T>) {
    match (slot.as_ref(), value) {
        (_, Some(v)) => *slot = Some(Some(v)),
        (None, None) => *slot = Some(None),
        (Some(_), None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Alert;
    use crate::epoch::EpochClock;
    use crate::parse::DeadLetter;
    use crate::sink::Renderer;
    use retail_common::record::RejectKind;

    fn sums(lines: i64) -> Sums {
        Sums {
            lines,
            revenue_milli: lines * 1_500,
            ..Sums::default()
        }
    }

    /// Three epochs rendered by the writer's own renderer.
    fn batches() -> (Vec<Batch>, EpochClock) {
        let clock = EpochClock {
            epoch_secs: 3600,
            lateness_epochs: 0,
        };
        let mut r = Renderer {
            clock,
            state: Default::default(),
        };
        let alert = Alert::LargeInvoice {
            invoice: "536365".into(),
            value_milli: 9_000_000,
        };
        let dead = DeadLetter {
            partition: 2,
            offset: 40,
            reason: RejectKind::NotJson,
            detail: "x".into(),
            key: Some(b"k".to_vec()),
            payload: vec![0, 1, 0xff],
        };
        let first = r.render(
            1,
            vec![
                (Output::Totals(sums(1)), 1),
                (Output::Country("France".into(), sums(1)), 1),
                (Output::TopProducts(vec![("85123A".into(), 1_500)]), 1),
                (Output::Epoch(1, sums(1), vec![("85123A".into(), 1_500)]), 1),
                (Output::Alert(alert.clone()), 1),
            ],
            vec![dead],
        );
        let second = r.render(
            2,
            vec![
                (Output::Totals(sums(1)), -1),
                (Output::Totals(sums(3)), 1),
                (Output::Country("France".into(), sums(1)), -1),
                (Output::Country("Spain".into(), sums(2)), 1),
                (Output::Epoch(2, sums(2), vec![]), 1),
                (Output::Alert(alert), -1),
            ],
            vec![],
        );
        let third = r.render(
            3,
            vec![(Output::Country("Spain".into(), sums(2)), -1)],
            vec![],
        );
        (vec![first, second, third], clock)
    }

    #[test]
    fn newest_values_win_and_history_keeps_every_row() {
        let (batches, clock) = batches();
        let rows = rows(&batches, None, |e| clock.label(e).to_string());
        let (h1, h2, h3) = (
            "1970-01-01T01:00:00",
            "1970-01-01T02:00:00",
            "1970-01-01T03:00:00",
        );
        assert_eq!(rows.last, Some((3, h3.into())));
        assert_eq!(rows.totals, Some((Some(sums(3)), h2.into())));
        assert_eq!(rows.countries.set, []);
        assert_eq!(rows.countries.gone, ["France", "Spain"]);
        let top = vec![("85123A".into(), None, 1_500)];
        assert_eq!(rows.top, Some((top, h1.into())));
        assert_eq!(rows.epochs.set.len(), 2);
        assert_eq!(
            rows.epochs.set[0].1.1,
            r#"[{"description":null,"revenue_milli":1500,"stock_code":"85123A"}]"#
        );
        let diffs: Vec<(&str, i32)> = rows
            .alerts
            .iter()
            .map(|a| (a.epoch_start.as_str(), a.diff))
            .collect();
        assert_eq!(diffs, [(h1, 1), (h2, -1)]);
        assert_eq!(rows.alerts[0].key, "large_invoice/536365");
        assert_eq!(rows.alerts[0].rule, "large_invoice");
        // NUL and invalid UTF-8 payloads go to hex.
        assert_eq!(rows.dead[0].payload, None);
        assert_eq!(rows.dead[0].payload_hex.as_deref(), Some("0001ff"));
    }

    #[test]
    fn epochs_the_database_has_are_skipped() {
        let (batches, clock) = batches();
        let label = |e| clock.label(e).to_string();
        let after_two = rows(&batches, Some(2), label);
        assert_eq!(after_two.last.as_ref().map(|l| l.0), Some(3));
        assert_eq!((after_two.totals, after_two.top), (None, None));
        assert_eq!(after_two.countries.gone, ["Spain"]);
        assert!(after_two.alerts.is_empty() && after_two.dead.is_empty());
        assert!(rows(&batches, Some(3), label).is_empty());
        // Written in two commits (1, then 2-3) or one, the newest values are the same.
        let whole = rows(&batches, None, label);
        let tail = rows(&batches[1..], Some(1), label);
        assert_eq!(
            (whole.totals, whole.countries),
            (tail.totals, tail.countries)
        );
    }
}
