//! The children's output: each line copied to our stdout or stderr with a `[p<i>]` prefix,
//! the last lines of each kept for the report of a failed process, and timely's retries of a
//! connection to a peer that does not listen yet said for what they are.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tracing::warn;

/// Lines of each stream kept per process.
const TAIL_LINES: usize = 10;

/// The last lines a process wrote to each stream. Kept apart because the two pipes are read
/// by two threads, so their interleaving is arbitrary, and because stderr is the log (the
/// dataflow's stdout is its console tables).
#[derive(Default)]
pub(crate) struct Tails {
    stdout: VecDeque<String>,
    stderr: VecDeque<String>,
}

impl Tails {
    /// The log's last lines, or stdout's when the process wrote nothing to stderr.
    pub(crate) fn last_lines(&self) -> Vec<String> {
        let lines = if self.stderr.is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        lines.iter().cloned().collect()
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// Copies `from` line by line to our stdout or stderr as `[p<index>] line`, keeping the last
/// lines in `tails`. Bytes that are not UTF-8 pass through as they are; a `\r` before the
/// newline (ssh -tt) is dropped. Write errors (e.g. our stdout closed) do not stop the copy:
/// the child must never block on a full pipe.
pub(crate) fn copy_lines(
    index: usize,
    from: impl Read + Send + 'static,
    stream: Stream,
    tails: Arc<Mutex<Tails>>,
    drained: mpsc::Sender<()>,
) {
    let prefix = format!("[p{index}] ");
    let spawned = std::thread::Builder::new()
        .name(format!("p{index}-output"))
        .spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::with_capacity(256);
            let mut out = Vec::with_capacity(256);
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                if let Some(waiting) = peer_wait(&line) {
                    line = waiting.into_bytes();
                }
                out.clear();
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(&line);
                out.push(b'\n');
                let _ = match stream {
                    Stream::Stdout => io::stdout().lock().write_all(&out),
                    Stream::Stderr => io::stderr().lock().write_all(&out),
                };
                let mut tails = tails.lock().expect("tails lock");
                let tail = match stream {
                    Stream::Stdout => &mut tails.stdout,
                    Stream::Stderr => &mut tails.stderr,
                };
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&line).into_owned());
            }
            let _ = drained.send(());
        });
    if let Err(e) = spawned {
        warn!("cannot start the output thread of p{index}: {e}");
    }
}

/// Timely prints `worker <i>:\terror connecting to worker <j>: <error>; retrying` each second
/// while process `j` does not listen yet, which is how every multi-process start begins (the
/// processes start one after another): said as the wait for a peer it is.
fn peer_wait(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let rest = line.strip_prefix("worker ")?;
    let (_, rest) = rest.split_once(":\terror connecting to worker ")?;
    let (peer, error) = rest.split_once(": ")?;
    let error = error.strip_suffix("; retrying")?;
    let peer: usize = peer.parse().ok()?;
    Some(if error.starts_with("Connection refused") {
        format!("waiting for process {peer} to start listening; retrying")
    } else {
        format!("waiting for process {peer} ({error}); retrying")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timely_connection_retries_read_as_waiting_for_a_peer() {
        let refused =
            b"worker 1:\terror connecting to worker 0: Connection refused (os error 111); retrying";
        assert_eq!(
            peer_wait(refused).as_deref(),
            Some("waiting for process 0 to start listening; retrying")
        );
        let other =
            b"worker 2:\terror connecting to worker 1: No route to host (os error 113); retrying";
        assert_eq!(
            peer_wait(other).as_deref(),
            Some("waiting for process 1 (No route to host (os error 113)); retrying")
        );
        assert_eq!(peer_wait(b"INFO starting"), None);
        assert_eq!(peer_wait(b"worker 1: something else"), None);
    }
}
