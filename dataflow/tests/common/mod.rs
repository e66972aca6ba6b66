//! What only `dataflow`'s integration tests need, on top of the workspace's test kit: the
//! job's command lines (one process, or several on loopback), and the independent fold that
//! its summary must equal.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod pg_tables;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use retail_common::Sale;
pub use retail_testkit::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The dataflow binary running job `job_id` over `topic` on the test broker, writing to
/// `out`; the caller adds how it ends (`--until-end`, `--idle-timeout`) and the rest.
pub fn dataflow_job(topic: &str, job_id: &str, out: &Path) -> Command {
    let mut cmd = Command::new(binary("dataflow"));
    cmd.args(["--topic", topic, "-b", &bootstrap(), "--job-id", job_id])
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null());
    cmd
}

/// The job id of a test run over `topic` into `out`: unique to the output directory, so runs
/// never resume one another's checkpoints.
pub fn job_id(topic: &str, out: &Path) -> String {
    format!("{topic}-{}", out.file_name().unwrap().to_string_lossy())
}

/// The dataflow binary with the flags every bounded test run shares, as job [`job_id`].
pub fn dataflow(topic: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = dataflow_job(topic, &job_id(topic, out), out);
    cmd.args(["--until-end", "--progress-interval", "0"])
        .args(extra);
    cmd
}

/// Runs the job as `processes` processes of `workers` workers on loopback and waits for all.
pub fn dataflow_cluster(topic: &str, out: &Path, processes: usize, workers: usize, extra: &[&str]) {
    let hostfile = out.with_extension("hosts");
    write_hostfile(&hostfile, &vec!["127.0.0.1"; processes]);
    // Logs in files beside the output folder: a child never blocks on a full pipe.
    let log = |p: usize| out.with_extension(format!("p{p}.log"));
    let children: Vec<_> = (0..processes)
        .map(|p| {
            dataflow(topic, out, extra)
                .args(["-n", &processes.to_string(), "-p", &p.to_string()])
                .args(["-w", &workers.to_string()])
                .args(["-h", &hostfile.display().to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log(p)).unwrap())
                .spawn()
                .expect("dataflow starts")
        })
        .collect();
    for (p, mut child) in children.into_iter().enumerate() {
        let status = wait_exit(&mut child, RUN_LIMIT);
        let stderr = std::fs::read_to_string(log(p)).unwrap_or_default();
        let status = status.unwrap_or_else(|| {
            panic!("process {p} did not exit within {RUN_LIMIT:?}; killed it\nstderr:\n{stderr}")
        });
        assert!(
            status.success(),
            "process {p} failed with {status}\nstderr:\n{stderr}"
        );
    }
}

/// The sales of a topic (committed messages), read back over PLAINTEXT.
pub fn topic_sales(topic: &str) -> Vec<Sale> {
    read_topic(topic, true)
        .iter()
        .map(|m| Sale::from_json(m.payload().unwrap()).expect("a valid sale"))
        .collect()
}

/// The sales of `topic` that are not among the dead letters of the run into `out`
/// (`dlq.jsonl`: bad messages, and lines of invoices closed under invoice retention), and
/// how many messages were dead letters.
pub fn sales_but_dead_letters(topic: &str, out: &Path) -> (Vec<Sale>, usize) {
    let dead: BTreeSet<(i32, i64)> = read_jsonl(out, "dlq")
        .iter()
        .map(|l| {
            let partition = l["partition"].as_i64().unwrap() as i32;
            (partition, l["offset"].as_i64().unwrap())
        })
        .collect();
    let sales = read_topic(topic, true)
        .iter()
        .filter(|m| !dead.contains(&(m.partition(), m.offset())))
        .map(|m| Sale::from_json(m.payload().unwrap()).expect("a valid sale"))
        .collect();
    (sales, dead.len())
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

/// The parts of a summary that [`fold`] computes (the oracle checks the rest, names too).
pub fn comparable(summary: &Value) -> Value {
    let mut totals = summary["totals"].clone();
    totals.as_object_mut().unwrap().remove("late_lines");
    let mut top = summary["top_products"].clone();
    for product in top.as_array_mut().into_iter().flatten() {
        product.as_object_mut().map(|p| p.remove("description"));
    }
    json!({
        "totals": totals,
        "by_country": summary["by_country"],
        "top_products": top,
    })
}

/// The checkpoints job `job_id` committed for an epoch, oldest first.
pub fn epoch_checkpoints(job_id: &str) -> Vec<Value> {
    read_topic("retail-aggregates.checkpoints", true)
        .iter()
        .filter(|m| m.key() == Some(job_id.as_bytes()))
        .filter_map(|m| m.payload())
        .map(|p| serde_json::from_slice::<Value>(p).expect("a checkpoint"))
        .filter(|c| c["epoch"].is_u64())
        .collect()
}

/// Waits until job `job_id` has committed a checkpoint for an epoch.
pub fn wait_for_checkpoint(job_id: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while epoch_checkpoints(job_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{job_id} committed no epoch within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that every checkpoint job `job_id` committed for an epoch holds a position for each
/// of `topic`'s partitions: a partition missing from a checkpoint would be read again from its
/// start by a restart, and its records counted twice.
pub fn assert_checkpoints_hold_every_partition(job_id: &str, topic: &str) {
    let partitions = partitions(topic) as usize;
    let checkpoints = epoch_checkpoints(job_id);
    assert!(
        !checkpoints.is_empty(),
        "no checkpoint of {job_id} with an epoch"
    );
    for checkpoint in checkpoints {
        let held = checkpoint["partitions"].as_object().map_or(0, |p| p.len());
        assert_eq!(
            held, partitions,
            "the checkpoint of epoch {} holds {held} of {partitions} partitions",
            checkpoint["epoch"]
        );
    }
}

/// Keys and payloads of a topic's committed messages, partition by partition, in order.
pub fn committed(topic: &str) -> Vec<(i32, Vec<u8>, Vec<u8>)> {
    read_topic(topic, true)
        .into_iter()
        .map(|m| {
            (
                m.partition(),
                m.key().unwrap_or_default().to_vec(),
                m.payload().unwrap_or_default().to_vec(),
            )
        })
        .collect()
}
