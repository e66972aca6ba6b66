//! `dataflow`: parses the command line, sets up logging and Ctrl-C, runs the job and maps the
//! outcome to an exit status.

use std::io::Write;
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

/// A panic in any thread ends the process at once, with one line first: a job with a dead
/// thread (a worker, the commit thread, or timely's connection to another process) would
/// otherwise live on and hold its epochs open. A broken connection between processes means
/// a peer failed: status 75, so that the job restarts from its checkpoint; any other panic is
/// a bug: status 101, as Rust's own. The usual message (and backtrace, under
/// `RUST_BACKTRACE`) follows the line.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        let (what, code) = if name.starts_with("timely:") {
            let peer = dataflow::peers::connection_thread_peer(name)
                .unwrap_or_else(|| "another process of the job".into());
            (format!("the connection to {peer} broke"), exit::RESTART)
        } else {
            ("a thread panicked".into(), 101)
        };
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        // Never a second panic here: stderr may be closed (`dataflow 2>&1 | head`).
        let _ = writeln!(
            std::io::stderr(),
            "error: {what} (thread '{name}': {message}{place}); stopping the process"
        );
        default(info);
        std::process::exit(i32::from(code));
    }));
}

fn main() -> ExitCode {
    dataflow::native::heap::set_decay();
    exit_on_panic();
    let args = Args::parse();
    retail_common::logging::init(true);
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            retail_common::say!("error: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if config.pg_init {
        return pg_init(&config);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    // Set once a bounded run is over and --http-linger keeps serving its final state.
    let lingering = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let over = Arc::clone(&lingering);
    // Say what an interrupt does: with checkpoints, nothing after the last committed epoch
    // is written (the next run goes on from there); without, the open epochs are closed.
    let interrupted = if config.checkpoint {
        "interrupted: stopping; what was read after the last committed epoch is not written, \
         the next run of the job goes on from there (Ctrl-C again to quit now)"
    } else {
        "interrupted: closing open epochs and flushing outputs (Ctrl-C again to quit now)"
    };
    if let Err(e) = ctrlc::set_handler(move || {
        if over.load(Ordering::Relaxed) {
            flag.store(true, Ordering::Relaxed);
            return;
        }
        if flag.swap(true, Ordering::Relaxed) {
            // A second Ctrl-C means now.
            std::process::exit(i32::from(exit::INTERRUPTED));
        }
        let _ = writeln!(std::io::stderr(), "{interrupted}");
    }) {
        retail_common::say!("warning: cannot install the Ctrl-C handler: {e}");
    }
    let linger = config.http_linger;
    match job::run(config, Arc::clone(&shutdown)) {
        Ok(report) => {
            retail_common::say!(
                "{}",
                serde_json::to_string(&report).expect("report serialises")
            );
            if let Some(addr) = report
                .http
                .as_ref()
                .filter(|_| linger && !report.interrupted)
            {
                lingering.store(true, Ordering::Relaxed);
                retail_common::say!("the final state stays on http://{addr}/ until Ctrl-C");
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
            retail_common::say!("error: {:#}", anyhow::Error::new(e));
            ExitCode::from(code)
        }
    }
}

/// `--pg-init`: creates the schema and tables of `--sinks postgres` and checks them.
fn pg_init(config: &dataflow::cli::Config) -> ExitCode {
    let target = config
        .postgres
        .as_ref()
        .expect("--pg-init builds the target");
    match dataflow::sink::postgres::init(target) {
        Ok(_) => {
            println!(
                "the tables of --sinks postgres are ready in schema {} of {target}",
                target.schema
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::new(e));
            ExitCode::from(exit::ERROR)
        }
    }
}
