//! The pure rule by which a process takes a peer for failed (apart from sockets and clocks),
//! and the fault it then names.

use std::time::{Duration, Instant};

use retail_common::heartbeat::{Beat, UNKNOWN};

use super::PeerConfig;

/// A peer taken for failed: what the process says before it stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFault {
    Silent {
        index: usize,
        address: String,
        silent: Duration,
    },
    Restarted {
        index: usize,
        address: String,
    },
    Missing {
        index: usize,
        address: String,
        waited: Duration,
    },
    Diverged {
        index: usize,
        address: String,
    },
}

impl std::fmt::Display for PeerFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFault::Silent {
                index,
                address,
                silent,
            } => write!(
                f,
                "process {index} ({address}) sent no heartbeat for {:.1} s: it is dead, frozen or \
                 unreachable; stopping so that the job restarts from its checkpoint",
                silent.as_secs_f64()
            ),
            PeerFault::Restarted { index, address } => write!(
                f,
                "process {index} ({address}) restarted: stopping so that the whole job restarts \
                 from its checkpoint"
            ),
            PeerFault::Diverged { index, address } => write!(
                f,
                "process {index} ({address}) resumed another checkpoint than this one (one was \
                 committed while the processes restarted): stopping so that every process \
                 resumes the same one"
            ),
            PeerFault::Missing {
                index,
                address,
                waited,
            } => write!(
                f,
                "process {index} ({address}) did not start within --peer-wait {} s: stopping",
                waited.as_secs()
            ),
        }
    }
}

/// What one process knows of its peers: the pure rule, apart from sockets and clocks.
///
/// Until timely has connected the processes, a peer may come and go (a restarted process
/// waits for the others to be restarted too, as Kubernetes restarts pods one by one): only a
/// start that takes longer than the wait is a fault. Once connected, the job runs with the
/// peers' incarnations heard from then on: a peer silent for the timeout, or heard with
/// another incarnation, has failed.
#[derive(Debug)]
pub(super) struct Peers {
    started: Instant,
    /// When timely connected the processes.
    connected: Option<Instant>,
    /// Per process: when it was last heard, if ever.
    heard: Vec<Option<Instant>>,
    /// Per process: the incarnation the connected job runs with.
    bound: Vec<Option<u64>>,
    /// Per process: the checkpoint it resumed, as last heard.
    resumed: Vec<u64>,
    /// Processes that said goodbye.
    gone: Vec<bool>,
}

impl Peers {
    pub(super) fn new(processes: usize, started: Instant) -> Peers {
        Peers {
            started,
            connected: None,
            heard: vec![None; processes],
            bound: vec![None; processes],
            resumed: vec![UNKNOWN; processes],
            gone: vec![false; processes],
        }
    }

    /// Timely has connected the processes at `now`.
    pub(super) fn connect(&mut self, now: Instant) {
        // What was heard before counts: a peer that said goodbye at once (a small bounded
        // run) says nothing more. A checkpoint heard from an incarnation that is gone since
        // can only differ from the connected one's (no process commits while they start),
        // which costs one more restart, never a commit.
        self.connected.get_or_insert(now);
    }

    /// Takes in a heartbeat of process `index` at `now`; false when it is a new incarnation
    /// of a process the connected job runs with (it restarted).
    pub(super) fn hear(&mut self, index: usize, beat: &Beat, now: Instant) -> bool {
        let (incarnation, goodbye) = (beat.incarnation, beat.goodbye);
        let Some(heard) = self.heard.get_mut(index) else {
            return true;
        };
        *heard = Some(now);
        self.resumed[index] = beat.resumed;
        if goodbye {
            self.gone[index] = true;
        }
        if self.connected.is_none() {
            return true;
        }
        *self.bound[index].get_or_insert(incarnation) == incarnation
    }

    /// Whether every peer is known to have resumed the same checkpoint as `me` (`resumed`).
    pub(super) fn agree(&self, me: usize, resumed: u64) -> bool {
        self.connected.is_some()
            && resumed != UNKNOWN
            && (0..self.resumed.len())
                .filter(|&i| i != me)
                .all(|i| self.resumed[i] == resumed)
    }

    /// The first peer (other than `me`, which resumed checkpoint `resumed`) to be taken for
    /// failed at `now`, if any.
    pub(super) fn check(
        &self,
        me: usize,
        resumed: u64,
        config: &PeerConfig,
        now: Instant,
    ) -> Option<PeerFault> {
        let others = || (0..self.heard.len()).filter(move |&i| i != me && !self.gone[i]);
        let since = |t: Instant| now.saturating_duration_since(t);
        let address = |index: usize| config.addresses[index].clone();
        let Some(connected) = self.connected else {
            let waited = since(self.started);
            if waited < config.wait.max(config.timeout) {
                return None;
            }
            // Name a peer not heard lately, or else the first one.
            let quiet = |i: &usize| self.heard[*i].is_none_or(|t| since(t) >= config.timeout);
            let index = others().find(quiet).or_else(|| others().next())?;
            return Some(PeerFault::Missing {
                index,
                address: address(index),
                waited,
            });
        };
        let known = |r: u64| r != UNKNOWN;
        // Peers that said goodbye too: they counted with what they resumed.
        if let Some(index) = (0..self.heard.len())
            .filter(|&i| i != me)
            .find(|&i| known(resumed) && known(self.resumed[i]) && self.resumed[i] != resumed)
        {
            return Some(PeerFault::Diverged {
                index,
                address: address(index),
            });
        }
        others().find_map(|index| {
            // A peer not heard since the connection counts from it.
            let last = self.heard[index].map_or(connected, |t| t.max(connected));
            let silent = since(last);
            (silent >= config.timeout).then(|| PeerFault::Silent {
                index,
                address: address(index),
                silent,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(incarnation: u64, goodbye: bool) -> Beat {
        Beat {
            job: 1,
            index: 0,
            incarnation,
            resumed: UNKNOWN,
            goodbye,
        }
    }

    fn config(processes: usize) -> PeerConfig {
        PeerConfig {
            index: 0,
            addresses: (0..processes).map(|i| format!("h{i}:1")).collect(),
            timeout: Duration::from_secs(10),
            wait: Duration::from_secs(60),
            job_id: "j".into(),
        }
    }

    #[test]
    fn before_the_connection_only_a_long_start_is_a_fault() {
        let c = config(3);
        let t0 = Instant::now();
        let mut peers = Peers::new(3, t0);
        assert_eq!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(59)),
            None
        );
        // Peers come and go (and restart) while the job connects: no fault.
        assert!(peers.hear(1, &beat(7, false), t0));
        assert!(peers.hear(1, &beat(8, false), t0 + Duration::from_secs(55)));
        assert!(peers.hear(2, &beat(9, false), t0 + Duration::from_secs(1)));
        assert_eq!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(55)),
            None
        );
        // At the wait: the peer not heard lately is named.
        match peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(60)) {
            Some(PeerFault::Missing { index, address, .. }) => {
                assert_eq!((index, address.as_str()), (2, "h2:1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn once_connected_a_silent_or_restarted_peer_is_a_fault_and_a_goodbye_is_not() {
        let c = config(3);
        let t0 = Instant::now();
        let mut peers = Peers::new(3, t0);
        assert!(peers.hear(1, &beat(7, false), t0));
        peers.connect(t0 + Duration::from_secs(2));
        // Its own silence is never a fault; a peer's is, from the timeout on (counted from
        // the connection for a peer not heard since).
        assert!(peers.hear(1, &beat(7, false), t0 + Duration::from_secs(3)));
        assert_eq!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_millis(11_999)),
            None
        );
        match peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(12)) {
            Some(PeerFault::Silent { index, address, .. }) => {
                assert_eq!((index, address.as_str()), (2, "h2:1"));
            }
            other => panic!("{other:?}"),
        }
        assert!(peers.hear(2, &beat(9, false), t0 + Duration::from_secs(12)));
        assert!(matches!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(13)),
            Some(PeerFault::Silent { index: 1, .. })
        ));
        // A goodbye ends the watch over that peer.
        assert!(peers.hear(1, &beat(7, true), t0 + Duration::from_secs(13)));
        assert_eq!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(21)),
            None
        );
        assert!(matches!(
            peers.check(0, UNKNOWN, &c, t0 + Duration::from_secs(22)),
            Some(PeerFault::Silent { index: 2, .. })
        ));
        // Another incarnation of a peer the job runs with is a restart.
        assert!(!peers.hear(2, &beat(10, false), t0 + Duration::from_secs(14)));
        // A peer that resumed another checkpoint: once both are known.
        let resumed = |r| Beat {
            resumed: r,
            ..beat(9, false)
        };
        let mut fresh = Peers::new(3, t0);
        assert!(fresh.hear(1, &resumed(4), t0));
        fresh.connect(t0);
        assert!(!fresh.agree(0, 5));
        assert!(fresh.hear(1, &resumed(5), t0));
        assert!(fresh.hear(2, &resumed(UNKNOWN), t0));
        assert_eq!(fresh.check(0, UNKNOWN, &c, t0), None);
        assert_eq!(fresh.check(0, 5, &c, t0), None);
        assert!(!fresh.agree(0, 5));
        assert!(fresh.hear(2, &resumed(5), t0));
        assert!(fresh.agree(0, 5));
        assert!(fresh.hear(2, &resumed(4), t0));
        assert!(!fresh.agree(0, 5));
        assert!(matches!(
            fresh.check(0, 5, &c, t0),
            Some(PeerFault::Diverged { index: 2, .. })
        ));
        // Out-of-range indexes (another job's datagram with a larger cluster) are ignored.
        assert!(peers.hear(9, &beat(1, false), t0));
    }
}
