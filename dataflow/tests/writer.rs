//! The single writer against the real broker: what the console shows equals what the files
//! say for every batch, a job whose transactional producer is fenced exits 75 (restart), and a
//! fresh job creates its state topic compacted with one partition.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};

use common::*;

/// `1,234` or `-1,234.560` as an integer (thousandths for money).
fn number(text: &str) -> i64 {
    text.trim_end_matches(',')
        .replace([',', '.'], "")
        .parse()
        .unwrap()
}

#[test]
fn the_console_shows_the_totals_and_alerts_of_each_batch_as_the_files_do() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("console");
    publish(&topic, &["--generate", "40000", "--seed", "21"], dir.path());
    let out = dir.path().join("out");
    // Checkpointed: each commit takes several closed epochs at once, which is where the
    // console once showed the totals after the whole commit.
    let run = run_ok(&mut dataflow(
        &topic,
        &out,
        &["--sinks", "console,jsonl,kafka", "-w", "2", "--epoch", "5m"],
    ));
    let console = String::from_utf8(run.stdout).unwrap();

    // What the files hold as of each epoch: the last totals row at or before it, and the
    // number of open alerts.
    let mut totals_at: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for row in read_jsonl(&out, "totals") {
        let v = &row["value"];
        totals_at.insert(
            row["epoch"].as_str().unwrap().to_owned(),
            (
                v["lines"].as_i64().unwrap(),
                v["revenue_milli"].as_i64().unwrap(),
            ),
        );
    }
    let mut alerts_at: BTreeMap<String, i64> = BTreeMap::new();
    let mut open = 0;
    for row in read_jsonl(&out, "alerts") {
        open += row["diff"].as_i64().unwrap();
        alerts_at.insert(row["epoch"].as_str().unwrap().to_owned(), open);
    }
    let as_of = |map: &BTreeMap<String, i64>, epoch: &str| {
        map.range(..=epoch.to_owned())
            .next_back()
            .map_or(0, |(_, v)| *v)
    };

    let mut batches = 0;
    let mut epoch = String::new();
    for line in console.lines() {
        if let Some(rest) = line.strip_prefix("Batch ") {
            epoch = rest.split("epoch ").nth(1).unwrap().trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("totals: ") {
            // "totals: 1,234 lines, revenue 5,678.900, ... alerts +2 (now 7); dead letters +0"
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (lines, revenue) = (number(words[0]), number(words[3]));
            let now = rest.split("(now ").nth(1).unwrap();
            let alerts = number(now.split(')').next().unwrap());
            let (want_lines, want_revenue) = totals_at
                .range(..=epoch.clone())
                .next_back()
                .map(|(_, v)| *v)
                .unwrap_or((0, 0));
            assert_eq!(
                (lines, revenue, alerts),
                (want_lines, want_revenue, as_of(&alerts_at, &epoch)),
                "batch at epoch {epoch}: the console disagrees with the files"
            );
            batches += 1;
        }
    }
    let epochs = read_jsonl(&out, "epochs").len();
    assert!(batches > 20, "only {batches} batches printed");
    // Every epoch with sales has its batch (an epoch may also close with only dead letters).
    assert!(batches >= epochs, "{batches} batches for {epochs} epochs");
    delete_topics_of(&topic);
}

#[test]
fn a_fenced_job_exits_75_and_the_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("fenced");
    publish(&topic, &["--generate", "5000", "--seed", "4"], dir.path());
    let out = dir.path().join("out");
    let job_id = format!("{topic}-job");
    let log = dir.path().join("job.log");
    // The job, and later its restart, with the same flags but for how it ends.
    let fenced_job = || {
        let mut cmd = dataflow_job(&topic, &job_id, &out);
        cmd.args(["--sinks", "jsonl,kafka", "--epoch", "1m"])
            .args(["--progress-interval", "0s"]);
        cmd
    };
    let mut job = fenced_job()
        .args(["--idle-timeout", "1s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("dataflow starts");
    // Wait for its first committed checkpoint: the restart resumes from it or a later one.
    wait_for_checkpoint(&job_id, Duration::from_secs(60));

    // Another instance claims the job's transactional id: the running one is fenced.
    let other: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", format!("retail-stream-{job_id}"))
        .create()
        .unwrap();
    other.init_transactions(Duration::from_secs(30)).unwrap();
    // More sales, later in time, make the job commit again.
    publish(
        &topic,
        &[
            "--generate",
            "5000",
            "--seed",
            "5",
            "--start",
            "2010-12-09T08:00:00",
        ],
        dir.path(),
    );
    let logged = wait_for_exit(&mut job, 75, Duration::from_secs(60), &log);
    assert!(logged.to_lowercase().contains("fenc"), "{logged}");
    drop(other);

    // The restart (a bounded run of the same job) resumes from the checkpoint and ends with
    // the fold of the whole topic.
    let resumed = run_ok(fenced_job().arg("--until-end"));
    assert!(text(&resumed.stderr).contains("resuming after the last checkpoint"));
    let sales = topic_sales(&topic);
    assert_eq!(sales.len(), 10_000);
    assert_eq!(comparable(&read_summary(&out)), fold(sales));
    assert_checkpoints_hold_every_partition(&job_id, &topic);
    delete_topics_of(&topic);
}

#[test]
fn a_fresh_job_creates_its_state_topic_compacted_with_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("state-topic");
    publish(&topic, &["--generate", "2000", "--seed", "5"], dir.path());
    // The writer's producer connects while the job creates its state topic. That race once
    // let a request of the producer create the topic first, with the broker's default
    // settings, in about a third of the runs: eight fresh jobs.
    let mut state_topics = Vec::new();
    for run in 0..8 {
        let out = dir.path().join(format!("out-{run}"));
        run_ok(&mut dataflow(&topic, &out, &["--sinks", "jsonl"]));
        let state = format!("retail-aggregates.checkpoints.{}", job_id(&topic, &out));
        assert_eq!(partitions(&state), 1, "{state}");
        let config = topic_config(&state);
        assert_eq!(config["cleanup.policy"], "compact", "{state}: {config:?}");
        state_topics.push(state);
    }
    state_topics.push(topic.clone());
    delete_topics(&state_topics.iter().map(String::as_str).collect::<Vec<_>>());
}
