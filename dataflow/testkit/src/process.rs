//! Running the binaries: for an expected exit status, within a time limit, in the background.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes a process printed, as text (lossily).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails the test, showing the command and its output, unless it exited with `code`.
fn assert_exit(command: &Command, output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{command:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// The longest a test's command may run: one that hangs fails its test with its output
/// (and is killed with every process it started) instead of holding the suite for ever.
pub const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Runs the command to completion (at most [`RUN_LIMIT`]) and returns its output; it must
/// exit with `expect_code`.
pub fn run(command: &mut Command, expect_code: i32) -> Output {
    let (output, _) = run_timeout(command, RUN_LIMIT);
    assert_exit(command, &output, expect_code);
    output
}

/// [`run`] for a command that must succeed.
pub fn run_ok(command: &mut Command) -> Output {
    run(command, 0)
}

/// Runs `command --help`, which must exit 0 and print UTF-8 text that mentions each of
/// `needles` (flags, environment variables, exit codes).
pub fn assert_help_mentions(command: &mut Command, needles: &[&str]) {
    let out = run(command.arg("--help"), 0);
    let help = String::from_utf8(out.stdout).expect("--help prints UTF-8");
    for needle in needles {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

/// Reads a pipe as it fills (on a thread), so that a killed run still shows what it printed.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buffer, reader)
}

/// Runs a command with piped output, killing it (and every process it started: it runs in
/// its own process group) when it has not exited within `timeout`, which fails the test.
/// Returns its output and how long it ran.
pub fn run_timeout(command: &mut Command, timeout: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"));
    let (stdout, out_reader) = collect(child.stdout.take().unwrap());
    let (stderr, err_reader) = collect(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            // The whole group: a cluster's dataflow processes too.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "{command:?} did not exit within {timeout:?}; killed it\nstdout:\n{}\nstderr:\n{}",
                text(&stdout.lock().unwrap()),
                text(&stderr.lock().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let elapsed = started.elapsed();
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    let output = Output {
        status,
        stdout: std::mem::take(&mut stdout.lock().unwrap()),
        stderr: std::mem::take(&mut stderr.lock().unwrap()),
    };
    (output, elapsed)
}

/// [`run_timeout`] for a command that must succeed.
pub fn run_ok_within(command: &mut Command, timeout: Duration) -> Output {
    let (output, _) = run_timeout(command, timeout);
    assert_exit(command, &output, 0);
    output
}

/// Waits up to `timeout` for a child started in the background to exit; when it has not, it
/// is killed and `None` returned (the caller fails the test, saying what it waited for).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for a child whose stderr goes to the file `log` to exit with `code`;
/// returns the log. The test fails, showing the log, when it exits otherwise or not at all.
pub fn wait_for_exit(child: &mut Child, code: i32, timeout: Duration, log: &Path) -> String {
    let status = wait_exit(child, timeout);
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "pid {} did not exit within {timeout:?}; killed it. {}:\n{logged}",
            child.id(),
            log.display()
        )
    });
    assert_eq!(status.code(), Some(code), "{}:\n{logged}", log.display());
    logged
}

/// Starts a command in the background with its stdout and stderr piped.
pub fn spawn_piped(command: &mut Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} does not start: {e}"))
}

/// Sends `signal` (`-INT`, `-STOP`, `-KILL`, ...) to process `pid`, which must still be
/// there to receive it.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}: it was already gone");
}

/// Sends SIGINT (Ctrl-C) to a child, which must still be there to receive it.
pub fn interrupt(child: &Child) {
    signal(child.id(), "-INT");
}

/// Ctrl-C for a child of [`spawn_piped`]: [`interrupt`]s it and waits for its output; it must
/// exit 130, as an interrupted program does.
pub fn interrupt_and_wait(child: Child) -> Output {
    interrupt(&child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", text(&output.stderr));
    output
}

/// An executable shell script `name` in `dir`, with `body` after the `#!/bin/sh` line.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
