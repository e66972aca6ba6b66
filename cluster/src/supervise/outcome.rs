//! What a supervised run ends with: its [`Outcome`], the [`Failure`] that ended an attempt
//! (which process, how it died, its last lines), and what cluster itself failed to do
//! ([`RunError`]).

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use retail_common::exit;

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

    pub(super) fn is_usage_error(&self) -> bool {
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
