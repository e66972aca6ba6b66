//! Many viewers and hostile clients against a live job's `--http`: hundreds of event streams and
//! connections that never send their headers cost the job no threads, the API still answers,
//! a connection over `--http-max-connections` is refused with 503, and an oversized request
//! head is refused.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

/// The job's threads, as `/proc` lists them.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task: {e}"))
        .count()
}

/// Opens `/events` on `addr`; returns the connection once the stream has started (the status
/// line and `retry: 1000` are in), or the whole answer when it is not a stream (a refusal).
fn open_events(addr: &str) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen);
        if text.starts_with("HTTP/1.1 200") && text.contains("retry: 1000\n\n") {
            return Ok(stream);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(text.into_owned()),
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("{e} after {text:?}")),
        }
    }
}

/// A live job over a topic with committed epochs, serving `--http` with at most `cap`
/// connections; returns it, its address and its log folder.
fn live_job(name: &str, cap: usize) -> (Child, String, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique(name);
    create_topic(&topic, 2, &[]);
    let out = dir.path().join("out");
    let log = dir.path().join("job.log");
    let job = spawn_logged(
        dataflow_job(&topic, &job_id(&topic, &out), &out)
            .args(["--sinks", "jsonl", "--epoch", "10m", "--no-checkpoint"])
            .args(["--progress-interval", "0", "--http", "127.0.0.1:0"])
            .args(["--http-max-connections", &cap.to_string()]),
        &log,
    );
    let addr = served_addr(&log, Duration::from_secs(60));
    wait_until_served(&addr, "/readyz", Duration::from_secs(60));
    (job, addr, dir, topic)
}

#[test]
fn hundreds_of_viewers_and_silent_connections_cost_no_threads_and_the_cap_refuses_with_503() {
    const STREAMS: usize = 300;
    const SILENT: usize = 100;
    // Room for the streams, the silent connections and one request besides.
    const CAP: usize = 410;
    let (mut job, addr, dir, topic) = live_job("http-viewers", CAP);
    // Sales over several 10-minute epochs: all but the newest commit, so the API has a state.
    publish(&topic, &["--generate", "5000", "--seed", "16"], dir.path());
    wait_until_served(&addr, "/api/state", Duration::from_secs(120));
    let pid = job.id();
    let before = threads(pid);

    let streams: Vec<TcpStream> = (0..STREAMS)
        .map(|i| open_events(&addr).unwrap_or_else(|e| panic!("stream {i}: {e}")))
        .collect();
    // Connections that never send a request (the server closes them after its header
    // timeout; they are counted here well before it).
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    // The server has accepted them all once it answers a request made after them.
    let (status, body) = get(&addr, "/api/state");
    assert_eq!(status, 200, "/api/state with {STREAMS} viewers: {body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert!(state["totals"]["lines"].as_i64().unwrap() > 0, "{state}");
    let after = threads(pid);
    assert!(
        after <= before + 3,
        "{STREAMS} event streams and {SILENT} silent connections took the job from {before} \
         to {after} threads"
    );

    // The cap: with the silent ones gone, fill it with streams; the next one is refused.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut more = Vec::new();
    while STREAMS + more.len() < CAP {
        match open_events(&addr) {
            Ok(stream) => more.push(stream),
            // The server may not have seen every silent connection close yet.
            Err(answer) if answer.starts_with("HTTP/1.1 503") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(answer) => panic!("stream {} of {CAP}: {answer}", STREAMS + more.len() + 1),
        }
    }
    let refused = open_events(&addr).expect_err("a stream beyond the cap");
    let (head, body) = refused
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer beyond the cap: {refused:?}"));
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let error: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );
    // Once viewers leave, their room is free again.
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&addr, "/api/state").0 != 200 {
        assert!(Instant::now() < deadline, "no room after the viewers left");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(more);
    job.kill().unwrap();
    job.wait().unwrap();
    delete_topics(&[&topic]);
}

/// Sends a GET of `/healthz` with one header of `bytes`; returns what came back (empty when
/// the server closed the connection without an answer).
fn get_with_header(addr: &str, bytes: usize) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(bytes)
    );
    // The server may stop reading and close before the whole request is written.
    let _ = stream.write_all(request.as_bytes());
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn a_request_head_of_64_kib_is_refused() {
    let (mut job, addr, _dir, topic) = live_job("http-header", 100);
    // Headers as a browser sends them pass.
    let normal = get_with_header(&addr, 4 * 1024);
    assert!(normal.starts_with("HTTP/1.1 200"), "{normal:?}");
    let answer = get_with_header(&addr, 64 * 1024);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "a 64 KiB header was not refused: {}",
        &answer[..answer.len().min(200)]
    );
    // The server goes on.
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_owned()));
    job.kill().unwrap();
    job.wait().unwrap();
    delete_topics(&[&topic]);
}
