//! The `dataflow` binary as a user meets it at the command line: what it says when a flag
//! combination is refused, when its stderr is closed, and when it is pointed at the wrong
//! listener of the broker (which needs the test broker with its secured listeners, as
//! `scripts/test` starts it).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The binary with nothing from the developer's environment that would change its start.
fn dataflow() -> Command {
    let mut cmd = Command::new(binary("dataflow"));
    cmd.env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn linger_without_a_bounded_run_is_refused_with_the_reason() {
    let out = run(
        dataflow().args(["--http", "127.0.0.1:0", "--http-linger"]),
        2,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--until-end"), "{stderr}");
}

#[test]
fn a_closed_stderr_is_harmless() {
    // Refused at start (a hostfile that does not exist): the error goes to a stderr whose
    // reader is gone, as in `dataflow ... 2>&1 | head -3`; the exit status stays bad usage
    // (2), never a panic's 101.
    let mut child = dataflow()
        .args(["-h", "/nonexistent/hosts", "-n", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(2));
}

/// The value of `key` in a client properties file.
fn property(file: &Path, key: &str) -> String {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{} has no {key}", file.display()))
        .to_owned()
}

/// Runs the job against a listener it cannot talk to; returns its stderr and how long it took.
fn wrong_listener(cmd: &mut Command) -> (String, Duration) {
    let topic = unique("test-cli-listener");
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = run(
        cmd.args(["--topic", &topic, "--until-end", "--job-id", &topic])
            .arg("-o")
            .arg(out.path()),
        1,
    );
    (text(&output.stderr), started.elapsed())
}

#[test]
fn tls_settings_at_the_plaintext_listener_name_the_cause_at_once() {
    let (stderr, took) = wrong_listener(
        dataflow()
            .arg("-F")
            .arg(secured_properties("sasl_ssl"))
            .args(["-b", &bootstrap()]),
    );
    let error = stderr.lines().last().unwrap_or_default();
    assert!(
        error.contains("SSL handshake failed") && error.contains("PLAINTEXT listener"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn plaintext_at_a_tls_listener_names_the_cause_at_once() {
    let tls = property(&secured_properties("sasl_ssl"), "bootstrap.servers");
    let (stderr, took) = wrong_listener(dataflow().args(["-b", &tls]));
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.contains("TLS (SSL or SASL_SSL) listener"), "{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
