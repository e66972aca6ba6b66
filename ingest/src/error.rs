//! Why a run failed: one variant per operation that can fail, each carrying its source.
//!
//! Bad rows are not errors (they go to the rejects file), and delivery failures are not either
//! (they are counted in the [`Summary`](crate::Summary) and turn the exit code to 3). What is
//! here stops the run: an input that cannot be opened or read, a header without a required
//! column, a rejects or output file that cannot be written, a broker that cannot be reached.

use std::io;
use std::path::PathBuf;

use rdkafka::error::KafkaError;
use retail_common::kafka::KafkaSetupError;

/// A failure that ends the run (exit code 1, or 0 for a closed stdout pipe).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot open input {path}")]
    OpenInput {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {input} at line {line}")]
    ReadInput {
        input: String,
        line: u64,
        #[source]
        source: csv::Error,
    },
    #[error("{input} is empty: expected a header row")]
    NoHeader { input: String },
    #[error(
        "{input}: the header has no {column} column (accepted names: {accepted}); \
         the header is: {header}"
    )]
    MissingColumn {
        input: String,
        column: &'static str,
        accepted: String,
        header: String,
    },
    #[error("cannot write the rejects file {path}")]
    Rejects {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write JSON lines to {target}")]
    Output {
        target: String,
        #[source]
        source: io::Error,
    },
    /// The reader of our stdout went away (`ingest --dry-run | head`): not a failure.
    #[error("stdout was closed")]
    BrokenPipe,
    #[error(transparent)]
    KafkaSetup(#[from] KafkaSetupError),
    /// `--http` could not listen.
    #[error(transparent)]
    Http(retail_common::metrics::ServeError),
    #[error("cannot create the Kafka producer for {bootstrap}")]
    Producer {
        bootstrap: String,
        #[source]
        source: KafkaError,
    },
}

impl IngestError {
    /// Wraps a write error on the JSON-lines output, singling out a closed pipe.
    pub(crate) fn output(target: &str, source: io::Error) -> IngestError {
        if source.kind() == io::ErrorKind::BrokenPipe {
            IngestError::BrokenPipe
        } else {
            IngestError::Output {
                target: target.to_owned(),
                source,
            }
        }
    }

    pub(crate) fn rejects(path: &std::path::Path, source: impl Into<io::Error>) -> IngestError {
        IngestError::Rejects {
            path: path.to_owned(),
            source: source.into(),
        }
    }
}
