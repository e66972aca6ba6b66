//! JSON-lines files in `--output-dir`: one file per stream plus `dlq.jsonl`, and
//! `summary.json` at the end.
//!
//! Files only grow, one closed epoch at a time. Their lengths go into each checkpoint; a
//! restarted job cuts them back to the committed lengths before writing again, so what a crash
//! left half-written disappears and every epoch appears exactly once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::{Batch, OutputStream, State, write_summary};

/// The dead letters' file, beside the streams'.
const DLQ: &str = "dlq";

pub struct JsonlSink {
    dir: PathBuf,
    files: BTreeMap<OutputStream, BufWriter<File>>,
    dlq: BufWriter<File>,
}

fn file_name(stream: &str) -> String {
    format!("{stream}.jsonl")
}

impl JsonlSink {
    /// Opens the stream files in `dir`: empty for a fresh start, or cut back to `committed`
    /// lengths when resuming.
    pub fn open(dir: PathBuf, committed: Option<&BTreeMap<String, u64>>) -> io::Result<JsonlSink> {
        std::fs::create_dir_all(&dir)?;
        let open = |stream: &str| -> io::Result<BufWriter<File>> {
            let name = file_name(stream);
            let path = dir.join(&name);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let keep = committed.map_or(0, |c| c.get(&name).copied().unwrap_or(0));
            let len = file.metadata()?.len();
            if len < keep {
                return Err(io::Error::other(format!(
                    "{} has {len} bytes but {keep} were committed; it was changed outside the job \
                     (start over with --reset)",
                    path.display()
                )));
            }
            file.set_len(keep)?;
            Ok(BufWriter::new(file))
        };
        let mut files = BTreeMap::new();
        for stream in OutputStream::ALL {
            files.insert(stream, open(stream.name())?);
        }
        let dlq = open(DLQ)?;
        // A summary from an earlier run must not pass for this run's.
        match std::fs::remove_file(dir.join("summary.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(JsonlSink { dir, files, dlq })
    }

    /// The length of every file, after flushing, for the checkpoint.
    pub fn lengths(&mut self) -> io::Result<BTreeMap<String, u64>> {
        let mut lengths = BTreeMap::new();
        let files = self.files.iter_mut().map(|(s, f)| (s.name(), f));
        for (stream, file) in files.chain([(DLQ, &mut self.dlq)]) {
            file.flush()?;
            lengths.insert(file_name(stream), file.get_ref().metadata()?.len());
        }
        Ok(lengths)
    }
}

impl JsonlSink {
    /// Appends a closed epoch's lines, flushed, so the epoch is on disk before it is committed.
    pub fn write(&mut self, batch: &Batch) -> io::Result<()> {
        for change in &batch.changes {
            let file = self
                .files
                .get_mut(&change.stream)
                .expect("a file per stream");
            file.write_all(change.line.as_bytes())?;
            file.write_all(b"\n")?;
        }
        for (_, line) in &batch.dead {
            self.dlq.write_all(line.as_bytes())?;
            self.dlq.write_all(b"\n")?;
        }
        // Each epoch is complete on disk before it is committed.
        for file in self.files.values_mut() {
            file.flush()?;
        }
        self.dlq.flush()?;
        Ok(())
    }

    /// Writes `summary.json` after the last epoch.
    pub fn finish(&mut self, state: &State) -> io::Result<()> {
        write_summary(&self.dir, state)?;
        Ok(())
    }
}
