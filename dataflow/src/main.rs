//! `dataflow`: parses the command line, sets up logging and Ctrl-C, runs the job and maps the
//! outcome to an exit status.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use dataflow::cli::Args;
use dataflow::job;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    if let Err(e) = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            // A second Ctrl-C means now.
            std::process::exit(130);
        }
        eprintln!(
            "interrupted: closing open epochs and flushing outputs (Ctrl-C again to quit now)"
        );
    }) {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    match job::run(config, shutdown) {
        Ok(report) => {
            eprintln!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            if report.interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::from(code)
        }
    }
}
