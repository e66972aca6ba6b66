//! JSON-lines files in `--output-dir`: one file per stream plus `dlq.jsonl`, and
//! `summary.json` at the end.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use super::{Batch, STREAMS, Sink, State, write_summary};

pub struct JsonlSink {
    dir: PathBuf,
    files: BTreeMap<&'static str, BufWriter<File>>,
    dlq: BufWriter<File>,
}

impl JsonlSink {
    /// Creates (truncating) the stream files in `dir`.
    pub fn create(dir: PathBuf) -> io::Result<JsonlSink> {
        std::fs::create_dir_all(&dir)?;
        let open = |name: &str| File::create(dir.join(name)).map(BufWriter::new);
        let mut files = BTreeMap::new();
        for stream in STREAMS {
            files.insert(stream, open(&format!("{stream}.jsonl"))?);
        }
        let dlq = open("dlq.jsonl")?;
        // A summary from an earlier run must not pass for this run's.
        match std::fs::remove_file(dir.join("summary.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(JsonlSink { dir, files, dlq })
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, batch: &Batch, _state: &State) -> io::Result<()> {
        for change in &batch.changes {
            let file = self
                .files
                .get_mut(change.stream)
                .expect("a file per stream");
            file.write_all(change.line.as_bytes())?;
            file.write_all(b"\n")?;
        }
        for (_, line) in &batch.dead {
            self.dlq.write_all(line.as_bytes())?;
            self.dlq.write_all(b"\n")?;
        }
        // Each epoch is complete on disk before the next one starts.
        for file in self.files.values_mut() {
            file.flush()?;
        }
        self.dlq.flush()
    }

    fn finish(&mut self, state: &State) -> io::Result<()> {
        write_summary(&self.dir, state)?;
        Ok(())
    }
}
