//! Chaos: a bounded run over 1M records is killed with SIGKILL five times (once as a
//! two-process job with one process killed), each time after a random number of newly
//! committed epochs and while it provably still runs, restarted each time, and also sees the
//! broker restart under it while it reads. At the end its committed outputs, read with
//! `read_committed`, equal those of an uninterrupted run byte for byte, and its summary equals
//! a fold over the topic. The job runs with a short invoice retention, so invoices close (and
//! leave the state) between kills. The kill points come from a seed that the test prints;
//! `CHAOS_SEED=N` repeats them.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const RECORDS: usize = 1_000_000;

/// The flags of every run of a job; the job id comes from the output directory, so every run
/// into the same directory resumes the last one.
fn job(topic: &str, out: &Path, aggregates: &str) -> Command {
    dataflow(
        topic,
        out,
        &[
            "--sinks",
            "jsonl,kafka",
            "--aggregates-topic",
            aggregates,
            // The records span about six days: invoices close all through the run, so kills
            // land between checkpoints taken before an invoice closed and restores after.
            "--invoice-retention",
            "6h",
        ],
    )
}

/// Starts a run with its log in `log` (a file, so a run that is never waited for cannot
/// block on a full pipe).
fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("dataflow starts")
}

/// Waits for a run started with `--http 127.0.0.1:0` and its stderr in `log` to exit: a
/// broker restart plus many times its uninterrupted time `full`. A run still going then fails
/// the test with its `/metrics` (partitions held, bytes buffered, lag), its log and where its
/// threads wait.
fn finish_within(child: &mut Child, log: &Path, full: Duration) -> std::process::ExitStatus {
    let limit = Duration::from_secs(240) + full * 10;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    let metrics = http_addr_in(&logged)
        .and_then(|addr| std::panic::catch_unwind(|| get(&addr, "/metrics").1).ok())
        .unwrap_or_default();
    // Where every thread waits, when gdb is there to tell.
    let stacks = Command::new("gdb")
        .args([
            "-p",
            &child.id().to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 20",
        ])
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
    let _ = child.kill();
    let _ = child.wait();
    let source: Vec<&str> = (metrics.lines())
        .filter(|l| l.starts_with("retail_stream_"))
        .collect();
    panic!(
        "the run did not finish within {limit:?}; killed it.\n/metrics:\n{}\n{}:\n{logged}\n\
         threads:\n{stacks}",
        source.join("\n"),
        log.display()
    );
}

/// Waits until the run whose process 0 logs to `log` (started with `--http 127.0.0.1:0`) has
/// committed `k` epochs (`retail_stream_epochs_committed` on its `/metrics`: confirmed by the
/// Kafka transaction), while every process in `procs` still runs and no `summary.json` is in
/// `out`: a kill right after lands in a live job, after a commit of its own.
fn wait_for_commits(log: &Path, out: &Path, k: u64, procs: &mut [Child]) -> u64 {
    let alive = |procs: &mut [Child]| {
        for (i, p) in procs.iter_mut().enumerate() {
            let status = p.try_wait().unwrap();
            assert!(
                status.is_none(),
                "process {i} ended before the kill: {status:?}"
            );
        }
        assert!(
            !out.join("summary.json").exists(),
            "the run finished before the kill"
        );
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut addr = None;
    loop {
        alive(procs);
        assert!(
            Instant::now() < deadline,
            "{k} epochs not committed in 180 s"
        );
        if addr.is_none() {
            addr = http_addr_in(&std::fs::read_to_string(log).unwrap_or_default());
        }
        let committed = addr.as_deref().map_or(0, epochs_committed);
        if committed >= k {
            // Still running after the commit that was seen: the kill lands mid-run.
            alive(procs);
            return committed;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A small deterministic-per-run pseudo-random source for kill points.
struct Dice(u64);

impl Dice {
    fn between(&mut self, low: f64, high: f64) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        low + (high - low) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

#[test]
fn killed_and_restarted_job_commits_exactly_what_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("chaos");
    // Dead letters of every reason, late lines and closed invoices cross the kills.
    let dirt = publish_dirty(&topic, RECORDS, 5, dir.path());

    // The reference: one uninterrupted run.
    let reference = dir.path().join("reference");
    let ref_aggregates = format!("{topic}.ref");
    let started = Instant::now();
    run_ok(job(&topic, &reference, &ref_aggregates).args(["-w", "2"]));
    let full = started.elapsed();
    eprintln!("uninterrupted run: {full:?}");

    let seed = std::env::var("CHAOS_SEED").map_or_else(
        |_| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("CHAOS_SEED is a number"),
    );
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} repeats these kill points)");
    let mut dice = Dice(seed);
    let chaos = dir.path().join("chaos");
    let aggregates = format!("{topic}.chaos");
    // Each round kills after 1 to an eighth of all epochs are committed by the run: five
    // rounds leave at least a third of the job for the broker restart.
    let epochs = read_jsonl(&reference, "epochs").len();
    let most = (epochs / 8).max(2);
    eprintln!("{epochs} epochs; each kill after 1 to {most} committed by the run");

    // Five kills, the third of a two-process job with one process killed.
    for round in 0..5 {
        let k = dice.between(1.0, most as f64 + 1.0) as u64;
        if round == 2 {
            let hostfile = dir.path().join("hosts");
            write_hostfile(&hostfile, &["127.0.0.1", "127.0.0.1"]);
            let mut procs: Vec<Child> = (0..2)
                .map(|p| {
                    spawn_logged(
                        job(&topic, &chaos, &aggregates)
                            .args(["-n", "2", "-p", &p.to_string(), "-w", "1"])
                            .args(["-h", &hostfile.display().to_string()])
                            .args(["--http", "127.0.0.1:0"]),
                        &dir.path().join(format!("run-{round}-p{p}.log")),
                    )
                })
                .collect();
            let log = dir.path().join(format!("run-{round}-p0.log"));
            let committed = wait_for_commits(&log, &chaos, k, &mut procs);
            eprintln!("round {round}: killing process 1 of 2 after {committed} committed epochs");
            procs[1].kill().unwrap();
            procs[1].wait().unwrap();
            // Its peer cannot go on alone: the broken connection stops it with 75.
            let status = wait_exit(&mut procs[0], Duration::from_secs(15))
                .expect("process 0 lives on without its peer");
            assert_eq!(status.code(), Some(75), "process 0: {status}");
        } else {
            let log = dir.path().join(format!("run-{round}.log"));
            let mut procs = vec![spawn_logged(
                job(&topic, &chaos, &aggregates).args(["-w", "2", "--http", "127.0.0.1:0"]),
                &log,
            )];
            let committed = wait_for_commits(&log, &chaos, k, &mut procs);
            eprintln!("round {round}: kill -9 after {committed} committed epochs");
            procs[0].kill().unwrap();
            procs[0].wait().unwrap();
        }
    }

    // Every run after the first resumed a checkpoint with commits in it.
    let logs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter(|p| !p.ends_with("run-0.log"))
        .collect();
    assert_eq!(logs.len(), 5, "{logs:?}");
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("resuming after the last checkpoint") && !text.contains("commits=0"),
            "{} did not resume a committed epoch:\n{text}",
            log.display()
        );
    }

    // A run that sees the broker restart under it, then finishes. It serves `/metrics`, so
    // that a run that never finishes fails the test with what its sources were doing.
    let log = dir.path().join("run-broker-restart.log");
    let mut procs = vec![spawn_logged(
        job(&topic, &chaos, &aggregates).args(["-w", "2", "--http", "127.0.0.1:0"]),
        &log,
    )];
    wait_for_commits(&log, &chaos, 1, &mut procs);
    let [mut child] = <[Child; 1]>::try_from(procs).unwrap();
    eprintln!("restarting the broker mid-run");
    kafka_script(&["down"]);
    kafka_script(&["up"]);
    let status = finish_within(&mut child, &log, full);
    let stderr = std::fs::read_to_string(&log).unwrap();
    if status.success() {
        // It resumed from the restored state: it did not read the whole topic again.
        let report: serde_json::Value = stderr
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("the job reports");
        let read = report["messages"].as_u64().unwrap();
        eprintln!("the last run read {read} of {RECORDS} records");
        assert!(
            read < RECORDS as u64,
            "a resumed run re-read the topic: {report}"
        );
    } else {
        // A transaction the broker lost is aborted (exit 75): a restart resumes.
        assert_eq!(status.code(), Some(75), "unexpected failure:\n{stderr}");
        eprintln!("the broker restart aborted a transaction; resuming");
        run_ok(job(&topic, &chaos, &aggregates).args(["-w", "2"]));
    }

    // Every checkpoint of every run, killed or not, could be resumed without reading a
    // partition twice.
    assert_checkpoints_hold_every_partition(&job_id(&topic, &reference), &topic);
    assert_checkpoints_hold_every_partition(&job_id(&topic, &chaos), &topic);

    // Committed outputs equal the uninterrupted run's, byte for byte.
    assert_same_outputs(&reference, &chaos);
    let (expected, actual) = (committed(&ref_aggregates), committed(&aggregates));
    assert_eq!(
        expected.len(),
        actual.len(),
        "committed aggregate changes differ in number"
    );
    assert!(expected == actual, "committed aggregate changes differ");

    // And the summary equals a fold over the topic.
    let (sales, dead) = sales_but_dead_letters(&topic, &chaos);
    let bad: usize = dirt.bad.values().sum();
    assert!(
        dead >= bad + dirt.resent,
        "{dead} dead letters for {dirt:?}"
    );
    assert_eq!(sales.len() + dead, RECORDS + bad + dirt.resent);
    assert!(read_summary(&chaos)["totals"]["late_lines"].as_u64() > Some(0));
    assert_eq!(comparable(&read_summary(&chaos)), fold(sales));

    // Every output stream, and the dead-letter topic, equal the oracle's.
    let (messages, partitions) = topic_messages(&topic);
    let flags = Flags {
        retention_secs: Some(6 * 3600),
        ..Flags::default()
    };
    assert_java_partitioned(&messages, partitions);
    let expected = common::oracle(&messages, &flags);
    assert_outputs_match(&chaos, &expected);
    assert_dead_letter_topic_matches(&format!("{}.dlq", job_id(&topic, &chaos)), &expected);
    delete_topics_of(&topic);
}
