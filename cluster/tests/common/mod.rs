//! Helpers shared by the integration tests: the real `cluster`, `dataflow` and `ingest`
//! binaries, unique topic names, fake dataflow/ssh scripts, and comparing output directories.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::{IpAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The broker the tests use (`scripts/kafka up` starts it on localhost:9092).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".into())
}

/// A name no other test or run uses (topics, consumer groups).
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "cluster-test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The directory cargo builds the workspace's binaries into (where `cluster` is).
pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_cluster"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A workspace binary next to `cluster`. `dataflow` and `ingest` belong to other packages, so
/// `cargo test -p cluster` does not build them: when one is missing it is built here, once, with
/// the same profile (`scripts/test` builds the whole workspace first, so this rarely runs).
pub fn sibling(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    let path = bin_dir().join(name);
    if !path.exists() {
        BUILD.call_once(|| {
            let release = bin_dir().ends_with("release");
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "-p", "dataflow", "-p", "ingest"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if release {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("run cargo build");
            assert!(status.success(), "cargo build -p dataflow -p ingest failed");
        });
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// The `cluster` command with a clean environment for its own flags.
pub fn cluster() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cluster"));
    command.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap());
    for var in [
        "CLUSTER_PROCESSES",
        "CLUSTER_WORKERS",
        "CLUSTER_HOSTFILE",
        "CLUSTER_MAX_RESTARTS",
        "CLUSTER_BACKOFF",
        "CLUSTER_BACKOFF_MAX",
        "CLUSTER_GRACE",
        "CLUSTER_SSH_BIN",
        "CLUSTER_PID_DIR",
        "DATAFLOW_BIN",
        "DATAFLOW_TOPIC",
        "DATAFLOW_OUTPUT_DIR",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs the command and checks its exit status, showing its output when it differs.
pub fn run(command: &mut Command, expect_code: i32) -> Output {
    let output = command.output().expect("run the command");
    assert_eq!(
        output.status.code(),
        Some(expect_code),
        "{command:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An executable script in `dir`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A stand-in for `ssh`: skips its options and the host up to `--` and runs the remote
/// command line with a local shell, as the remote one would.
pub fn fake_ssh(dir: &Path) -> PathBuf {
    script(
        dir,
        "fake-ssh",
        r#"echo "$*" >> "$(dirname "$0")/ssh.log"
while [ "$1" != "--" ]; do shift; done
shift
exec sh -c "$1""#,
    )
}

/// A free port on `ip` (released again; the job binds it a moment later).
pub fn free_port(ip: &str) -> u16 {
    let ip: IpAddr = ip.parse().unwrap();
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `path` exists and returns its contents.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The dataflow's output files that must match between runs.
pub const OUTPUTS: [&str; 7] = [
    "summary.json",
    "totals.jsonl",
    "by_country.jsonl",
    "top_products.jsonl",
    "epochs.jsonl",
    "alerts.jsonl",
    "dlq.jsonl",
];

/// Asserts that `actual` holds the same output files, byte for byte, as `expected`.
pub fn assert_same_outputs(expected: &Path, actual: &Path) {
    for name in OUTPUTS {
        let want = std::fs::read(expected.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", expected.join(name).display()));
        let got = std::fs::read(actual.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", actual.join(name).display()));
        assert!(
            want == got,
            "{name} differs between {} ({} bytes) and {} ({} bytes)",
            expected.display(),
            want.len(),
            actual.display(),
            got.len()
        );
    }
}
