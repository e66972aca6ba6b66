//! The dataflow job against the real broker: identical results for any worker and process
//! count, equal to a plain fold over the input, and every bad message dead-lettered.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::Command;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;

use retail_common::Sale;

use common::*;

/// Typed rows of a (possibly gzipped) CSV in the UCI header, as ingest types them.
fn csv_sales(path: &std::path::Path) -> Vec<Sale> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut plain)
            .unwrap();
        bytes = plain;
    }
    let mut reader = csv::Reader::from_reader(&bytes[..]);
    reader
        .records()
        .filter_map(|r| {
            let r = r.unwrap();
            sale_of_row(|i| r.get(i).unwrap_or("")).ok()
        })
        .collect()
}

/// Runs 1 worker, 3 workers and 2 processes of 2 workers over `topic` and checks that all
/// outputs are byte-identical and equal to the oracle's; returns the directory of the first
/// run.
fn same_results_for_any_parallelism(
    topic: &str,
    root: &std::path::Path,
    epoch_secs: u64,
) -> std::path::PathBuf {
    let oracle = Flags {
        epoch_secs,
        ..Flags::default()
    };
    same_results_with(
        topic,
        root,
        &["--epoch", &format!("{epoch_secs}s")],
        &oracle,
    )
}

/// [`same_results_for_any_parallelism`] with the job's `flags`, which `oracle` states for the
/// oracle.
fn same_results_with(
    topic: &str,
    root: &std::path::Path,
    flags: &[&str],
    oracle: &Flags,
) -> std::path::PathBuf {
    let flags = [&["--sinks", "jsonl"], flags].concat();
    let flags = flags.as_slice();
    let one = root.join("w1");
    run_ok(dataflow(topic, &one, flags).args(["-w", "1"]));
    let three = root.join("w3");
    run_ok(dataflow(topic, &three, flags).args(["-w", "3"]));
    let procs = root.join("n2w2");
    dataflow_cluster(topic, &procs, 2, 2, flags);
    // The tightest flow control only delays reading: the outputs are the same.
    let held = root.join("w2-max-buffered-0");
    run_ok(dataflow(topic, &held, flags).args(["-w", "2", "--max-buffered", "0"]));
    assert_same_outputs(&one, &three);
    assert_same_outputs(&one, &procs);
    assert_same_outputs(&one, &held);
    let (messages, partitions) = topic_messages(topic);
    assert_java_partitioned(&messages, partitions);
    assert_outputs_match(&one, &common::oracle(&messages, oracle));
    one
}

#[test]
fn real_data_set_gives_identical_results_equal_to_a_fold() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("real");
    let file = data_file("online_retail.csv.gz");
    publish(&topic, &["--file", &file.display().to_string()], dir.path());
    let out = same_results_for_any_parallelism(&topic, dir.path(), 86_400);
    let summary = read_summary(&out);
    let expected = fold(csv_sales(&file));
    assert_eq!(comparable(&summary), expected);
    // The per-epoch stream covers every line exactly once.
    let epoch_lines: i64 = read_jsonl(&out, "epochs")
        .iter()
        .map(|row| row["value"]["lines"].as_i64().unwrap())
        .sum();
    assert_eq!(epoch_lines, expected["totals"]["lines"].as_i64().unwrap());
    delete_topics_of(&topic);
}

#[test]
fn generated_data_gives_identical_results_equal_to_a_fold() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("generated");
    publish(&topic, &["--generate", "60000", "--seed", "11"], dir.path());
    let out = same_results_for_any_parallelism(&topic, dir.path(), 3600);
    // The independent computation reads the topic back and folds it.
    let sales = topic_sales(&topic);
    assert_eq!(sales.len(), 60_000);
    let summary = read_summary(&out);
    assert_eq!(comparable(&summary), fold(sales));
    assert_eq!(summary["dead_letters"]["total"], 0);
    // Several epochs were emitted, each once.
    let keys: Vec<String> = read_jsonl(&out, "epochs")
        .iter()
        .map(|row| row["key"].as_str().unwrap().to_owned())
        .collect();
    assert!(keys.len() > 5, "only {} epochs", keys.len());
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());
    delete_topics_of(&topic);
}

#[test]
fn dirty_data_gives_identical_outputs_and_dead_letters_for_any_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("dirty");
    let dirt = publish_dirty(&topic, 60_000, 13, dir.path());
    eprintln!("mixed in: {dirt:?}");
    // Lines moved back 1 h or 2 h are late or not, but count; early lines sent again at the
    // end (over 7 h later) find their invoices closed.
    let flags = [
        "--epoch",
        "1h",
        "--lateness",
        "1h",
        "--invoice-retention",
        "3h",
    ];
    let oracle = Flags {
        lateness_secs: 3600,
        retention_secs: Some(3 * 3600),
        ..Flags::default()
    };
    let out = same_results_with(&topic, dir.path(), &flags, &oracle);

    // Every bad message is a dead letter with its reason; closed invoices' lines too.
    let letters = read_jsonl(&out, "dlq");
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for letter in &letters {
        *reasons
            .entry(letter["reason"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let closed = reasons.remove("invoice_closed").unwrap_or(0);
    let expected: BTreeMap<String, usize> =
        dirt.bad.iter().map(|(r, n)| (r.to_string(), *n)).collect();
    assert_eq!(reasons, expected);
    assert_eq!(closed, dirt.resent, "invoice_closed dead letters");
    let summary = read_summary(&out);
    let late = summary["totals"]["late_lines"].as_u64().unwrap();
    assert!(late > 0, "no late line: {summary}");

    // The totals are a fold over the topic's valid sales but the dead letters.
    let (sales, dead) = sales_but_dead_letters(&topic, &out);
    assert_eq!(dead, letters.len(), "one dead letter per message");
    let bad: usize = dirt.bad.values().sum();
    assert_eq!(sales.len() + dead, 60_000 + bad + dirt.resent);
    assert_eq!(comparable(&summary), fold(sales));
    delete_topics(&[&topic]);
}

#[test]
fn bad_messages_are_dead_lettered_and_good_ones_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("dlq");
    create_topic(&topic, 2, &[]);
    let good = |i: u32| {
        format!(
            r#"{{"invoice_no":"5{i:05}","stock_code":"85123A","description":"HEART","quantity":2,"invoice_date":"2010-12-01T08:{:02}:00","unit_price":"2.55","customer_id":"17850","country":"France"}}"#,
            i % 60
        )
        .into_bytes()
    };
    let swap = |from: &str, to: &str| {
        String::from_utf8(good(0))
            .unwrap()
            .replace(from, to)
            .into_bytes()
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not_utf8", b"{\"invoice_no\":\"\xff\xfe\"}".to_vec()),
        ("not_json", b"this is not json".to_vec()),
        (
            "missing_field",
            swap(r#""country":"France""#, r#""nation":"France""#),
        ),
        ("wrong_type", swap(r#""quantity":2"#, r#""quantity":"two""#)),
        (
            "bad_date",
            swap("2010-12-01T08:00:00", "2010-02-30T08:00:00"),
        ),
        (
            "bad_price",
            swap(r#""unit_price":"2.55""#, r#""unit_price":"2.5501""#),
        ),
        (
            "empty_field",
            swap(r#""stock_code":"85123A""#, r#""stock_code":"""#),
        ),
        ("oversized", {
            let pad = "x".repeat(3000);
            swap(
                r#""description":"HEART""#,
                &format!(r#""description":"{pad}""#),
            )
        }),
    ];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let mut sent_good = 0;
    let mut i = 0u32;
    for round in 0..3 {
        for (partition, (_, payload)) in bad.iter().enumerate() {
            for _ in 0..4 {
                let payload = good(i);
                producer
                    .send(
                        BaseRecord::to(&topic)
                            .key("k")
                            .payload(&payload)
                            .partition((i % 2) as i32),
                    )
                    .unwrap();
                i += 1;
                sent_good += 1;
            }
            let key = format!("bad-{round}-{partition}");
            producer
                .send(
                    BaseRecord::to(&topic)
                        .key(&key)
                        .payload(payload)
                        .partition((partition % 2) as i32),
                )
                .unwrap();
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let out = dir.path().join("out");
    // Named after the job by default.
    let dlq_topic = format!("{}.dlq", job_id(&topic, &out));
    let aggregates = format!("{topic}.aggregates");
    run_ok(&mut dataflow(
        &topic,
        &out,
        &[
            "--sinks",
            "jsonl,kafka",
            "--max-message-bytes",
            "2000",
            "--aggregates-topic",
            &aggregates,
            "-w",
            "2",
        ],
    ));

    let summary = read_summary(&out);
    assert_eq!(summary["totals"]["lines"], sent_good);
    assert_eq!(summary["dead_letters"]["total"], bad.len() * 3);
    for (reason, _) in &bad {
        assert_eq!(summary["dead_letters"]["by_reason"][reason], 3, "{reason}");
    }
    // dlq.jsonl: each bad message with its reason, partition and offset.
    let letters = read_jsonl(&out, "dlq");
    assert_eq!(letters.len(), bad.len() * 3);
    let by_key: BTreeMap<String, &Value> = letters
        .iter()
        .map(|l| (l["key"].as_str().unwrap().to_owned(), l))
        .collect();
    for round in 0..3 {
        for (partition, (reason, _)) in bad.iter().enumerate() {
            let letter = by_key[&format!("bad-{round}-{partition}")];
            assert_eq!(letter["reason"], *reason);
            assert_eq!(letter["partition"], (partition % 2) as i64);
            assert!(letter["detail"].as_str().is_some_and(|d| !d.is_empty()));
        }
    }
    // The dead-letter topic holds the original bytes, with the source and reason in headers.
    let dead = read_topic(&dlq_topic, true);
    assert_eq!(dead.len(), bad.len() * 3);
    for m in &dead {
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        let index: usize = key.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(m.payload().unwrap(), bad[index].1.as_slice());
        let headers = m.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(text)
        };
        assert_eq!(header("reason").as_deref(), Some(bad[index].0));
        assert_eq!(header("source.topic").as_deref(), Some(topic.as_str()));
        assert_eq!(header("source.partition"), Some((index % 2).to_string()));
        assert!(header("source.offset").is_some_and(|o| o.parse::<i64>().is_ok()));
    }
    // Every output and the dead-letter topic equal the oracle's.
    let (messages, _) = topic_messages(&topic);
    let flags = Flags {
        max_message_bytes: 2000,
        ..Flags::default()
    };
    let expected = common::oracle(&messages, &flags);
    assert_outputs_match(&out, &expected);
    assert_dead_letter_topic_matches(&dlq_topic, &expected);
    // The aggregates topic carries the same changes as the files, keyed by stream and key.
    let changes: Vec<(String, Value)> = read_topic(&aggregates, true)
        .iter()
        .map(|m| {
            let key = text(m.key().unwrap());
            (key, serde_json::from_slice(m.payload().unwrap()).unwrap())
        })
        .collect();
    let mut lines: Vec<(String, Value)> =
        ["totals", "by_country", "top_products", "epochs", "alerts"]
            .iter()
            .flat_map(|s| read_jsonl(&out, s))
            .map(|l| {
                (
                    format!(
                        "{}/{}",
                        l["stream"].as_str().unwrap(),
                        l["key"].as_str().unwrap()
                    ),
                    l,
                )
            })
            .collect();
    let mut sorted = changes.clone();
    sorted.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
    });
    lines.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.to_string().cmp(&b.1.to_string()))
    });
    assert_eq!(sorted, lines, "the aggregates topic and the files differ");
    delete_topics(&[&topic, &dlq_topic, &aggregates]);
}

#[test]
fn a_missing_topic_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &mut dataflow(
            &unique("missing"),
            &dir.path().join("o"),
            &["--sinks", "jsonl"],
        ),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn bad_flags_exit_2_before_anything_starts() {
    let out = run(
        Command::new(binary("dataflow")).args(["--epoch", "soon"]),
        2,
    );
    assert!(text(&out.stderr).contains("--epoch"));
    let out = run(
        Command::new(binary("dataflow")).args(["-n", "2", "-p", "5"]),
        2,
    );
    assert!(text(&out.stderr).contains("out of range"));
    let out = run(
        Command::new(binary("dataflow")).args(["--max-buffered", "lots"]),
        2,
    );
    assert!(text(&out.stderr).contains("64MiB"));
}

/// A secret stays secret at the most verbose log level on a run that succeeds: a SASL password
/// given with -X (which the plaintext listener does not use) shows in no log line, report or
/// output file.
#[test]
fn a_password_never_shows_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("redact");
    publish(&topic, &["--generate", "2000", "--seed", "16"], dir.path());
    let out = dir.path().join("out");
    let secret = "Tr4ce-S3cret-9d1f";
    let output = run_ok(
        dataflow(&topic, &out, &["--sinks", "console,jsonl"])
            .args(["-X", &format!("sasl.password={secret}")])
            .args(["-X", "sasl.username=retail"])
            .env("RUST_LOG", "trace"),
    );
    let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(said.contains("TRACE"), "trace logging was not on:\n{said}");
    assert!(!said.contains(secret), "the password was printed");
    for (path, bytes) in files_under(&out) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(secret),
            "the password is in {}",
            path.display()
        );
    }
    assert_eq!(read_summary(&out)["totals"]["lines"], 2000);
    delete_topics(&[&topic]);
}
