//! The independent oracle: what a job's outputs must be, computed from a topic's messages by
//! the definitions in README and `dataflow/docs/how-it-works.md` alone, never by the job's
//! own code. It validates the wire record itself (serde_json and chrono, not the job's
//! parser), computes money in thousandths and cancellations itself, replays each partition's
//! watermark with `--lateness` and `--invoice-retention` record by record, raises the alerts
//! by their rules, and checks that every message sits in the partition the Java client's
//! murmur2 partitioner gives its key (a second murmur2, checked against vectors from the Java
//! client in its tests).
//!
//! Integration tests compare a run's `summary.json`, `epochs.jsonl`, `alerts.jsonl` and
//! `dlq.jsonl` with it ([`assert_outputs_match`]), so that two runs cannot agree on a wrong
//! answer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::NaiveDateTime;
use rdkafka::message::{Headers as _, Message as _};
use serde_json::{Value, json};

use crate::broker::{partitions, read_topic};
use crate::files::{read_jsonl, read_summary};

/// One message of a topic, as read back.
#[derive(Clone, Debug)]
pub struct TopicMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The job's flags the outputs depend on, in seconds and thousandths; `Default` is the job's
/// defaults.
#[derive(Clone, Debug)]
pub struct Flags {
    pub epoch_secs: u64,
    pub lateness_secs: u64,
    /// `None`: `--invoice-retention off`.
    pub retention_secs: Option<u64>,
    pub invoice_value_milli: i64,
    pub quantity: i64,
    pub cancellations: i64,
    pub max_message_bytes: usize,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            epoch_secs: 3600,
            lateness_secs: 0,
            retention_secs: Some(30 * 86_400),
            invoice_value_milli: 5_000_000,
            quantity: 10_000,
            cancellations: 5,
            max_message_bytes: 65_536,
        }
    }
}

/// What the outputs must hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// `summary.json`, whole.
    pub summary: Value,
    /// Each epoch's row (the `epochs` stream's last value per key), by epoch label.
    pub epochs: BTreeMap<String, Value>,
    /// The open alerts at the end (the `alerts` multiset: one line's alert per line), by key
    /// and the alert as JSON text, with their multiplicity.
    pub alerts: BTreeMap<(String, String), i64>,
    /// Dead letters: partition, offset, reason.
    pub dead: BTreeSet<(i32, i64, String)>,
}

/// Every committed message of `topic` (read over PLAINTEXT), each partition's in order, and
/// the topic's partition count: the oracle's input.
pub fn topic_messages(topic: &str) -> (Vec<TopicMessage>, i32) {
    let messages = read_topic(topic, true)
        .iter()
        .map(|m| TopicMessage {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
        .collect();
    (messages, partitions(topic))
}

/// The Java client's murmur2 of `data` (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives a keyed record.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// A valid line, as the oracle reads it.
struct Line {
    invoice: String,
    stock_code: String,
    quantity: i64,
    secs: i64,
    price_milli: i64,
    value_milli: i64,
    customer: Option<String>,
    country: String,
    description: Option<String>,
}

/// Reads a message by the wire format's table, or gives the dead-letter reason.
fn read_line(payload: &[u8], max_bytes: usize) -> Result<Line, &'static str> {
    if payload.len() > max_bytes {
        return Err("oversized");
    }
    let text = std::str::from_utf8(payload).map_err(|_| "not_utf8")?;
    let value: Value = serde_json::from_str(text).map_err(|_| "not_json")?;
    let object = value.as_object().ok_or("wrong_type")?;
    let field = |name: &str| object.get(name).ok_or("missing_field");
    let text_field = |name: &str| -> Result<String, &'static str> {
        let v = field(name)?.as_str().ok_or("wrong_type")?;
        Ok(v.to_owned())
    };
    let optional = |name: &str| -> Result<Option<String>, &'static str> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err("wrong_type"),
        }
    };
    let invoice = text_field("invoice_no")?;
    let stock_code = text_field("stock_code")?;
    let country = text_field("country")?;
    let quantity = field("quantity")?.as_i64().ok_or("wrong_type")?;
    let date = text_field("invoice_date")?;
    let price = text_field("unit_price")?;
    let description = optional("description")?;
    let customer = optional("customer_id")?;
    if invoice.is_empty() || stock_code.is_empty() || country.is_empty() {
        return Err("empty_field");
    }
    let secs = NaiveDateTime::parse_from_str(&date, "%Y-%m-%dT%H:%M:%S")
        .map_err(|_| "bad_date")?
        .and_utc()
        .timestamp();
    let price_milli = milli(&price).ok_or("bad_price")?;
    let value_milli = quantity.checked_mul(price_milli).ok_or("value_overflow")?;
    Ok(Line {
        invoice,
        stock_code,
        quantity,
        secs,
        price_milli,
        value_milli,
        customer,
        country,
        description,
    })
}

/// A decimal string with at most 3 fractional digits, in thousandths.
fn milli(price: &str) -> Option<i64> {
    let (negative, digits) = match price.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, price),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || fraction.len() > 3 {
        return None;
    }
    if digits.contains('.') && fraction.is_empty() {
        return None;
    }
    let padded = format!("{fraction:0<3}");
    let value = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(padded.parse::<i64>().ok()?)?;
    Some(if negative { -value } else { value })
}

/// Sums of lines, units and revenue.
#[derive(Clone, Copy, Default)]
struct Sums {
    lines: i64,
    units: i64,
    revenue: i64,
}

impl Sums {
    fn add(&mut self, line: &Line) {
        self.lines += 1;
        self.units += line.quantity;
        self.revenue += line.value_milli;
    }

    fn json(&self) -> Value {
        json!({"lines": self.lines, "units": self.units, "revenue_milli": self.revenue})
    }
}

/// One epoch's row.
#[derive(Default)]
struct EpochRow {
    sums: Sums,
    invoices: BTreeSet<String>,
    late: i64,
    products: BTreeMap<String, i64>,
}

/// An open invoice of a partition.
struct Invoice {
    /// The latest epoch any of its lines was assigned to.
    last: u64,
    value_milli: i64,
    /// The alerts its lines raised, once per line.
    line_alerts: Vec<(String, String)>,
}

/// Per product, per epoch, the greatest description of the epoch's lines that name it: lines
/// with a positive unit price and a description that is not blank (trimmed).
type Names = BTreeMap<String, BTreeMap<u64, String>>;

/// A product's name as of `epoch`: the name its latest epoch at or before `epoch` gave it.
fn name_of(names: &Names, code: &str, epoch: u64) -> Option<String> {
    let (_, name) = names.get(code)?.range(..=epoch).next_back()?;
    Some(name.clone())
}

/// The `n` best products by net revenue, ties by stock code, each with its name as of
/// `epoch`; products whose revenue nets to zero are not in a ranking (they left the
/// aggregate).
fn ranked(products: &BTreeMap<String, i64>, n: usize, names: &Names, epoch: u64) -> Value {
    let mut all: Vec<(&String, i64)> = products
        .iter()
        .filter(|(_, r)| **r != 0)
        .map(|(p, r)| (p, *r))
        .collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    Value::Array(
        all.into_iter()
            .take(n)
            .map(|(p, r)| {
                json!({"stock_code": p, "description": name_of(names, p, epoch),
                       "revenue_milli": r})
            })
            .collect(),
    )
}

/// The start of `epoch` as the outputs label it.
fn label(epoch: u64, epoch_secs: u64) -> String {
    let secs = i64::try_from(epoch * epoch_secs).expect("an epoch in range");
    chrono::DateTime::from_timestamp(secs, 0)
        .expect("an epoch in range")
        .naive_utc()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// Asserts that every keyed message of a topic of `partitions` partitions is in the partition
/// the Java client's default partitioner gives its key (as `ingest` places them).
pub fn assert_java_partitioned(messages: &[TopicMessage], partitions: i32) {
    for m in messages {
        if let Some(key) = &m.key {
            assert_eq!(
                m.partition,
                java_partition(key, partitions),
                "message {}@{} (key {:?}) is not in the Java partitioner's partition",
                m.partition,
                m.offset,
                String::from_utf8_lossy(key)
            );
        }
    }
}

/// What a job with `flags` must output for `messages` (every message of a topic, each
/// partition's in offset order).
pub fn oracle(messages: &[TopicMessage], flags: &Flags) -> Expected {
    let epoch_of = |secs: i64| u64::try_from(secs).unwrap_or(0) / flags.epoch_secs;
    let lateness = flags.lateness_secs.div_ceil(flags.epoch_secs);
    let retention = flags.retention_secs.map(|r| r.div_ceil(flags.epoch_secs));

    let mut totals = Sums::default();
    let (mut cancel_lines, mut cancel_value, mut late_lines, mut invoice_count) = (0, 0, 0, 0);
    let mut customers = BTreeSet::new();
    let mut countries: BTreeMap<String, Sums> = BTreeMap::new();
    let mut products: BTreeMap<String, i64> = BTreeMap::new();
    let mut names = Names::new();
    let mut epochs: BTreeMap<u64, EpochRow> = BTreeMap::new();
    let mut bursts: BTreeMap<(u64, String), i64> = BTreeMap::new();
    let mut alerts: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut dead = BTreeSet::new();
    let mut reasons: BTreeMap<String, i64> = BTreeMap::new();

    let mut by_partition: BTreeMap<i32, Vec<&TopicMessage>> = BTreeMap::new();
    for m in messages {
        by_partition.entry(m.partition).or_default().push(m);
    }
    for (partition, messages) in by_partition {
        // The partition's watermark: the latest epoch it has shown.
        let mut latest: Option<u64> = None;
        let mut open: BTreeMap<String, Invoice> = BTreeMap::new();
        let open_from = |latest: Option<u64>| latest.map_or(0, |l: u64| l.saturating_sub(lateness));
        for m in messages {
            let line = match read_line(&m.payload, flags.max_message_bytes) {
                Ok(line) => line,
                Err(reason) => {
                    dead.insert((partition, m.offset, reason.to_owned()));
                    *reasons.entry(reason.to_owned()).or_default() += 1;
                    continue;
                }
            };
            let event = epoch_of(line.secs);
            let from = open_from(latest);
            if retention.is_some_and(|r| event + r < from) {
                dead.insert((partition, m.offset, "invoice_closed".to_owned()));
                *reasons.entry("invoice_closed".to_owned()).or_default() += 1;
                continue;
            }
            let late = event < from;
            let epoch = event.max(from);
            latest = Some(latest.map_or(epoch, |l| l.max(epoch)));

            let description = line.description.as_deref().map(str::trim);
            if let Some(d) = description.filter(|d| line.price_milli > 0 && !d.is_empty()) {
                let best = names
                    .entry(line.stock_code.clone())
                    .or_default()
                    .entry(epoch)
                    .or_default();
                if d > best.as_str() {
                    *best = d.to_owned();
                }
            }
            totals.add(&line);
            late_lines += i64::from(late);
            if line.invoice.starts_with('C') {
                cancel_lines += 1;
                cancel_value += line.value_milli;
                if let Some(c) = &line.customer {
                    *bursts.entry((epoch, c.clone())).or_default() += 1;
                }
            }
            if let Some(c) = &line.customer {
                customers.insert(c.clone());
            }
            countries
                .entry(line.country.clone())
                .or_default()
                .add(&line);
            *products.entry(line.stock_code.clone()).or_default() += line.value_milli;
            let row = epochs.entry(epoch).or_default();
            row.sums.add(&line);
            row.invoices.insert(line.invoice.clone());
            row.late += i64::from(late);
            *row.products.entry(line.stock_code.clone()).or_default() += line.value_milli;

            let invoice = open.entry(line.invoice.clone()).or_insert_with(|| {
                invoice_count += 1;
                Invoice {
                    last: epoch,
                    value_milli: 0,
                    line_alerts: Vec::new(),
                }
            });
            invoice.last = invoice.last.max(epoch);
            invoice.value_milli += line.value_milli;
            let mut raise = |key: String, alert: Value| {
                let alert = (key, alert.to_string());
                invoice.line_alerts.push(alert.clone());
                *alerts.entry(alert).or_default() += 1;
            };
            if line.quantity > 0 && line.price_milli <= 0 {
                raise(
                    format!("non_positive_price/{}/{}", line.invoice, line.stock_code),
                    json!({"rule": "non_positive_price", "invoice": line.invoice,
                           "stock_code": line.stock_code, "unit_price_milli": line.price_milli,
                           "quantity": line.quantity}),
                );
            }
            if line.quantity.abs() >= flags.quantity {
                raise(
                    format!("large_quantity/{}/{}", line.invoice, line.stock_code),
                    json!({"rule": "large_quantity", "invoice": line.invoice,
                           "stock_code": line.stock_code, "quantity": line.quantity}),
                );
            }

            // Invoices the watermark has left more than the retention behind close: they
            // still count, and their alerts are settled.
            if let Some(r) = retention {
                let from = open_from(latest);
                let closing: Vec<String> = open
                    .iter()
                    .filter(|(_, i)| i.last + r < from)
                    .map(|(k, _)| k.clone())
                    .collect();
                for number in closing {
                    let invoice = open.remove(&number).expect("an open invoice");
                    for alert in invoice.line_alerts {
                        *alerts.get_mut(&alert).expect("an open alert") -= 1;
                    }
                }
            }
        }
        // The invoices still open whose net value is above the threshold.
        for (number, invoice) in open {
            if invoice.value_milli > flags.invoice_value_milli {
                let alert = json!({"rule": "large_invoice", "invoice": number,
                                   "value_milli": invoice.value_milli});
                alerts.insert((format!("large_invoice/{number}"), alert.to_string()), 1);
            }
        }
    }
    alerts.retain(|_, n| *n != 0);

    // Cancellation bursts; under a retention those more than it before the last epoch with
    // lines are settled.
    let last_epoch = epochs.keys().next_back().copied().unwrap_or(0);
    for ((epoch, customer), lines) in bursts {
        let settled = retention.is_some_and(|r| epoch + r < last_epoch);
        if lines > flags.cancellations && !settled {
            let at = label(epoch, flags.epoch_secs);
            let alert = json!({"rule": "cancellation_burst", "epoch": at,
                               "customer": customer, "lines": lines});
            alerts.insert(
                (
                    format!("cancellation_burst/{at}/{customer}"),
                    alert.to_string(),
                ),
                1,
            );
        }
    }

    let epoch_rows: BTreeMap<String, Value> = epochs
        .iter()
        .map(|(e, row)| {
            let mut value = row.sums.json();
            value["invoices"] = json!(row.invoices.len());
            value["late_lines"] = json!(row.late);
            value["top_products"] = ranked(&row.products, 5, &names, *e);
            (label(*e, flags.epoch_secs), value)
        })
        .collect();
    let summary = json!({
        "totals": {
            "lines": totals.lines, "units": totals.units, "revenue_milli": totals.revenue,
            "invoices": invoice_count, "customers": customers.len(),
            "cancellation_lines": cancel_lines, "cancellation_value_milli": cancel_value,
            "late_lines": late_lines,
        },
        "by_country": countries.iter().map(|(c, s)| (c.clone(), s.json()))
            .collect::<serde_json::Map<_, _>>(),
        "top_products": ranked(&products, 10, &names, last_epoch),
        "epochs": epoch_rows.len(),
        "alerts": alerts.values().sum::<i64>(),
        "dead_letters": {"total": dead.len(), "by_reason": reasons},
    });
    Expected {
        summary,
        epochs: epoch_rows,
        alerts,
        dead,
    }
}

/// Asserts that the outputs in `out` (a bounded run's `summary.json` and JSON-lines files)
/// equal `expected`, stream by stream.
pub fn assert_outputs_match(out: &Path, expected: &Expected) {
    let summary = read_summary(out);
    for part in [
        "totals",
        "by_country",
        "top_products",
        "epochs",
        "alerts",
        "dead_letters",
    ] {
        assert_eq!(
            summary[part],
            expected.summary[part],
            "summary.json's {part} differs from the oracle's ({})",
            out.display()
        );
    }
    let mut epochs = BTreeMap::new();
    for row in read_jsonl(out, "epochs") {
        let key = row["key"].as_str().expect("an epoch key").to_owned();
        match &row["value"] {
            Value::Null => epochs.remove(&key),
            v => epochs.insert(key, v.clone()),
        };
    }
    assert_eq!(
        epochs.len(),
        expected.epochs.len(),
        "epochs.jsonl's epochs differ from the oracle's"
    );
    for (key, row) in &expected.epochs {
        assert_eq!(epochs.get(key), Some(row), "epochs.jsonl's row for {key}");
    }
    let mut alerts: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in read_jsonl(out, "alerts") {
        let key = row["key"].as_str().expect("an alert key").to_owned();
        let diff = row["diff"].as_i64().expect("an alerts row's diff");
        let n = alerts.entry((key, row["alert"].to_string())).or_default();
        *n += diff;
        assert!(*n >= 0, "an alert retracted more often than raised: {row}");
    }
    alerts.retain(|_, n| *n != 0);
    assert_eq!(
        alerts,
        expected.alerts,
        "the open alerts differ from the oracle's ({})",
        out.display()
    );
    let dead: BTreeSet<(i32, i64, String)> = read_jsonl(out, "dlq")
        .iter()
        .map(|l| {
            (
                l["partition"].as_i64().unwrap() as i32,
                l["offset"].as_i64().unwrap(),
                l["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(dead, expected.dead, "dlq.jsonl differs from the oracle's");
}

/// Asserts that the dead-letter topic `topic` holds, committed, exactly the oracle's dead
/// letters, by their provenance headers.
pub fn assert_dead_letter_topic_matches(topic: &str, expected: &Expected) {
    let header = |m: &rdkafka::message::OwnedMessage, name: &str| -> String {
        let headers = m.headers().expect("dead letters carry headers");
        let value = headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .unwrap_or_else(|| panic!("a dead letter without header {name}"));
        String::from_utf8(value.to_vec()).expect("a UTF-8 header")
    };
    let dead: BTreeSet<(i32, i64, String)> = read_topic(topic, true)
        .iter()
        .map(|m| {
            (
                header(m, "source.partition").parse().expect("a partition"),
                header(m, "source.offset").parse().expect("an offset"),
                header(m, "reason"),
            )
        })
        .collect();
    assert_eq!(
        dead, expected.dead,
        "{topic} differs from the oracle's dead letters"
    );
}

#[cfg(test)]
mod tests;
