//! End-to-end against the real broker (`scripts/kafka up`; address from
//! `KAFKA_BOOTSTRAP_SERVERS`, default localhost:9092): one fresh topic of the real `ingest`'s
//! generated sales with bad messages, late lines and closed invoices mixed in, one uninterrupted 1 process x 1 worker `dataflow` run as the reference, and
//! `cluster` runs of other shapes, with a killed process, with a 127.0.0.x hostfile and over a
//! stand-in ssh, each of which must write the same output files byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::{
    DATAFLOW_OUTPUTS, Flags, assert_java_partitioned, assert_outputs_match, assert_same_files,
    binary, bootstrap, cluster, fake_ssh, oracle, publish_dirty, read_summary, run, signal,
    spawn_piped, text, topic_messages, unique, wait_for_file, write_hostfile,
};

/// Long enough (about 3 s for one process here) that a process can be killed mid-run.
const RECORDS: usize = 300_000;

/// The topic every test reads, and the reference outputs of a plain 1 x 1 run over it.
struct Fixture {
    topic: String,
    reference: PathBuf,
}

/// A fresh directory under cargo's scratch dir for integration tests.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let topic = unique("sales");
        // Dead letters of every reason, late lines and closed invoices cross the processes.
        publish_dirty(&topic, RECORDS, 7, &scratch("ingest"));
        let reference = scratch("reference");
        run(
            Command::new(binary("dataflow"))
                .args(dataflow_flags(&topic, &reference))
                .env("RUST_LOG", "warn"),
            0,
        );
        let summary = read_summary(&reference);
        assert!(
            summary["totals"]["late_lines"].as_u64() > Some(0),
            "{summary}"
        );
        assert!(
            summary["dead_letters"]["total"].as_u64() > Some(0),
            "{summary}"
        );
        // The reference every run is compared with equals the independent oracle.
        let (messages, partitions) = topic_messages(&topic);
        let flags = Flags {
            lateness_secs: 3600,
            retention_secs: Some(3 * 3600),
            ..Flags::default()
        };
        assert_java_partitioned(&messages, partitions);
        assert_outputs_match(&reference, &oracle(&messages, &flags));
        Fixture { topic, reference }
    })
}

/// The flags of a bounded run that writes only the JSON-lines files and summary.json. Every
/// run is its own job (`--job-id`), so that no checkpoint of another run, test or demo is
/// resumed; a restart inside one `cluster` run keeps the same flags and so the same job.
fn dataflow_flags(topic: &str, out: &Path) -> Vec<String> {
    vec![
        "--topic".into(),
        topic.into(),
        "--until-end".into(),
        "--sinks".into(),
        "jsonl".into(),
        "-o".into(),
        out.to_str().unwrap().into(),
        "--group-id".into(),
        unique("group"),
        "-b".into(),
        bootstrap(),
        "--progress-interval".into(),
        "1s".into(),
        "--lateness".into(),
        "1h".into(),
        "--invoice-retention".into(),
        "3h".into(),
        "--job-id".into(),
        unique("job"),
    ]
}

/// `cluster` with the real dataflow next to it and quiet children.
fn cluster_job() -> Command {
    let mut command = cluster();
    command
        .env("RUST_LOG", "warn,cluster=info")
        .arg("--dataflow-bin")
        .arg(binary("dataflow"));
    command
}

#[test]
fn three_processes_of_two_workers_match_one_process_of_one() {
    let f = fixture();
    let out = scratch("3x2");
    let result = run(
        cluster_job()
            .args(["--processes", "3", "--workers", "2", "--"])
            .args(dataflow_flags(&f.topic, &out)),
        0,
    );
    let stderr = text(&result.stderr);
    for i in 0..3 {
        assert!(
            stderr.contains(&format!("[p{i}] ")),
            "no output of p{i}: {stderr}"
        );
    }
    assert_same_files(&f.reference, &out, &DATAFLOW_OUTPUTS);
}

#[test]
fn killing_one_process_restarts_the_job_and_ends_with_the_same_results() {
    let f = fixture();
    let out = scratch("killed");
    let pids = scratch("pids");
    let child = spawn_piped(
        cluster_job()
            .args(["--processes", "2", "--workers", "1", "--backoff", "100ms"])
            .arg("--pid-dir")
            .arg(&pids)
            .arg("--")
            .args(dataflow_flags(&f.topic, &out)),
    );
    let victim = wait_for_file(&pids.join("p1.pid"), Duration::from_secs(30));
    let victim = victim.trim();
    // Mid-run: the whole job takes seconds; the processes are connected or connecting.
    std::thread::sleep(Duration::from_millis(300));
    signal(victim.parse().unwrap(), "-KILL");
    let result = child.wait_with_output().unwrap();
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    let restart = stderr
        .lines()
        .find(|l| l.contains("restarting the whole job"))
        .unwrap_or_else(|| panic!("no restart: {stderr}"));
    assert!(
        restart.contains(&format!("process p1 (pid {victim}, 127.0.0.1:"))
            && restart.contains("was killed by signal 9 (SIGKILL); stopped the other processes")
            && restart.ends_with("in 100ms (restart 1 of 3)"),
        "{restart}"
    );
    // (More restarts would mean something else failed too, e.g. the broker was restarted.)
    assert!(stderr.contains("attempt=2"), "{stderr}");
    assert!(
        stderr.contains("every process exited 0 (after "),
        "{stderr}"
    );
    assert_same_files(&f.reference, &out, &DATAFLOW_OUTPUTS);
}

#[test]
fn a_hostfile_of_loopback_addresses_runs_every_process_here() {
    let f = fixture();
    let out = scratch("loopback");
    let hosts = out.with_extension("hosts");
    write_hostfile(&hosts, &["127.0.0.2", "127.0.0.3"]);
    let result = run(
        cluster_job()
            .args(["--workers", "2", "--hostfile"])
            .arg(&hosts)
            .arg("--")
            .args(dataflow_flags(&f.topic, &out)),
        0,
    );
    let stderr = text(&result.stderr);
    assert!(
        stderr.contains("processes=2"),
        "the hostfile sets -n: {stderr}"
    );
    assert!(
        stderr.contains("p1 started (pid ") && stderr.contains(", 127.0.0.3:"),
        "{stderr}"
    );
    assert_same_files(&f.reference, &out, &DATAFLOW_OUTPUTS);
}

#[test]
fn ssh_mode_supervises_the_job_through_the_ssh_client() {
    let f = fixture();
    let out = scratch("ssh");
    let hosts = out.with_extension("hosts");
    write_hostfile(&hosts, &["127.0.0.4", "127.0.0.5"]);
    let ssh_dir = scratch("ssh-client");
    let ssh = fake_ssh(&ssh_dir);
    let result = run(
        cluster_job()
            .arg("--ssh")
            .arg("--ssh-bin")
            .arg(&ssh)
            .arg("--hostfile")
            .arg(&hosts)
            .arg("--")
            .args(dataflow_flags(&f.topic, &out)),
        0,
    );
    // Two ssh sessions per attempt (one attempt unless something else failed meanwhile).
    let log = std::fs::read_to_string(ssh_dir.join("ssh.log")).unwrap();
    assert!(
        log.lines().count().is_multiple_of(2) && !log.is_empty(),
        "{log}"
    );
    assert!(log.contains("BatchMode=yes 127.0.0.4 -- ") && log.contains(" -p 0 -w 1 -h "));
    assert!(log.contains("BatchMode=yes 127.0.0.5 -- ") && log.contains(" -p 1 -w 1 -h "));
    assert!(text(&result.stderr).contains("[p1] "));
    assert_same_files(&f.reference, &out, &DATAFLOW_OUTPUTS);
}
