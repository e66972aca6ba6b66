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
//! Codecs, undecodable batches and job identities are in modules of their own.
//!
//! The secured listeners' client settings come from `RETAIL_SASL_SSL_PROPERTIES` and
//! `RETAIL_SSL_PROPERTIES`, the broker's data from `RETAIL_KAFKA_DATA_DIR` (defaults under
//! `.cache/kafka`); when they are missing the tests fail rather than skip.

mod codecs;
#[path = "../common/mod.rs"]
mod common;
mod corrupt;
mod identity;

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

/// The first segment file of a partition on the broker's disk.
fn segment(topic: &str, partition: i32) -> PathBuf {
    kafka_data_dir()
        .join(format!("{topic}-{partition}"))
        .join("00000000000000000000.log")
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
