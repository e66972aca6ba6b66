//! Partitions added to the topic while the job runs: read from their start within seconds,
//! every record counted once, and a restart resumes them from the checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use retail_common::Sale;
use serde_json::Value;

use common::*;

/// Publishes `count` generated sales to `topic` (created with `partitions` partitions).
fn publish(topic: &str, partitions: &str, count: &str, seed: &str, start: &str, dir: &Path) {
    run_ok(
        Command::new(binary("ingest"))
            .args([
                "--topic",
                topic,
                "-b",
                &bootstrap(),
                "--partitions",
                partitions,
            ])
            .args(["--generate", count, "--seed", seed, "--start", start])
            .args(["--rejects", &dir.join("rejects.csv").display().to_string()])
            .stdin(Stdio::null()),
    );
}

fn scripts_kafka() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka")
}

/// Waits until `file` contains `needle`, failing the test after `timeout`.
fn wait_for(file: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} did not appear in {} within {timeout:?}:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn partitions_added_under_a_running_job_are_read_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("growth");
    publish(&topic, "2", "3000", "5", "2010-12-01T08:00:00", dir.path());
    let out = dir.path().join("out");
    let log = dir.path().join("live.log");
    let job_id = format!("{topic}-job");
    let mut live = Command::new(env!("CARGO_BIN_EXE_dataflow"))
        .args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
        .args(["-w", "2", "--sinks", "jsonl", "--idle-timeout", "1s"])
        .args([
            "--progress-interval",
            "300ms",
            "-o",
            &out.display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("dataflow starts");
    wait_for(&log, "3,000 records in", Duration::from_secs(30));

    // Grow the topic to 4 partitions and publish more: the murmur2 partitioner now also
    // places invoices on partitions 2 and 3.
    run_ok(Command::new(scripts_kafka()).args([
        "topics",
        "--alter",
        "--topic",
        &topic,
        "--partitions",
        "4",
    ]));
    let grown = Instant::now();
    publish(&topic, "4", "3000", "9", "2010-12-05T08:00:00", dir.path());
    let sales: Vec<Sale> = read_topic(&topic, true)
        .iter()
        .map(|m| {
            assert!(m.partition() < 4);
            Sale::from_json(m.payload().unwrap()).expect("generated sales are valid")
        })
        .collect();
    assert_eq!(sales.len(), 6000);
    let on_new = read_topic(&topic, true)
        .iter()
        .filter(|m| m.partition() >= 2)
        .count();
    assert!(on_new > 500, "only {on_new} records on the new partitions");

    // Both new partitions are taken on within seconds, and every record is read.
    for p in [2, 3] {
        wait_for(
            &log,
            &format!("topic={topic} partition={p} offset=0"),
            Duration::from_secs(20),
        );
    }
    assert!(
        grown.elapsed() < Duration::from_secs(30),
        "took {:?}",
        grown.elapsed()
    );
    wait_for(&log, "6,000 records in", Duration::from_secs(30));
    Command::new("kill")
        .args(["-INT", &live.id().to_string()])
        .status()
        .unwrap();
    let status = live.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    // A bounded run of the same job resumes all four partitions from the checkpoint and
    // closes every epoch: the result is the fold of the whole topic, each record once.
    let resumed = run_ok(
        Command::new(env!("CARGO_BIN_EXE_dataflow"))
            .args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
            .args(["-w", "2", "--sinks", "jsonl", "--until-end"])
            .args([
                "--progress-interval",
                "0s",
                "-o",
                &out.display().to_string(),
            ])
            .stdin(Stdio::null()),
    );
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(
        stderr.contains("resuming after the last checkpoint"),
        "{stderr}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(comparable(&summary), fold(sales));
}

#[test]
fn a_new_partition_for_a_worker_without_one_stops_the_job_for_a_restart_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("growth-idle-worker");
    publish(&topic, "2", "2000", "6", "2010-12-01T08:00:00", dir.path());
    let out = dir.path().join("out");
    let job_id = format!("{topic}-job");
    // Three workers over two partitions: worker 2 owns none and releases its epochs.
    let live = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataflow"));
        cmd.args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
            .args(["-w", "3", "--sinks", "jsonl", "--idle-timeout", "1s"])
            .args([
                "--progress-interval",
                "300ms",
                "-o",
                &out.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    };
    let log = dir.path().join("live.log");
    let mut first = live()
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(&log, "2,000 records in", Duration::from_secs(30));
    run_ok(Command::new(scripts_kafka()).args([
        "topics",
        "--alter",
        "--topic",
        &topic,
        "--partitions",
        "3",
    ]));
    publish(&topic, "3", "2000", "10", "2010-12-05T08:00:00", dir.path());
    // It stops by itself, with the temporary-failure status a supervisor restarts on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = first.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            panic!(
                "the job did not stop: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(75), "{text}");
    assert!(text.contains("partition 2 falls to worker 2"), "{text}");

    // The restart owns partition 2 from the start; a bounded run then closes everything.
    let resumed = run_ok(
        Command::new(env!("CARGO_BIN_EXE_dataflow"))
            .args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
            .args(["-w", "3", "--sinks", "jsonl", "--until-end"])
            .args([
                "--progress-interval",
                "0s",
                "-o",
                &out.display().to_string(),
            ])
            .stdin(Stdio::null()),
    );
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resuming after the last checkpoint")
    );
    let sales: Vec<Sale> = read_topic(&topic, true)
        .iter()
        .map(|m| Sale::from_json(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(sales.len(), 4000);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(comparable(&summary), fold(sales));
}
