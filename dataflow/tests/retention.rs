//! Invoice retention against the real broker: closing invoices changes no total, gives the
//! same outputs for any worker and process count, settles the invoices' alerts, dead-letters a
//! line for a closed invoice, leaves only the open invoices in the state topic, and restores
//! from a checkpoint taken while invoices were open to the uninterrupted run's outputs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use common::*;

/// The live entries of a job's state topic (the newest value of each key), by key.
fn state_entries(job_id: &str) -> BTreeMap<String, Vec<u8>> {
    let mut live = BTreeMap::new();
    for m in read_topic(&format!("retail-aggregates.checkpoints.{job_id}"), true) {
        let key = String::from_utf8_lossy(m.key().unwrap()).into_owned();
        match m.payload() {
            Some(p) => live.insert(key, p.to_vec()),
            None => live.remove(&key),
        };
    }
    live
}

/// How many live entries of `kind` (`invoice`, `open`) the state holds.
fn count(entries: &BTreeMap<String, Vec<u8>>, kind: &str) -> usize {
    let needle = format!("/{kind}:");
    entries.keys().filter(|k| k.contains(&needle)).count()
}

#[test]
fn closing_invoices_changes_no_total_and_keeps_only_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("retention");
    publish(&topic, &["--generate", "60000", "--seed", "12"], dir.path());
    // A copy of the first line of partition 0, sent again at its end: hours behind the
    // partition's watermark, its invoice long closed.
    let first = read_topic(&topic, true)
        .into_iter()
        .find(|m| m.partition() == 0)
        .expect("partition 0 has sales");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            BaseRecord::to(&topic)
                .key(first.key().unwrap())
                .payload(first.payload().unwrap())
                .partition(0),
        )
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();

    let flags = |retention: &'static str| {
        ["--sinks", "jsonl", "--epoch", "1m"]
            .into_iter()
            .chain(["--invoice-retention", retention])
            .collect::<Vec<_>>()
    };
    let off = dir.path().join("off");
    run_ok(dataflow(&topic, &off, &flags("off")).args(["-w", "2"]));
    let on = dir.path().join("on");
    run_ok(dataflow(&topic, &on, &flags("5m")).args(["-w", "1"]));
    let three = dir.path().join("on-w3");
    run_ok(dataflow(&topic, &three, &flags("5m")).args(["-w", "3"]));
    let procs = dir.path().join("on-n2w2");
    dataflow_cluster(&topic, &procs, 2, 2, &flags("5m"));
    assert_same_outputs(&on, &three);
    assert_same_outputs(&on, &procs);
    // Both equal the oracle: with retention, invoices close and their alerts are settled.
    let (messages, partitions) = topic_messages(&topic);
    assert_java_partitioned(&messages, partitions);
    for (out, retention_secs) in [(&off, None), (&on, Some(300))] {
        let flags = Flags {
            epoch_secs: 60,
            retention_secs,
            ..Flags::default()
        };
        assert_outputs_match(out, &common::oracle(&messages, &flags));
    }

    // The late copy is a line without retention and a dead letter with it; nothing else
    // differs, distinct invoices included.
    let (kept, closed) = (read_summary(&off), read_summary(&on));
    assert_eq!(kept["dead_letters"]["total"], 0);
    assert_eq!(closed["dead_letters"]["by_reason"]["invoice_closed"], 1);
    assert_eq!(
        closed["totals"]["lines"].as_i64().unwrap(),
        kept["totals"]["lines"].as_i64().unwrap() - 1
    );
    assert_eq!(closed["totals"]["invoices"], kept["totals"]["invoices"]);
    assert_eq!(
        closed["by_country"].as_object().unwrap().len(),
        kept["by_country"].as_object().unwrap().len()
    );
    // Alerts about an invoice are settled when it closes (withdrawn from the open alerts).
    assert!(closed["alerts"].as_u64().unwrap() < kept["alerts"].as_u64().unwrap());
    let settled = read_jsonl(&on, "alerts")
        .iter()
        .filter(|r| r["diff"] == -1 && r["alert"]["rule"] == "large_invoice")
        .count();
    assert!(settled > 0, "no large invoice was settled");
    // Cancellation bursts are settled once their epoch is more than the retention behind an
    // epoch with outputs; each exactly once, and none that is still within it stays behind.
    let alerts = read_jsonl(&on, "alerts");
    let minute = |label: &serde_json::Value| {
        let t = chrono::NaiveDateTime::parse_from_str(label.as_str().unwrap(), "%Y-%m-%dT%H:%M:%S");
        t.unwrap().and_utc().timestamp() / 60
    };
    let bursts = |diff: i64| -> Vec<&serde_json::Value> {
        alerts
            .iter()
            .filter(|r| r["diff"] == diff && r["alert"]["rule"] == "cancellation_burst")
            .collect()
    };
    let (raised, withdrawn) = (bursts(1), bursts(-1));
    assert!(!withdrawn.is_empty(), "no cancellation burst was settled");
    for w in &withdrawn {
        assert!(
            minute(&w["epoch"]) - minute(&w["alert"]["epoch"]) > 5,
            "settled early: {w}"
        );
        let same = |r: &&&serde_json::Value| r["key"] == w["key"];
        assert_eq!(raised.iter().filter(same).count(), 1, "{w}");
        assert_eq!(withdrawn.iter().filter(same).count(), 1, "{w}");
    }
    let last = alerts.iter().map(|r| minute(&r["epoch"])).max().unwrap();
    for r in &raised {
        let open = !withdrawn.iter().any(|w| w["key"] == r["key"]);
        assert_eq!(open, last - minute(&r["alert"]["epoch"]) <= 5, "{r}");
    }
    let letters = read_jsonl(&on, "dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["reason"], "invoice_closed");
    assert_eq!(letters[0]["partition"], 0);
    assert_eq!(
        letters[0]["key"].as_str().unwrap().as_bytes(),
        first.key().unwrap()
    );

    // The state topic keeps every invoice without retention, only the open ones with it.
    let all = count(&state_entries(&format!("{topic}-off")), "invoice");
    let state = state_entries(&format!("{topic}-on"));
    let open = count(&state, "invoice");
    eprintln!("invoice entries: {all} without retention, {open} with 5m");
    assert_eq!(all as i64, kept["totals"]["invoices"].as_i64().unwrap());
    assert!(
        open > 0 && open * 10 < all,
        "{open} of {all} invoices still open"
    );
    assert_eq!(count(&state, "open"), open);
    delete_topics_of(&topic);
}

#[test]
fn a_checkpoint_taken_before_invoices_close_restores_to_the_uninterrupted_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("retention-restore");
    let flags = [
        "--sinks",
        "jsonl",
        "--epoch",
        "1m",
        "--invoice-retention",
        "5m",
        "-w",
        "2",
    ];
    let first = ["--generate", "20000", "--seed", "21"];
    publish(&topic, &first, dir.path());
    // A bounded run commits with invoices still open: its last minutes' invoices are in the
    // checkpoint's state.
    let resumed = dir.path().join("resumed");
    run_ok(&mut dataflow(&topic, &resumed, &flags));
    let state = state_entries(&format!("{topic}-resumed"));
    assert!(
        count(&state, "open") > 0,
        "no invoice open at the checkpoint"
    );
    // Later sales: the open invoices close while the restored job reads them.
    let later = [
        "--generate",
        "20000",
        "--seed",
        "22",
        "--start",
        "2010-12-02T00:00:00",
    ];
    publish(&topic, &later, dir.path());
    let again = run_ok(&mut dataflow(&topic, &resumed, &flags));
    assert!(text(&again.stderr).contains("resuming after the last checkpoint"));
    let whole = dir.path().join("whole");
    run_ok(&mut dataflow(&topic, &whole, &flags));
    assert_same_outputs(&whole, &resumed);
    // And the same invoices are open: the restored ones closed as they would have.
    let open = |job: &str| -> Vec<(String, Vec<u8>)> {
        state_entries(job)
            .into_iter()
            .filter(|(k, _)| k.contains("/open:") || k.contains("/invoice:"))
            .map(|(k, v)| (k.split_once('/').unwrap().1.to_owned(), v))
            .collect()
    };
    let (restored, uninterrupted) = (
        open(&format!("{topic}-resumed")),
        open(&format!("{topic}-whole")),
    );
    assert!(!uninterrupted.is_empty());
    assert_eq!(restored, uninterrupted);
    delete_topics_of(&topic);
}
