//! Undecodable batches, made by editing segment files on the broker's disk: an unknown codec
//! or a corrupt payload stops the job quickly, naming the topic and the partition, whichever
//! worker or process reads it; so does one in the checkpoint topic, at start.

use super::codecs::kcat_produce;
use super::*;

// ---------------------------------------------------------------------------------------
// Undecodable batches

/// Offsets inside a v2 record batch: baseOffset 8, batchLength 4, partitionLeaderEpoch 4,
/// magic 1, crc 4, attributes 2 (codec = attributes & 7), ..., records from 61.
const ATTRIBUTES: u64 = 21;
const RECORDS: u64 = 61;

/// A topic of `partitions` partitions holding 2000 records, each partition's first batch
/// gzip-compressed and of several hundred records; returns the topic and each partition's
/// first batch length in bytes, once the broker has written all of them.
fn gzip_topic(name: &str, partitions: i32) -> (String, Vec<u64>) {
    let topic = unique(name);
    create_topic(&topic, partitions, &[]);
    kcat_produce(&topic, "gzip", &generated_lines()[..2000]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut lengths = Vec::new();
    let mut counts = 0;
    for partition in 0..partitions {
        let file = segment(&topic, partition);
        loop {
            let bytes = std::fs::read(&file).unwrap_or_default();
            if bytes.len() >= RECORDS as usize {
                let length = u32::from_be_bytes(bytes[8..12].try_into().unwrap()) as u64 + 12;
                if bytes.len() as u64 >= length {
                    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
                    assert_eq!(bytes[16], 2, "magic of {}", file.display());
                    assert_eq!(attributes & 7, 1, "not gzip: {}", file.display());
                    let count = u32::from_be_bytes(bytes[57..61].try_into().unwrap());
                    assert!(count >= 500, "{}: a batch of {count}", file.display());
                    counts += count;
                    lengths.push(length);
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not get its batch",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(counts, 2000, "one batch per partition");
    (topic, lengths)
}

/// 64 bytes of noise over the middle of a partition's first batch's compressed records.
fn corrupt_payload(topic: &str, partition: i32, length: u64) {
    assert!(length > 1000, "a batch of {length} bytes");
    let middle = RECORDS + (length - RECORDS) / 2;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..64)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    overwrite(&segment(topic, partition), middle, &noise);
}

/// Overwrites bytes of a segment file in place (the broker serves them as stored).
fn overwrite(file: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Runs the job over a topic with a broken first batch: it must stop within seconds with
/// a non-zero status, naming the topic and partition.
fn assert_stops_on_undecodable(topic: &str, dir: &Path) {
    let out = dir.join(topic);
    let (result, took) = run_timeout(
        &mut dataflow_via(Via::Plaintext, topic, &out, &["--sinks", "jsonl"]),
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert!(!result.status.success(), "{topic}: {stderr}");
    assert_eq!(result.status.code(), Some(1), "{topic}: {stderr}");
    assert!(took < Duration::from_secs(20), "{topic}: took {took:?}");
    assert!(
        stderr.contains(&format!("cannot decode a record batch of topic {topic}")),
        "{stderr}"
    );
    assert!(stderr.contains("partition 0 at offset 0"), "{stderr}");
    // Nothing was presented as a result.
    assert!(!out.join("summary.json").exists(), "{topic}");
}

#[test]
fn a_batch_of_an_unknown_codec_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (topic, _) = gzip_topic("codec-7", 1);
    let file = segment(&topic, 0);
    let bytes = std::fs::read(&file).unwrap();
    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
    overwrite(&file, ATTRIBUTES, &((attributes & !7) | 7).to_be_bytes());
    assert_stops_on_undecodable(&topic, dir.path());
}

#[test]
fn a_corrupt_compressed_batch_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (topic, lengths) = gzip_topic("corrupt", 1);
    corrupt_payload(&topic, 0, lengths[0]);
    assert_stops_on_undecodable(&topic, dir.path());
}

/// A 2-partition topic whose partition 1 starts with a corrupt batch.
fn corrupt_partition_1() -> String {
    let (topic, lengths) = gzip_topic("corrupt-p1", 2);
    corrupt_payload(&topic, 1, lengths[1]);
    topic
}

/// Asserts that a run (and how long it took) over [`corrupt_partition_1`]'s `topic` failed
/// within `within`, naming the batch it could not decode, and wrote no summary.json to `out`.
fn assert_failed_on_partition_1(
    run: (Output, Duration),
    within: Duration,
    topic: &str,
    out: &Path,
) {
    let (result, took) = run;
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(took < within, "took {took:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot decode a record batch of topic {topic}, partition 1 at offset 0"
        )),
        "{stderr}"
    );
    let summary = std::fs::read_to_string(out.join("summary.json"));
    assert!(
        summary.is_err(),
        "a failed job wrote summary.json: {summary:?}"
    );
}

#[test]
fn a_corrupt_batch_read_by_another_worker_stops_the_job() {
    // Partition 1 is read by worker 1; worker 0 writes the outputs.
    let dir = tempfile::tempdir().unwrap();
    let topic = corrupt_partition_1();
    let out = dir.path().join("out");
    let run = run_timeout(
        &mut dataflow_via(
            Via::Plaintext,
            &topic,
            &out,
            &["--sinks", "jsonl", "-w", "2"],
        ),
        Duration::from_secs(60),
    );
    assert_failed_on_partition_1(run, Duration::from_secs(20), &topic, &out);
}

/// A source that meets an undecodable batch in process 1 must not let process 0 (the
/// writer) close and commit epochs without the partition it could not read.
#[test]
fn a_corrupt_batch_in_another_process_fails_the_job_without_partial_outputs() {
    // Partition 1 is read by process 1 (of 2, one worker each); process 0 writes the outputs.
    let dir = tempfile::tempdir().unwrap();
    let topic = corrupt_partition_1();
    let out = dir.path().join("out");
    let run = run_timeout(
        Command::new(binary("cluster"))
            .env("RUST_LOG", "warn,cluster=info")
            .args(["-n", "2", "-w", "1", "--max-restarts", "0", "--"])
            .args(["-b", &bootstrap(), "--topic", &topic, "--until-end"])
            .args(["--sinks", "jsonl", "--progress-interval", "0"])
            .args(["--job-id", &format!("{topic}-cluster"), "-o"])
            .arg(&out),
        Duration::from_secs(90),
    );
    assert_failed_on_partition_1(run, Duration::from_secs(30), &topic, &out);
}

#[test]
fn an_undecodable_checkpoint_topic_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let sales = unique("sales-of-a-bad-checkpoint");
    publish(&sales, &["--generate", "200", "--seed", "3"], dir.path());
    // A checkpoint topic whose first batch has a codec no client knows.
    let (checkpoints, _) = gzip_topic("checkpoint-codec-7", 1);
    let file = segment(&checkpoints, 0);
    let bytes = std::fs::read(&file).unwrap();
    let attributes = u16::from_be_bytes(bytes[21..23].try_into().unwrap());
    overwrite(&file, ATTRIBUTES, &((attributes & !7) | 7).to_be_bytes());
    let out = dir.path().join("out");
    let (result, took) = run_timeout(
        &mut dataflow_via(
            Via::Plaintext,
            &sales,
            &out,
            &["--sinks", "jsonl", "--checkpoint-topic", &checkpoints],
        ),
        Duration::from_secs(60),
    );
    let stderr = text(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {stderr}");
    assert!(stderr.contains(&checkpoints), "{stderr}");
    assert!(stderr.contains("decode"), "{stderr}");
    assert!(!out.join("summary.json").exists());
    delete_topics(&[&sales, &checkpoints]);
}
