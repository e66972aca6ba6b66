//! Partitions added to the topic while the job runs: read from their start within seconds,
//! every record counted once, and a restart resumes them from the checkpoint.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use retail_common::Sale;

use common::*;

/// Publishes `count` generated sales to `topic` (created with `partitions` partitions).
fn publish_generated(
    topic: &str,
    partitions: &str,
    count: &str,
    seed: &str,
    start: &str,
    dir: &Path,
) {
    run_ok(
        ingest_to(topic, dir)
            .args(["--partitions", partitions])
            .args(["--generate", count, "--seed", seed, "--start", start]),
    );
}

/// A run of job `job_id` over `topic` with `workers` workers, writing to `out`: `live` ones
/// go on until stopped (and stop on their own when idle), the others end at the topic's end.
fn growth_job(topic: &str, job_id: &str, out: &Path, workers: &str, live: bool) -> Command {
    let mut cmd = dataflow_job(topic, job_id, out);
    cmd.args(["-w", workers, "--sinks", "jsonl"]);
    if live {
        cmd.args(["--idle-timeout", "1s", "--progress-interval", "300ms"])
            .stdout(Stdio::null());
    } else {
        cmd.args(["--until-end", "--progress-interval", "0s"]);
    }
    cmd
}

/// Grows `topic` to `partitions` partitions.
fn grow(topic: &str, partitions: &str) {
    kafka_script(&[
        "topics",
        "--alter",
        "--topic",
        topic,
        "--partitions",
        partitions,
    ]);
}

#[test]
fn partitions_added_under_a_running_job_are_read_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("growth");
    publish_generated(&topic, "2", "3000", "5", "2010-12-01T08:00:00", dir.path());
    let out = dir.path().join("out");
    let log = dir.path().join("live.log");
    let job_id = format!("{topic}-job");
    let mut live = growth_job(&topic, &job_id, &out, "2", true)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("dataflow starts");
    wait_for_text(&log, "3,000 records in", Duration::from_secs(30));

    // Grow the topic to 4 partitions and publish more: the murmur2 partitioner now also
    // places invoices on partitions 2 and 3.
    grow(&topic, "4");
    let grown = Instant::now();
    publish_generated(&topic, "4", "3000", "9", "2010-12-05T08:00:00", dir.path());
    let messages = read_topic(&topic, true);
    assert!(messages.iter().all(|m| m.partition() < 4));
    let sales: Vec<Sale> = messages
        .iter()
        .map(|m| Sale::from_json(m.payload().unwrap()).expect("generated sales are valid"))
        .collect();
    assert_eq!(sales.len(), 6000);
    let on_new = messages.iter().filter(|m| m.partition() >= 2).count();
    assert!(on_new > 500, "only {on_new} records on the new partitions");

    // Both new partitions are taken on within seconds, and every record is read.
    for p in [2, 3] {
        wait_for_text(
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
    wait_for_text(&log, "6,000 records in", Duration::from_secs(30));
    interrupt(&live);
    wait_for_exit(&mut live, 130, Duration::from_secs(60), &log);

    // A bounded run of the same job resumes all four partitions from the checkpoint and
    // closes every epoch: the result is the fold of the whole topic, each record once.
    let resumed = run_ok(&mut growth_job(&topic, &job_id, &out, "2", false));
    let stderr = text(&resumed.stderr);
    assert!(
        stderr.contains("resuming after the last checkpoint"),
        "{stderr}"
    );
    assert_eq!(comparable(&read_summary(&out)), fold(sales));
    delete_topics_of(&topic);
}

#[test]
fn a_new_partition_for_a_worker_without_one_stops_the_job_for_a_restart_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("growth-idle-worker");
    publish_generated(&topic, "2", "2000", "6", "2010-12-01T08:00:00", dir.path());
    let out = dir.path().join("out");
    let job_id = format!("{topic}-job");
    // Three workers over two partitions: worker 2 owns none and releases its epochs.
    let log = dir.path().join("live.log");
    let mut first = growth_job(&topic, &job_id, &out, "3", true)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_text(&log, "2,000 records in", Duration::from_secs(30));
    grow(&topic, "3");
    publish_generated(&topic, "3", "2000", "10", "2010-12-05T08:00:00", dir.path());
    // It stops by itself, with the temporary-failure status a supervisor restarts on.
    let logged = wait_for_exit(&mut first, 75, Duration::from_secs(30), &log);
    assert!(logged.contains("partition 2 falls to worker 2"), "{logged}");

    // The restart owns partition 2 from the start; a bounded run then closes everything.
    let resumed = run_ok(&mut growth_job(&topic, &job_id, &out, "3", false));
    assert!(text(&resumed.stderr).contains("resuming after the last checkpoint"));
    let sales = topic_sales(&topic);
    assert_eq!(sales.len(), 4000);
    assert_eq!(comparable(&read_summary(&out)), fold(sales));
    delete_topics_of(&topic);
}
