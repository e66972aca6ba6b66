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

use std::fmt;
use std::io::{self, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};

use retail_common::exit;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::cli::{Config, Hosts, Mode};
use crate::command::{JobShape, LaunchCommand, dataflow_command, ssh_command};
use crate::hostfile::{self, HostPort};
use crate::output::{Stream, Tails, copy_lines};
use crate::probe::Probe;

/// How often the loop looks at the children and at the interrupt count.
const POLL: Duration = Duration::from_millis(20);
/// Lines of each process kept for the failure report.
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

/// How a supervised run ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every process exited 0.
    Success { restarts: u32 },
    /// Stopped by an interrupt request.
    Interrupted,
    /// A process failed and the job was not (or no longer) restarted.
    Failed {
        failure: Failure,
        restarts: u32,
        max_restarts: u32,
    },
}

impl Outcome {
    /// The exit status `cluster` should end with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Success { .. } => exit::OK,
            Outcome::Interrupted => exit::INTERRUPTED,
            Outcome::Failed { failure, .. } => failure.exit_code(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Success { restarts: 0 } => write!(f, "every process exited 0"),
            Outcome::Success { restarts } => {
                write!(f, "every process exited 0 (after {restarts} restart(s))")
            }
            Outcome::Interrupted => write!(f, "interrupted"),
            Outcome::Failed {
                failure,
                restarts,
                max_restarts,
            } => {
                write!(f, "{failure}; ")?;
                if failure.is_usage_error() {
                    write!(
                        f,
                        "not restarting: exit status 2 is bad usage, which a restart cannot fix"
                    )?;
                } else if *max_restarts == 0 {
                    write!(f, "not restarting (--max-restarts 0)")?;
                } else {
                    write!(
                        f,
                        "gave up after {restarts} restart(s) (--max-restarts {max_restarts})"
                    )?;
                }
                if failure.last_lines.is_empty() {
                    write!(f, "; it printed nothing")
                } else {
                    write!(f, "; its last {} line(s):", failure.last_lines.len())?;
                    for line in &failure.last_lines {
                        write!(f, "\n  [p{}] {line}", failure.index)?;
                    }
                    Ok(())
                }
            }
        }
    }
}

/// The process whose death ended an attempt.
#[derive(Clone, Debug)]
pub struct Failure {
    pub index: usize,
    pub pid: u32,
    /// `host:port` from the hostfile, when there is one.
    pub address: Option<String>,
    pub status: ExitStatus,
    /// Set when the launcher stopped the process because it answered no probe for this long.
    pub silent: Option<Duration>,
    /// Its last lines on stderr (its log), or on stdout when it wrote nothing to stderr.
    pub last_lines: Vec<String>,
}

impl Failure {
    /// The child's own exit code, or 128+N when signal N killed it (as a shell reports it).
    pub fn exit_code(&self) -> u8 {
        if self.silent.is_some() {
            return exit::RESTART;
        }
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1).max(1),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
            (None, None) => 1,
        }
    }

    fn is_usage_error(&self) -> bool {
        self.status.code() == Some(2)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process p{} (pid {}", self.index, self.pid)?;
        if let Some(address) = &self.address {
            write!(f, ", {address}")?;
        }
        match self.silent {
            Some(silent) => write!(
                f,
                ") answered no heartbeat probe for {:.1} s: frozen, or cut off from this host",
                silent.as_secs_f64()
            ),
            None => write!(f, ") {}", describe(self.status)),
        }
    }
}

/// "exited with status 1" / "was killed by signal 9 (SIGKILL)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(n)) => match Signal::try_from(n) {
            Ok(signal) => format!("was killed by signal {n} ({signal})"),
            Err(_) => format!("was killed by signal {n}"),
        },
        _ => format!("ended with {status}"),
    }
}

/// What cluster itself failed to do (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start process p{index} ({program}): {source}")]
    Spawn {
        index: usize,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot pick free loopback ports: {0}")]
    Ports(#[source] io::Error),
    #[error("cannot write the hostfile {path}: {source}")]
    Hostfile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot wait for process p{index}: {source}")]
    Wait {
        index: usize,
        #[source]
        source: io::Error,
    },
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

enum AttemptEnd {
    Done,
    Interrupted,
    Failed(Failure),
}

/// One started process.
struct Running {
    index: usize,
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    tails: Arc<Mutex<Tails>>,
    pid_file: Option<PathBuf>,
}

impl Running {
    /// Signals the child's process group (itself and anything it started), if not yet reaped.
    fn signal(&self, signal: Signal) {
        if self.status.is_none() {
            let pid = Pid::from_raw(self.pid as i32);
            if let Err(e) = killpg(pid, signal) {
                // ESRCH: it exited and awaits reaping; nothing to do.
                if e != nix::errno::Errno::ESRCH {
                    warn!(
                        "cannot send {signal} to p{} (pid {}): {e}",
                        self.index, self.pid
                    );
                }
            }
        }
    }

    /// Reaps the child if it has exited; true when it just did.
    fn reap(&mut self) -> Result<bool, RunError> {
        if self.status.is_some() {
            return Ok(false);
        }
        let status = self.child.try_wait().map_err(|source| RunError::Wait {
            index: self.index,
            source,
        })?;
        let Some(status) = status else {
            return Ok(false);
        };
        self.status = Some(status);
        if let Some(path) = &self.pid_file {
            let _ = std::fs::remove_file(path);
        }
        Ok(true)
    }
}

/// Starts every process and watches them until all have exited.
fn run_attempt(
    config: &Config,
    shutdown: &Shutdown,
    commands: &[LaunchCommand],
    hosts: Option<&[HostPort]>,
) -> Result<AttemptEnd, RunError> {
    let (drained_tx, drained_rx) = mpsc::channel::<()>();
    let mut running: Vec<Running> = Vec::with_capacity(commands.len());
    for (index, command) in commands.iter().enumerate() {
        match spawn(config, index, command, &drained_tx) {
            Ok(r) => {
                info!(
                    "p{index} started (pid {}{})",
                    r.pid,
                    hosts.map_or(String::new(), |h| format!(", {}", h[index]))
                );
                running.push(r);
            }
            Err(e) => {
                stop_all(&mut running, config.grace, |_| false);
                return Err(e);
            }
        }
    }
    drop(drained_tx);
    let mut probe = match (config.probe_timeout, hosts) {
        (Some(timeout), Some(hosts)) => {
            let addresses = hosts.iter().map(ToString::to_string).collect();
            Probe::new(addresses, timeout)
                .inspect_err(|e| warn!("cannot watch the processes for silence: {e}"))
                .ok()
        }
        _ => None,
    };
    let mut silent = None;

    let mut forwarded = 0;
    let mut interrupted_at: Option<Instant> = None;
    let mut killed = false;
    let mut failed: Option<usize> = None;
    loop {
        let requests = shutdown.requests();
        if requests > forwarded {
            forwarded = requests;
            if interrupted_at.is_none() {
                info!("interrupted: forwarding SIGINT to every process (again to stop at once)");
                interrupted_at = Some(Instant::now());
            }
            // The dataflow closes its epochs on the first SIGINT and quits on the second.
            running.iter().for_each(|r| r.signal(Signal::SIGINT));
        }
        if let Some(at) = interrupted_at
            && !killed
            && at.elapsed() > config.grace
        {
            warn!(
                "processes still running {:?} after SIGINT: sending SIGKILL",
                config.grace
            );
            running.iter().for_each(|r| r.signal(Signal::SIGKILL));
            killed = true;
        }

        let mut newly_failed = Vec::new();
        for r in running.iter_mut() {
            if r.reap()? {
                let status = r.status.expect("just reaped");
                if status.success() || interrupted_at.is_some() {
                    info!("p{} {}", r.index, describe(status));
                } else {
                    newly_failed.push(r.index);
                }
            }
        }
        if failed.is_none() && interrupted_at.is_none() && !newly_failed.is_empty() {
            // Several seen in one poll: the one killed by a signal is more likely the cause
            // than a peer that panicked on losing it.
            let first = newly_failed
                .iter()
                .copied()
                .find(|&i| running[i].status.is_some_and(|s| s.signal().is_some()))
                .unwrap_or(newly_failed[0]);
            failed = Some(first);
            let r = &running[first];
            warn!(
                "p{first} (pid {}) {}: stopping the other processes",
                r.pid,
                describe(r.status.expect("reaped"))
            );
            // A frozen or cut-off process cannot act on SIGTERM: no grace for it.
            let now = Instant::now();
            let probe = probe.as_ref();
            stop_all(&mut running, config.grace, |i| {
                probe.is_some_and(|p| p.unresponsive(i, now))
            });
        }
        if failed.is_none()
            && interrupted_at.is_none()
            && let Some(probe) = probe.as_mut()
            && let Some(silence) = probe.poll(|i| running[i].status.is_none(), Instant::now())
        {
            let index = silence.index;
            warn!(
                "p{index} (pid {}{}) answered no heartbeat probe for {:.1} s (--probe-timeout \
                 {:?}): it is frozen or cut off from this host; stopping it with SIGKILL and the \
                 others, then restarting the job",
                running[index].pid,
                hosts.map_or(String::new(), |h| format!(", {}", h[index])),
                silence.silent.as_secs_f64(),
                probe.timeout()
            );
            failed = Some(index);
            silent = Some(silence.silent);
            stop_all(&mut running, config.grace, |i| i == index);
        }
        if running.iter().all(|r| r.status.is_some()) {
            break;
        }
        std::thread::sleep(POLL);
    }

    // Let the copiers print what the processes wrote last (each sends once, when its pipe
    // closes), so the failure report and the log end with the real last lines.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while drained_rx
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_ok()
    {}

    if let Some(index) = failed {
        let r = &running[index];
        return Ok(AttemptEnd::Failed(Failure {
            index,
            pid: r.pid,
            address: hosts.map(|h| h[index].to_string()),
            status: r.status.expect("reaped"),
            silent,
            last_lines: r.tails.lock().expect("tails lock").last_lines(),
        }));
    }
    // Without a recorded failure, a non-zero status can only come from an interrupt; a job
    // that finished with every process at 0 despite one is done.
    if running
        .iter()
        .all(|r| r.status.is_some_and(|s| s.success()))
    {
        Ok(AttemptEnd::Done)
    } else {
        Ok(AttemptEnd::Interrupted)
    }
}

/// Stops every unreaped process: SIGKILL for those `kill_now` names, SIGTERM for the others
/// and SIGKILL after `grace`; returns once all are reaped.
fn stop_all(running: &mut [Running], grace: Duration, kill_now: impl Fn(usize) -> bool) {
    for r in running.iter() {
        if kill_now(r.index) {
            r.signal(Signal::SIGKILL);
        } else {
            r.signal(Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        for r in running.iter_mut() {
            if let Err(e) = r.reap() {
                warn!("{e}");
            }
        }
        if running.iter().all(|r| r.status.is_some()) {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    for r in running.iter_mut().filter(|r| r.status.is_none()) {
        warn!(
            "p{} (pid {}) still running {grace:?} after SIGTERM: sending SIGKILL",
            r.index, r.pid
        );
        r.signal(Signal::SIGKILL);
        match r.child.wait() {
            Ok(status) => {
                r.status = Some(status);
                if let Some(path) = &r.pid_file {
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(e) => warn!("cannot wait for p{}: {e}", r.index),
        }
    }
}

/// Starts process `index` in its own process group with piped output, its copiers and its
/// pid file.
fn spawn(
    config: &Config,
    index: usize,
    command: &LaunchCommand,
    drained: &mpsc::Sender<()>,
) -> Result<Running, RunError> {
    let mut cmd = command.to_command();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        index,
        program: command.program.to_string_lossy().into_owned(),
        source,
    })?;
    let pid = child.id();
    let tails = Arc::new(Mutex::new(Tails::default()));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    copy_lines(
        index,
        stdout,
        Stream::Stdout,
        Arc::clone(&tails),
        drained.clone(),
    );
    copy_lines(
        index,
        stderr,
        Stream::Stderr,
        Arc::clone(&tails),
        drained.clone(),
    );
    let mut running = Running {
        index,
        child,
        pid,
        status: None,
        tails,
        pid_file: None,
    };
    if let Some(dir) = &config.pid_dir {
        let path = dir.join(format!("p{index}.pid"));
        let tmp = dir.join(format!(".p{index}.pid.tmp"));
        let written =
            std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(source) = written {
            stop_all(std::slice::from_mut(&mut running), Duration::ZERO, |_| {
                false
            });
            return Err(RunError::PidFile { path, source });
        }
        running.pid_file = Some(path);
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn failure(raw: i32, lines: &[&str]) -> Failure {
        Failure {
            index: 1,
            pid: 42,
            address: Some("127.0.0.1:4000".into()),
            status: ExitStatus::from_raw(raw),
            silent: None,
            last_lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn failures_name_the_process_its_status_and_its_last_lines() {
        let killed = failure(9, &["started", "reading"]);
        assert_eq!(killed.exit_code(), 137);
        assert_eq!(
            killed.to_string(),
            "process p1 (pid 42, 127.0.0.1:4000) was killed by signal 9 (SIGKILL)"
        );
        let outcome = Outcome::Failed {
            failure: failure(3 << 8, &["error: delivery"]),
            restarts: 3,
            max_restarts: 3,
        };
        assert_eq!(outcome.exit_code(), 3);
        assert_eq!(
            outcome.to_string(),
            "process p1 (pid 42, 127.0.0.1:4000) exited with status 3; gave up after 3 \
             restart(s) (--max-restarts 3); its last 1 line(s):\n  [p1] error: delivery"
        );
        let usage = Outcome::Failed {
            failure: failure(2 << 8, &[]),
            restarts: 0,
            max_restarts: 3,
        };
        assert_eq!(usage.exit_code(), 2);
        assert!(usage.to_string().contains("not restarting: exit status 2"));
        assert!(usage.to_string().ends_with("it printed nothing"));
    }

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(Outcome::Success { restarts: 2 }.exit_code(), 0);
        assert_eq!(Outcome::Interrupted.exit_code(), 130);
    }
}
