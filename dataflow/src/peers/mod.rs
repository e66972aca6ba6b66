//! Failure detection between the processes of a job. Timely has none: a peer that freezes or
//! falls off the network holds every other process for as long as the fault lasts. Each
//! process therefore sends a small UDP heartbeat to every peer every second, from threads of
//! its own, on the same address and port number as its timely listener (UDP and TCP ports are
//! apart), so the signal depends neither on the dataflow's traffic (an idle live job is
//! healthy) nor on how busy the workers are.
//!
//! A peer that sent nothing for `--peer-timeout` (dead, frozen or unreachable), one that
//! restarted (its heartbeat carries another incarnation), or one that has not shown up within
//! `--peer-wait` of the start, stops this process with one line naming it (index and address)
//! and exit status 75; so does a peer that resumed another checkpoint (a process restarted
//! alone may read its checkpoint before the old process 0 has committed its last epoch): the
//! job restarts from its checkpoint once every process is back. A process whose part of a
//! bounded run is over says goodbye, so that its peers do not take its exit for a fault. The
//! watching thread also answers the probes of `cluster`, which so tells a frozen or cut-off
//! process from a quiet one.

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use retail_common::heartbeat::{self, Beat, is_probe, job_hash, resolve};
use tracing::{info, warn};

mod rule;

pub use retail_common::heartbeat::UNKNOWN;
pub use rule::PeerFault;
use rule::Peers;

/// How the processes of a job watch each other.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This process's index.
    pub index: usize,
    /// Every process's `host:port`, as timely reads them (the hostfile, or `localhost:2101+i`).
    pub addresses: Vec<String>,
    /// A peer silent this long is taken for failed.
    pub timeout: Duration,
    /// How long a peer may take to show up at the start.
    pub wait: Duration,
    /// Names the job: heartbeats of another job on a reused port are ignored.
    pub job_id: String,
}

/// The addresses timely reads: line `i` of the hostfile (its first word) is process `i`'s
/// `host:port`; without a hostfile, `localhost:2101+i`.
pub fn addresses(hostfile: Option<&Path>, processes: usize) -> std::io::Result<Vec<String>> {
    let Some(path) = hostfile else {
        return Ok((0..processes)
            .map(|i| format!("localhost:{}", 2101 + i))
            .collect());
    };
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .take(processes)
        .collect();
    if lines.len() < processes {
        return Err(std::io::Error::other(format!(
            "hostfile {} names {} processes, fewer than -n {processes}",
            path.display(),
            lines.len()
        )));
    }
    Ok(lines)
}

/// Every process's address, once a watch started: for [`connection_thread_peer`].
static ADDRESSES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// The peer that one of timely's connection threads (`timely:send-N`, `timely:recv-N`, N the
/// remote process's index) talks to, as `process N (host:port)`: the panic of such a thread
/// names the peer whose connection broke.
pub fn connection_thread_peer(thread: &str) -> Option<String> {
    let index: usize = thread
        .strip_prefix("timely:send-")
        .or_else(|| thread.strip_prefix("timely:recv-"))?
        .parse()
        .ok()?;
    Some(match ADDRESSES.get().and_then(|a| a.get(index)) {
        Some(address) => format!("process {index} ({address})"),
        None => format!("process {index}"),
    })
}

/// The watch over a job's peers; its threads end when the process does.
pub struct PeerWatch {
    socket: Arc<UdpSocket>,
    beat: Beat,
    config: Arc<PeerConfig>,
    done: Arc<AtomicBool>,
    connected: Arc<AtomicBool>,
    /// The checkpoint this process resumed ([`UNKNOWN`] until read).
    resumed: Arc<AtomicU64>,
    /// Every peer is known to have resumed the same checkpoint.
    agreed: Arc<AtomicBool>,
}

impl PeerWatch {
    /// Binds this process's heartbeat socket and starts sending and watching. `stop` is called
    /// once, from the watching thread, with the first fault seen.
    pub fn start(
        config: PeerConfig,
        stop: impl FnOnce(PeerFault) + Send + 'static,
    ) -> std::io::Result<PeerWatch> {
        let own = config.addresses[config.index].clone();
        let _ = ADDRESSES.set(config.addresses.clone());
        let socket = UdpSocket::bind(own.as_str()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot bind the heartbeat socket on UDP {own}: {e}"),
            )
        })?;
        let period = heartbeat::period(config.timeout);
        socket.set_read_timeout(Some(period))?;
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let beat = Beat {
            job: job_hash(&config.job_id),
            index: config.index as u32,
            incarnation,
            resumed: UNKNOWN,
            goodbye: false,
        };
        let watch = PeerWatch {
            socket: Arc::new(socket),
            beat,
            config: Arc::new(config),
            done: Arc::new(AtomicBool::new(false)),
            connected: Arc::new(AtomicBool::new(false)),
            resumed: Arc::new(AtomicU64::new(UNKNOWN)),
            agreed: Arc::new(AtomicBool::new(false)),
        };
        info!(
            timeout = ?watch.config.timeout,
            peers = watch.config.addresses.len() - 1,
            "watching the job's other processes"
        );
        {
            let (socket, config, done, resumed) = (
                Arc::clone(&watch.socket),
                Arc::clone(&watch.config),
                Arc::clone(&watch.done),
                Arc::clone(&watch.resumed),
            );
            std::thread::Builder::new()
                .name("peers:send".into())
                .spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let resumed = resumed.load(Ordering::Relaxed);
                        send(&socket, &config, Beat { resumed, ..beat });
                        std::thread::sleep(period);
                    }
                })?;
        }
        {
            let (socket, config, done, connected, resumed, agreed) = (
                Arc::clone(&watch.socket),
                Arc::clone(&watch.config),
                Arc::clone(&watch.done),
                Arc::clone(&watch.connected),
                Arc::clone(&watch.resumed),
                Arc::clone(&watch.agreed),
            );
            std::thread::Builder::new()
                .name("peers:watch".into())
                .spawn(move || {
                    let flags = Flags {
                        done: &done,
                        connected: &connected,
                        resumed: &resumed,
                        agreed: &agreed,
                    };
                    if let Some(fault) = watch_peers(&socket, &config, beat, flags) {
                        stop(fault);
                        return;
                    }
                    // The part is over but the process may run on (the writer's last commit,
                    // `--http-linger`): the launcher's probes still hear that it is alive.
                    let goodbye = Beat {
                        goodbye: true,
                        resumed: resumed.load(Ordering::Relaxed),
                        ..beat
                    };
                    let mut buffer = [0u8; 64];
                    loop {
                        if let Ok((n, from)) = socket.recv_from(&mut buffer)
                            && is_probe(&buffer[..n])
                        {
                            let _ = socket.send_to(&goodbye.encode(), from);
                        }
                    }
                })?;
        }
        Ok(watch)
    }

    /// Which checkpoint this process resumed (any number that differs between two
    /// checkpoints, and is the same for every process that read the same one).
    pub fn resumed(&self, checkpoint: u64) {
        self.resumed.store(checkpoint, Ordering::Relaxed);
    }

    /// Set once every peer is known to have resumed the same checkpoint as this process: the
    /// writer commits nothing before (a commit made with processes resumed from different
    /// checkpoints would count some records twice or not at all).
    pub fn agreed(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.agreed)
    }

    /// Timely has connected the processes: from now on a peer that goes silent or restarts
    /// has failed.
    pub fn connected(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    /// This process's part is over: peers are told, and no fault is reported any more.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        let goodbye = Beat {
            goodbye: true,
            resumed: self.resumed.load(Ordering::Relaxed),
            ..self.beat
        };
        // Datagrams may be lost: say it a few times.
        for _ in 0..3 {
            send(&self.socket, &self.config, goodbye);
        }
    }
}

/// Sends `beat` to every other process, at every address its name resolves to (`localhost`
/// may be `::1` and `127.0.0.1`, and the peer bound one of them). Names are resolved each
/// time: a peer's may resolve only once it runs, as a Kubernetes pod's does.
fn send(socket: &UdpSocket, config: &PeerConfig, beat: Beat) {
    let bytes = beat.encode();
    for (i, address) in config.addresses.iter().enumerate() {
        if i == config.index {
            continue;
        }
        for to in resolve(address) {
            // A peer not listening yet refuses: that is what the wait is for.
            let _ = socket.send_to(&bytes, to);
        }
    }
}

/// What the watching thread is told by the job.
#[derive(Clone, Copy)]
struct Flags<'a> {
    /// The process's part is over.
    done: &'a AtomicBool,
    /// Timely has connected the processes.
    connected: &'a AtomicBool,
    /// The checkpoint this process resumed.
    resumed: &'a AtomicU64,
    /// Set once every peer is known to have resumed the same one.
    agreed: &'a AtomicBool,
}

/// Receives heartbeats until the process's part is done or a fault, which it returns.
fn watch_peers(
    socket: &UdpSocket,
    config: &PeerConfig,
    beat: Beat,
    flags: Flags<'_>,
) -> Option<PeerFault> {
    let job = beat.job;
    let done = flags.done;
    let mut peers = Peers::new(config.addresses.len(), Instant::now());
    let mut buffer = [0u8; 64];
    while !done.load(Ordering::Relaxed) {
        if flags.connected.load(Ordering::Relaxed) {
            peers.connect(Instant::now());
        }
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) if is_probe(&buffer[..n]) => {
                // The launcher asks: answer at once, from this thread, so that a process whose
                // watch is stuck or frozen does not answer.
                let now = Beat {
                    resumed: flags.resumed.load(Ordering::Relaxed),
                    ..beat
                };
                let _ = socket.send_to(&now.encode(), from);
            }
            Ok((n, _)) => {
                if let Some(beat) = Beat::decode(&buffer[..n]).filter(|b| b.job == job) {
                    let index = beat.index as usize;
                    if !peers.hear(index, &beat, Instant::now()) {
                        return Some(PeerFault::Restarted {
                            index,
                            address: config.addresses[index].clone(),
                        });
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                warn!(error = %e, "heartbeat socket");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if done.load(Ordering::Relaxed) {
            return None;
        }
        let resumed = flags.resumed.load(Ordering::Relaxed);
        if let Some(fault) = peers.check(config.index, resumed, config, Instant::now()) {
            return Some(fault);
        }
        if peers.agree(config.index, resumed) {
            flags.agreed.store(true, Ordering::Relaxed);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_thread_names_its_peer() {
        // With its address once a watch started; timely's other threads name no peer.
        let peer = connection_thread_peer("timely:recv-3").unwrap();
        assert!(peer.starts_with("process 3"), "{peer}");
        assert_eq!(connection_thread_peer("timely:work-0"), None);
        assert_eq!(connection_thread_peer("timely:send-x"), None);
        assert_eq!(connection_thread_peer("worker"), None);
    }

    #[test]
    fn addresses_come_from_the_hostfile_as_timely_reads_them() {
        assert_eq!(
            addresses(None, 2).unwrap(),
            ["localhost:2101", "localhost:2102"]
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "a:1\nb:2 extra\nc:3\n").unwrap();
        assert_eq!(addresses(Some(&path), 2).unwrap(), ["a:1", "b:2"]);
        assert!(addresses(Some(&path), 4).is_err());
    }

    #[test]
    fn two_watches_hear_each_other_and_a_stopped_one_is_noticed() {
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.local_addr().unwrap().port()
            })
            .collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let config = |index| PeerConfig {
            index,
            addresses: addresses.clone(),
            timeout: Duration::from_millis(600),
            wait: Duration::from_secs(5),
            job_id: "watch-test".into(),
        };
        let (faults, seen) = std::sync::mpsc::channel();
        let zero = PeerWatch::start(config(0), {
            let faults = faults.clone();
            move |f| faults.send((0, f)).unwrap()
        })
        .unwrap();
        let one = PeerWatch::start(config(1), move |f| faults.send((1, f)).unwrap()).unwrap();
        zero.connected();
        one.connected();
        // Both beat: no fault for well past the timeout.
        assert!(seen.recv_timeout(Duration::from_millis(1500)).is_err());
        // Process 1 goes silent without a goodbye (as a frozen process does).
        one.done.store(true, Ordering::Relaxed);
        let (who, fault) = seen.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(who, 0);
        assert!(
            matches!(fault, PeerFault::Silent { index: 1, .. }),
            "{fault:?}"
        );
        zero.finish();
    }
}
