//! Resuming a checkpointed job over a topic that grew: every record is counted exactly once,
//! whatever its date. A record the checkpoint counted is a replay; a record after it is new,
//! and if its epoch was committed meanwhile (a bounded run closes every epoch at its end), it
//! is counted late in the earliest open epoch; the same when the job is killed mid-run while
//! its topic grows. Also: two jobs with default flags never mix their outputs, and a start
//! refused by the identity check changes nothing. (Apart from the chaos test, which restarts
//! the broker under the tests of its binary.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use serde_json::Value;

use common::*;

/// The report a finished run prints last on stderr.
fn report(output: &Output) -> Value {
    text(&output.stderr)
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["messages"].is_u64())
        })
        .unwrap_or_else(|| panic!("no report in:\n{}", text(&output.stderr)))
}

/// One way of running the job: its output directory and how it is started.
struct Setup {
    name: &'static str,
    out: PathBuf,
    flags: Vec<&'static str>,
    /// Processes of 2 workers each (0: one process, with `flags` giving its workers).
    processes: usize,
}

impl Setup {
    /// Runs the job to the end of the topic, resuming its checkpoint; the report of process 0.
    fn run(&self, topic: &str) -> Value {
        let mut flags = vec!["--sinks", "jsonl", "--epoch", "5m"];
        flags.extend(&self.flags);
        if self.processes == 0 {
            return report(&run_ok(&mut dataflow(topic, &self.out, &flags)));
        }
        dataflow_cluster(topic, &self.out, self.processes, 2, &flags);
        read_summary(&self.out)
    }
}

/// A field of the totals in the summary of `out`.
fn total(out: &Path, field: &str) -> i64 {
    read_summary(out)["totals"][field].as_i64().unwrap()
}

/// Publishes `n` generated sales of `seed` starting at `start` to `topic`.
fn append(topic: &str, n: usize, seed: u32, start: &str, dir: &Path) {
    run_ok(ingest_to(topic, dir).args([
        "--generate",
        &n.to_string(),
        "--seed",
        &seed.to_string(),
        "--start",
        start,
    ]));
}

#[test]
fn a_resumed_job_counts_every_new_record_once_whatever_its_date() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("resume");
    create_topic(&topic, 4, &[]);
    let setups = [
        Setup {
            name: "w1",
            out: dir.path().join("w1"),
            flags: vec!["-w", "1"],
            processes: 0,
        },
        Setup {
            name: "w3",
            out: dir.path().join("w3"),
            flags: vec!["-w", "3"],
            processes: 0,
        },
        Setup {
            name: "n2w2",
            out: dir.path().join("n2w2"),
            flags: vec![],
            processes: 2,
        },
    ];
    // Invoice retention on (two epochs): its resumes count the same as one run without
    // checkpoints, invoices closed by sales behind the horizon included.
    let retention = ["--invoice-retention", "10m"];
    let kept = Setup {
        name: "w2-retention",
        out: dir.path().join("w2-retention"),
        flags: vec!["-w", "2", retention[0], retention[1]],
        processes: 0,
    };
    let every = || setups.iter().chain([&kept]);
    // Each step of the topic: every setup resumes over it, then all are checked.
    let check = |step: &str, new: u64| {
        for setup in every() {
            let report = setup.run(&topic);
            if setup.processes == 0 {
                assert_eq!(
                    (report["messages"].as_u64(), report["replayed"].as_u64()),
                    (Some(new), Some(0)),
                    "{step}, {}: {report}",
                    setup.name
                );
            }
        }
        for setup in &setups[1..] {
            assert_same_outputs(&setups[0].out, &setup.out);
        }
        // Every record counted once: the summary equals a fold over the whole topic.
        let sales = topic_sales(&topic);
        assert_eq!(
            comparable(&read_summary(&setups[0].out)),
            fold(sales),
            "{step}: the resumed job's summary"
        );
        // With invoice retention, it equals one uninterrupted run without checkpoints.
        let once = dir.path().join(format!("once-{}", step.replace(' ', "-")));
        run_ok(&mut dataflow(
            &topic,
            &once,
            &["--sinks", "jsonl", "--epoch", "5m", "--no-checkpoint"]
                .into_iter()
                .chain(retention)
                .collect::<Vec<_>>(),
        ));
        let (resumed, whole) = (read_summary(&kept.out), read_summary(&once));
        assert_eq!(comparable(&resumed), comparable(&whole), "{step}");
        assert_eq!(resumed["dead_letters"], whole["dead_letters"], "{step}");
    };

    publish(&topic, &["--generate", "3000", "--seed", "1"], dir.path());
    check("first run", 3000);
    let checkpoints = epoch_checkpoints(&job_id(&topic, &setups[0].out));
    let committed = checkpoints.last().expect("a committed epoch")["epoch_start"]
        .as_str()
        .unwrap()
        .to_owned();

    // A resume that finds nothing new commits nothing and changes no file.
    let before = outputs(&setups[0].out);
    for setup in every() {
        setup.run(&topic);
    }
    assert_eq!(
        outputs(&setups[0].out),
        before,
        "an empty resume changed the files"
    );
    assert_eq!(
        epoch_checkpoints(&job_id(&topic, &setups[0].out)).len(),
        checkpoints.len(),
        "an empty resume committed an epoch"
    );

    // New sales dated in the last committed epoch (and on into new ones).
    append(&topic, 400, 5, &committed, dir.path());
    check("sales from the last committed epoch", 400);

    // New sales dated in the first, long committed, epochs: every one of them is late.
    let late_before = total(&setups[0].out, "late_lines");
    append(&topic, 300, 7, "2010-12-01T08:00:00", dir.path());
    check("sales in early committed epochs", 300);
    assert_eq!(
        total(&setups[0].out, "late_lines") - late_before,
        300,
        "new sales of committed epochs are counted late"
    );
    // In the earliest open epoch: the one after the last committed (a bounded run closes
    // every epoch at its end, so that is the epoch after the newest sale so far).
    let epochs = read_jsonl(&setups[0].out, "epochs");
    let last = epochs.last().unwrap();
    assert!(
        last["value"]["late_lines"].as_i64().unwrap() >= 300,
        "the late sales are not in the newest epoch: {last}"
    );

    // New sales in new epochs.
    append(&topic, 300, 9, "2010-12-20T08:00:00", dir.path());
    check("sales in new epochs", 300);
    let mut made = vec![topic.clone()];
    for setup in every() {
        let job = job_id(&topic, &setup.out);
        made.push(format!("retail-aggregates.checkpoints.{job}"));
    }
    delete_topics(&made.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The dataflow binary with nothing but the topic and the output directory: every other name
/// is the default one.
fn default_job(topic: &str, out: &Path) -> Command {
    let mut cmd = Command::new(binary("dataflow"));
    cmd.args(["--topic", topic, "-b", &bootstrap(), "--until-end"])
        .args(["--progress-interval", "0", "--sinks", "jsonl,kafka"])
        .arg("-o")
        .arg(out);
    cmd
}

/// The JSON lines of every output file of `out` but the dead letters.
fn output_lines(out: &Path) -> BTreeSet<String> {
    outputs(out)
        .into_iter()
        .filter(|(name, _)| name.ends_with(".jsonl") && name != "dlq.jsonl")
        .flat_map(|(_, bytes)| text(&bytes).lines().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[test]
fn two_jobs_with_default_flags_keep_their_outputs_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (unique("apart-a"), unique("apart-b"));
    publish(&a, &["--generate", "2000", "--seed", "3"], dir.path());
    publish(
        &b,
        &[
            "--generate",
            "2000",
            "--seed",
            "4",
            "--start",
            "2011-03-01T08:00:00",
        ],
        dir.path(),
    );
    let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
    run_ok(&mut default_job(&a, &out_a));
    run_ok(&mut default_job(&b, &out_b));
    for (topic, out, other) in [(&a, &out_a, &out_b), (&b, &out_b, &out_a)] {
        // The job id is the topic; its aggregates topic is named after it.
        let changes: BTreeSet<String> = read_topic(&format!("{topic}.aggregates"), true)
            .iter()
            .map(|m| text(m.payload().unwrap()))
            .collect();
        let own = output_lines(out);
        assert!(!own.is_empty());
        assert_eq!(
            changes, own,
            "{topic}.aggregates holds other changes than its job's"
        );
        assert!(own.is_disjoint(&output_lines(other)));
        assert_eq!(
            comparable(&read_summary(out)),
            fold(topic_sales(topic)),
            "{topic}"
        );
    }
    delete_topics(&[
        &a,
        &b,
        &format!("{a}.aggregates"),
        &format!("{b}.aggregates"),
        &format!("{a}.dlq"),
        &format!("{b}.dlq"),
        &format!("retail-aggregates.checkpoints.{a}"),
        &format!("retail-aggregates.checkpoints.{b}"),
    ]);
}

#[test]
fn a_refused_start_creates_commits_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("refused");
    publish(&topic, &["--generate", "500", "--seed", "2"], dir.path());
    let out = dir.path().join("out");
    run_ok(&mut dataflow(&topic, &out, &["--sinks", "jsonl,kafka"]));
    let files = files_under(dir.path());
    let topics = topic_names();
    let (new_aggregates, new_dlq) = (unique("refused-agg"), unique("refused-dlq"));
    let moved = dir.path().join("elsewhere");
    // The same job id, built differently: refused with exit 2.
    let refused = run(
        dataflow_job(&topic, &job_id(&topic, &out), &moved)
            .args(["--until-end", "--sinks", "jsonl,kafka", "--epoch", "1d"])
            .args([
                "--aggregates-topic",
                &new_aggregates,
                "--dlq-topic",
                &new_dlq,
            ]),
        2,
    );
    let said = text(&refused.stderr);
    assert!(said.contains("--epoch"), "{said}");
    assert_eq!(
        files_under(dir.path()),
        files,
        "the refused start wrote files"
    );
    assert!(
        !moved.exists(),
        "the refused start made its output directory"
    );
    // (Only the topics it would have made: other tests make topics meanwhile.)
    let now = topic_names();
    for name in [&new_aggregates, &new_dlq] {
        assert!(
            !now.contains(name.as_str()),
            "the refused start created {name}"
        );
    }
    assert!(now.is_superset(&topics));
    let job = job_id(&topic, &out);
    delete_topics(&[
        &topic,
        &format!("{job}.dlq"),
        &format!("{job}.aggregates"),
        &format!("retail-aggregates.checkpoints.{job}"),
    ]);
}

/// A job over a growing topic: no invoice retention, so that its summary equals a fold.
fn growing_job(topic: &str, out: &Path, aggregates: &str) -> Command {
    dataflow(
        topic,
        out,
        &["--sinks", "jsonl,kafka", "--aggregates-topic", aggregates],
    )
}

/// Starts the job over `topic` into `out` and kills it (SIGKILL) once it has committed an
/// epoch of its own, asserting that it was still running and had not written its summary:
/// the kill provably lands mid-run.
fn kill_after_a_commit(topic: &str, out: &Path, log: &Path) {
    let epochs = out.join("epochs.jsonl");
    let length = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let before = length(&epochs);
    let aggregates = format!("{topic}.grow");
    let mut child = growing_job(topic, out, &aggregates)
        .args(["-w", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("dataflow starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let running = child.try_wait().unwrap().is_none();
        assert!(
            running,
            "the run ended before it could be killed mid-run:\n{}",
            std::fs::read_to_string(log).unwrap()
        );
        if length(&epochs) > before {
            break;
        }
        assert!(Instant::now() < deadline, "no epoch committed within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A run removes the summary of the last one as it starts and writes its own at its end.
    assert!(
        !out.join("summary.json").exists(),
        "the killed run had finished"
    );
    eprintln!(
        "killed after a commit: epochs.jsonl {before} -> {} bytes",
        length(&epochs)
    );
}

#[test]
fn a_job_killed_while_its_topic_grows_counts_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("chaos-grow");
    // About 0.45 s of simulated time a record: 300,000 records span about 37 hours.
    let append = |records: &str, seed: &str, start: &str| {
        let args = ["--generate", records, "--seed", seed, "--start", start];
        run_ok(
            ingest_to(&topic, dir.path())
                .args(["--partitions", "4"])
                .args(args),
        );
    };
    let (chaos, reference) = (dir.path().join("chaos"), dir.path().join("reference"));
    let (grow, reference_aggregates) = (format!("{topic}.grow"), format!("{topic}.ref"));
    let reference_run =
        || run_ok(growing_job(&topic, &reference, &reference_aggregates).args(["-w", "1"]));

    // Both jobs read the first part to its end, which closes every epoch.
    append("300000", "21", "2010-12-01T08:00:00");
    reference_run();
    run_ok(growing_job(&topic, &chaos, &grow).args(["-w", "2"]));

    // More sales, from the first day on (in epochs both jobs committed) and later; the chaos
    // job is killed mid-run after each part arrives, and one part arrives while it is down.
    append("600000", "22", "2010-12-01T08:00:00");
    kill_after_a_commit(&topic, &chaos, &dir.path().join("grow-1.log"));
    append("600000", "23", "2010-12-03T12:00:00");
    kill_after_a_commit(&topic, &chaos, &dir.path().join("grow-2.log"));
    append("200000", "24", "2010-12-05T08:00:00");
    kill_after_a_commit(&topic, &chaos, &dir.path().join("grow-3.log"));
    run_ok(growing_job(&topic, &chaos, &grow).args(["-w", "2"]));
    reference_run();

    // Every record counted once, and the same outputs as the job that was never killed.
    let sales = topic_sales(&topic);
    assert_eq!(sales.len(), 1_700_000);
    let summary = read_summary(&chaos);
    assert_eq!(comparable(&summary), fold(sales));
    assert!(summary["totals"]["late_lines"].as_i64().unwrap() > 0);
    assert_same_outputs(&reference, &chaos);
    let (expected, actual) = (committed(&reference_aggregates), committed(&grow));
    assert_eq!(expected.len(), actual.len());
    assert!(expected == actual, "committed aggregate changes differ");
    delete_topics(&[
        &topic,
        &grow,
        &reference_aggregates,
        &format!("{}.dlq", job_id(&topic, &chaos)),
        &format!("{}.dlq", job_id(&topic, &reference)),
        &format!("retail-aggregates.checkpoints.{}", job_id(&topic, &chaos)),
        &format!(
            "retail-aggregates.checkpoints.{}",
            job_id(&topic, &reference)
        ),
    ]);
}

#[test]
fn every_identity_field_and_a_shrunk_topic_refuse_a_resume_in_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("identity");
    publish(&topic, &["--generate", "300", "--seed", "4"], dir.path());
    let out = dir.path().join("out");
    run_ok(&mut dataflow(&topic, &out, &["--sinks", "jsonl"]));
    let job = job_id(&topic, &out);
    let elsewhere = dir.path().join("elsewhere");
    let changed: [(&str, &str); 9] = [
        ("--epoch", "1d"),
        ("--lateness", "2h"),
        ("--invoice-retention", "off"),
        ("--aggregates-topic", "identity-other.aggregates"),
        ("--dlq-topic", "identity-other.dlq"),
        ("--alert-invoice-value", "100"),
        ("--alert-quantity", "7"),
        ("--alert-cancellations", "2"),
        ("--output-dir", ""),
    ];
    for (flag, value) in changed {
        // `dataflow_job` names the output directory itself.
        let (into, args) = match flag {
            "--output-dir" => (&elsewhere, vec![]),
            _ => (&out, vec![flag, value]),
        };
        let refused = run(
            dataflow_job(&topic, &job, into)
                .args(["--until-end", "--sinks", "jsonl"])
                .args(args),
            2,
        );
        let said = text(&refused.stderr);
        assert!(
            said.contains(&format!("{flag}: checkpoint")),
            "{flag} {value} was not refused by name:\n{said}"
        );
    }
    // Every process of a two-process job checks, not only process 0.
    let hostfile = dir.path().join("hosts");
    write_hostfile(&hostfile, &["127.0.0.1", "127.0.0.1"]);
    let children: Vec<_> = (0..2)
        .map(|p| {
            dataflow_job(&topic, &job, &out)
                .args(["--until-end", "--sinks", "jsonl", "--alert-quantity", "7"])
                .args(["-n", "2", "-p", &p.to_string(), "-h"])
                .arg(&hostfile)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let said = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "process {p}:\n{said}");
        assert!(
            said.contains("--alert-quantity: checkpoint"),
            "process {p}:\n{said}"
        );
    }
    // The topic deleted and made again with fewer partitions: its checkpoint is not its own.
    delete_topics(&[&topic]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while topic_names().contains(&topic) {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} is not deleted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    run_ok(ingest_to(&topic, dir.path()).args([
        "--partitions",
        "2",
        "--generate",
        "300",
        "--seed",
        "4",
    ]));
    let refused = run(
        dataflow_job(&topic, &job, &out).args(["--until-end", "--sinks", "jsonl"]),
        2,
    );
    let said = text(&refused.stderr);
    assert!(said.contains("the topic was recreated"), "{said}");
    delete_topics(&[&topic, &format!("retail-aggregates.checkpoints.{job}")]);
}
