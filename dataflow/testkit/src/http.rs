//! `--http` servers seen from a test: plain GETs, waiting for a path to be served, and
//! `/metrics` checked by promtool and parsed by the Python client's parser (the venv
//! `.cache/venv-metrics`, or `$METRICS_PYTHON`; `scripts/test` prepares it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::places::workspace_root;

/// A GET over plain HTTP/1.0: status and body.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// [`get`], or why no answer came (the server is gone, or the connection broke).
pub fn try_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, body.to_owned()))
}

/// The value text of the unlabelled sample `name` in Prometheus text (`name value`), if there.
pub fn metric_sample<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(str::trim)
}

/// The epochs the job serving `/metrics` on `addr` has committed so far
/// (`retail_stream_epochs_committed_total`; 0 before the first).
pub fn epochs_committed(addr: &str) -> u64 {
    let (_, body) = get(addr, "/metrics");
    metric_sample(&body, "retail_stream_epochs_committed_total")
        .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
}

/// The address a process started with `--http 127.0.0.1:0` serves on, from its log line
/// (`http: ... http://<address>/...`); `None` before it has logged it.
pub fn http_addr_in(log: &str) -> Option<String> {
    log.lines()
        .find_map(|l| {
            l.strip_prefix("http: ")?
                .split("http://")
                .nth(1)?
                .split('/')
                .next()
        })
        .map(str::to_owned)
}

/// Waits up to `timeout` for the process whose stderr goes to `log` to say where it serves
/// `--http 127.0.0.1:0` (the port it was given by the system: no other program can take it
/// in between, as it could a port picked before the start).
pub fn served_addr(log: &Path, timeout: Duration) -> String {
    let logged = crate::files::wait_for_text(log, "http://", timeout);
    http_addr_in(&logged).unwrap_or_else(|| panic!("no address in {}:\n{logged}", log.display()))
}

/// A GET that must succeed with JSON.
pub fn get_json(addr: &str, path: &str) -> Value {
    let (status, body) = get(addr, path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Waits until `addr` answers `path` with 200.
pub fn wait_until_served(addr: &str, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = write!(s, "GET {path} HTTP/1.0\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}{path} not served within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` with `text` on its standard input and returns what it printed; `missing` says
/// how to get the program when it cannot run.
fn feed(command: &mut Command, text: &str, missing: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} cannot run ({e}): {missing}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The Prometheus text at `addr`, checked by promtool and parsed by the Python client's
/// parser: family name -> {type, samples}.
pub fn scrape(addr: &str) -> Value {
    let (status, text) = get(addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    let checked = feed(
        Command::new("promtool").args(["check", "metrics"]),
        &text,
        "install Debian's prometheus package",
    );
    assert!(
        checked.status.success(),
        "promtool check metrics refused /metrics of {addr}:\n{}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let python = std::env::var("METRICS_PYTHON").map_or_else(
        |_| workspace_root().join(".cache/venv-metrics/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "no {}: python3 -m venv .cache/venv-metrics && .cache/venv-metrics/bin/pip install -r \
         dataflow/tests/metrics/requirements.txt (scripts/test does)",
        python.display()
    );
    let parsed = feed(
        Command::new(&python).arg(workspace_root().join("dataflow/tests/metrics/parse.py")),
        &text,
        "rebuild .cache/venv-metrics (scripts/test does)",
    );
    assert!(
        parsed.status.success(),
        "prometheus_client cannot parse /metrics of {addr}:\n{}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

/// The samples named `sample` of family `family`: labels and value.
pub fn samples(metrics: &Value, family: &str, sample: &str) -> Vec<(Value, f64)> {
    let f = metrics
        .get(family)
        .unwrap_or_else(|| panic!("no metric {family} in {metrics}"));
    f["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == sample)
        .map(|s| (s[1].clone(), s[2].as_f64().unwrap()))
        .collect()
}

/// The sum of a family's samples named `sample`.
pub fn total(metrics: &Value, family: &str, sample: &str) -> f64 {
    samples(metrics, family, sample)
        .iter()
        .map(|(_, v)| v)
        .sum()
}
