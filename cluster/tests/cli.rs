//! The real `cluster` binary with stand-in dataflow scripts (no Kafka): bad flags stop it before
//! anything starts, output is prefixed per process, a failing process restarts the whole job
//! until --max-restarts, bad usage is not restarted, interrupts are forwarded, and --print /
//! --ssh build the commands for other hosts.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    assert_help_mentions, cluster, fake_ssh, interrupt_and_wait, run, script, spawn_piped, text,
    wait_for_file,
};

/// A stand-in dataflow that leaves a marker when started at all.
fn marker_bin(dir: &Path) -> std::path::PathBuf {
    script(dir, "dataflow", r#"touch "$(dirname "$0")/started""#)
}

#[test]
fn bad_flags_exit_2_with_a_clear_message_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let bin = marker_bin(dir.path());
    let bin = bin.to_str().unwrap();
    let short = dir.path().join("short-hosts");
    std::fs::write(&short, "127.0.0.1:4001\n").unwrap();
    let remote = dir.path().join("remote-hosts");
    std::fs::write(&remote, "127.0.0.1:4001\nnode-b:4001\n").unwrap();
    let spaced = dir.path().join("spaced-hosts");
    std::fs::write(&spaced, "127.0.0.1:4001 \n127.0.0.1:4002\n").unwrap();
    let (short, remote, spaced) = (
        short.to_str().unwrap(),
        remote.to_str().unwrap(),
        spaced.to_str().unwrap(),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-n", "0"], "invalid value '0'"),
        (vec!["--workers", "0"], "invalid value '0'"),
        (vec!["--frobnicate"], "unexpected argument '--frobnicate'"),
        (vec!["--topic", "t"], "unexpected argument '--topic'"),
        (
            vec!["--backoff", "soon"],
            "invalid value 'soon' for '--backoff",
        ),
        (vec!["--", "-w", "2"], "must not set \"-w\""),
        (
            vec!["--", "--until-end", "--processes=2"],
            "must not set \"--processes=2\"",
        ),
        (vec!["--", "-h", "hosts"], "must not set \"-h\""),
        (
            vec!["-n", "2", "--hostfile", short],
            "has 1 line(s) but --processes is 2",
        ),
        (
            vec!["--hostfile", "/nonexistent/hosts"],
            "cannot read hostfile",
        ),
        (vec!["--hostfile", remote], "node-b is not this machine"),
        (vec!["--hostfile", spaced], "line 1: whitespace"),
        (vec!["--print"], "--print needs --hostfile"),
        (vec!["--print", "--ssh"], "cannot be used with"),
    ];
    for (args, message) in cases {
        let out = run(cluster().args(["--dataflow-bin", bin]).args(&args), 2);
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("started").exists(),
            "{args:?} started a process"
        );
    }
    let missing = dir.path().join("no-such-dataflow");
    let out = run(
        cluster().args(["-n", "2", "--dataflow-bin", missing.to_str().unwrap()]),
        2,
    );
    assert!(
        text(&out.stderr).contains("dataflow binary"),
        "{}",
        text(&out.stderr)
    );
    // DATAFLOW_BIN is the environment spelling of --dataflow-bin.
    let out = run(cluster().env("DATAFLOW_BIN", &missing).args(["-n", "2"]), 2);
    assert!(text(&out.stderr).contains("no-such-dataflow"));
}

#[test]
fn help_says_a_restart_resumes_from_the_checkpoint() {
    let out = run(cluster().arg("--help"), 0);
    let help = text(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        help.contains("A restart resumes from the job's last checkpoint"),
        "{help}"
    );
    assert!(!help.contains("re-runs the job from the start"), "{help}");
}

#[test]
fn help_explains_the_flags() {
    assert_help_mentions(
        &mut cluster(),
        &[
            "--processes",
            "--workers",
            "--hostfile",
            "--dataflow-bin",
            "--max-restarts",
            "--backoff",
            "--backoff-max",
            "--grace",
            "--print",
            "--ssh",
            "--ssh-bin",
            "--pid-dir",
            "DATAFLOW_BIN",
            "Exit status",
        ],
    );
}

#[test]
fn output_is_prefixed_and_each_process_gets_its_timely_flags() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "dataflow",
        r#"echo "args: $*"; echo "to stderr $4" >&2"#,
    );
    let out = run(
        cluster()
            .args(["-n", "3", "-w", "2", "--dataflow-bin"])
            .arg(&bin)
            .args(["--", "--topic", "a b"]),
        0,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    for i in 0..3 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("[p{i}] args: ")))
            .unwrap_or_else(|| panic!("no args line of p{i} in {stdout}"));
        let rest = line
            .strip_prefix(&format!("[p{i}] args: -n 3 -p {i} -w 2 -h "))
            .unwrap();
        assert!(rest.ends_with("/hosts --topic a b"), "{line}");
        assert!(
            stderr.contains(&format!("[p{i}] to stderr {i}\n")),
            "{stderr}"
        );
    }
    // One process needs no hostfile.
    let out = run(cluster().arg("--dataflow-bin").arg(&bin), 0);
    assert_eq!(text(&out.stdout), "[p0] args: -n 1 -p 0 -w 1\n");
}

#[test]
fn a_failing_process_restarts_the_job_until_max_restarts_then_names_it() {
    let dir = tempfile::tempdir().unwrap();
    // p1 fails at once; the others would run for a minute unless stopped.
    let bin = script(
        dir.path(),
        "dataflow",
        r#"echo "start $4" >> "$(dirname "$0")/starts.log"
if [ "$4" = 1 ]; then
  echo "a console table line"
  for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "log line $i" >&2; done
  echo "error: boom" >&2
  exit 4
fi
exec sleep 60"#,
    );
    let started = Instant::now();
    let out = run(
        cluster()
            .args(["-n", "3", "--max-restarts", "2", "--backoff", "50ms"])
            .arg("--dataflow-bin")
            .arg(&bin),
        4,
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the sleeping processes were not stopped"
    );
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("restarting the whole job").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("restart 1 of 2") && stderr.contains("restart 2 of 2"));
    assert!(
        stderr.contains("in 50ms") && stderr.contains("in 100ms"),
        "{stderr}"
    );
    let report = stderr[stderr.rfind("cluster: error:").expect("final error")..].to_owned();
    assert!(
        report.starts_with("cluster: error: process p1 (pid ")
            && report.contains("exited with status 4; gave up after 2 restart(s)"),
        "{report}"
    );
    // The last 10 lines of its log (stderr), not its stdout.
    assert!(
        report.contains("its last 10 line(s):\n  [p1] log line 4\n"),
        "{report}"
    );
    assert!(
        report.ends_with("  [p1] log line 12\n  [p1] error: boom\n"),
        "{report}"
    );
    assert!(!report.contains("console table"), "{report}");
    let starts = std::fs::read_to_string(dir.path().join("starts.log")).unwrap();
    // p1 ran in each of the 3 attempts (the others may be stopped before they write a line).
    assert_eq!(starts.matches("start 1").count(), 3, "{starts}");
}

#[test]
fn a_process_killed_by_a_signal_gives_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), "dataflow", "kill -KILL $$");
    let out = run(
        cluster()
            .args(["--max-restarts", "0", "--dataflow-bin"])
            .arg(&bin),
        137,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("was killed by signal 9 (SIGKILL); not restarting (--max-restarts 0)"),
        "{stderr}"
    );
}

#[test]
fn bad_usage_in_a_process_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "dataflow",
        r#"echo "start $4" >> "$(dirname "$0")/starts.log"
echo "error: unexpected argument '--nope'" >&2
exit 2"#,
    );
    let out = run(
        cluster()
            .args(["-n", "2", "--dataflow-bin"])
            .arg(&bin)
            .args(["--", "--nope"]),
        2,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not restarting: exit status 2 is bad usage"),
        "{stderr}"
    );
    assert!(stderr.contains("unexpected argument '--nope'"));
    assert!(!stderr.contains("restarting the whole job"));
}

#[test]
fn an_interrupt_is_forwarded_once_to_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "dataflow",
        r#"trap 'echo "p$4 got INT"; exit 130' INT
echo $$ > "$(dirname "$0")/ready$4"
while :; do sleep 0.05; done"#,
    );
    let child = spawn_piped(cluster().args(["-n", "2", "--dataflow-bin"]).arg(&bin));
    for i in 0..2 {
        wait_for_file(
            &dir.path().join(format!("ready{i}")),
            Duration::from_secs(10),
        );
    }
    let out = interrupt_and_wait(child);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("got INT").count(), 2, "{stdout}");
    assert!(stdout.contains("[p0] p0 got INT") && stdout.contains("[p1] p1 got INT"));
    assert!(!text(&out.stderr).contains("restarting"));
}

#[test]
fn print_gives_one_quoted_command_per_host() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "node-a:2101\nnode-b:2101\n10.1.2.3:2102\nignored:1\n",
    )
    .unwrap();
    let out = run(
        cluster()
            .args([
                "-n",
                "3",
                "-w",
                "4",
                "--print",
                "--dataflow-bin",
                "/opt/rs/dataflow",
            ])
            .arg("--hostfile")
            .arg(&hosts)
            .args([
                "--",
                "--topic",
                "sales",
                "-o",
                "/data/out dir",
                "-b",
                "kafka:9092",
            ]),
        0,
    );
    let h = hosts.to_str().unwrap();
    let expected: String = (0..3)
        .map(|i| {
            format!(
                "/opt/rs/dataflow -n 3 -p {i} -w 4 -h {h} --topic sales -o '/data/out dir' -b kafka:9092\n"
            )
        })
        .collect();
    assert_eq!(text(&out.stdout), expected);
    // The stdout lines run as they are: a shell hands the dataflow the original words.
    let echo = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "set -- {}; printf '%s|' \"$@\"",
                expected.lines().next().unwrap()
            ),
        ])
        .output()
        .unwrap();
    assert_eq!(
        text(&echo.stdout),
        format!(
            "/opt/rs/dataflow|-n|3|-p|0|-w|4|-h|{h}|--topic|sales|-o|/data/out dir|-b|kafka:9092|"
        )
    );
}

#[test]
fn ssh_runs_each_command_through_the_ssh_client_on_its_host() {
    let dir = tempfile::tempdir().unwrap();
    let ssh = fake_ssh(dir.path());
    let bin = script(dir.path(), "dataflow", r#"echo "ran $*""#);
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "node-a:2101\nnode-b:2101\n").unwrap();
    let out = run(
        cluster()
            .args(["--ssh", "--ssh-bin"])
            .arg(&ssh)
            .arg("--dataflow-bin")
            .arg(&bin)
            .arg("--hostfile")
            .arg(&hosts)
            .args(["--", "-o", "it's here"]),
        0,
    );
    let stdout = text(&out.stdout);
    let h = hosts.to_str().unwrap();
    assert!(
        stdout.contains(&format!("[p0] ran -n 2 -p 0 -w 1 -h {h} -o it's here\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("[p1] ran -n 2 -p 1 -w 1 -h {h} -o it's here\n")),
        "{stdout}"
    );
    let log = std::fs::read_to_string(dir.path().join("ssh.log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort_unstable();
    let b = bin.to_str().unwrap();
    assert_eq!(
        lines,
        [
            format!("-tt -o BatchMode=yes node-a -- {b} -n 2 -p 0 -w 1 -h {h} -o 'it'\\''s here'"),
            format!("-tt -o BatchMode=yes node-b -- {b} -n 2 -p 1 -w 1 -h {h} -o 'it'\\''s here'"),
        ]
    );
}
