//! The heartbeat datagrams of a job's processes, shared by `dataflow` (whose processes watch
//! each other with them) and `cluster` (which probes the processes it supervises with them).
//!
//! A heartbeat says who sends it (job, process index, incarnation), which checkpoint it
//! resumed, and whether its part is over. A probe asks a process for one heartbeat at once,
//! sent back to the probe's source address: the launcher learns that the process is alive and
//! its watching thread runs, without taking part in the job.

/// What starts every heartbeat datagram.
const MAGIC: &[u8; 4] = b"rsh1";
/// What a probe datagram is.
pub const PROBE: &[u8; 4] = b"rsp1";
/// Heartbeat: magic, job hash (8), sender index (4), incarnation (8), resumed checkpoint (8),
/// kind (1).
const LENGTH: usize = 33;
/// The resumed checkpoint of a process that has not read it yet.
pub const UNKNOWN: u64 = u64::MAX;
const BEAT: u8 = 0;
const GOODBYE: u8 = 1;

/// One heartbeat datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    /// [`job_hash`] of the job id: heartbeats of another job on a reused port are ignored.
    pub job: u64,
    /// The sender's process index.
    pub index: u32,
    /// Differs each time the process starts.
    pub incarnation: u64,
    /// Which checkpoint the process resumed ([`UNKNOWN`] until it has read it).
    pub resumed: u64,
    /// The sender's part of the job is over.
    pub goodbye: bool,
}

impl Beat {
    pub fn encode(&self) -> [u8; LENGTH] {
        let mut out = [0u8; LENGTH];
        out[..4].copy_from_slice(MAGIC);
        out[4..12].copy_from_slice(&self.job.to_be_bytes());
        out[12..16].copy_from_slice(&self.index.to_be_bytes());
        out[16..24].copy_from_slice(&self.incarnation.to_be_bytes());
        out[24..32].copy_from_slice(&self.resumed.to_be_bytes());
        out[32] = if self.goodbye { GOODBYE } else { BEAT };
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Beat> {
        if bytes.len() != LENGTH || &bytes[..4] != MAGIC || bytes[32] > GOODBYE {
            return None;
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Beat {
            job: u64_at(4),
            index: u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")),
            incarnation: u64_at(16),
            resumed: u64_at(24),
            goodbye: bytes[32] == GOODBYE,
        })
    }
}

/// How often heartbeats (and the launcher's probes) go out for a silence `timeout`: five
/// chances before it, at least every second and at most every 50 ms.
pub fn period(timeout: std::time::Duration) -> std::time::Duration {
    use std::time::Duration;
    (timeout / 5).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Every socket address `address` (`host:port`) resolves to now, none when it does not
/// resolve: `localhost` may be `::1` and `127.0.0.1`, and a Kubernetes pod's name resolves
/// only once the pod runs, so callers resolve each time they send.
pub fn resolve(address: &str) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// Whether a datagram is a probe.
pub fn is_probe(bytes: &[u8]) -> bool {
    bytes == PROBE
}

/// A stable hash of the job id (FNV-1a), the same in every process.
pub fn job_hash(job_id: &str) -> u64 {
    job_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_survives_its_encoding_and_garbage_does_not_decode() {
        let beat = Beat {
            job: job_hash("retail"),
            index: 3,
            incarnation: 0x0102_0304_0506_0708,
            resumed: 42,
            goodbye: true,
        };
        assert_eq!(Beat::decode(&beat.encode()), Some(beat));
        assert_eq!(Beat::decode(b"rsh1"), None);
        assert_eq!(Beat::decode(PROBE), None);
        assert!(is_probe(PROBE) && !is_probe(&beat.encode()));
        let mut other = beat.encode();
        other[0] = b'x';
        assert_eq!(Beat::decode(&other), None);
        other = beat.encode();
        other[32] = 7;
        assert_eq!(Beat::decode(&other), None);
        assert_ne!(job_hash("a"), job_hash("b"));
    }

    #[test]
    fn the_job_hash_is_fnv_1a() {
        // The published 64-bit FNV-1a vectors: every process, of any build, agrees on them.
        assert_eq!(job_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(job_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(job_hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn five_beats_per_timeout_within_50ms_and_1s() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        assert_eq!(period(ms(2_000)), ms(400));
        assert_eq!(period(ms(5_000)), ms(1_000));
        assert_eq!(period(ms(60_000)), ms(1_000));
        assert_eq!(period(ms(100)), ms(50));
    }

    #[test]
    fn an_address_resolves_to_its_sockets_or_to_none() {
        let local: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(resolve("127.0.0.1:4000"), [local]);
        assert!(resolve("127.0.0.1").is_empty(), "no port");
    }
}
