//! Command-line tests of the real binary that need no broker: usage errors and exit codes,
//! `--dry-run` output on fixtures written to a temp dir (gzip, the Online Retail II header,
//! bad rows, bytes that are not UTF-8, stdin), the rejects file, a closed stdout pipe, Ctrl-C.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::{assert_help_mentions, ingest, interrupt_and_wait, run, spawn_piped, summary, text};

/// Online Retail II rows: two good, a bad date, a short row, and one with a byte that is not
/// UTF-8 (kept, decoded lossily).
fn retail_ii_fixture() -> Vec<u8> {
    let mut csv = b"Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n\
489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom\n\
489434,79323P,PINK CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom\n\
489435,22350,CAT BOWL ,12,yesterday,2.1,13085.0,United Kingdom\n\
489436,too,few\n"
        .to_vec();
    csv.extend_from_slice(
        b"489437,22195,HEART SPOONS \xff,24,2009-12-01 09:06:00,1.65,,United Kingdom\n",
    );
    csv
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn help_explains_every_flag_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    assert_help_mentions(
        &mut ingest(dir.path()),
        &[
            "--file",
            "--generate",
            "--seed",
            "--start",
            "--live",
            "--rejects",
            "--rate",
            "--topic",
            "--partitions",
            "--bootstrap-servers",
            "-X",
            "--dry-run",
            "--output",
            "Exit codes",
            "130",
            "KAFKA_BOOTSTRAP_SERVERS",
            "INGEST_TOPIC",
            "lossy_utf8_rows",
        ],
    );
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--generate", "3", "--bogus"][..],
        &["--file", "a.csv", "--generate", "3"],
        &[],
        &["--generate", "3", "--rate", "0"],
        &["--generate", "3", "-X", "novalue"],
        &["--file", "a.csv", "--seed", "1"],
    ] {
        let out = run(ingest(dir.path()).args(args), 2);
        let stderr = text(&out.stderr);
        assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_missing_file_exits_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        ingest(dir.path()).args(["--file", "no-such-file.csv", "--dry-run"]),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: cannot open input no-such-file.csv: No such file"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_column_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,CustomerID,Country\n",
    )
    .unwrap();
    let out = run(
        ingest(dir.path()).args(["--file", "in.csv", "--dry-run"]),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no UnitPrice column"), "{stderr}");
}

#[test]
fn an_unreachable_broker_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        ingest(dir.path()).args(["--generate", "10", "-b", "127.0.0.1:1"]),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach Kafka at 127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn dry_run_reads_gzip_online_retail_ii_with_rejects_and_lossy_rows() {
    let dir = tempfile::tempdir().unwrap();
    // A misleading name: gzip is detected from the content.
    std::fs::write(dir.path().join("sales.csv"), gzip(&retail_ii_fixture())).unwrap();
    let out = run(
        ingest(dir.path()).args(["--file", "sales.csv", "--dry-run", "--rejects", "bad.csv"]),
        0,
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"invoice_no":"489434","stock_code":"85048","description":"15CM CHRISTMAS GLASS BALL 20 LIGHTS","quantity":12,"invoice_date":"2009-12-01T07:45:00","unit_price":"6.95","customer_id":"13085","country":"United Kingdom"}"#,
            r#"{"invoice_no":"489434","stock_code":"79323P","description":"PINK CHERRY LIGHTS","quantity":12,"invoice_date":"2009-12-01T07:45:00","unit_price":"6.75","customer_id":"13085","country":"United Kingdom"}"#,
            r#"{"invoice_no":"489437","stock_code":"22195","description":"HEART SPOONS �","quantity":24,"invoice_date":"2009-12-01T09:06:00","unit_price":"1.65","customer_id":null,"country":"United Kingdom"}"#,
        ]
    );
    // The summary goes to stderr when the records go to stdout.
    let s = summary(&out.stderr);
    assert_eq!(s["read"], 5);
    assert_eq!(s["published"], 3);
    assert_eq!(s["rejected"], 2);
    assert_eq!(s["lossy_utf8_rows"], 1);
    assert_eq!(
        s["bytes"],
        (lines.iter().map(|l| l.len()).sum::<usize>()) as u64
    );
    assert_eq!(s["topic"], serde_json::Value::Null);
    let rejects = std::fs::read_to_string(dir.path().join("bad.csv")).unwrap();
    assert_eq!(
        rejects,
        "line,reason,detail,raw\n\
         4,bad_date,\"invoice_date \"\"yesterday\"\" is not M/D/YYYY H:MM or ISO-8601\",\"489435,22350,CAT BOWL ,12,yesterday,2.1,13085.0,United Kingdom\"\n\
         5,bad_row,\"expected 8 fields, found 3\",\"489436,too,few\"\n"
    );
}

#[test]
fn a_dry_run_writes_no_rejects_file_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sales.csv"), gzip(&retail_ii_fixture())).unwrap();
    let out = run(
        ingest(dir.path()).args(["--file", "sales.csv", "--dry-run"]),
        0,
    );
    // Rejected rows are counted all the same.
    assert_eq!(summary(&out.stderr)["rejected"], 2);
    assert!(!dir.path().join("rejects.csv").exists());
}

#[test]
fn without_input_it_names_both_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&mut ingest(dir.path()), 2);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--file") && stderr.contains("--generate"),
        "{stderr}"
    );
}

#[test]
fn reads_stdin_and_writes_an_empty_rejects_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(
        ingest(dir.path())
            .args(["--file", "-", "--output", "out.jsonl"])
            .stdin(Stdio::piped()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n\
              536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // With the records in a file, the summary is on stdout.
    let s = summary(&out.stdout);
    assert_eq!(
        (s["read"].as_u64(), s["published"].as_u64()),
        (Some(1), Some(1))
    );
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(
        written,
        "{\"invoice_no\":\"536365\",\"stock_code\":\"85123A\",\"description\":\"WHITE HANGING HEART T-LIGHT HOLDER\",\"quantity\":6,\"invoice_date\":\"2010-12-01T08:26:00\",\"unit_price\":\"2.55\",\"customer_id\":\"17850\",\"country\":\"United Kingdom\"}\n"
    );
    let rejects = std::fs::read_to_string(dir.path().join("rejects.csv")).unwrap();
    assert_eq!(rejects, "line,reason,detail,raw\n");
}

#[test]
fn generated_output_depends_only_on_seed_count_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let generate = |extra: &[&str]| {
        run(
            ingest(dir.path())
                .args(["--generate", "3000", "--dry-run"])
                .args(extra),
            0,
        )
        .stdout
    };
    let a = generate(&["--seed", "9"]);
    assert_eq!(a, generate(&["--seed", "9"]));
    assert_ne!(a, generate(&["--seed", "10"]));
    assert_eq!(a.iter().filter(|&&b| b == b'\n').count(), 3000);
    let later =
        String::from_utf8(generate(&["--seed", "9", "--start", "2011-06-01T09:00:00"])).unwrap();
    assert!(
        later
            .lines()
            .next()
            .unwrap()
            .contains("\"2011-06-01T09:00:00\"")
    );
    // Only the dates differ.
    let a = String::from_utf8(a).unwrap();
    for (x, y) in a.lines().zip(later.lines()) {
        let strip = |line: &str| {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["invoice_date"] = serde_json::Value::Null;
            v
        };
        assert_eq!(strip(x), strip(y));
    }
}

#[test]
fn a_closed_stdout_pipe_exits_0_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_piped(ingest(dir.path()).args(["--generate", "100000000", "--dry-run"]));
    let mut stdout = child.stdout.take().unwrap();
    let mut head = [0u8; 4096];
    stdout.read_exact(&mut head).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn ctrl_c_stops_reading_reports_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn_piped(ingest(dir.path()).args([
        "--generate",
        "100000000",
        "--rate",
        "1000",
        "--output",
        "out.jsonl",
    ]));
    std::thread::sleep(Duration::from_millis(1500));
    let out = interrupt_and_wait(child);
    let s = summary(&out.stdout);
    assert_eq!(s["interrupted"], true);
    let published = s["published"].as_u64().unwrap();
    // About 1.5 s at 1000 records/s.
    assert!((500..=3000).contains(&published), "{s}");
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(written.lines().count() as u64, published);
}

#[test]
fn a_truncated_gzip_exits_1_after_writing_what_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv =
        b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            .to_vec();
    for i in 0..20_000 {
        csv.extend_from_slice(
            format!("{i},85123A,HEART {i},6,12/1/2010 8:26,2.55,17850,United Kingdom\n").as_bytes(),
        );
    }
    let whole = gzip(&csv);
    std::fs::write(dir.path().join("cut.csv.gz"), &whole[..whole.len() / 2]).unwrap();
    let out = run(
        ingest(dir.path()).args(["--file", "cut.csv.gz", "--dry-run"]),
        1,
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: cannot read cut.csv.gz at line"),
        "{stderr}"
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    let count = lines.lines().count();
    assert!(count > 1_000 && count < 20_000, "{count}");
    assert!(lines.ends_with('\n'), "only whole lines are written");
}
