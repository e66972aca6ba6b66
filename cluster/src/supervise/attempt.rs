//! One attempt of the job: spawn every process (each in its own process group, its output
//! copied with its `[p<i>]` prefix), watch them and the probes, forward interrupts, and when
//! one dies while others run, stop them all (SIGTERM, then SIGKILL after the grace period).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use super::{DRAIN_TIMEOUT, Failure, POLL, RunError, Shutdown, describe};
use crate::cli::Config;
use crate::command::LaunchCommand;
use crate::hostfile::HostPort;
use crate::output::{Stream, Tails, copy_lines};
use crate::probe::Probe;

pub(super) enum AttemptEnd {
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
pub(super) fn run_attempt(
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
