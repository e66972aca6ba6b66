//! `cluster --http`: each process of a multi-process job serves its own `/metrics` on the base
//! port plus its index; process 0 also the page and the API. Checked against the real broker,
//! with promtool and the Prometheus client's parser.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn each_process_serves_its_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("cluster-http");
    publish(&topic, &["--generate", "5000", "--seed", "9"], dir.path());
    let written: i64 = watermarks(&topic)
        .iter()
        .map(|(low, high)| high - low)
        .sum();
    // Two consecutive free ports: the base and the one after it.
    let base = loop {
        let port = free_port("127.0.0.1");
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            break port;
        }
    };
    let log = dir.path().join("cluster.log");
    let mut job = cluster()
        .args(["-n", "2", "-w", "1", "--http", &format!("127.0.0.1:{base}")])
        .args([
            "--",
            "--topic",
            &topic,
            "-b",
            &bootstrap(),
            "--no-checkpoint",
        ])
        .args(["--sinks", "jsonl", "--progress-interval", "0", "-o"])
        .arg(dir.path().join("out"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("cluster starts");
    let addrs = [
        format!("127.0.0.1:{base}"),
        format!("127.0.0.1:{}", base + 1),
    ];
    let printed = wait_for_text(&log, &addrs[1], Duration::from_secs(30));
    assert!(
        printed.contains(&format!(
            "process 0 serves the live page, /api and /metrics on http://{}/",
            addrs[0]
        )),
        "{printed}"
    );
    for addr in &addrs {
        wait_until_served(addr, "/metrics", Duration::from_secs(60));
    }
    // Every record is read, each partition by one process: the two scrapes add up to the topic.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (zero, one) = loop {
        let zero = scrape(&addrs[0]);
        let one = scrape(&addrs[1]);
        let read = |m: &serde_json::Value| {
            total(
                m,
                "retail_stream_records_read",
                "retail_stream_records_read_total",
            )
        };
        if read(&zero) + read(&one) == written as f64 {
            break (zero, one);
        }
        assert!(
            Instant::now() < deadline,
            "records read never reached {written}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let partitions = |m: &serde_json::Value| {
        samples(
            m,
            "retail_stream_records_read",
            "retail_stream_records_read_total",
        )
        .into_iter()
        .map(|(labels, _)| labels["partition"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
    };
    let (mine, theirs) = (partitions(&zero), partitions(&one));
    assert_eq!(mine.len() + theirs.len(), 8, "{mine:?} {theirs:?}");
    assert!(
        mine.iter().all(|p| !theirs.contains(p)),
        "{mine:?} {theirs:?}"
    );
    for m in [&zero, &one] {
        assert!(m.get("process_resident_memory_bytes").is_some());
        assert!(m.get("retail_stream_consumer_lag").is_some());
    }
    // The writer's metrics and the page are process 0's.
    assert!(zero.get("retail_stream_epochs_committed").is_some());
    assert!(one.get("retail_stream_epochs_committed").is_none());
    assert_eq!(get(&addrs[0], "/").0, 200);
    let (status, body) = get(&addrs[1], "/api/state");
    assert_eq!(status, 404);
    assert!(body.contains("process 0"), "{body}");

    interrupt(&job);
    wait_for_exit(&mut job, 130, Duration::from_secs(60), &log);
    delete_topics(&[&topic]);
}
