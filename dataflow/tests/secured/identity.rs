//! Job identities: a job id resumes only the job that wrote its checkpoint, and a checkpoint
//! whose state topic is gone is not resumed.

use super::*;

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
