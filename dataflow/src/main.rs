//! `dataflow`: parses the command line, sets up logging and Ctrl-C, runs the job and maps the
//! outcome to an exit status.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

use dataflow::cli::Args;
use dataflow::job;
use retail_common::exit;

/// jemalloc returns freed memory to the system on its own background thread: memory freed by
/// one thread after another allocated it (librdkafka's fetches, timely's exchanges, the commit
/// thread) does not pile up in per-thread arenas as it does with glibc's malloc. It is the
/// process's `malloc` too (see [`dataflow::native::heap`]).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    dataflow::native::heap::set_decay();
    let args = Args::parse();
    retail_common::logging::init(true);
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    // Set once a bounded run is over and --http-linger keeps serving its final state.
    let lingering = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let over = Arc::clone(&lingering);
    if let Err(e) = ctrlc::set_handler(move || {
        if over.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
            return;
        }
        if flag.swap(true, Ordering::Relaxed) {
            // A second Ctrl-C means now.
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
        eprintln!(
            "interrupted: closing open epochs and flushing outputs (Ctrl-C again to quit now)"
        );
    }) {
        eprintln!("warning: cannot install the Ctrl-C handler: {e}");
    }
    let linger = config.http_linger;
    match job::run(config, Arc::clone(&shutdown)) {
        Ok(report) => {
            eprintln!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            if let Some(addr) = report
                .http
                .as_ref()
                .filter(|_| linger && !report.interrupted)
            {
                lingering.store(true, Ordering::Relaxed);
                eprintln!("the final state stays on http://{addr}/ until Ctrl-C");
                while !shutdown.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
            if report.interrupted {
                ExitCode::from(exit::INTERRUPTED)
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
