//! Running the job: start every process, copy its output with a `[p<i>]` prefix, watch them,
//! forward interrupts, and when one dies while others run, stop the rest and start the whole
//! job again after a backoff.
//!
//! Why the whole job: a timely process whose peer dies panics or hangs on its connections, and
//! a new peer cannot join a running timely job, so the only consistent restart is all of them.
//!
//! Each child runs in its own process group, so a Ctrl-C at the terminal reaches `cluster` only
//! and is forwarded exactly once (the dataflow treats a second SIGINT as "quit now"). Children
//! are reaped only by this module's loop, so a pid we signal is never a recycled one.
//!
//! Layout: this file holds the restart loop and the interrupt counter; `attempt` starts and
//! watches one attempt's processes and stops them all; `outcome` is what a run ends with
//! (its outcome, the failure that ended an attempt, and cluster's own errors).

mod attempt;
mod outcome;

use attempt::{AttemptEnd, run_attempt};

pub use outcome::{Failure, Outcome, RunError, describe};

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cli::{Config, Hosts, Mode};
use crate::command::{JobShape, LaunchCommand, dataflow_command, ssh_command};
use crate::hostfile;

/// How often the loop looks at the children and at the interrupt count.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait for the output copiers after a process exited (a grandchild may keep its
/// pipe open; we do not hang on it).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Interrupt requests (Ctrl-C, SIGTERM, SIGHUP, or a test), counted so that each one is
/// forwarded once.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    requests: Arc<AtomicUsize>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks the job to stop, as a Ctrl-C does.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Counts SIGINT, SIGTERM and SIGHUP as requests (from a background thread).
    pub fn install_signal_handlers(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    this.request();
                }
            })?;
        Ok(())
    }
}

/// The command of every process for `--print`, one per line, p0 first.
pub fn print_commands(config: &Config, out: &mut impl Write) -> io::Result<()> {
    let Hosts::File { path, hosts } = &config.hosts else {
        unreachable!("--print needs --hostfile; Args::into_config checks it");
    };
    for (i, command) in commands(config, Some(path)).iter().enumerate() {
        writeln!(out, "{}", command.to_display_line())?;
        info!("p{i} runs on {}", hosts[i].host);
    }
    Ok(())
}

/// The command of every process: the dataflow command, wrapped in ssh with `--ssh`.
pub fn commands(config: &Config, hostfile: Option<&Path>) -> Vec<LaunchCommand> {
    let shape = JobShape {
        dataflow_bin: &config.dataflow_bin,
        processes: config.processes,
        workers: config.workers,
        hostfile,
        dataflow_args: &config.dataflow_args,
        http: config.http.as_ref(),
    };
    (0..config.processes)
        .map(|i| {
            let command = dataflow_command(&shape, i);
            match (&config.mode, &config.hosts) {
                (Mode::Ssh, Hosts::File { hosts, .. }) => {
                    ssh_command(&config.ssh_bin, &hosts[i].host, &command)
                }
                _ => command,
            }
        })
        .collect()
}

/// The configuration of a restart: the same, less dataflow's `--reset`.
fn without_reset(config: &Config) -> Config {
    let mut resumed = config.clone();
    resumed.dataflow_args.retain(|a| a != "--reset");
    resumed
}

/// Runs the job until every process exits 0, it is interrupted, or a failure is not restarted.
pub fn run(config: &Config, shutdown: &Shutdown) -> Result<Outcome, RunError> {
    // A local run without a hostfile gets one here, with fresh ports for every attempt: the
    // previous attempt's ports may be in use by a process we could not reap, or by anyone.
    let scratch = match config.hosts {
        Hosts::PickLocal => Some(
            tempfile::Builder::new()
                .prefix("cluster-")
                .tempdir()
                .map_err(|source| RunError::Hostfile {
                    path: std::env::temp_dir(),
                    source,
                })?,
        ),
        _ => None,
    };
    if let Some(dir) = &config.pid_dir {
        std::fs::create_dir_all(dir).map_err(|source| RunError::PidFile {
            path: dir.clone(),
            source,
        })?;
    }
    let mut restarts = 0;
    loop {
        let (hostfile, hosts) = match &config.hosts {
            Hosts::Single => (None, None),
            Hosts::File { path, hosts } => (Some(path.clone()), Some(hosts.clone())),
            Hosts::PickLocal => {
                let dir = scratch.as_ref().expect("made above").path();
                let hosts = hostfile::local_hosts(config.processes).map_err(RunError::Ports)?;
                let path = dir.join("hosts");
                std::fs::write(&path, hostfile::render(&hosts)).map_err(|source| {
                    RunError::Hostfile {
                        path: path.clone(),
                        source,
                    }
                })?;
                (Some(path), Some(hosts))
            }
        };
        info!(
            processes = config.processes,
            workers = config.workers,
            hostfile = %hostfile.as_deref().map_or("-".into(), |p| p.display().to_string()),
            attempt = restarts + 1,
            "starting the job"
        );
        // A restart resumes from the job's last checkpoint: `--reset` applied to the first
        // attempt only.
        let resumed;
        let attempt_config = if restarts > 0 {
            resumed = without_reset(config);
            &resumed
        } else {
            config
        };
        let commands = commands(attempt_config, hostfile.as_deref());
        let end = run_attempt(config, shutdown, &commands, hosts.as_deref())?;
        let failure = match end {
            AttemptEnd::Done => return Ok(Outcome::Success { restarts }),
            AttemptEnd::Interrupted => return Ok(Outcome::Interrupted),
            AttemptEnd::Failed(failure) => failure,
        };
        if shutdown.requests() > 0 {
            return Ok(Outcome::Interrupted);
        }
        if failure.is_usage_error() || restarts >= config.max_restarts {
            // Reported by the caller (main prints it as its last line).
            return Ok(Outcome::Failed {
                failure,
                restarts,
                max_restarts: config.max_restarts,
            });
        }
        restarts += 1;
        let delay = config.backoff.delay(restarts);
        warn!(
            "{failure}; stopped the other processes; restarting the whole job in {delay:?} \
             (restart {restarts} of {})",
            config.max_restarts
        );
        if !sleep_unless_interrupted(delay, shutdown) {
            return Ok(Outcome::Interrupted);
        }
    }
}

/// Sleeps for `delay`; false if an interrupt arrived meanwhile.
fn sleep_unless_interrupted(delay: Duration, shutdown: &Shutdown) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if shutdown.requests() > 0 {
            return false;
        }
        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
    }
    shutdown.requests() == 0
}
