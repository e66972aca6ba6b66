//! The command line, in two stages: [`Args`] mirrors the flags (each with an environment
//! fallback), and [`Args::into_config`] turns them once into a validated [`Config`], rejecting
//! bad values and combinations with a clear message before any process starts.

// The flags' doc comments are the `--help` text: `<index>` and the like are not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use humantime::parse_duration;

use crate::backoff::Backoff;
pub use crate::command::HttpBase;
use crate::command::{find_timely_flag, redact_setting};
use crate::hostfile::{self, HostPort, HostfileError};

const AFTER_HELP: &str = "\
Everything after `--` goes to every dataflow process unchanged, except timely's -n/-p/-w/-h,
which cluster sets itself (same -n and -w everywhere, -p 0..n-1, -h the hostfile).

Exit status: 0 every process exited 0; 130 interrupted (Ctrl-C, SIGTERM or SIGHUP, forwarded to
every process as SIGINT, which stops it as Ctrl-C does); 2 bad usage (here or in a
dataflow process, which is never restarted); 1 cluster itself failed (e.g. cannot start a
process); otherwise the exit status of the process that failed last, or 128+N if a signal N
killed it.

Supervision: when a process exits non-zero or is killed while others run, cluster stops the
others (SIGTERM, SIGKILL after --grace), waits --backoff (doubling per restart, at most
--backoff-max) and starts the whole job again, at most --max-restarts times. A restart resumes
from the job's last checkpoint: every process reads on from the committed positions and state,
and nothing committed is written twice, so a bounded --until-end run ends with the same results
as an uninterrupted one (with --no-checkpoint, a restart runs the job again from the start).

Examples:
  cluster -n 2 -w 1 -- --topic retail-transactions --until-end -o out/cluster
  cluster -n 3 --hostfile hosts.txt -- --until-end      # hosts all 127.0.0.x: all run here
  cluster --hostfile hosts.txt --print -- -b kafka:9092  # one command per host, to run by hand
  cluster --hostfile hosts.txt --ssh -- -b kafka:9092    # start them over ssh";

/// Starts a timely `dataflow` job as several processes, prefixes their output with
/// `[p<index>]`, forwards Ctrl-C, and restarts the whole job when one process dies.
///
/// Without --hostfile all processes run on this machine, on free loopback ports written to a
/// temporary hostfile. With --hostfile, line i is process i's host:port: when every host is a
/// loopback address (localhost, 127.0.0.x, ::1) the processes run here; otherwise use --print
/// or --ssh.
#[derive(Debug, Parser)]
#[command(name = "cluster", version, after_help = AFTER_HELP, args_override_self = true)]
pub struct Args {
    /// Number of dataflow processes (timely -n) [default: the hostfile's line count, else 1]
    #[arg(short = 'n', long, env = "CLUSTER_PROCESSES", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub processes: Option<u32>,

    /// Worker threads per process (timely -w); the job has processes x workers workers
    #[arg(short = 'w', long, env = "CLUSTER_WORKERS", value_name = "W", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,

    /// Timely hostfile: line i is process i's host:port (at least N lines, used verbatim). The
    /// same path must hold the same file on every host
    #[arg(long, env = "CLUSTER_HOSTFILE", value_name = "FILE")]
    pub hostfile: Option<PathBuf>,

    /// The dataflow binary [default: `dataflow` next to the cluster executable]. With --print
    /// or --ssh, its path on the other hosts
    #[arg(long, env = "DATAFLOW_BIN", value_name = "PATH")]
    pub dataflow_bin: Option<PathBuf>,

    /// Whole-job restarts after a process fails before giving up (0: never restart)
    #[arg(
        long,
        env = "CLUSTER_MAX_RESTARTS",
        value_name = "N",
        default_value_t = 3
    )]
    pub max_restarts: u32,

    /// Wait before the first restart; doubled for each further one (e.g. 500ms, 1s, 2m)
    #[arg(long, env = "CLUSTER_BACKOFF", value_name = "DURATION", default_value = "1s",
          value_parser = parse_duration)]
    pub backoff: Duration,

    /// Longest wait between restarts
    #[arg(long, env = "CLUSTER_BACKOFF_MAX", value_name = "DURATION", default_value = "30s",
          value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// How long a process may take to exit after SIGTERM (when stopping the others of a failed
    /// job) or after SIGINT (when interrupted) before it gets SIGKILL
    #[arg(long, env = "CLUSTER_GRACE", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub grace: Duration,

    /// With more than one process: a process that answered the launcher's heartbeat probes
    /// once and then none for this long (frozen, or its host cut off) is stopped with SIGKILL
    /// and the whole job restarted, exit status 75 if no restart is left (0: never)
    #[arg(long, env = "CLUSTER_PROBE_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub probe_timeout: Duration,

    /// Print the command to run on each host (line i for process i, shell-quoted) and exit
    /// without starting anything. Needs --hostfile
    #[arg(long, conflicts_with = "ssh")]
    pub print: bool,

    /// Start every process over ssh (`ssh -tt -o BatchMode=yes HOST -- 'command'`), supervised
    /// like local ones. Needs --hostfile; the dataflow binary, the hostfile and any relative
    /// paths in the dataflow flags must be valid on every host
    #[arg(long)]
    pub ssh: bool,

    /// The ssh client for --ssh
    #[arg(
        long,
        env = "CLUSTER_SSH_BIN",
        value_name = "PATH",
        default_value = "ssh"
    )]
    pub ssh_bin: PathBuf,

    /// Write each running process's pid to DIR/p<index>.pid (rewritten on every restart,
    /// removed when the process has exited), for tools that watch or signal one process
    #[arg(long, env = "CLUSTER_PID_DIR", value_name = "DIR")]
    pub pid_dir: Option<PathBuf>,

    /// Kafka client properties file for every dataflow process (kcat's -F: key=value lines,
    /// e.g. security.protocol, sasl.*, ssl.*); repeatable. Passed on as an absolute path, so
    /// with --print or --ssh the same path must hold the file on every host. Keeps passwords
    /// off the command line, where --print and `ps` would show them
    #[arg(short = 'F', long = "client-config", value_name = "FILE")]
    pub client_config: Vec<PathBuf>,

    /// A librdkafka setting for every dataflow process (repeatable; wins over -F). Values of
    /// secret settings (*password*, *secret*, sasl.jaas.config) are redacted in --print output
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub client_settings: Vec<String>,

    /// Serve each process's --http on HOST:PORT+i (process i): process 0 the live page, the
    /// API and its /metrics, the others their own /metrics. The addresses are printed at start.
    /// With a hostfile of several hosts, HOST is where each process listens on its own machine
    /// (for example 0.0.0.0)
    #[arg(long, env = "CLUSTER_HTTP", value_name = "HOST:PORT", value_parser = parse_http)]
    pub http: Option<HttpBase>,

    /// Flags for every dataflow process (after `--`), e.g. --topic T --until-end -o out
    #[arg(last = true, value_name = "DATAFLOW FLAGS")]
    pub dataflow_args: Vec<OsString>,
}

/// How the processes are started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every process on this machine.
    Local,
    /// Every process through `ssh HOST`.
    Ssh,
    /// Print the commands only.
    Print,
}

/// Where the processes listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hosts {
    /// One process: no hostfile, no ports.
    Single,
    /// Local processes on 127.0.0.1 with free ports picked afresh for every (re)start.
    PickLocal,
    /// The user's hostfile (absolute path) and its first N lines.
    File { path: PathBuf, hosts: Vec<HostPort> },
}

/// The validated configuration the launcher runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub processes: usize,
    pub workers: usize,
    pub hosts: Hosts,
    /// Absolute, so that it means the same for a remote shell.
    pub dataflow_bin: PathBuf,
    /// Passed to every process after timely's flags.
    pub dataflow_args: Vec<OsString>,
    pub max_restarts: u32,
    pub backoff: Backoff,
    pub grace: Duration,
    /// `--probe-timeout`, unless 0.
    pub probe_timeout: Option<Duration>,
    pub ssh_bin: PathBuf,
    pub pid_dir: Option<PathBuf>,
    /// `--http`: process i serves on the base port + i.
    pub http: Option<HttpBase>,
}

fn parse_http(text: &str) -> Result<HttpBase, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, for example 127.0.0.1:8080; got {text:?}"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535"))?;
    Ok(HttpBase {
        host: host.to_owned(),
        port,
    })
}

/// A command line that cannot run (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Hostfile(#[from] HostfileError),
    #[error(
        "--{0} needs --hostfile (the commands name it, and it says which host runs which process)"
    )]
    NeedsHostfile(&'static str),
    #[error(
        "hostfile {path}, line {line}: {host} is not this machine; use --print to get the command for each host, or --ssh to start them over ssh (without either, every host must be a loopback address)"
    )]
    RemoteHost {
        path: PathBuf,
        line: usize,
        host: String,
    },
    #[error(
        "the dataflow flags must not set {0:?}: cluster sets timely's -n/-p/-w/-h itself (use --processes, --workers and --hostfile)"
    )]
    TimelyFlag(String),
    #[error(
        "dataflow binary {path}: {reason} (build it with `cargo build --release -p dataflow`, or point --dataflow-bin / DATAFLOW_BIN at it)"
    )]
    DataflowBin { path: PathBuf, reason: String },
    #[error(
        "cannot tell where the cluster executable is, to find dataflow next to it ({0}); pass --dataflow-bin"
    )]
    CurrentExe(std::io::Error),
    #[error("--backoff-max ({max:?}) is shorter than --backoff ({initial:?})")]
    Backoff { initial: Duration, max: Duration },
    #[error("-F {0}: no such client properties file")]
    ClientConfig(PathBuf),
    #[error(
        "--http {0}: with one port per process the last one would be past 65535; pick a lower port"
    )]
    HttpPorts(String),
    #[error(
        "the dataflow flags must not set --http: every process would bind the same port; use cluster --http HOST:PORT (process i gets PORT+i)"
    )]
    HttpFlag,
    #[error("-X expects key=value, got {0:?}")]
    ClientSetting(String),
    #[error("cannot make {path} absolute: {source}")]
    Absolute {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Args {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if let Some(flag) = find_timely_flag(&self.dataflow_args) {
            return Err(ConfigError::TimelyFlag(flag));
        }
        let sets_http = self.dataflow_args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == "--http" || a.starts_with("--http=")
        });
        if sets_http {
            return Err(ConfigError::HttpFlag);
        }
        if self.backoff_max < self.backoff {
            return Err(ConfigError::Backoff {
                initial: self.backoff,
                max: self.backoff_max,
            });
        }
        let mode = match (self.print, self.ssh) {
            (true, _) => Mode::Print,
            (_, true) => Mode::Ssh,
            _ => Mode::Local,
        };
        let wanted = self.processes.map(|n| n as usize);
        let (processes, hosts) = match &self.hostfile {
            Some(path) => {
                let path = absolute(path)?;
                let hosts = hostfile::read(&path, wanted)?;
                if mode == Mode::Local
                    && let Some(i) = hosts.iter().position(|h| !h.is_loopback())
                {
                    return Err(ConfigError::RemoteHost {
                        path,
                        line: i + 1,
                        host: hosts[i].host.clone(),
                    });
                }
                (hosts.len(), Hosts::File { path, hosts })
            }
            None if mode == Mode::Print => return Err(ConfigError::NeedsHostfile("print")),
            None if mode == Mode::Ssh => return Err(ConfigError::NeedsHostfile("ssh")),
            None => match wanted.unwrap_or(1) {
                1 => (1, Hosts::Single),
                n => (n, Hosts::PickLocal),
            },
        };
        let dataflow_bin = match self.dataflow_bin {
            Some(path) => absolute(&path)?,
            None => std::env::current_exe()
                .map_err(ConfigError::CurrentExe)?
                .with_file_name("dataflow"),
        };
        if mode == Mode::Local {
            check_executable(&dataflow_bin)?;
        }
        // Client settings go first, so that the same flags after `--` still win.
        let mut dataflow_args = Vec::new();
        for file in &self.client_config {
            let file = absolute(file)?;
            if mode == Mode::Local && !file.is_file() {
                return Err(ConfigError::ClientConfig(file));
            }
            dataflow_args.extend(["-F".into(), file.into_os_string()]);
        }
        for setting in self.client_settings {
            if !setting.contains('=') {
                return Err(ConfigError::ClientSetting(redact_setting(&setting)));
            }
            dataflow_args.extend(["-X".into(), setting.into()]);
        }
        dataflow_args.extend(self.dataflow_args);
        if let Some(http) = &self.http
            && usize::from(http.port) + processes - 1 > usize::from(u16::MAX)
        {
            return Err(ConfigError::HttpPorts(http.of(0)));
        }
        Ok(Config {
            mode,
            processes,
            workers: self.workers as usize,
            hosts,
            dataflow_bin,
            dataflow_args,
            max_restarts: self.max_restarts,
            backoff: Backoff {
                initial: self.backoff,
                max: self.backoff_max,
            },
            grace: self.grace,
            probe_timeout: (!self.probe_timeout.is_zero()).then_some(self.probe_timeout),
            ssh_bin: self.ssh_bin,
            pid_dir: self.pid_dir,
            http: self.http,
        })
    }
}

fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path).map_err(|source| ConfigError::Absolute {
        path: path.to_owned(),
        source,
    })
}

/// A regular file with an execute bit, so a typo fails here rather than in N spawns.
fn check_executable(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |reason: String| ConfigError::DataflowBin {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a file".into()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(fail("not executable".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("cluster").chain(extra.iter().copied())).unwrap()
    }

    /// An executable stand-in for the dataflow binary.
    fn fake_bin(dir: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("dataflow");
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_str().unwrap().to_owned()
    }

    fn hostfile(dir: &Path, text: &str) -> String {
        let path = dir.join("hosts");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn a_local_run_picks_ports_and_passes_the_flags_through() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(dir.path());
        let c = args(&[
            "-n",
            "3",
            "-w",
            "2",
            "--dataflow-bin",
            &bin,
            "--",
            "--until-end",
        ])
        .into_config()
        .unwrap();
        assert_eq!((c.mode, c.processes, c.workers), (Mode::Local, 3, 2));
        assert_eq!(c.hosts, Hosts::PickLocal);
        assert_eq!(c.dataflow_args, ["--until-end"]);
        let one = args(&["--dataflow-bin", &bin]).into_config().unwrap();
        assert_eq!((one.processes, one.hosts), (1, Hosts::Single));
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one() {
        // scripts/cluster puts its defaults first and the user's flags after them.
        let a = args(&[
            "--processes",
            "2",
            "--workers",
            "1",
            "--processes",
            "3",
            "-w",
            "2",
        ]);
        assert_eq!((a.processes, a.workers), (Some(3), 2));
    }

    #[test]
    fn the_hostfile_sets_the_default_process_count() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(dir.path());
        let hosts = hostfile(
            dir.path(),
            "127.0.0.2:4001\n127.0.0.3:4002\nlocalhost:4003\n",
        );
        let c = args(&["--hostfile", &hosts, "--dataflow-bin", &bin])
            .into_config()
            .unwrap();
        assert_eq!(c.processes, 3);
        let c = args(&["-n", "2", "--hostfile", &hosts, "--dataflow-bin", &bin])
            .into_config()
            .unwrap();
        assert_eq!(c.processes, 2);
        assert!(matches!(c.hosts, Hosts::File { ref hosts, .. } if hosts.len() == 2));
    }

    #[test]
    fn remote_hosts_need_print_or_ssh_and_those_need_no_local_binary() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = hostfile(dir.path(), "127.0.0.1:4001\nnode-b:4001\n");
        let bin = fake_bin(dir.path());
        let e = args(&["--hostfile", &hosts, "--dataflow-bin", &bin])
            .into_config()
            .unwrap_err();
        assert!(matches!(e, ConfigError::RemoteHost { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("node-b"));
        for mode in ["--print", "--ssh"] {
            let c = args(&[
                mode,
                "--hostfile",
                &hosts,
                "--dataflow-bin",
                "/opt/rs/dataflow",
            ])
            .into_config()
            .unwrap();
            assert_eq!(c.dataflow_bin, Path::new("/opt/rs/dataflow"));
        }
        let e = args(&["--print"]).into_config().unwrap_err();
        assert!(matches!(e, ConfigError::NeedsHostfile("print")), "{e}");
        assert!(Args::try_parse_from(["cluster", "--print", "--ssh"]).is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_bin(dir.path());
        for bad in [
            &["-n", "0"][..],
            &["-w", "0"],
            &["--backoff", "soon"],
            &["--dataflow-bin"],
        ] {
            assert!(
                Args::try_parse_from(std::iter::once("cluster").chain(bad.iter().copied()))
                    .is_err(),
                "{bad:?}"
            );
        }
        // Pass-through flags need the `--`.
        assert!(Args::try_parse_from(["cluster", "--topic", "t"]).is_err());
        let e = args(&["--dataflow-bin", &bin, "--", "--topic", "t", "-w", "4"])
            .into_config()
            .unwrap_err();
        assert!(
            matches!(e, ConfigError::TimelyFlag(ref f) if f == "-w"),
            "{e}"
        );
        let e = args(&["--dataflow-bin", "/nonexistent/dataflow"])
            .into_config()
            .unwrap_err();
        assert!(matches!(e, ConfigError::DataflowBin { .. }), "{e}");
        let e = args(&["--dataflow-bin", dir.path().to_str().unwrap()])
            .into_config()
            .unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let e = args(&["--dataflow-bin", plain.to_str().unwrap()])
            .into_config()
            .unwrap_err();
        assert!(e.to_string().contains("not executable"), "{e}");
        let e = args(&[
            "--dataflow-bin",
            &bin,
            "--backoff",
            "5s",
            "--backoff-max",
            "1s",
        ])
        .into_config()
        .unwrap_err();
        assert!(matches!(e, ConfigError::Backoff { .. }), "{e}");
        let short = hostfile(dir.path(), "127.0.0.1:1\n");
        let e = args(&["-n", "2", "--hostfile", &short, "--dataflow-bin", &bin])
            .into_config()
            .unwrap_err();
        assert!(
            e.to_string().contains("has 1 line(s) but --processes is 2"),
            "{e}"
        );
        let e = args(&["--hostfile", "/nonexistent/hosts", "--dataflow-bin", &bin])
            .into_config()
            .unwrap_err();
        assert!(e.to_string().contains("cannot read hostfile"), "{e}");
    }

    #[test]
    fn relative_paths_become_absolute() {
        let c = args(&[
            "--print",
            "--hostfile",
            "Cargo.toml",
            "-n",
            "1",
            "--dataflow-bin",
            "bin/df",
        ]);
        // Cargo.toml is not a hostfile: the error names the absolute path.
        let e = c.into_config().unwrap_err();
        assert!(
            e.to_string()
                .contains(&*std::env::current_dir().unwrap().to_string_lossy()),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let hosts = hostfile(dir.path(), "node-a:1\n");
        let c = args(&["--print", "--hostfile", &hosts, "--dataflow-bin", "bin/df"])
            .into_config()
            .unwrap();
        assert!(c.dataflow_bin.is_absolute());
        assert!(c.dataflow_bin.ends_with("bin/df"));
    }
}
