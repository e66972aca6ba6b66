//! The single writer against the real broker: what the console shows equals what the files
//! say for every batch, and a job whose transactional producer is fenced exits 75 (restart).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::Value;

use common::*;

fn jsonl(dir: &Path, stream: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("{stream}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

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
    let topic = fresh_topic("console");
    ingest(&topic, &["--generate", "40000", "--seed", "21"], dir.path());
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
    for row in jsonl(&out, "totals") {
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
    for row in jsonl(&out, "alerts") {
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
    let epochs = jsonl(&out, "epochs").len();
    assert!(batches > 20, "only {batches} batches printed");
    // Every epoch with sales has its batch (an epoch may also close with only dead letters).
    assert!(batches >= epochs, "{batches} batches for {epochs} epochs");
}

#[test]
fn a_fenced_job_exits_75_and_the_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = fresh_topic("fenced");
    ingest(&topic, &["--generate", "5000", "--seed", "4"], dir.path());
    let out = dir.path().join("out");
    let job_id = format!("{topic}-job");
    let log = dir.path().join("job.log");
    let live = |log: &Path| {
        Command::new(env!("CARGO_BIN_EXE_dataflow"))
            .args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
            .args([
                "--sinks",
                "jsonl,kafka",
                "--idle-timeout",
                "1s",
                "--epoch",
                "1m",
            ])
            .args([
                "--progress-interval",
                "0s",
                "-o",
                &out.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("dataflow starts")
    };
    let mut job = live(&log);
    // Wait for its first commits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(out.join("totals.jsonl")).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "no commit within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Another instance claims the job's transactional id: the running one is fenced.
    let other: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", format!("retail-stream-{job_id}"))
        .create()
        .unwrap();
    other.init_transactions(Duration::from_secs(30)).unwrap();
    // More sales, later in time, make the job commit again.
    ingest(
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = job.kill();
            panic!(
                "the fenced job did not stop: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(75), "{text}");
    assert!(text.to_lowercase().contains("fenc"), "{text}");
    drop(other);

    // The restart (a bounded run of the same job) resumes from the checkpoint and ends with
    // the fold of the whole topic.
    let resumed = run_ok(
        Command::new(env!("CARGO_BIN_EXE_dataflow"))
            .args(["--topic", &topic, "-b", &bootstrap(), "--job-id", &job_id])
            .args([
                "--sinks",
                "jsonl,kafka",
                "--until-end",
                "--epoch",
                "1m",
                "--progress-interval",
                "0s",
            ])
            .args(["-o", &out.display().to_string()])
            .stdin(Stdio::null()),
    );
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resuming after the last checkpoint")
    );
    let sales: Vec<retail_common::Sale> = read_topic(&topic, true)
        .iter()
        .map(|m| {
            use rdkafka::message::Message;
            retail_common::Sale::from_json(m.payload().unwrap()).unwrap()
        })
        .collect();
    assert_eq!(sales.len(), 10_000);
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(comparable(&summary), fold(sales));
}
