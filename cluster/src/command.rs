//! The command line of each process: the dataflow binary with timely's `-n/-p/-w/-h` first and
//! the pass-through flags after, run directly or wrapped in `ssh HOST -- 'cmd'`; shell quoting
//! for `--print` and for ssh's remote shell; and the check that the pass-through flags leave
//! timely's own flags to us.

use std::ffi::OsString;
use std::path::Path;

use retail_common::kafka::redact;

/// A program and its arguments, ready for `std::process::Command` or for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchCommand {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl LaunchCommand {
    /// The command as one line a POSIX shell runs as is.
    pub fn to_shell_line(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| quote(&w.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// [`to_shell_line`](Self::to_shell_line) with the values of secret client settings
    /// (`-X sasl.password=...`, `--dataflow-flag -Xkey=value`) replaced: for printing.
    pub fn to_display_line(&self) -> String {
        let mut after_x = false;
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| {
                let word = w.to_string_lossy();
                let shown = if after_x {
                    redact_setting(&word)
                } else if let Some(setting) = word.strip_prefix("-X").filter(|s| !s.is_empty()) {
                    format!("-X{}", redact_setting(setting))
                } else {
                    word.into_owned()
                };
                after_x = w == "-X";
                quote(&shown)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn to_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.program);
        command.args(&self.args);
        command
    }
}

/// The shape of the job every process gets, so that `-n` and `-w` are the same everywhere.
#[derive(Clone, Debug)]
pub struct JobShape<'a> {
    pub dataflow_bin: &'a Path,
    pub processes: usize,
    pub workers: usize,
    /// `None` for a single process, which needs no hostfile.
    pub hostfile: Option<&'a Path>,
    /// The user's dataflow flags, passed through untouched after timely's.
    pub dataflow_args: &'a [OsString],
    /// `--http`: process i serves on the base port + i.
    pub http: Option<&'a HttpBase>,
}

/// The dataflow command of process `index`.
pub fn dataflow_command(shape: &JobShape<'_>, index: usize) -> LaunchCommand {
    let mut args: Vec<OsString> = vec![
        "-n".into(),
        shape.processes.to_string().into(),
        "-p".into(),
        index.to_string().into(),
        "-w".into(),
        shape.workers.to_string().into(),
    ];
    if let Some(hostfile) = shape.hostfile {
        args.push("-h".into());
        args.push(hostfile.into());
    }
    if let Some(http) = shape.http {
        args.push("--http".into());
        args.push(http.of(index).into());
    }
    args.extend(shape.dataflow_args.iter().cloned());
    LaunchCommand {
        program: shape.dataflow_bin.into(),
        args,
    }
}

/// `inner` run on `host` over ssh: `ssh -tt -o BatchMode=yes HOST -- 'quoted command'`.
///
/// `-tt` gives the remote command a terminal, so that when we stop the local ssh client (or it
/// loses the connection) the remote side gets SIGHUP and the remote process ends with it
/// instead of living on as an orphan holding its port. BatchMode makes a missing key fail fast
/// instead of prompting for a password nobody can type. The remote shell parses the command,
/// hence one quoted string after `--`.
pub fn ssh_command(ssh_bin: &Path, host: &str, inner: &LaunchCommand) -> LaunchCommand {
    LaunchCommand {
        program: ssh_bin.into(),
        args: vec![
            "-tt".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            host.into(),
            "--".into(),
            inner.to_shell_line().into(),
        ],
    }
}

/// `--http HOST:PORT`: the address of process 0; process i listens on PORT+i.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpBase {
    pub host: String,
    pub port: u16,
}

impl HttpBase {
    /// The address process `index` serves on.
    pub fn of(&self, index: usize) -> String {
        format!("{}:{}", self.host, usize::from(self.port) + index)
    }
}

/// A `key=value` client setting as it may be shown: the value replaced when the key names a
/// secret ([`retail_common::kafka::is_secret`]).
pub fn redact_setting(setting: &str) -> String {
    match setting.split_once('=') {
        Some((key, value)) => format!("{key}={}", redact(key, value)),
        None => setting.to_owned(),
    }
}

/// Quotes one word for a POSIX shell: as is when it only has characters no shell treats
/// specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-+=./:,@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Timely's flags that `cluster` sets itself; the dataflow binary's short flags that take a
/// value (so that `-bHOST` is not read as `-b -H -O -S -T`).
const TIMELY_SHORT: &[char] = &['n', 'p', 'w', 'h'];
const TIMELY_LONG: &[&str] = &["processes", "process", "workers", "threads", "hostfile"];
const VALUE_SHORT: &[char] = &['b', 'X', 'F', 't', 'o'];

/// The first pass-through argument that would set timely's `-n/-p/-w/-h`, in any spelling
/// (`-w 2`, `-w2`, `-rw2`, `--workers=2`, `--threads`, ...).
pub fn find_timely_flag(args: &[OsString]) -> Option<String> {
    for arg in args {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let name = long.split_once('=').map_or(long, |(n, _)| n);
            if TIMELY_LONG.contains(&name) {
                return Some(arg.into_owned());
            }
        } else if let Some(shorts) = arg.strip_prefix('-') {
            for c in shorts.chars() {
                if TIMELY_SHORT.contains(&c) {
                    return Some(arg.into_owned());
                }
                if VALUE_SHORT.contains(&c) {
                    break;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn secrets_are_redacted_for_display_only() {
        let command = LaunchCommand {
            program: "dataflow".into(),
            args: os(&[
                "-X",
                "sasl.password=hunter2",
                "-Xssl.key.password=k3y",
                "-X",
                "sasl.username=alice",
                "--topic",
                "t",
            ]),
        };
        let shown = command.to_display_line();
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("sasl.password=[redacted]"), "{shown}");
        assert!(shown.contains("sasl.username=alice"), "{shown}");
        // What runs keeps the real value.
        assert!(command.to_shell_line().contains("hunter2"));
        assert_eq!(
            redact_setting("SASL.JAAS.CONFIG=x y"),
            "SASL.JAAS.CONFIG=[redacted]"
        );
        assert_eq!(redact_setting("linger.ms=5"), "linger.ms=5");
    }

    #[test]
    fn quoting_leaves_plain_words_and_single_quotes_the_rest() {
        assert_eq!(quote("--topic"), "--topic");
        assert_eq!(quote("/opt/bin/dataflow"), "/opt/bin/dataflow");
        assert_eq!(quote("localhost:9092,b:9092"), "localhost:9092,b:9092");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("out dir"), "'out dir'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a;rm -rf /"), "'a;rm -rf /'");
    }

    /// The words a real POSIX shell makes of `line`.
    fn shell_words(line: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\0' {line}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{line}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_terminator('\0').map(str::to_owned).collect()
    }

    #[test]
    fn quoted_lines_survive_a_real_shell() {
        let words = [
            "prog", "%s|", "a b", "it's", "$HOME", "*", "", "x\"y", "`id`",
        ];
        let line = LaunchCommand {
            program: words[0].into(),
            args: os(&words[1..]),
        }
        .to_shell_line();
        assert_eq!(shell_words(&line), words);
    }

    #[test]
    fn timely_flags_come_first_then_the_pass_through_flags() {
        let extra = os(&["--topic", "sales", "--until-end", "-o", "out dir"]);
        let shape = JobShape {
            dataflow_bin: Path::new("/opt/rs/dataflow"),
            processes: 3,
            workers: 2,
            hostfile: Some(Path::new("/etc/rs/hosts")),
            dataflow_args: &extra,
            http: None,
        };
        let lines: Vec<String> = (0..3)
            .map(|i| dataflow_command(&shape, i).to_shell_line())
            .collect();
        assert_eq!(
            lines,
            [
                "/opt/rs/dataflow -n 3 -p 0 -w 2 -h /etc/rs/hosts --topic sales --until-end -o 'out dir'",
                "/opt/rs/dataflow -n 3 -p 1 -w 2 -h /etc/rs/hosts --topic sales --until-end -o 'out dir'",
                "/opt/rs/dataflow -n 3 -p 2 -w 2 -h /etc/rs/hosts --topic sales --until-end -o 'out dir'",
            ]
        );
    }

    #[test]
    fn each_process_gets_its_own_http_port() {
        let http = HttpBase {
            host: "0.0.0.0".into(),
            port: 9300,
        };
        let shape = JobShape {
            dataflow_bin: Path::new("dataflow"),
            processes: 2,
            workers: 1,
            hostfile: Some(Path::new("hosts")),
            dataflow_args: &[],
            http: Some(&http),
        };
        assert_eq!(
            dataflow_command(&shape, 1).to_shell_line(),
            "dataflow -n 2 -p 1 -w 1 -h hosts --http 0.0.0.0:9301"
        );
    }

    #[test]
    fn a_single_process_gets_no_hostfile() {
        let shape = JobShape {
            dataflow_bin: Path::new("dataflow"),
            processes: 1,
            workers: 4,
            hostfile: None,
            dataflow_args: &[],
            http: None,
        };
        assert_eq!(
            dataflow_command(&shape, 0).to_shell_line(),
            "dataflow -n 1 -p 0 -w 4"
        );
    }

    #[test]
    fn ssh_wraps_the_quoted_command_after_the_host() {
        let extra = os(&["-o", "/data/out dir", "-X", "client.id=it's"]);
        let shape = JobShape {
            dataflow_bin: Path::new("/opt/rs/dataflow"),
            processes: 2,
            workers: 1,
            hostfile: Some(Path::new("/etc/rs/hosts")),
            dataflow_args: &extra,
            http: None,
        };
        let ssh = ssh_command(Path::new("ssh"), "node-b", &dataflow_command(&shape, 1));
        assert_eq!(ssh.program, "ssh");
        assert_eq!(
            ssh.args,
            os(&[
                "-tt",
                "-o",
                "BatchMode=yes",
                "node-b",
                "--",
                r"/opt/rs/dataflow -n 2 -p 1 -w 1 -h /etc/rs/hosts -o '/data/out dir' -X 'client.id=it'\''s'",
            ])
        );
        // Printed, the remote command is quoted once more for the local shell: the local shell
        // gives ssh the same words, and the remote shell gives dataflow the original ones.
        let local = shell_words(&ssh.to_shell_line());
        assert_eq!(
            local[1..],
            ssh.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            shell_words(&local[6])[7..],
            [
                "-h",
                "/etc/rs/hosts",
                "-o",
                "/data/out dir",
                "-X",
                "client.id=it's"
            ]
        );
    }

    #[test]
    fn timely_flags_in_any_spelling_are_found() {
        for bad in [
            &["-w", "2"][..],
            &["-w2"],
            &["-n", "3"],
            &["-p", "1"],
            &["-h", "hosts"],
            &["--until-end", "-rw2"],
            &["--workers", "2"],
            &["--workers=2"],
            &["--threads", "2"],
            &["--processes=2"],
            &["--process", "1"],
            &["--hostfile", "h"],
        ] {
            assert!(find_timely_flag(&os(bad)).is_some(), "{bad:?}");
        }
        assert_eq!(
            find_timely_flag(&os(&["--topic", "t", "--workers=2"])).as_deref(),
            Some("--workers=2")
        );
    }

    #[test]
    fn dataflow_flags_with_the_same_letters_pass() {
        for ok in [
            &["--topic", "t", "--until-end", "--epoch", "1h"][..],
            &["-bhost:9092"],
            &["-tnew-topic"],
            &["-o", "out/cluster", "--sinks", "jsonl"],
            &["-Xsocket.timeout.ms=1000"],
            &["-r", "-z"],
            &["--progress-interval", "2s", "--help"],
            &["--", "-w"],
        ] {
            assert_eq!(find_timely_flag(&os(ok)), None, "{ok:?}");
        }
    }
}
