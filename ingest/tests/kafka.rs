//! End-to-end tests against the real broker (`scripts/kafka up`; address from
//! `KAFKA_BOOTSTRAP_SERVERS`, default localhost:9092): run the `ingest` binary on the shared
//! data and on generated sales, each into its own fresh topic, and read the topic back with a
//! real consumer. Expectations are computed from the input files, not hard-coded.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{
    Record, create_topic, data_file, delete_topics, ingest, interrupt_and_wait, invoice_no,
    read_records, run, sale_of_row, spawn_piped, summary, text, unique,
};

const UCI_HEADER: [&str; 8] = [
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
];

/// A valid row of the input: its CSV line and the JSON ingest should publish for it.
struct Expected {
    rows: u64,
    /// (invoice, JSON) of each valid row, in file order.
    valid: Vec<(String, String)>,
    /// CSV line numbers of the rows that fail validation.
    rejected_lines: Vec<u64>,
}

/// Types every row of a UCI-header CSV file with the shared record code.
fn expected_from(reader: impl Read) -> Expected {
    let mut csv = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    assert_eq!(csv.headers().unwrap(), UCI_HEADER.as_slice());
    let mut expected = Expected {
        rows: 0,
        valid: Vec::new(),
        rejected_lines: Vec::new(),
    };
    let mut record = csv::StringRecord::new();
    while csv.read_record(&mut record).unwrap() {
        expected.rows += 1;
        match sale_of_row(|i| record.get(i).unwrap_or("")) {
            Ok(sale) if record.len() == 8 => expected
                .valid
                .push((sale.invoice_no.clone(), sale.to_json())),
            _ => expected
                .rejected_lines
                .push(record.position().unwrap().line()),
        }
    }
    expected
}

/// Line numbers in a rejects file.
fn rejected_lines(path: &Path) -> Vec<u64> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    assert_eq!(
        reader.headers().unwrap(),
        ["line", "reason", "detail", "raw"].as_slice()
    );
    reader
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect()
}

/// Runs `ingest --file <file> --topic <topic>` in `dir`, which must succeed.
fn publish_file(dir: &Path, file: &Path, topic: &str) -> Output {
    run(
        ingest(dir).arg("--file").arg(file).args(["--topic", topic]),
        0,
    )
}

/// Checks keys, partitioning and per-invoice order of `records` against `valid`.
fn check_invoices(records: &[Record], valid: &[(String, String)]) {
    assert_eq!(records.len(), valid.len());
    let mut topic: HashMap<&str, (BTreeSet<i32>, Vec<&str>)> = HashMap::new();
    for record in records {
        assert_eq!(record.key, invoice_no(&record.payload), "{record:?}");
        let entry = topic.entry(&record.key).or_default();
        entry.0.insert(record.partition);
        entry.1.push(&record.payload);
    }
    let mut file: HashMap<&str, Vec<&str>> = HashMap::new();
    for (invoice, json) in valid {
        file.entry(invoice).or_default().push(json);
    }
    assert_eq!(topic.len(), file.len());
    for (invoice, lines) in &file {
        let (partitions, in_topic) = &topic[invoice];
        assert_eq!(
            partitions.len(),
            1,
            "invoice {invoice} spans {partitions:?}"
        );
        assert_eq!(in_topic, lines, "lines of invoice {invoice} out of order");
    }
}

#[test]
fn sample_file_lands_in_the_topic_keyed_and_ordered_and_reproducibly() {
    let sample = data_file("online_retail_sample.csv");
    let expected = expected_from(std::fs::File::open(&sample).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("sample");
    let out = publish_file(dir.path(), &sample, &topic);
    let s = summary(&out.stdout);
    let rejected = rejected_lines(&dir.path().join("rejects.csv"));
    assert_eq!(rejected, expected.rejected_lines);
    assert_eq!(s["read"], expected.rows);
    assert_eq!(s["rejected"], rejected.len() as u64);
    assert_eq!(s["published"], expected.rows - rejected.len() as u64);
    assert_eq!(s["failed"], 0);
    assert_eq!(s["topic"], topic.as_str());
    assert_eq!(s["interrupted"], false);
    assert_eq!(common::partitions(&topic), 8);

    let records = read_records(&topic);
    assert_eq!(records.len() as u64, s["published"].as_u64().unwrap());
    let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
    assert_eq!(s["bytes"], bytes as u64);
    check_invoices(&records, &expected.valid);

    // Chosen rows, exactly: the first row of the file opens its partition.
    let first = r#"{"invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER","quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}"#;
    assert!(records.iter().any(|r| r.offset == 0 && r.payload == first));
    for json in [
        r#"{"invoice_no":"C536379","stock_code":"D","description":"Discount","quantity":-1,"invoice_date":"2010-12-01T09:41:00","unit_price":"27.5","customer_id":"14527","country":"United Kingdom"}"#,
        r#"{"invoice_no":"536414","stock_code":"22139","description":null,"quantity":56,"invoice_date":"2010-12-01T11:52:00","unit_price":"0","customer_id":null,"country":"United Kingdom"}"#,
        r#"{"invoice_no":"536477","stock_code":"22041","description":"RECORD FRAME 7\" SINGLE SIZE ","quantity":48,"invoice_date":"2010-12-01T12:27:00","unit_price":"2.1","customer_id":"16210","country":"United Kingdom"}"#,
    ] {
        assert!(records.iter().any(|r| r.payload == json), "{json}");
    }

    // The same file into a fresh topic: the same messages at the same places.
    let again = unique("sample-again");
    publish_file(dir.path(), &sample, &again);
    assert_eq!(read_records(&again), records);
    delete_topics(&[&topic, &again]);
}

#[test]
fn generated_sales_match_the_dry_run_and_keep_invoices_together() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("generated");
    let args = ["--generate", "20000", "--seed", "7"];
    let out = run(ingest(dir.path()).args(args).args(["--topic", &topic]), 0);
    let s = summary(&out.stdout);
    assert_eq!(
        (s["read"].as_u64(), s["published"].as_u64()),
        (Some(20000), Some(20000))
    );
    assert!(
        !dir.path().join("rejects.csv").exists(),
        "no rejects file without --file"
    );

    let dry = run(ingest(dir.path()).args(args).arg("--dry-run"), 0);
    let lines: Vec<(String, String)> = String::from_utf8(dry.stdout)
        .unwrap()
        .lines()
        .map(|line| (invoice_no(line), line.to_owned()))
        .collect();
    assert_eq!(lines.len(), 20000);
    assert!(lines.iter().any(|(invoice, _)| invoice.starts_with('C')));
    check_invoices(&read_records(&topic), &lines);
    delete_topics(&[&topic]);
}

#[test]
fn full_file_publishes_every_valid_row() {
    let path = data_file("online_retail.csv.gz");
    let rows = {
        let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut reader = csv::Reader::from_reader(gz);
        let mut record = csv::ByteRecord::new();
        let mut rows = 0u64;
        while reader.read_byte_record(&mut record).unwrap() {
            rows += 1;
        }
        rows
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("full");
    let out = publish_file(dir.path(), &path, &topic);
    let s = summary(&out.stdout);
    let published = s["published"].as_u64().unwrap();
    let rejected = s["rejected"].as_u64().unwrap();
    assert_eq!(s["read"], rows);
    assert_eq!(published + rejected, rows);
    assert_eq!(
        rejected_lines(&dir.path().join("rejects.csv")).len() as u64,
        rejected
    );
    let held: i64 = common::watermarks(&topic)
        .iter()
        .map(|(low, high)| high - low)
        .sum();
    assert_eq!(held as u64, published);
    delete_topics(&[&topic]);
}

#[test]
fn an_existing_topic_is_used_as_it_is() {
    let topic = unique("existing");
    assert_eq!(create_topic(&topic, 3, &[]), 3);
    let dir = tempfile::tempdir().unwrap();
    run(
        ingest(dir.path()).args(["--generate", "500", "--partitions", "8", "--topic", &topic]),
        0,
    );
    assert_eq!(common::partitions(&topic), 3);
    let records = read_records(&topic);
    assert_eq!(records.len(), 500);
    // Several partitions are used (the keys spread).
    let used: BTreeSet<i32> = records.iter().map(|r| r.partition).collect();
    assert_eq!(used.len(), 3);
    delete_topics(&[&topic]);
}

#[test]
fn a_refused_message_fails_the_run_with_exit_code_3() {
    // The broker refuses any batch above 200 bytes for this topic.
    let topic = unique("refused");
    create_topic(&topic, 1, &[("max.message.bytes", "200")]);
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        ingest(dir.path()).args(["--generate", "100", "--topic", &topic]),
        3,
    );
    let s = summary(&out.stdout);
    // Every message is larger than the limit: none is published, each is counted failed.
    assert_eq!(s["failed"].as_u64(), Some(100), "{s}");
    assert_eq!(s["published"].as_u64(), Some(0), "{s}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("not delivered"), "{stderr}");
    delete_topics(&[&topic]);
}

#[test]
fn ctrl_c_flushes_what_was_sent_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("interrupted");
    let child = spawn_piped(ingest(dir.path()).args([
        "--generate",
        "100000000",
        "--rate",
        "2000",
        "--topic",
        &topic,
    ]));
    std::thread::sleep(Duration::from_secs(3));
    let out = interrupt_and_wait(child);
    let s = summary(&out.stdout);
    assert_eq!(s["interrupted"], true);
    let published = s["published"].as_u64().unwrap();
    assert!(published > 100, "{s}");
    assert_eq!(s["read"], published);
    assert_eq!(read_records(&topic).len() as u64, published);
    delete_topics(&[&topic]);
}
