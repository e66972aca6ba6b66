//! `cluster`: parses the command line, sets up logging and signal handling, runs (or prints)
//! the job and maps the outcome to an exit status.

use std::process::ExitCode;

use clap::Parser;

use cluster::cli::Mode;
use cluster::{Args, Outcome, Shutdown};
use retail_common::exit;

fn main() -> ExitCode {
    let args = Args::parse();
    retail_common::logging::init(false);
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            retail_common::say!("cluster: error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if config.mode == Mode::Print {
        let mut stdout = std::io::stdout().lock();
        return match cluster::supervise::print_commands(&config, &mut stdout) {
            Ok(()) => ExitCode::SUCCESS,
            // A closed pipe (`cluster --print | head -1`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
            Err(e) => {
                retail_common::say!("cluster: error: cannot print the commands: {e}");
                ExitCode::from(exit::ERROR)
            }
        };
    }
    if let Some(http) = &config.http {
        for i in 0..config.processes {
            let what = if i == 0 {
                "the live page, /api and /metrics"
            } else {
                "/metrics"
            };
            retail_common::say!(
                "cluster: process {i} serves {what} on http://{}/",
                http.of(i)
            );
        }
    }
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.install_signal_handlers() {
        retail_common::say!(
            "cluster: warning: cannot handle Ctrl-C/SIGTERM, children will not be told: {e}"
        );
    }
    match cluster::run(&config, &shutdown) {
        Ok(outcome) => {
            match &outcome {
                Outcome::Success { .. } => tracing::info!("{outcome}"),
                Outcome::Interrupted => retail_common::say!("cluster: interrupted"),
                // Already logged in full; repeat it as the last line a user sees.
                Outcome::Failed { .. } => retail_common::say!("cluster: error: {outcome}"),
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            retail_common::say!("cluster: error: {:#}", anyhow::Error::new(e));
            ExitCode::from(exit::ERROR)
        }
    }
}
