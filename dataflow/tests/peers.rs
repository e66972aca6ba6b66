//! Failure detection between the processes of a job, on loopback: a peer that is frozen,
//! killed, or restarted alone is noticed by the others within 15 s (one line naming it, then
//! exit 75), no process is left behind, and once every process is back the job resumes from
//! its checkpoint with outputs byte-identical to a clean run's.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Enough records that a fault after the first commit lands mid-run.
const RECORDS: &str = "1000000";

/// The flags of every process of the job over `topic` into `out`.
fn process(topic: &str, out: &Path, hostfile: &Path, index: usize) -> Command {
    let mut cmd = dataflow(topic, out, &["--sinks", "jsonl"]);
    cmd.args(["-n", "2", "-p", &index.to_string(), "-w", "2"])
        .arg("-h")
        .arg(hostfile);
    cmd
}

/// Starts process `index` with its stderr in `log`.
fn spawn(topic: &str, out: &Path, hostfile: &Path, index: usize, log: &Path) -> Child {
    process(topic, out, hostfile, index)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("dataflow starts")
}

/// Waits until `out` has committed an epoch (its per-epoch file grew), while both processes
/// run: a fault after it lands mid-run.
fn wait_for_a_commit(out: &Path, children: &mut [Child]) {
    let epochs = out.join("epochs.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&epochs).map_or(0, |m| m.len()) == 0 {
        for (i, child) in children.iter_mut().enumerate() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "process {i} ended before the job committed an epoch"
            );
        }
        assert!(Instant::now() < deadline, "no epoch committed within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit within `limit`; `None` if it is still running.
fn exit_within(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

struct Job {
    dir: tempfile::TempDir,
    topic: String,
    hostfile: PathBuf,
    out: PathBuf,
}

impl Job {
    /// A job of two processes over a new topic of `records` generated sales.
    fn new(name: &str, records: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let topic = unique(name);
        publish(&topic, &["--generate", records, "--seed", "31"], dir.path());
        let hostfile = dir.path().join("hosts");
        write_hostfile(&hostfile, &["127.0.0.1", "127.0.0.1"]);
        let out = dir.path().join("out");
        Job {
            dir,
            topic,
            hostfile,
            out,
        }
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn spawn(&self, index: usize, log: &str) -> Child {
        spawn(
            &self.topic,
            &self.out,
            &self.hostfile,
            index,
            &self.log(log),
        )
    }

    /// Process `index`'s address, as the hostfile names it.
    fn address(&self, index: usize) -> String {
        let hosts = std::fs::read_to_string(&self.hostfile).unwrap();
        hosts.lines().nth(index).unwrap().to_owned()
    }

    /// Runs both processes to the end (resuming the checkpoint) and checks the outputs
    /// against a clean single-process run's.
    fn finish_and_compare(&self) {
        supervise(self, [self.spawn(0, "final-0"), self.spawn(1, "final-1")]);
        self.compare_with_a_clean_run();
    }

    /// The job's outputs equal those of one clean run over its topic, byte for byte.
    fn compare_with_a_clean_run(&self) {
        let clean = self.dir.path().join("clean");
        run_ok(&mut dataflow(
            &self.topic,
            &clean,
            &["--sinks", "jsonl", "-w", "2"],
        ));
        assert_same_outputs(&clean, &self.out);
        delete_topics(&[&self.topic]);
    }
}

/// Plays the orchestrator for both processes until both have ended with 0: a process that
/// exits 75 is started again (at most a few times).
fn supervise(job: &Job, mut children: [Child; 2]) {
    let mut restarts = 0;
    let mut finished = [false, false];
    let deadline = Instant::now() + Duration::from_secs(300);
    while finished != [true, true] {
        assert!(Instant::now() < deadline, "the job did not finish");
        for (i, child) in children.iter_mut().enumerate() {
            if finished[i] {
                continue;
            }
            let Some(status) = child.try_wait().unwrap() else {
                continue;
            };
            match status.code() {
                Some(0) => finished[i] = true,
                Some(75) if restarts < 6 => {
                    restarts += 1;
                    eprintln!("process {i} exited 75: starting it again");
                    *child = job.spawn(i, &format!("restart-{restarts}-{i}"));
                }
                _ => panic!("process {i} ended with {status}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that `log` says, in one line, that process `index` at `address` failed.
fn names_the_peer(log: &Path, index: usize, address: &str) {
    let text = std::fs::read_to_string(log).unwrap();
    let named = format!("process {index} ({address})");
    assert!(
        text.lines().any(|l| l.contains(&named)),
        "no line names {named}:\n{text}"
    );
}

#[test]
fn a_frozen_process_is_noticed_and_the_job_recovers_exactly() {
    let job = Job::new("peers-frozen", RECORDS);
    let mut children = [job.spawn(0, "run-0"), job.spawn(1, "run-1")];
    wait_for_a_commit(&job.out, &mut children);
    signal(children[1].id(), "-STOP");
    let (status, took) = exit_within(&mut children[0], Duration::from_secs(30))
        .expect("process 0 still waits for its frozen peer after 30 s");
    eprintln!("a frozen peer noticed after {took:?}");
    assert_eq!(status.code(), Some(75), "process 0: {status}");
    assert!(took <= Duration::from_secs(15), "noticed after {took:?}");
    names_the_peer(&job.log("run-0"), 1, &job.address(1));
    // Thawed, the frozen one finds its peer gone and stops too: nothing is left behind.
    signal(children[1].id(), "-CONT");
    let (status, _) = exit_within(&mut children[1], Duration::from_secs(30))
        .expect("the thawed process lives on without its peer");
    assert_eq!(status.code(), Some(75), "process 1: {status}");
    job.finish_and_compare();
}

#[test]
fn a_process_restarted_alone_stops_its_peer_and_the_job_recovers_exactly() {
    let job = Job::new("peers-restart", RECORDS);
    let mut children = [job.spawn(0, "run-0"), job.spawn(1, "run-1")];
    wait_for_a_commit(&job.out, &mut children);
    // Process 1 dies and comes back at once, as an orchestrator restarts one pod.
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    let again = job.spawn(1, "run-1-again");
    let (status, took) = exit_within(&mut children[0], Duration::from_secs(30))
        .expect("process 0 goes on without noticing its peer restarted");
    eprintln!("a restarted peer noticed after {took:?}");
    assert_eq!(status.code(), Some(75), "process 0: {status}");
    assert!(took <= Duration::from_secs(15), "noticed after {took:?}");
    // Either its heartbeat's new incarnation or the broken connection names it.
    names_the_peer(&job.log("run-0"), 1, &job.address(1));
    // Process 0 comes back too, as an orchestrator restarts each process that exits 75 (the
    // restarted process 1 may have resumed a checkpoint older than process 0's; then both
    // stop and come back once more); the job resumes and ends.
    let zero = job.spawn(0, "run-0-again");
    supervise(&job, [zero, again]);
    job.compare_with_a_clean_run();
}

#[test]
fn a_missing_process_is_named_once_the_wait_is_over() {
    let job = Job::new("peers-missing", "10");
    let mut alone = process(&job.topic, &job.out, &job.hostfile, 0);
    alone.args(["--peer-wait", "3s", "--peer-timeout", "1s"]);
    let (output, took) = run_timeout(&mut alone, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(75), "{}", text(&output.stderr));
    assert!(took < Duration::from_secs(20), "{took:?}");
    let said = text(&output.stderr);
    assert!(
        said.contains(&format!("process 1 ({}) did not start", job.address(1))),
        "{said}"
    );
    delete_topics(&[&job.topic]);
}
