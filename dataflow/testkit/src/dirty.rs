//! Dirty topics: `ingest`'s generated sales with bad messages of every dead-letter reason
//! mixed in, lines moved back in time (out of order within their partition, some by more
//! than a job's `--lateness`), and early lines sent again at the end (their invoices closed
//! under a short invoice retention), so that dead letters, late lines and closed invoices
//! cross workers, processes and restarts.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::broker::ingest_to;
use crate::broker::{bootstrap, create_topic};
use crate::process::run_ok;

/// What [`publish_dirty`] put in the topic besides the good sales.
#[derive(Debug, Default)]
pub struct Dirt {
    /// Bad messages by the dead-letter reason each must get.
    pub bad: BTreeMap<&'static str, usize>,
    /// Good lines dated `hours` earlier than their neighbours, by `hours`.
    pub moved: BTreeMap<u32, usize>,
    /// Lines of the first tenth sent again in the last tenth (about 85% of the topic's time span
    /// later, over 7 h for `--generate`'s clock at 60,000 lines): their invoices are long over.
    pub resent: usize,
}

/// Every `BAD_EVERY`-th message is a bad one; every `MOVE_EVERY`-th good line is moved back.
const BAD_EVERY: usize = 499;
const MOVE_EVERY: usize = 97;
/// Every `RESEND_EVERY`-th line of the last tenth, a line of the first tenth is sent again.
const RESEND_EVERY: usize = 211;
/// How far lines are moved back, in turn, in hours: with `--lateness 1h` the first stay in
/// their epochs or are late, the second are late; neither is behind a retention of 3 h.
const MOVES: [u32; 2] = [1, 2];

/// Publishes `n` generated sales (`--seed seed`) into a new `topic` of 8 partitions, keyed
/// by invoice and placed by the Java client's partitioner as `ingest` does, with bad messages
/// and moved lines mixed in; returns what was mixed in.
pub fn publish_dirty(topic: &str, n: usize, seed: u64, dir: &Path) -> Dirt {
    let out = run_ok(
        ingest_to(topic, dir)
            .args(["--generate", &n.to_string(), "--seed", &seed.to_string()])
            .arg("--dry-run"),
    );
    let lines: Vec<&[u8]> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        n,
        "ingest --dry-run printed {} lines",
        lines.len()
    );
    create_topic(topic, 8, &[]);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let mut dirt = Dirt::default();
    let send = |key: &str, payload: &[u8]| loop {
        match producer.send(BaseRecord::to(topic).key(key).payload(payload)) {
            Ok(()) => return,
            Err((e, _)) => {
                assert!(
                    e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    "{e}"
                );
                producer.poll(Duration::from_millis(50));
            }
        }
    };
    for (i, line) in lines.iter().enumerate() {
        let text = std::str::from_utf8(line).expect("ingest writes UTF-8");
        let key = field(text, "invoice_no").expect("an invoice").to_owned();
        if i % BAD_EVERY == BAD_EVERY - 1 {
            let (reason, payload) = spoil(text, i / BAD_EVERY);
            *dirt.bad.entry(reason).or_default() += 1;
            send(&format!("bad-{i}"), &payload);
        }
        let moved = (i % MOVE_EVERY == MOVE_EVERY - 1)
            .then(|| MOVES[(i / MOVE_EVERY) % MOVES.len()])
            .and_then(|hours| Some((hours, move_back(text, hours)?)));
        match moved {
            Some((hours, text)) => {
                *dirt.moved.entry(hours).or_default() += 1;
                send(&key, text.as_bytes());
            }
            None => send(&key, line),
        }
        if i >= n / 10 * 9 && i % RESEND_EVERY == 0 {
            let early = lines[i - n / 20 * 17];
            let key = field(std::str::from_utf8(early).unwrap(), "invoice_no").unwrap();
            send(key, early);
            dirt.resent += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    dirt
}

/// The value of the string field `name` in a record `ingest` wrote.
fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// `text` with the string field `name` set to `value` (JSON-quoted by the caller when needed).
fn with_field(text: &str, name: &str, value: &str) -> String {
    let old = field(text, name).expect("the field");
    text.replacen(
        &format!("\"{name}\":\"{old}\""),
        &format!("\"{name}\":{value}"),
        1,
    )
}

/// The `k`-th bad message, made from a good one, and the reason the job must give.
fn spoil(text: &str, k: usize) -> (&'static str, Vec<u8>) {
    let quantity = |v: &str| {
        let start = text.find("\"quantity\":").unwrap() + "\"quantity\":".len();
        let len = text[start..].find(',').unwrap();
        format!("{}{v}{}", &text[..start], &text[start + len..])
    };
    match k % 9 {
        0 => (
            "not_utf8",
            [b"{\"invoice_no\":\"\xff", text.as_bytes()].concat(),
        ),
        1 => ("not_json", text.as_bytes()[..text.len() / 2].to_vec()),
        2 => (
            "missing_field",
            text.replacen("\"country\"", "\"nation\"", 1).into_bytes(),
        ),
        3 => ("wrong_type", quantity("\"two\"").into_bytes()),
        4 => (
            "bad_date",
            with_field(text, "invoice_date", "\"2011-02-30T08:00:00\"").into_bytes(),
        ),
        5 => (
            "bad_price",
            with_field(text, "unit_price", "\"2.5501\"").into_bytes(),
        ),
        6 => (
            "empty_field",
            with_field(text, "stock_code", "\"\"").into_bytes(),
        ),
        7 => (
            "value_overflow",
            quantity("9223372036854775807").into_bytes(),
        ),
        _ => (
            "oversized",
            with_field(text, "description", &format!("\"{}\"", "x".repeat(70_000))).into_bytes(),
        ),
    }
}

/// `text` dated `hours` earlier, when that stays on the same day (the date's form unchanged).
fn move_back(text: &str, hours: u32) -> Option<String> {
    let date = field(text, "invoice_date")?;
    let hour: u32 = date.get(11..13)?.parse().ok()?;
    let earlier = hour.checked_sub(hours)?;
    let moved = format!("{}{earlier:02}{}", &date[..11], &date[13..]);
    Some(with_field(text, "invoice_date", &format!("\"{moved}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"invoice_no":"536365","stock_code":"19336","description":"LARGE SILVER MAGNETS","quantity":12,"invoice_date":"2010-12-01T08:00:00","unit_price":"1.18","customer_id":"14067","country":"United Kingdom"}"#;

    #[test]
    fn every_bad_message_fails_for_its_reason() {
        for k in 0..9 {
            let (reason, payload) = spoil(LINE, k);
            if reason == "oversized" {
                // The job's --max-message-bytes (64 KiB by default) refuses it before parsing.
                assert!(payload.len() > 65_536);
                continue;
            }
            let parsed = retail_common::record::Sale::from_json(&payload);
            let err = parsed.expect_err(reason);
            assert_eq!(err.kind.code(), reason, "{k}");
        }
    }

    #[test]
    fn a_moved_line_keeps_its_day() {
        let moved = move_back(LINE, 3).unwrap();
        assert!(
            moved.contains(r#""invoice_date":"2010-12-01T05:00:00""#),
            "{moved}"
        );
        assert_eq!(move_back(LINE, 9), None);
        assert_eq!(field(LINE, "country"), Some("United Kingdom"));
    }
}
