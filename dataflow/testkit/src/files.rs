//! A run's output folder and the files the tests wait for.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The dataflow's output files that must match between runs of one job (`--sinks jsonl`).
pub const DATAFLOW_OUTPUTS: [&str; 7] = [
    "summary.json",
    "totals.jsonl",
    "by_country.jsonl",
    "top_products.jsonl",
    "epochs.jsonl",
    "alerts.jsonl",
    "dlq.jsonl",
];

/// The files directly in an output folder with their bytes, by name.
pub fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
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

/// Asserts that `actual` holds each of the files `names` as `expected` does, byte for byte.
pub fn assert_same_files(expected: &Path, actual: &Path, names: &[&str]) {
    for name in names {
        let read = |dir: &Path| {
            std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()))
        };
        let (want, got) = (read(expected), read(actual));
        assert!(
            want == got,
            "{name} differs between {} ({} bytes) and {} ({} bytes)",
            expected.display(),
            want.len(),
            actual.display(),
            got.len()
        );
    }
}

/// Asserts that two output folders hold the same files, byte for byte.
pub fn assert_same_outputs(expected: &Path, actual: &Path) {
    let names = |dir: &Path| -> Vec<String> { outputs(dir).into_iter().map(|f| f.0).collect() };
    let want = names(expected);
    assert_eq!(
        want,
        names(actual),
        "{} vs {}",
        expected.display(),
        actual.display()
    );
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_same_files(expected, actual, &want);
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

/// The `summary.json` of an output folder.
pub fn read_summary(dir: &Path) -> Value {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of an output folder's `<stream>.jsonl`.
pub fn read_jsonl(dir: &Path, stream: &str) -> Vec<Value> {
    let path = dir.join(format!("{stream}.jsonl"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

/// Waits until `path` exists, is not empty and contains `needle`; returns its text. The test
/// fails after `timeout`, showing what the file held.
pub fn wait_for_text(path: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if !text.is_empty() && text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} did not appear in {} within {timeout:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `path` exists and is not empty; returns its text.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    wait_for_text(path, "", timeout)
}
