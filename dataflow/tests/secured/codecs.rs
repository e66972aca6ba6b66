//! Batches compressed by another producer (kcat) with every codec, checked on the broker's
//! disk with Kafka's DumpLogSegments, are read; so is `ingest --compression zstd`.

use super::*;

/// Produces `lines` to `topic` with Debian's kcat (another producer: librdkafka 2.0 as
/// packaged), keyed by invoice, each batch compressed with `codec`; large batches so that
/// compression matters.
pub(crate) fn kcat_produce(topic: &str, codec: &str, lines: &[String]) {
    let input: String = lines
        .iter()
        .map(|l| {
            let sale: Value = serde_json::from_str(l).unwrap();
            format!("{}\t{l}\n", sale["invoice_no"].as_str().unwrap())
        })
        .collect();
    let mut child = Command::new("kcat")
        .args([
            "-P",
            "-b",
            &bootstrap(),
            "-t",
            topic,
            "-z",
            codec,
            "-K",
            "\t",
        ])
        .args(["-X", "linger.ms=100", "-X", "batch.num.messages=10000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat starts (Debian package kcat)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    wait_exit(&mut child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("kcat did not finish producing to {topic}"));
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat -z {codec} failed: {}",
        text(&out.stderr)
    );
}

/// One record batch as Kafka's DumpLogSegments describes it.
#[derive(Debug)]
struct Batch {
    count: u64,
    codec: String,
}

/// The record batches of segment files, per file, as the broker's own tool reads them.
fn dump_batches(files: &[PathBuf]) -> Vec<Vec<Batch>> {
    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let out = run_ok_within(
        Command::new("java")
            .arg("-cp")
            .arg(kafka_classpath())
            .arg("kafka.tools.DumpLogSegments")
            .arg("--files")
            .arg(list.join(",")),
        LIMIT,
    );
    let dump = text(&out.stdout);
    let mut per_file: Vec<Vec<Batch>> = Vec::new();
    for line in dump.lines() {
        if line.starts_with("Dumping ") {
            per_file.push(Vec::new());
        } else if line.starts_with("baseOffset: ") {
            let field = |name: &str| {
                line.split(&format!(" {name}: "))
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_owned()
            };
            per_file
                .last_mut()
                .expect("a batch after a Dumping line")
                .push(Batch {
                    count: field("count").parse().unwrap(),
                    codec: field("compresscodec").to_ascii_lowercase(),
                });
        }
    }
    assert_eq!(per_file.len(), files.len(), "{dump}");
    per_file
}

/// Asserts that every batch of `topic`'s partitions is compressed with `codec` and that
/// they hold `records` records, some batches of many.
fn assert_stored_with(topic: &str, partitions: i32, codec: &str, records: u64) {
    let files: Vec<PathBuf> = (0..partitions).map(|p| segment(topic, p)).collect();
    let batches: Vec<Batch> = dump_batches(&files).into_iter().flatten().collect();
    assert!(
        batches.iter().all(|b| b.codec == codec),
        "{topic}: {batches:?}"
    );
    assert_eq!(batches.iter().map(|b| b.count).sum::<u64>(), records);
    assert!(
        batches.iter().any(|b| b.count >= 500),
        "{topic}: only small batches {batches:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Codecs

#[test]
fn batches_compressed_by_another_producer_with_every_codec_are_read() {
    let lines = generated_lines();
    let sales = sales_of(lines);
    let dir = tempfile::tempdir().unwrap();
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let topics: Vec<String> = codecs
        .iter()
        .map(|codec| {
            let topic = unique(&format!("kcat-{codec}"));
            create_topic(&topic, 2, &[]);
            kcat_produce(&topic, codec, lines);
            topic
        })
        .collect();
    // On the broker's disk, as the producer sent them (one JVM for all segments).
    let files: Vec<PathBuf> = topics
        .iter()
        .flat_map(|t| [segment(t, 0), segment(t, 1)])
        .collect();
    let dumped = dump_batches(&files);
    for (i, codec) in codecs.iter().enumerate() {
        let batches: Vec<&Batch> = dumped[2 * i..2 * i + 2].iter().flatten().collect();
        assert!(
            batches.iter().all(|b| b.codec == *codec),
            "{codec}: {batches:?}"
        );
        assert_eq!(batches.iter().map(|b| b.count).sum::<u64>(), 4000);
        assert!(
            batches.iter().any(|b| b.count >= 500),
            "{codec}: only small batches {batches:?}"
        );
    }
    for (codec, topic) in codecs.iter().zip(&topics) {
        let out = dir.path().join(codec);
        run_ok_within(
            &mut dataflow_via(
                Via::Plaintext,
                topic,
                &out,
                &["--sinks", "jsonl", "-w", "2"],
            ),
            LIMIT,
        );
        assert_summary_is_fold(&out, &sales);
    }
}

#[test]
fn ingest_compresses_with_zstd_and_the_job_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("ingest-zstd");
    run_ok_within(
        &mut ingest_via(
            Via::Plaintext,
            &topic,
            dir.path(),
            &[
                "--generate",
                "4000",
                "--seed",
                "21",
                "--partitions",
                "2",
                "--compression",
                "zstd",
            ],
        ),
        LIMIT,
    );
    assert_stored_with(&topic, 2, "zstd", 4000);
    let out = dir.path().join("out");
    run_ok_within(
        &mut dataflow_via(Via::Plaintext, &topic, &out, &["--sinks", "jsonl"]),
        LIMIT,
    );
    // The same records kcat sent above: `ingest --dry-run` with the same seed.
    assert_summary_is_fold(&out, &sales_of(generated_lines()));
    delete_topics_of(&topic);
}
