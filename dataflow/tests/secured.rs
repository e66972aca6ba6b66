//! Secured clusters, codecs, corrupt batches and job identities, against the real broker of
//! `KAFKA_SECURITY=sasl_ssl,ssl scripts/kafka up` (which `scripts/test` starts):
//!
//! - SASL_SSL with SCRAM-SHA-512 and mutual TLS, configured with `-F` client properties
//!   files, give byte-identical outputs to PLAINTEXT, for `ingest`, `dataflow` and `cluster`;
//! - a wrong password fails at once, and no password is ever printed or written;
//! - batches compressed by another producer (kcat) with gzip, snappy, lz4 and zstd, checked
//!   on disk with Kafka's DumpLogSegments, are all read; so is `ingest --compression zstd`;
//! - a batch with an unknown codec or a corrupt payload, made by editing the segment file on
//!   the broker's disk, stops the job quickly, naming the topic and the partition; so does one
//!   in the checkpoint topic, at start;
//! - a job id resumes only the job that wrote its checkpoint.
//!
//! The secured listeners' client settings come from `RETAIL_SASL_SSL_PROPERTIES` and
//! `RETAIL_SSL_PROPERTIES`, the broker's data from `RETAIL_KAFKA_DATA_DIR` (defaults under
//! `.cache/kafka`); when they are missing the tests fail rather than skip.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use retail_common::Sale;

use common::*;

/// Every child process of these tests is killed after this long (the test then fails).
const LIMIT: Duration = Duration::from_secs(120);

/// How a client reaches the broker.
#[derive(Clone, Copy)]
enum Via<'a> {
    /// `-b` the PLAINTEXT listener.
    Plaintext,
    /// `-F` a client properties file, and no `-b` (nor `KAFKA_BOOTSTRAP_SERVERS`, which
    /// would win over its bootstrap.servers).
    Properties(&'a Path),
}

impl Via<'_> {
    fn apply(self, cmd: &mut Command) {
        match self {
            Via::Plaintext => cmd.args(["-b", &bootstrap()]),
            Via::Properties(file) => cmd
                .env_remove("KAFKA_BOOTSTRAP_SERVERS")
                .arg("-F")
                .arg(file),
        };
    }
}

fn sasl_ssl() -> PathBuf {
    secured_properties("sasl_ssl")
}

fn mutual_tls() -> PathBuf {
    secured_properties("ssl")
}

/// The value of `key` in a client properties file.
fn property(file: &Path, key: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{} has no {key}", file.display()))
        .trim()
        .to_owned()
}

/// A copy of the SASL_SSL settings in `dir` with another `sasl.password`.
fn with_password(dir: &Path, password: &str) -> PathBuf {
    let original = sasl_ssl();
    let copy = dir.join("wrong-password.properties");
    let text: String = std::fs::read_to_string(&original)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("sasl.password=") {
                format!("sasl.password={password}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(text.contains(&format!("sasl.password={password}\n")));
    std::fs::write(&copy, text).unwrap();
    copy
}

/// The `ingest` binary publishing to `topic` through `via`, run in `dir`.
fn ingest_via(via: Via, topic: &str, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("ingest"));
    via.apply(&mut cmd);
    cmd.args(["--topic", topic])
        .args(args)
        .env("RUST_LOG", "warn")
        .current_dir(dir);
    cmd
}

/// A bounded dataflow run over `topic` through `via`, its own job (`--job-id` from the
/// output directory's name) unless `extra` names one.
fn dataflow_via(via: Via, topic: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(binary("dataflow"));
    via.apply(&mut cmd);
    cmd.args(["--topic", topic, "--until-end", "--progress-interval", "0"])
        .arg("-o")
        .arg(out)
        .env("RUST_LOG", "warn");
    if !extra.contains(&"--job-id") {
        cmd.args(["--job-id", &job_id(topic, out)]);
    }
    cmd.args(extra);
    cmd
}

/// Asserts that a run's summary is the fold of `sales`, with every line counted.
fn assert_summary_is_fold(out: &Path, sales: &[Sale]) {
    let summary = read_summary(out);
    assert_eq!(summary["totals"]["lines"], sales.len(), "{}", out.display());
    assert_eq!(
        comparable(&summary),
        fold(sales.iter().cloned()),
        "{}",
        out.display()
    );
    assert_eq!(summary["dead_letters"]["total"], 0, "{}", out.display());
}

/// Generated sales as JSON lines (`ingest --generate N --dry-run`), made once: the input of
/// the kcat producer.
fn generated_lines() -> &'static [String] {
    static LINES: OnceLock<Vec<String>> = OnceLock::new();
    LINES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok_within(
            Command::new(binary("ingest"))
                .args(["--generate", "4000", "--seed", "21", "--dry-run"])
                .env("RUST_LOG", "warn")
                .current_dir(dir.path()),
            LIMIT,
        );
        let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 4000);
        lines
    })
}

fn sales_of(lines: &[String]) -> Vec<Sale> {
    lines
        .iter()
        .map(|l| Sale::from_json(l.as_bytes()).expect("a valid sale"))
        .collect()
}

/// Produces `lines` to `topic` with Debian's kcat (another producer: librdkafka 2.0 as
/// packaged), keyed by invoice, each batch compressed with `codec`; large batches so that
/// compression matters.
fn kcat_produce(topic: &str, codec: &str, lines: &[String]) {
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

/// The first segment file of a partition on the broker's disk.
fn segment(topic: &str, partition: i32) -> PathBuf {
    kafka_data_dir()
        .join(format!("{topic}-{partition}"))
        .join("00000000000000000000.log")
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
// SASL_SSL and mutual TLS

#[test]
fn sasl_ssl_and_mutual_tls_give_the_same_outputs_as_plaintext() {
    let sasl = sasl_ssl();
    let tls = mutual_tls();
    let password = property(&sasl, "sasl.password");
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("sasl");
    // ingest over SASL_SSL (SCRAM-SHA-512), configured by the file alone.
    let ingested = run_ok_within(
        &mut ingest_via(
            Via::Properties(&sasl),
            &topic,
            dir.path(),
            &["--generate", "20000", "--seed", "9", "--partitions", "4"],
        ),
        LIMIT,
    );
    assert_no_password(
        "ingest over SASL_SSL",
        &ingested,
        &[dir.path()],
        &[&password],
    );
    let sales = topic_sales(&topic);
    assert_eq!(sales.len(), 20_000);

    let flags = ["--sinks", "jsonl", "-w", "2"];
    let plain = dir.path().join("plaintext");
    run_ok_within(
        &mut dataflow_via(Via::Plaintext, &topic, &plain, &flags),
        LIMIT,
    );
    assert_summary_is_fold(&plain, &sales);
    let names: Vec<String> = outputs(&plain).into_iter().map(|f| f.0).collect();
    for name in [
        "summary.json",
        "totals.jsonl",
        "by_country.jsonl",
        "epochs.jsonl",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }

    // The checkpointed job (transactions, state topic) over SASL_SSL.
    let over_sasl = dir.path().join("sasl_ssl");
    let run = run_ok_within(
        &mut dataflow_via(Via::Properties(&sasl), &topic, &over_sasl, &flags),
        LIMIT,
    );
    assert_same_outputs(&plain, &over_sasl);
    assert_no_password("dataflow over SASL_SSL", &run, &[&over_sasl], &[&password]);

    // Mutual TLS: the client's certificate is its identity.
    let over_tls = dir.path().join("ssl");
    run_ok_within(
        &mut dataflow_via(Via::Properties(&tls), &topic, &over_tls, &flags),
        LIMIT,
    );
    assert_same_outputs(&plain, &over_tls);

    // cluster hands -F on to every process: two processes over SASL_SSL.
    let over_cluster = dir.path().join("cluster");
    let job = format!("{topic}-cluster");
    let out = run_ok_within(
        Command::new(binary("cluster"))
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env("RUST_LOG", "warn,cluster=info")
            .args(["-n", "2", "-w", "1", "--max-restarts", "0", "-F"])
            .arg(&sasl)
            .args(["--", "--topic", &topic, "--until-end", "--sinks", "jsonl"])
            .args(["--job-id", &job, "--progress-interval", "0", "-o"])
            .arg(&over_cluster),
        LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("every process exited 0"), "{stderr}");
    assert_same_outputs(&plain, &over_cluster);
    assert_no_password(
        "cluster over SASL_SSL",
        &out,
        &[&over_cluster],
        &[&password],
    );
    delete_topics_of(&topic);
}

/// Asserts that neither password shows in a run's output or in any file under `dirs`.
fn assert_no_password(what: &str, out: &Output, dirs: &[&Path], passwords: &[&str]) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for password in passwords {
        assert!(
            !stdout.contains(password),
            "{what}: stdout shows a password:\n{stdout}"
        );
        assert!(
            !stderr.contains(password),
            "{what}: stderr shows a password:\n{stderr}"
        );
        for dir in dirs {
            for (path, bytes) in files_under(dir) {
                let needle = password.as_bytes();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "{what}: {} holds a password",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn a_wrong_password_fails_at_once_and_no_password_is_ever_shown() {
    let sasl = sasl_ssl();
    let real = property(&sasl, "sasl.password");
    assert!(real.len() >= 8, "a real password to look for");
    let wrong = "wrong-Pa55word-xyz";
    let passwords = [wrong, real.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let bad = with_password(dir.path(), wrong);
    // A topic that exists, so that only the credentials are wrong.
    let topic = unique("wrong-password");
    publish(&topic, &["--generate", "100"], dir.path());

    // The password from the file, then one from -X that wins over the right one in the file.
    let file_out = dir.path().join("file");
    let x_out = dir.path().join("x");
    let x_setting = format!("sasl.password={wrong}");
    let runs: [(&str, Command, &Path); 2] = [
        (
            "dataflow -F wrong",
            dataflow_via(
                Via::Properties(&bad),
                &topic,
                &file_out,
                &["--sinks", "jsonl"],
            ),
            &file_out,
        ),
        (
            "dataflow -F right -X wrong",
            dataflow_via(
                Via::Properties(&sasl),
                &topic,
                &x_out,
                &["--sinks", "jsonl", "-X", &x_setting],
            ),
            &x_out,
        ),
    ];
    for (what, mut cmd, out_dir) in runs {
        // Every log line of every level is free of secrets.
        cmd.env("RUST_LOG", "trace");
        let (out, took) = run_timeout(&mut cmd, Duration::from_secs(60));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(took < Duration::from_secs(15), "{what} took {took:?}");
        assert!(
            stderr.contains("refused the connection") && stderr.contains("SASL authentication"),
            "{what}: {stderr}"
        );
        assert_no_password(what, &out, &[out_dir], &passwords);
        assert!(!out_dir.join("summary.json").exists(), "{what}");
    }
    // So is librdkafka's own debug output: its configuration dump and the SASL handshake.
    let debug_out = dir.path().join("debug");
    let (out, _) = run_timeout(
        dataflow_via(
            Via::Properties(&bad),
            &topic,
            &debug_out,
            &["--sinks", "jsonl", "-X", "debug=conf,security"],
        )
        .env("RUST_LOG", "trace"),
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("sasl.password = [redacted]"), "{stderr}");
    assert!(stderr.contains("SASL authentication error"), "{stderr}");
    assert_no_password("dataflow -X debug=...", &out, &[&debug_out], &passwords);

    // ingest, in a directory of its own (it writes its rejects file there).
    let ingest_dir = dir.path().join("ingest");
    std::fs::create_dir(&ingest_dir).unwrap();
    let (out, took) = run_timeout(
        ingest_via(
            Via::Properties(&bad),
            &unique("wrong-password-ingest"),
            &ingest_dir,
            &["--generate", "100"],
        )
        .env("RUST_LOG", "debug"),
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "ingest with a wrong password: {stderr}"
    );
    assert!(took < Duration::from_secs(15), "ingest took {took:?}");
    assert!(
        stderr.to_ascii_lowercase().contains("authentication"),
        "{stderr}"
    );
    assert_no_password("ingest -F wrong", &out, &[&ingest_dir], &passwords);

    // cluster: a failing job's report (the last lines of its log) shows no secret either.
    let cluster_out = dir.path().join("cluster");
    let (out, took) = run_timeout(
        Command::new(binary("cluster"))
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .args(["-n", "2", "--max-restarts", "0", "-F"])
            .arg(&sasl)
            .args(["-X", &x_setting])
            .args(["--", "--topic", &topic, "--until-end", "--sinks", "jsonl"])
            .arg("-o")
            .arg(&cluster_out),
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "cluster took {took:?}");
    assert!(stderr.contains("SASL authentication"), "{stderr}");
    assert_no_password("cluster -X wrong", &out, &[&cluster_out], &passwords);
    delete_topics_of(&topic);
}

/// With librdkafka's debug logging on (`-X debug=...`, what one sets to debug SASL), the
/// authentication error sits behind hundreds of log events: set-up must still name it at
/// once rather than time out with "cannot reach Kafka".
#[test]
fn a_wrong_password_is_named_at_once_even_with_librdkafka_debug_logs() {
    let dir = tempfile::tempdir().unwrap();
    let bad = with_password(dir.path(), "wrong-Pa55word-xyz");
    let topic = unique("wrong-password-debug");
    publish(&topic, &["--generate", "100"], dir.path());
    let (out, took) = run_timeout(
        &mut dataflow_via(
            Via::Properties(&bad),
            &topic,
            &dir.path().join("out"),
            &["--sinks", "jsonl", "-X", "debug=all"],
        ),
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused the connection"),
        "{}",
        stderr
            .lines()
            .filter(|l| l.starts_with("error"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    delete_topics_of(&topic);
}

#[test]
fn cluster_print_shows_no_secret() {
    let sasl = sasl_ssl();
    let real = property(&sasl, "sasl.password");
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1:42101\n127.0.0.1:42102\n").unwrap();
    // A relative -F path: cluster passes it on absolute.
    std::fs::copy(&sasl, dir.path().join("client.properties")).unwrap();
    let secret = "s3cret-Pr1nt-xyz";
    let out = run_ok_within(
        Command::new(binary("cluster"))
            .current_dir(dir.path())
            .args(["--print", "--hostfile"])
            .arg(&hosts)
            .args(["-F", "client.properties", "-X"])
            .arg(format!("sasl.password={secret}"))
            .args(["-X", "sasl.username=retail", "--", "--topic", "t"])
            .args(["-X", &format!("ssl.key.password={secret}")]),
        LIMIT,
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let file = dir.path().join("client.properties");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!(" -p {i} ")), "{line}");
        assert!(
            line.contains(&format!(" -F {} ", file.display())),
            "an absolute -F path: {line}"
        );
        assert!(
            line.contains("-X 'sasl.password=[redacted]'")
                || line.contains("-X sasl.password=[redacted]"),
            "{line}"
        );
        assert!(line.contains("ssl.key.password=[redacted]"), "{line}");
        assert!(line.contains("-X sasl.username=retail"), "{line}");
    }
    for shown in [&stdout, &stderr] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&real), "{shown}");
    }
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

// ---------------------------------------------------------------------------------------
// Undecodable batches

/// Offsets inside a v2 record batch: baseOffset 8, batchLength 4, partitionLeaderEpoch 4,
/// magic 1, crc 4, attributes 2 (codec = attributes & 7), ..., records from 61.
const ATTRIBUTES: u64 = 21;
const RECORDS: u64 = 61;

/// A topic of `partitions` partitions holding 2000 records, each partition's first batch
/// gzip-compressed and of several hundred records; returns the topic and each partition's
/// first batch length in bytes, once the broker has written all of them.
fn gzip_topic(name: &str, partitions: i32) -> (String, Vec<u64>) {
    let topic = unique(name);
    create_topic(&topic, partitions, &[]);
    kcat_produce(&topic, "gzip", &generated_lines()[..2000]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut lengths = Vec::new();
    let mut counts = 0;
    for partition in 0..partitions {
        let file = segment(&topic, partition);
        loop {
            let bytes = std::fs::read(&file).unwrap_or_default();
            if bytes.len() >= RECORDS as usize {
                let length = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as u64 + 12;
                if bytes.len() as u64 >= length {
                    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
                    assert_eq!(bytes[16], 2, "magic of {}", file.display());
                    assert_eq!(attributes & 7, 1, "not gzip: {}", file.display());
                    let count = u32::from_be_bytes(bytes[57..61].try_into().unwrap());
                    assert!(count >= 500, "{}: a batch of {count}", file.display());
                    counts += count;
                    lengths.push(length);
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not get its batch",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(counts, 2000, "one batch per partition");
    (topic, lengths)
}

/// 64 bytes of noise over the middle of a partition's first batch's compressed records.
fn corrupt_payload(topic: &str, partition: i32, length: u64) {
    assert!(length > 1000, "a batch of {length} bytes");
    let middle = RECORDS + (length - RECORDS) / 2;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    overwrite(&segment(topic, partition), middle, &noise);
}

/// Overwrites bytes of a segment file in place (the broker serves them as stored).
fn overwrite(file: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Runs the job over a topic with a broken first batch: it must stop within seconds with
/// a non-zero status, naming the topic and partition.
fn assert_stops_on_undecodable(topic: &str, dir: &Path) {
    let out = dir.join(topic);
    let (result, took) = run_timeout(
        &mut dataflow_via(Via::Plaintext, topic, &out, &["--sinks", "jsonl"]),
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert!(!result.status.success(), "{topic}: {stderr}");
    assert_eq!(result.status.code(), Some(1), "{topic}: {stderr}");
    assert!(took < Duration::from_secs(20), "{topic}: took {took:?}");
    assert!(
        stderr.contains(&format!("cannot decode a record batch of topic {topic}")),
        "{stderr}"
    );
    assert!(stderr.contains("partition 0 at offset 0"), "{stderr}");
    // Nothing was presented as a result.
    assert!(!out.join("summary.json").exists(), "{topic}");
}

#[test]
fn a_batch_of_an_unknown_codec_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (topic, _) = gzip_topic("codec-7", 1);
    let file = segment(&topic, 0);
    let bytes = std::fs::read(&file).unwrap();
    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
    overwrite(&file, ATTRIBUTES, &((attributes & !7) | 7).to_be_bytes());
    assert_stops_on_undecodable(&topic, dir.path());
}

#[test]
fn a_corrupt_compressed_batch_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (topic, lengths) = gzip_topic("corrupt", 1);
    corrupt_payload(&topic, 0, lengths[0]);
    assert_stops_on_undecodable(&topic, dir.path());
}

/// A 2-partition topic whose partition 1 starts with a corrupt batch.
fn corrupt_partition_1() -> String {
    let (topic, lengths) = gzip_topic("corrupt-p1", 2);
    corrupt_payload(&topic, 1, lengths[1]);
    topic
}

/// Asserts that a run (and how long it took) over [`corrupt_partition_1`]'s `topic` failed
/// within `within`, naming the batch it could not decode, and wrote no summary.json to `out`.
fn assert_failed_on_partition_1(
    run: (Output, Duration),
    within: Duration,
    topic: &str,
    out: &Path,
) {
    let (result, took) = run;
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(took < within, "took {took:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot decode a record batch of topic {topic}, partition 1 at offset 0"
        )),
        "{stderr}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json"));
    assert!(
        summary.is_err(),
        "a failed job wrote summary.json: {summary:?}"
    );
}

#[test]
fn a_corrupt_batch_read_by_another_worker_stops_the_job() {
    // Partition 1 is read by worker 1; worker 0 writes the outputs.
    let dir = tempfile::tempdir().unwrap();
    let topic = corrupt_partition_1();
    let out = dir.path().join("out");
    let run = run_timeout(
        &mut dataflow_via(
            Via::Plaintext,
            &topic,
            &out,
            &["--sinks", "jsonl", "-w", "2"],
        ),
        Duration::from_secs(60),
    );
    assert_failed_on_partition_1(run, Duration::from_secs(20), &topic, &out);
}

/// A source that meets an undecodable batch in process 1 must not let process 0 (the
/// writer) close and commit epochs without the partition it could not read.
#[test]
fn a_corrupt_batch_in_another_process_fails_the_job_without_partial_outputs() {
    // Partition 1 is read by process 1 (of 2, one worker each); process 0 writes the outputs.
    let dir = tempfile::tempdir().unwrap();
    let topic = corrupt_partition_1();
    let out = dir.path().join("out");
    let run = run_timeout(
        Command::new(binary("cluster"))
            .env("RUST_LOG", "warn,cluster=info")
            .args(["-n", "2", "-w", "1", "--max-restarts", "0", "--"])
            .args(["-b", &bootstrap(), "--topic", &topic, "--until-end"])
            .args(["--sinks", "jsonl", "--progress-interval", "0"])
            .args(["--job-id", &format!("{topic}-cluster"), "-o"])
            .arg(&out),
        Duration::from_secs(90),
    );
    assert_failed_on_partition_1(run, Duration::from_secs(30), &topic, &out);
}

// ---------------------------------------------------------------------------------------
// Job identities

/// A checkpointed bounded run (the default mode) with its checkpoints in `checkpoints`.
fn checkpointed(topic: &str, out: &Path, checkpoints: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(binary("dataflow"));
    cmd.args(["-b", &bootstrap(), "--topic", topic, "--until-end"])
        .args(["--progress-interval", "0", "--sinks", "jsonl,kafka"])
        .args(["--checkpoint-topic", checkpoints])
        .args(["--aggregates-topic", &format!("{checkpoints}.aggregates")])
        .arg("-o")
        .arg(out)
        .args(extra)
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs a checkpointed job that must refuse its checkpoint: exit 2 with `expected` among the
/// differences, `unexpected` not, and the earlier outputs in `kept` untouched.
fn assert_refused(cmd: &mut Command, job: &str, expected: &str, unexpected: &str, kept: &Path) {
    let before = outputs(kept);
    let (out, _) = run_timeout(cmd, LIMIT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{cmd:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "the checkpoint of job \"{job}\" was written by a different job:"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("\n  - {expected}")), "{stderr}");
    assert!(!stderr.contains(unexpected), "{stderr}");
    assert!(
        stderr.contains("Start this job over with --reset, or give it its own --job-id."),
        "{stderr}"
    );
    assert!(
        outputs(kept) == before,
        "a refused run changed {}",
        kept.display()
    );
}

#[test]
fn a_checkpoint_whose_state_topic_is_gone_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("state-lost");
    publish(&topic, &["--generate", "3000", "--seed", "4"], dir.path());
    let sales = topic_sales(&topic);
    let checkpoints = unique("checkpoints");
    let out = dir.path().join("out");
    run_ok_within(&mut checkpointed(&topic, &out, &checkpoints, &[]), LIMIT);
    assert_summary_is_fold(&out, &sales);
    let before = outputs(&out);
    // The job id is the topic's name.
    let state = format!("{checkpoints}.{topic}");
    delete_topics(&[&state]);
    // Refused, and refused again once the refused run has created the topic anew, empty.
    for _ in 0..2 {
        let (run, _) = run_timeout(&mut checkpointed(&topic, &out, &checkpoints, &[]), LIMIT);
        let stderr = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("but its state topic {state} holds no state")),
            "{stderr}"
        );
        assert!(
            stderr.contains("Start this job over with --reset, or give it its own --job-id."),
            "{stderr}"
        );
        assert!(outputs(&out) == before, "a refused run changed its outputs");
    }
    run_ok_within(
        &mut checkpointed(&topic, &out, &checkpoints, &["--reset"]),
        LIMIT,
    );
    assert_summary_is_fold(&out, &sales);
    delete_topics(&[&topic, &state, &checkpoints]);
}

#[test]
fn a_job_id_resumes_only_the_job_that_wrote_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (unique("job-a"), unique("job-b"));
    publish(&a, &["--generate", "5000", "--seed", "1"], dir.path());
    publish(&b, &["--generate", "5000", "--seed", "2"], dir.path());
    let (sales_a, sales_b) = (topic_sales(&a), topic_sales(&b));
    assert_eq!((sales_a.len(), sales_b.len()), (5000, 5000));
    assert_ne!(fold(sales_a.iter().cloned()), fold(sales_b.iter().cloned()));
    let checkpoints = unique("checkpoints");
    let job = unique("job");
    fn with<'a>(job: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec!["--job-id", job];
        flags.extend_from_slice(extra);
        flags
    }
    let with_job = |extra: &[&'static str]| with(&job, extra);

    let out = dir.path().join("j");
    run_ok_within(
        &mut checkpointed(&a, &out, &checkpoints, &with_job(&[])),
        LIMIT,
    );
    assert_summary_is_fold(&out, &sales_a);

    // The same job id over another topic, another epoch, another output directory.
    assert_refused(
        &mut checkpointed(&b, &out, &checkpoints, &with_job(&[])),
        &job,
        &format!("--topic: checkpoint {a}, this run {b}"),
        "--epoch",
        &out,
    );
    assert_refused(
        &mut checkpointed(&a, &out, &checkpoints, &with_job(&["--epoch", "1d"])),
        &job,
        "--epoch: checkpoint 1h, this run 1day",
        "--topic",
        &out,
    );
    let elsewhere = dir.path().join("elsewhere");
    assert_refused(
        &mut checkpointed(&a, &elsewhere, &checkpoints, &with_job(&[])),
        &job,
        &format!(
            "--output-dir: checkpoint {}, this run {}",
            out.display(),
            elsewhere.display()
        ),
        "--topic",
        &out,
    );
    assert!(!elsewhere.join("summary.json").exists());

    // --reset makes it the job over B; it then resumes as that job.
    run_ok_within(
        &mut checkpointed(&b, &out, &checkpoints, &with_job(&["--reset"])),
        LIMIT,
    );
    assert_summary_is_fold(&out, &sales_b);
    let after_reset = outputs(&out);
    run_ok_within(
        &mut checkpointed(&b, &out, &checkpoints, &with_job(&[])),
        LIMIT,
    );
    assert!(
        outputs(&out) == after_reset,
        "the resumed run changed its outputs"
    );

    // Without --job-id each topic is its own job, even with one checkpoint topic.
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok_within(&mut checkpointed(&a, &out_a, &checkpoints, &[]), LIMIT);
    run_ok_within(&mut checkpointed(&b, &out_b, &checkpoints, &[]), LIMIT);
    assert_summary_is_fold(&out_a, &sales_a);
    assert_summary_is_fold(&out_b, &sales_b);
    // ... and a second run over A resumes A's checkpoint, not B's.
    let first = outputs(&out_a);
    let (again, _) = run_timeout(&mut checkpointed(&a, &out_a, &checkpoints, &[]), LIMIT);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        outputs(&out_a) == first,
        "the resumed run over A changed its outputs"
    );
}

#[test]
fn an_undecodable_checkpoint_topic_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sales = unique("sales-of-a-bad-checkpoint");
    publish(&sales, &["--generate", "200", "--seed", "3"], dir.path());
    // A checkpoint topic whose first batch has a codec no client knows.
    let (checkpoints, _) = gzip_topic("checkpoint-codec-7", 1);
    let file = segment(&checkpoints, 0);
    let bytes = std::fs::read(&file).unwrap();
    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
    overwrite(&file, ATTRIBUTES, &((attributes & !7) | 7).to_be_bytes());
    let out = dir.path().join("out");
    let (result, took) = run_timeout(
        &mut dataflow_via(
            Via::Plaintext,
            &sales,
            &out,
            &["--sinks", "jsonl", "--checkpoint-topic", &checkpoints],
        ),
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {stderr}");
    assert!(stderr.contains(&checkpoints), "{stderr}");
    assert!(stderr.contains("decode"), "{stderr}");
    assert!(!out.join("summary.json").exists());
    delete_topics(&[&sales, &checkpoints]);
}
