//! Helpers for the integration tests: the real broker, fresh topics, the real binaries.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use retail_common::Sale;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The broker `scripts/kafka up` starts, unless the environment names another.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "localhost:9092".into())
}

/// A topic name no other test or run uses.
pub fn fresh_topic(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{name}-{nanos}-{}", std::process::id())
}

/// The workspace's shared test data (`../shared/data` beside the repository), or
/// `RETAIL_DATA_DIR`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("RETAIL_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

/// A binary of the workspace, built beside this package's (`scripts/test` builds them all).
pub fn binary(name: &str) -> PathBuf {
    let dataflow = PathBuf::from(env!("CARGO_BIN_EXE_dataflow"));
    let path = dataflow.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// Runs a command to completion, failing the test with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("command starts");
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Publishes a CSV file or generated sales with the real ingest binary.
pub fn ingest(topic: &str, args: &[&str], dir: &Path) {
    run_ok(
        Command::new(binary("ingest"))
            .args(["--topic", topic, "-b", &bootstrap(), "--partitions", "8"])
            .args(["--rejects", &dir.join("rejects.csv").display().to_string()])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null()),
    );
}

/// The dataflow binary with the flags every bounded test run shares; the job id is unique to
/// the output directory, so runs never resume one another's checkpoints.
pub fn dataflow(topic: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataflow"));
    let job_id = format!("{topic}-{}", out.file_name().unwrap().to_string_lossy());
    cmd.args([
        "--topic",
        topic,
        "-b",
        &bootstrap(),
        "--until-end",
        "--job-id",
        &job_id,
    ])
    .args(["--progress-interval", "0", "-o", &out.display().to_string()])
    .args(extra)
    .stdin(Stdio::null());
    cmd
}

/// Runs the job as `processes` processes of `workers` workers on loopback and waits for all.
pub fn dataflow_cluster(topic: &str, out: &Path, processes: usize, workers: usize, extra: &[&str]) {
    let hostfile = out.with_extension("hosts");
    let ports: Vec<u16> = (0..processes)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&hostfile, hosts).unwrap();
    let children: Vec<_> = (0..processes)
        .map(|p| {
            dataflow(topic, out, extra)
                .args(["-n", &processes.to_string(), "-p", &p.to_string()])
                .args(["-w", &workers.to_string()])
                .args(["-h", &hostfile.display().to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dataflow starts")
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "process {p} failed with {}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every message of `topic`: all partitions, from the beginning to the current end.
pub fn read_topic(topic: &str, read_committed: bool) -> Vec<OwnedMessage> {
    let isolation = if read_committed {
        "read_committed"
    } else {
        "read_uncommitted"
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", "retail-stream-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} does not exist");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut at_end = std::collections::BTreeSet::new();
    let mut messages = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while at_end.len() < partitions {
        assert!(
            std::time::Instant::now() < deadline,
            "reading {topic} timed out"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                messages.push(m.detach());
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    messages
}

/// All files of an output directory with their bytes, for comparison.
pub fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Asserts two output directories hold the same files, byte for byte.
pub fn assert_same_outputs(a: &Path, b: &Path) {
    let (fa, fb) = (outputs(a), outputs(b));
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&fa), names(&fb), "{} vs {}", a.display(), b.display());
    for ((name, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(
            x == y,
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The aggregates of `summary.json`, computed by a plain fold over the sales.
pub fn fold(sales: impl IntoIterator<Item = Sale>) -> Value {
    let mut lines = 0i64;
    let (mut units, mut revenue, mut cancel_lines, mut cancel_value) = (0i64, 0i64, 0i64, 0i64);
    let mut invoices = BTreeSet::new();
    let mut customers = BTreeSet::new();
    let mut countries: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    let mut products: BTreeMap<String, i64> = BTreeMap::new();
    for s in sales {
        let value = s.value().0;
        lines += 1;
        units += s.quantity;
        revenue += value;
        if s.is_cancellation() {
            cancel_lines += 1;
            cancel_value += value;
        }
        invoices.insert(s.invoice_no.clone());
        if let Some(c) = &s.customer_id {
            customers.insert(c.clone());
        }
        let c = countries.entry(s.country.clone()).or_default();
        c.0 += 1;
        c.1 += s.quantity;
        c.2 += value;
        *products.entry(s.stock_code.clone()).or_default() += value;
    }
    let mut top: Vec<(String, i64)> = products.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    json!({
        "totals": {
            "lines": lines, "units": units, "revenue_milli": revenue,
            "invoices": invoices.len(), "customers": customers.len(),
            "cancellation_lines": cancel_lines, "cancellation_value_milli": cancel_value,
        },
        "by_country": countries.into_iter().map(|(c, (l, u, r))| {
            (c, json!({"lines": l, "units": u, "revenue_milli": r}))
        }).collect::<serde_json::Map<_, _>>(),
        "top_products": top.into_iter().map(|(p, r)| json!({"stock_code": p, "revenue_milli": r})).collect::<Vec<_>>(),
    })
}

/// The parts of a summary that [`fold`] computes.
pub fn comparable(summary: &Value) -> Value {
    let mut totals = summary["totals"].clone();
    totals.as_object_mut().unwrap().remove("late_lines");
    json!({
        "totals": totals,
        "by_country": summary["by_country"],
        "top_products": summary["top_products"],
    })
}

/// A directory `scripts/kafka` uses: `var` when set (as `scripts/test` sets it), else
/// `fallback` (its own variable), else `default` under the repository's `.cache/kafka`.
fn kafka_path(var: &str, fallback: &str, default: &str) -> PathBuf {
    let cache = || {
        std::env::var_os("KAFKA_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kafka"))
    };
    let path = std::env::var_os(var)
        .or_else(|| std::env::var_os(fallback))
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join(default));
    std::path::absolute(path).unwrap()
}

/// The broker's log.dirs (`RETAIL_KAFKA_DATA_DIR`, else `KAFKA_DATA_DIR`, else
/// `.cache/kafka/data`): segment files are at `<dir>/<topic>-<partition>/*.log`.
pub fn kafka_data_dir() -> PathBuf {
    let dir = kafka_path("RETAIL_KAFKA_DATA_DIR", "KAFKA_DATA_DIR", "data");
    assert!(
        dir.is_dir(),
        "the broker's data directory {} is missing: these tests need the local broker of \
         scripts/kafka (run them with scripts/test, or set RETAIL_KAFKA_DATA_DIR)",
        dir.display()
    );
    dir
}

/// The client properties file `scripts/kafka up` writes for a secured listener (`sasl_ssl` or
/// `ssl`): `RETAIL_SASL_SSL_PROPERTIES` / `RETAIL_SSL_PROPERTIES`, else
/// `.cache/kafka/client-<listener>.properties`. Missing, the test fails: a skipped secured
/// test would look like a passed one.
pub fn secured_properties(listener: &str) -> PathBuf {
    let var = format!("RETAIL_{}_PROPERTIES", listener.to_ascii_uppercase());
    let path = kafka_path(&var, &var, &format!("client-{listener}.properties"));
    assert!(
        path.is_file(),
        "{} is missing ({var}): start the broker with its secured listeners, \
         `KAFKA_SECURITY=sasl_ssl,ssl scripts/kafka up` (scripts/test does; a broker already \
         running without them needs `scripts/kafka down` first)",
        path.display()
    );
    path
}

/// The Kafka jars `scripts/kafka` runs the broker from (`<cache>/<version>/libs`), as a
/// Java class path.
pub fn kafka_classpath() -> String {
    let cache = kafka_path("RETAIL_KAFKA_CACHE_DIR", "KAFKA_CACHE_DIR", "");
    let version = std::env::var("KAFKA_VERSION").ok();
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap_or_else(|e| panic!("{}: {e} (the cache of scripts/kafka)", cache.display()))
        .map(|e| e.unwrap().path().join("libs"))
        .filter(|p| p.is_dir())
        .filter(|p| {
            version
                .as_ref()
                .is_none_or(|v| p.parent().unwrap().ends_with(v))
        })
        .collect();
    libs.sort();
    let libs = libs
        .pop()
        .unwrap_or_else(|| panic!("no Kafka jars under {}/<version>/libs", cache.display()));
    format!("{}/*", libs.display())
}

/// Runs a command with piped output, killing it (and every process it started: it runs in
/// its own process group) when it has not exited within `timeout`, which fails the test.
/// Returns its output and how long it ran.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> (Output, Duration) {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};

    let started = std::time::Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
    // Read both pipes as they fill, so that a killed run still shows what it printed.
    let collect = |pipe: Box<dyn Read + Send>| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let reader = std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buffer, reader)
    };
    let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
    let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            // The whole group: a cluster's dataflow processes too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "{cmd:?} did not exit within {timeout:?}; killed it\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout.lock().unwrap()),
                String::from_utf8_lossy(&stderr.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let elapsed = started.elapsed();
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let output = Output {
        status,
        stdout: std::mem::take(&mut stdout.lock().unwrap()),
        stderr: std::mem::take(&mut stderr.lock().unwrap()),
    };
    (output, elapsed)
}

/// [`run_timeout`] for a command that must succeed.
pub fn run_ok_within(cmd: &mut Command, timeout: Duration) -> Output {
    let (out, _) = run_timeout(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir` (recursively) with its bytes; nothing when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    files
}
