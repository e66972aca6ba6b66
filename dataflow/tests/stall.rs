//! A fetch that stalls while its records wait: the job restarts the partition's fetch, and when
//! its Kafka client stays silent while a new client reaches the broker, it stops with exit 75;
//! the restart resumes from the checkpoint with a new client and ends with the oracle's
//! outputs.
//!
//! The fault, brought on at will: an iptables rule drops what the job's processes (a cgroup of
//! their own) send to the broker on any connection that has already received 2 MB from it. The
//! consumer's fetch connection goes silent with no error (librdkafka's request timeout is set
//! beyond the test), as in the stalls this rule exists for, while the job's probe (a new
//! client, a new connection) still reaches the broker. Needs root, as CI has.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Received bytes after which a connection of the job is cut.
const CUT_AFTER: &str = "2000000:";

/// The fault: a cgroup for the job's processes and the rule that cuts their fetched-from
/// connections. Dropped: the rule goes, then the (empty) cgroup.
struct Cut {
    cgroup: PathBuf,
    rule: Vec<String>,
}

impl Cut {
    fn new(name: &str) -> Cut {
        // cgroup v2: the root itself on a unified system, `unified/` on a hybrid one.
        let root = Path::new("/sys/fs/cgroup");
        let (base, path) = if root.join("cgroup.controllers").exists() {
            (root.to_owned(), name.to_owned())
        } else {
            (root.join("unified"), name.to_owned())
        };
        let cgroup = base.join(&path);
        std::fs::create_dir_all(&cgroup).unwrap_or_else(|e| {
            panic!("cannot make cgroup {} (root needed): {e}", cgroup.display())
        });
        let port = bootstrap().rsplit(':').next().unwrap().to_owned();
        let rule: Vec<String> = [
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-m",
            "cgroup",
            "--path",
            &path,
            "-m",
            "connbytes",
            "--connbytes",
            CUT_AFTER,
            "--connbytes-dir",
            "reply",
            "--connbytes-mode",
            "bytes",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        iptables("-I", &rule);
        Cut { cgroup, rule }
    }

    /// `command` started inside the cgroup (its pid joins it before the program starts).
    fn wrap(&self, command: &Command) -> Command {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.cgroup)
            .arg(command.get_program())
            .args(command.get_args());
        sh
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        iptables("-D", &self.rule);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

fn iptables(action: &str, rule: &[String]) {
    let out = Command::new("iptables")
        .arg(action)
        .args(rule)
        .output()
        .expect("iptables runs");
    assert!(
        out.status.success(),
        "iptables {action}: {}",
        text(&out.stderr)
    );
}

#[test]
fn a_stalled_fetch_is_restarted_then_stops_the_job_for_a_restart_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("stall");
    publish_dirty(&topic, 60_000, 3, dir.path());
    let out = dir.path().join("out");
    // A state topic of its own: the shared one is read whole at start and may pass 2 MB.
    let checkpoints = format!("{topic}.checkpoints");
    let job = || {
        let mut cmd = dataflow(&topic, &out, &["--sinks", "jsonl"]);
        cmd.args(["--checkpoint-topic", &checkpoints]);
        cmd
    };
    let log = dir.path().join("stalled.log");
    {
        let cut = Cut::new(&format!("retail-stall-{}", std::process::id()));
        // No request of the cut connection times out while the test runs: it stays silent.
        // (The producer's transactions may not time out sooner than its requests.)
        let mut stalled = cut.wrap(job().args([
            "-X",
            "socket.timeout.ms=300000",
            "-X",
            "transaction.timeout.ms=300000",
        ]));
        let mut child = stalled
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Silent 10 s, then 5 restarts 10 s apart, then the stop.
        let logged = wait_for_exit(&mut child, 75, Duration::from_secs(150), &log);
        let restarts = logged.matches("restarting its fetch").count();
        assert!(restarts >= 5, "{restarts} fetch restarts: {logged}");
        assert!(
            logged.contains(&format!("of {topic} has delivered nothing for 60s"))
                && logged.contains("stopping so that a restart resumes from the checkpoint"),
            "{logged}"
        );
        assert!(
            !out.join("summary.json").exists(),
            "a stopped job wrote its summary"
        );
    }
    // The fault is gone: the restart resumes and ends with what the topic holds.
    let resumed = run_ok_within(&mut job(), Duration::from_secs(120));
    let stderr = text(&resumed.stderr);
    assert!(
        stderr.contains("resuming after the last checkpoint"),
        "{stderr}"
    );
    let (messages, _) = topic_messages(&topic);
    assert_outputs_match(&out, &oracle(&messages, &Flags::default()));
    delete_topics_of(&topic);
}
