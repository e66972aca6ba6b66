//! Watching the processes the launcher supervises: a process that is alive but frozen, or
//! whose host fell off the network, neither exits nor writes, so its exit status never tells.
//! The launcher therefore probes each process's heartbeat socket (the UDP port of its
//! `host:port`) about once a second; the process's watching thread answers at once with its
//! heartbeat. A process heard once and then silent for the timeout is taken for failed.
//!
//! A process not heard yet is still starting (ssh, loading): its peers' `--peer-wait` covers
//! that. One that said goodbye (its part of a bounded run is over) is no longer watched.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use retail_common::heartbeat::{self, Beat, PROBE, resolve};

/// A process taken for failed by the launcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Silence {
    pub index: usize,
    /// How long since its last answer.
    pub silent: Duration,
}

/// The pure rule: when each process last answered, and which are over.
#[derive(Debug)]
pub struct Answers {
    heard: Vec<Option<Instant>>,
    gone: Vec<bool>,
    timeout: Duration,
}

impl Answers {
    pub fn new(processes: usize, timeout: Duration) -> Answers {
        Answers {
            heard: vec![None; processes],
            gone: vec![false; processes],
            timeout,
        }
    }

    /// Process `index` answered at `now`.
    pub fn hear(&mut self, index: usize, goodbye: bool, now: Instant) {
        if let Some(heard) = self.heard.get_mut(index) {
            *heard = Some(now);
            self.gone[index] |= goodbye;
        }
    }

    /// The first running process silent for the timeout, if any.
    pub fn check(&self, running: impl Fn(usize) -> bool, now: Instant) -> Option<Silence> {
        (0..self.heard.len()).find_map(|index| {
            let last = self.heard[index]?;
            let silent = now.saturating_duration_since(last);
            (running(index) && !self.gone[index] && silent >= self.timeout)
                .then_some(Silence { index, silent })
        })
    }

    /// Whether process `index` was heard once and has not answered for `quiet`: a process
    /// that cannot act on SIGTERM, so stopping it should not wait for a grace period.
    pub fn unresponsive(&self, index: usize, quiet: Duration, now: Instant) -> bool {
        self.heard[index].is_some_and(|t| now.saturating_duration_since(t) >= quiet)
            && !self.gone[index]
    }
}

/// The probing sockets (IPv4 and IPv6: a name may resolve to either) and the answers heard.
pub struct Probe {
    sockets: Vec<UdpSocket>,
    addresses: Vec<String>,
    answers: Answers,
    period: Duration,
    last_sent: Option<Instant>,
}

impl Probe {
    /// Probes the processes at `addresses` (process i at line i: `host:port`).
    pub fn new(addresses: Vec<String>, timeout: Duration) -> std::io::Result<Probe> {
        let mut sockets = Vec::new();
        for local in ["0.0.0.0:0", "[::]:0"] {
            // A host without IPv6 still probes over IPv4.
            if let Ok(socket) = UdpSocket::bind(local) {
                socket.set_nonblocking(true)?;
                sockets.push(socket);
            }
        }
        if sockets.is_empty() {
            return Err(std::io::Error::other("cannot bind a UDP socket to probe"));
        }
        Ok(Probe {
            sockets,
            answers: Answers::new(addresses.len(), timeout),
            addresses,
            period: heartbeat::period(timeout),
            last_sent: None,
        })
    }

    /// Sends the probes when due, takes in the answers, and returns a running process that
    /// has gone silent.
    pub fn poll(&mut self, running: impl Fn(usize) -> bool, now: Instant) -> Option<Silence> {
        if self.last_sent.is_none_or(|t| now - t >= self.period) {
            self.last_sent = Some(now);
            for (index, address) in self.addresses.iter().enumerate() {
                if !running(index) {
                    continue;
                }
                for to in resolve(address) {
                    for socket in &self.sockets {
                        // The wrong family fails; a process not listening yet refuses.
                        let _ = socket.send_to(PROBE, to);
                    }
                }
            }
        }
        let mut buffer = [0u8; 64];
        for socket in &self.sockets {
            while let Ok((n, _)) = socket.recv_from(&mut buffer) {
                if let Some(beat) = Beat::decode(&buffer[..n]) {
                    self.answers.hear(beat.index as usize, beat.goodbye, now);
                }
            }
        }
        self.answers.check(running, now)
    }

    /// See [`Answers::unresponsive`]: silent for three probes.
    pub fn unresponsive(&self, index: usize, now: Instant) -> bool {
        self.answers.unresponsive(index, self.period * 3, now)
    }

    pub fn timeout(&self) -> Duration {
        self.answers.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use retail_common::heartbeat::{UNKNOWN, is_probe};

    #[test]
    fn only_a_process_heard_then_silent_for_the_timeout_has_failed() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut answers = Answers::new(3, s(10));
        // Nobody heard yet: starting, not silent.
        assert_eq!(answers.check(|_| true, t0 + s(60)), None);
        answers.hear(0, false, t0);
        answers.hear(1, false, t0);
        answers.hear(2, true, t0);
        assert_eq!(answers.check(|_| true, t0 + s(9)), None);
        answers.hear(0, false, t0 + s(9));
        assert_eq!(
            answers.check(|_| true, t0 + s(10)),
            Some(Silence {
                index: 1,
                silent: s(10)
            })
        );
        // An exited process is the exit status's business, and a goodbye ends the watch.
        assert_eq!(answers.check(|i| i != 1, t0 + s(12)), None);
        assert!(answers.unresponsive(1, s(3), t0 + s(3)));
        assert!(!answers.unresponsive(0, s(3), t0 + s(10)));
        assert!(!answers.unresponsive(2, s(3), t0 + s(30)));
    }

    #[test]
    fn a_probe_is_answered_by_a_heartbeat_and_silence_is_noticed() {
        let process = UdpSocket::bind("127.0.0.1:0").unwrap();
        process
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let address = process.local_addr().unwrap().to_string();
        let mut probe = Probe::new(vec![address], Duration::from_millis(300)).unwrap();
        let start = Instant::now();
        assert_eq!(probe.poll(|_| true, start), None);
        let mut buffer = [0u8; 64];
        let (n, from) = process.recv_from(&mut buffer).unwrap();
        assert!(is_probe(&buffer[..n]));
        let beat = Beat {
            job: 1,
            index: 0,
            incarnation: 7,
            resumed: UNKNOWN,
            goodbye: false,
        };
        process.send_to(&beat.encode(), from).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let heard = Instant::now();
        assert_eq!(probe.poll(|_| true, heard), None);
        // No further answers: silent from `heard` on.
        let later = heard + Duration::from_millis(300);
        assert_eq!(probe.poll(|_| true, later).map(|s| s.index), Some(0));
    }
}
