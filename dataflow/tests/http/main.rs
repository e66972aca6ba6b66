//! `--http` against the real broker, a real headless Chromium and real Prometheus parsers:
//! the page, the API and `/metrics` of a bounded run equal its `summary.json`, `epochs.jsonl`
//! and report line; a live page keeps updating and shows an error state, not stale numbers,
//! once the job stops; ingest's `/metrics`; a multi-process job gives each process its own
//! `/metrics`.
//!
//! Needs node with `dataflow/tests/browser/node_modules` (`npm ci` there), Chromium
//! (`$CHROMIUM`, default /usr/bin/chromium), promtool, and the venv `.cache/venv-metrics`
//! with `prometheus-client` (`scripts/test` and `.ci/run` prepare all of them); a missing one
//! fails the test, saying what to install.

#[path = "../common/mod.rs"]
mod common;
mod page;
mod provisional;
mod viewers;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{Value, json};

use common::*;

/// The browser tests' folder, with its node_modules installed.
fn browser_dir() -> PathBuf {
    let dir = workspace_root().join("dataflow/tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    dir
}

/// `node page.mjs ARGS` in the browser folder.
fn page_script(args: &[&str]) -> Command {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let mut cmd = Command::new(node);
    cmd.current_dir(browser_dir()).arg("page.mjs").args(args);
    cmd
}

/// Runs `node page.mjs ARGS` to its end; returns the JSON lines it printed.
fn read_page(args: &[&str]) -> Vec<Value> {
    let output = run_ok_within(&mut page_script(args), Duration::from_secs(120));
    json_lines(&text(&output.stdout))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Money as the page shows it in en-GB ("£1,350,818.683", "-£0.50"), in thousandths.
fn milli(text: &str) -> i64 {
    let plain = text.replace(',', "");
    let text = plain.replacen('£', "", 1);
    assert_ne!(text, plain, "no pound sign in {plain:?}");
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.as_str()),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(
        (2..=3).contains(&frac.len()),
        "{text}: two or three decimals"
    );
    let frac = format!("{frac:0<3}");
    sign * (whole.parse::<i64>().unwrap() * 1000 + frac.parse::<i64>().unwrap())
}

/// A count as the page shows it in en-GB ("1,234"), as the digits alone.
fn digits(text: &str) -> String {
    assert!(
        text.split(',').skip(1).all(|group| group.len() == 3),
        "thousands separators misplaced in {text:?}"
    );
    text.replace(',', "")
}

/// The rows `epochs.jsonl` holds at the end: label -> value (`{"epoch": label, ..}`).
fn final_epoch_rows(out: &Path) -> BTreeMap<String, Value> {
    let mut rows = BTreeMap::new();
    for line in read_jsonl(out, "epochs") {
        let key = line["key"].as_str().unwrap().to_owned();
        match &line["value"] {
            Value::Null => {
                rows.remove(&key);
            }
            v => {
                let mut v = v.clone();
                v["epoch"] = Value::from(key.clone());
                rows.insert(key, v);
            }
        }
    }
    rows
}

/// Publishes a few messages the job dead-letters, so that the dead-letter figures are not all
/// zero: two not JSON, one with a wrong type.
fn publish_bad(topic: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let bad: [&[u8]; 3] = [
        b"not json at all",
        b"{broken",
        br#"{"invoice_no":"1","stock_code":"X","description":"","quantity":"two","invoice_date":"2010-12-01T08:00:00","unit_price":"1","customer_id":"","country":"France"}"#,
    ];
    for (i, payload) in bad.iter().enumerate() {
        producer
            .send(
                BaseRecord::to(topic)
                    .key("bad")
                    .payload(*payload)
                    .partition(i as i32 % 2),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A job started in the background with stderr to `log`.
fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"))
}

/// The job's report line in its log.
fn report(log: &str) -> Value {
    log.lines()
        .filter(|l| l.starts_with("{\"process\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .next_back()
        .unwrap_or_else(|| panic!("no report line in:\n{log}"))
}

/// Where test artifacts (screenshots) are kept.
fn artifacts() -> PathBuf {
    let dir = workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn page_api_and_metrics_of_a_bounded_run_equal_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("http");
    publish(&topic, &["--generate", "30000", "--seed", "14"], dir.path());
    publish_bad(&topic);
    let out = dir.path().join("out");
    let log = dir.path().join("job.log");
    let mut job = spawn_logged(
        dataflow(
            &topic,
            &out,
            &["--sinks", "jsonl", "--epoch", "1h", "-w", "2"],
        )
        .args(["--http", "127.0.0.1:0", "--http-linger"]),
        &log,
    );
    // The run is over (its report printed) and the server lingers with the final state.
    let logged = wait_for_text(&log, "until Ctrl-C", Duration::from_secs(180));
    let report = report(&logged);
    // The address it serves on, as the system gave it.
    let addr = report["http"]
        .as_str()
        .expect("the report names the address");
    assert_eq!(Some(addr), http_addr_in(&logged).as_deref());
    let addr = addr.to_owned();
    let summary = read_summary(&out);
    let rows = final_epoch_rows(&out);
    let (last_label, last_row) = rows.last_key_value().expect("epoch rows");
    assert!(summary["dead_letters"]["total"].as_u64().unwrap() >= 3);

    // /api/state: summary.json, plus the epoch and the open alerts.
    let state = get_json(&addr, "/api/state");
    for (key, value) in summary.as_object().unwrap() {
        assert_eq!(
            &state[key], value,
            "/api/state {key} differs from summary.json"
        );
    }
    assert_eq!(state["epoch"], last_label.as_str());
    assert_eq!(
        state["open_alerts"].as_array().unwrap().len() as u64,
        summary["alerts"].as_u64().unwrap()
    );
    assert!(
        state["open_alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["rule"].is_string() && a["key"].is_string())
    );

    // /api/epochs: the final rows of epochs.jsonl.
    let epochs = get_json(&addr, "/api/epochs?last=1000");
    let expected: Vec<&Value> = rows.values().collect();
    assert_eq!(
        epochs.as_array().unwrap().iter().collect::<Vec<_>>(),
        expected
    );
    let last_two = get_json(&addr, "/api/epochs?last=2");
    assert_eq!(last_two.as_array().unwrap().len(), 2.min(rows.len()));
    assert_eq!(last_two.as_array().unwrap().last().unwrap(), last_row);

    // /api/progress: StreamingQueryProgress-shaped entries that add up to the input.
    let progress = get_json(&addr, "/api/progress?last=200");
    let progress = progress.as_array().unwrap();
    assert!(!progress.is_empty());
    let rows_in: u64 = progress
        .iter()
        .map(|p| p["numInputRows"].as_u64().unwrap())
        .sum();
    assert_eq!(
        rows_in,
        report["lines"].as_u64().unwrap() + report["dead_letters"].as_u64().unwrap()
    );
    let latest = progress.last().unwrap();
    assert_eq!(latest["epoch"], last_label.as_str());
    for field in [
        "id",
        "runId",
        "timestamp",
        "batchId",
        "inputRowsPerSecond",
        "processedRowsPerSecond",
    ] {
        assert!(!latest[field].is_null(), "progress lacks {field}: {latest}");
    }
    assert!(latest["durationMs"]["triggerExecution"].is_u64());
    assert!(latest["eventTime"]["watermark"].is_string());
    let source = &latest["sources"][0];
    assert_eq!(
        source["description"],
        format!("KafkaSource[Subscribe[{topic}]]")
    );
    let end_offsets: u64 = source["endOffset"][&topic]
        .as_object()
        .unwrap()
        .values()
        .map(|o| o.as_u64().unwrap())
        .sum();
    assert_eq!(end_offsets, report["messages"].as_u64().unwrap());
    assert_eq!(source["metrics"]["maxOffsetsBehindLatest"], 0);

    // A bad parameter is refused with a message.
    for path in [
        "/api/epochs?last=abc",
        "/api/epochs?last=0",
        "/api/progress?last=-1",
        "/api/epochs?since=3",
    ] {
        let (status, body) = get(&addr, path);
        assert_eq!(status, 400, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().len() > 10, "{body}");
    }
    assert_eq!(get(&addr, "/nothing-here").0, 404);

    // /metrics: every documented metric, counters equal to the report line.
    let metrics = scrape(&addr);
    for family in [
        "retail_stream_records_read",
        "retail_stream_dead_letters",
        "retail_stream_late_lines",
        "retail_stream_lines",
        "retail_stream_consumer_lag",
        "retail_stream_event_time_watermark_seconds",
        "retail_stream_epochs_committed",
        "retail_stream_commit_duration_seconds",
        "retail_stream_state_entries",
        "retail_stream_buffered_bytes",
        "retail_stream_partitions_held",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    ] {
        assert!(metrics.get(family).is_some(), "no {family} in /metrics");
    }
    let count = |key: &str| report[key].as_f64().unwrap();
    assert_eq!(
        total(
            &metrics,
            "retail_stream_records_read",
            "retail_stream_records_read_total"
        ),
        count("messages")
    );
    assert_eq!(
        samples(
            &metrics,
            "retail_stream_records_read",
            "retail_stream_records_read_total"
        )
        .len(),
        8,
        "one series per partition"
    );
    assert_eq!(
        total(&metrics, "retail_stream_lines", "retail_stream_lines_total"),
        count("lines")
    );
    assert_eq!(
        total(
            &metrics,
            "retail_stream_late_lines",
            "retail_stream_late_lines_total"
        ),
        count("late")
    );
    assert_eq!(
        total(
            &metrics,
            "retail_stream_dead_letters",
            "retail_stream_dead_letters_total"
        ),
        count("dead_letters")
    );
    for (labels, value) in samples(
        &metrics,
        "retail_stream_dead_letters",
        "retail_stream_dead_letters_total",
    ) {
        let reason = labels["reason"].as_str().unwrap();
        assert_eq!(
            summary["dead_letters"]["by_reason"][reason].as_f64(),
            Some(value),
            "dead letters {reason}"
        );
    }
    let committed: usize = progress
        .iter()
        .map(|p| p["epochs"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        total(
            &metrics,
            "retail_stream_epochs_committed",
            "retail_stream_epochs_committed_total"
        ),
        committed as f64
    );
    assert_eq!(
        total(
            &metrics,
            "retail_stream_commit_duration_seconds",
            "retail_stream_commit_duration_seconds_count"
        ),
        progress.len() as f64
    );
    assert!(
        samples(
            &metrics,
            "retail_stream_consumer_lag",
            "retail_stream_consumer_lag"
        )
        .iter()
        .all(|(_, lag)| *lag == 0.0)
    );
    assert!(
        total(
            &metrics,
            "retail_stream_state_entries",
            "retail_stream_state_entries"
        ) > 0.0
    );
    assert!(
        total(
            &metrics,
            "process_resident_memory_bytes",
            "process_resident_memory_bytes"
        ) > 1e6
    );

    page::assert_page_shows(&addr, &summary, &report, &rows);

    // Ctrl-C ends the lingering server; the run itself had succeeded.
    interrupt(&job);
    wait_for_exit(&mut job, 0, Duration::from_secs(30), &log);
    delete_topics(&[&topic]);
}

#[test]
fn help_explains_the_http_flags() {
    assert_help_mentions(
        &mut Command::new(binary("dataflow")),
        &["--http <ADDR>", "--http-linger", "/api/state", "/metrics"],
    );
    assert_help_mentions(
        &mut Command::new(binary("ingest")),
        &["--http <ADDR>", "/metrics"],
    );
}

/// `node page.mjs lost URL` started in the background; returns it once the page shows figures.
fn page_until_ready(url: &str) -> (Child, BufReader<std::process::ChildStdout>, Value) {
    let shot = artifacts().join("dashboard-lost.png");
    let mut child = page_script(&["lost", url, &shot.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    let ready: Value = serde_json::from_str(line.trim())
        .unwrap_or_else(|e| panic!("page.mjs did not get ready ({e}): {line:?}"));
    (child, lines, ready["ready"].clone())
}

#[test]
fn a_live_page_updates_and_shows_an_error_once_the_job_stops() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("http-live");
    create_topic(&topic, 4, &[]);
    // A paced feed: the simulated clock moves minutes per second, so 1-minute epochs close
    // every few hundred milliseconds while the page watches.
    let ingest_log = dir.path().join("ingest.log");
    let mut feed = spawn_logged(
        ingest_to(&topic, dir.path())
            .args(["--generate", "200000", "--seed", "5", "--rate", "2000"])
            .args(["--http", "127.0.0.1:0"]),
        &ingest_log,
    );
    let out = dir.path().join("out");
    let log = dir.path().join("job.log");
    let mut job = spawn_logged(
        dataflow_job(&topic, &format!("{topic}-live"), &out)
            .args(["--sinks", "jsonl", "--epoch", "1m", "--no-checkpoint"])
            .args(["--progress-interval", "0", "--http", "127.0.0.1:0"]),
        &log,
    );
    let addr = served_addr(&log, Duration::from_secs(60));
    wait_until_served(&addr, "/api/state", Duration::from_secs(60));

    // Two readings of the page, the second after a later epoch came in: they differ.
    let live = read_page(&["live", &format!("http://{addr}/")]);
    let (first, second) = (&live[0]["first"], &live[0]["second"]);
    assert_eq!(first["status"], "live");
    assert_ne!(first["last_epoch"], second["last_epoch"]);
    assert!(second["last_epoch"].as_str() > first["last_epoch"].as_str());
    let lines = |r: &Value| {
        digits(r["total_lines"].as_str().unwrap())
            .parse::<u64>()
            .unwrap()
    };
    assert!(lines(second) > lines(first), "{first}\n{second}");

    // ingest's own /metrics while it publishes.
    let ingest_addr = served_addr(&ingest_log, Duration::from_secs(10));
    wait_until_served(&ingest_addr, "/metrics", Duration::from_secs(10));
    let metrics = scrape(&ingest_addr);
    for family in [
        "retail_stream_ingest_records_published",
        "retail_stream_ingest_rows_rejected",
        "retail_stream_ingest_delivery_failures",
        "retail_stream_ingest_in_flight",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    ] {
        assert!(
            metrics.get(family).is_some(),
            "no {family} in ingest's /metrics"
        );
    }
    assert!(
        total(
            &metrics,
            "retail_stream_ingest_records_published",
            "retail_stream_ingest_records_published_total"
        ) > 0.0
    );

    // The job stops: the page must not keep showing its last numbers.
    let (mut page, mut lines_out, ready) = page_until_ready(&format!("http://{addr}/"));
    assert_ne!(ready["total_lines"], "\u{2014}");
    job.kill().unwrap();
    job.wait().unwrap();
    let mut rest = String::new();
    lines_out.read_to_string(&mut rest).unwrap();
    let status = wait_exit(&mut page, Duration::from_secs(60)).expect("page.mjs ends");
    assert!(status.success(), "page.mjs failed: {rest}");
    let lost = json_lines(&rest)
        .into_iter()
        .find_map(|v| v.get("lost").cloned())
        .unwrap_or_else(|| panic!("no error state seen: {rest}"));
    assert_eq!(lost["status"], "error");
    assert!(lost["status_text"].as_str().unwrap().contains("lost"));
    for figure in [
        "last_epoch",
        "total_revenue",
        "total_lines",
        "total_units",
        "epoch_revenue",
        "epoch_lines",
        "records_read",
        "late_lines",
    ] {
        assert_eq!(
            lost[figure], "\u{2014}",
            "{figure} still shown after the job stopped"
        );
    }
    for table in ["top_products", "epoch_top", "countries", "alerts", "lag"] {
        assert_eq!(
            lost[table],
            json!([]),
            "{table} still shown after the job stopped"
        );
    }
    assert_eq!(lost["chart_bars"], 0);

    interrupt(&feed);
    wait_exit(&mut feed, Duration::from_secs(30)).expect("ingest ends");
    delete_topics(&[&topic]);
}

/// With checkpoints on, as a job is deployed: the API serves committed results only. Before
/// any epoch is committed `/api/state` answers 503 (while `/healthz` and `/readyz` say the
/// process is up and connected); once epochs close it answers their totals, never the open
/// epoch's lines.
#[test]
fn the_api_serves_committed_epochs_only_with_checkpoints_on() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("http-live");
    create_topic(&topic, 2, &[]);
    let out = dir.path().join("out");
    let log = dir.path().join("job.log");
    // A live job (no --until-end) with the default exactly-once mode.
    let mut job = spawn_logged(
        dataflow_job(&topic, &job_id(&topic, &out), &out).args([
            "--sinks",
            "jsonl",
            "--epoch",
            "10m",
            "--http",
            "127.0.0.1:0",
        ]),
        &log,
    );
    let addr = served_addr(&log, Duration::from_secs(60));
    wait_until_served(&addr, "/readyz", Duration::from_secs(60));
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    let (status, body) = get(&addr, "/api/state");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no epoch has been committed yet"), "{body}");

    // 5,000 sales over several 10-minute epochs: all but the newest close and commit.
    publish(&topic, &["--generate", "5000", "--seed", "15"], dir.path());
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        let (status, body) = get(&addr, "/api/state");
        if status == 200 {
            break serde_json::from_str::<Value>(&body).unwrap();
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "no epoch committed within 120 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines = state["totals"]["lines"].as_i64().unwrap();
    assert!(
        lines > 0 && lines < 5000,
        "{lines} lines: the open epoch counted"
    );
    // The committed epochs' rows hold exactly those lines.
    let epochs = get_json(&addr, "/api/epochs?last=1000");
    let committed: i64 = epochs
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["epoch"].as_str() <= state["epoch"].as_str())
        .map(|row| row["lines"].as_i64().unwrap())
        .sum();
    assert_eq!(
        committed, lines,
        "lines in the committed epochs' rows and in the state"
    );
    interrupt(&job);
    let status = wait_exit(&mut job, Duration::from_secs(60)).expect("the job stops on Ctrl-C");
    assert_eq!(status.code(), Some(130));
    delete_topics(&[&topic]);
}
