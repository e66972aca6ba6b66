//! The `ingest` binary: parses the command line, sets up logging on stderr, installs the
//! Ctrl-C handler, calls [`ingest::run`] and maps its result to an exit code (listed in
//! `ingest --help`). Everything else lives in the library.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, Parser};
use ingest::{Args, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, IngestError};

fn main() -> ExitCode {
    let args = Args::parse();
    retail_common::logging::init(true);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            let err = Args::command().error(clap::error::ErrorKind::ValueValidation, e);
            let _ = err.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let handler = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // The second Ctrl-C: the user does not want to wait for the flush.
            retail_common::say!("ingest: interrupted again, exiting without waiting for Kafka");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
        retail_common::say!("ingest: interrupted, flushing what was sent (Ctrl-C again to abort)");
    });
    if let Err(e) = handler {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }

    match ingest::run(&config, &shutdown) {
        Ok(summary) => {
            let line = summary.to_json();
            // The summary goes where the JSON lines do not. A closed pipe is not an error.
            let _ = if config.sink.uses_stdout() {
                writeln!(std::io::stderr(), "{line}")
            } else {
                writeln!(std::io::stdout(), "{line}")
            };
            if summary.failed > 0 {
                retail_common::say!(
                    "error: {} message(s) not delivered; first error: {}",
                    summary.failed,
                    summary.first_error.as_deref().unwrap_or("unknown")
                );
            }
            ExitCode::from(summary.exit_code())
        }
        // `ingest --dry-run | head`: the reader has what it wanted.
        Err(IngestError::BrokenPipe) => ExitCode::from(EXIT_OK),
        Err(e) => {
            retail_common::say!("error: {}", describe(&anyhow::Error::new(e)));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The error and its causes, as anyhow's `{:#}` prints them, but without a cause whose text
/// the previous message already contains: rdkafka's and retail-common's errors repeat their
/// source in their own message, which would otherwise print the same words three times.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    for cause in error.chain().skip(1) {
        let message = cause.to_string();
        if !previous.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        previous = message;
    }
    text
}
