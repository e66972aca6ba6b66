//! What the sources of one process share with the rest of it: the counters the progress line
//! and `/metrics` read, the [`Snapshot`] of them the writer publishes to the page at each
//! commit, and the stop policy (why a source stopped the job, and the exit status that means).
//! Sources write here; sinks, `http` and the outcome only read.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// Counters the progress line reads; shared by the workers of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub lines: AtomicU64,
    pub late: AtomicU64,
    pub dead: AtomicU64,
    /// Re-read after a restart and dropped: already counted in the restored state.
    pub replayed: AtomicU64,
    pub bytes: AtomicU64,
    /// Messages between each worker's position and the end of its partitions.
    pub lag: AtomicI64,
    /// Why a source stopped the job (the first reason).
    pub fatal: Mutex<Option<Stop>>,
    /// Each partition read by this process, as of its worker's last activation (`/metrics`).
    pub partitions: Mutex<BTreeMap<i32, PartitionGauges>>,
    /// Dead letters by reason ([`RejectKind::code`](retail_common::record::RejectKind::code)),
    /// added once per activation (`/metrics`).
    pub dead_reasons: Mutex<BTreeMap<&'static str, u64>>,
    /// Message bytes read for epochs still open, against `--max-buffered` (`/metrics`).
    pub buffered: AtomicU64,
    /// Partitions held back by flow control at each worker's last activation (`/metrics`).
    pub held: AtomicI64,
}

/// The counters the live page shows, copied at one moment (by the writer, at each commit), so
/// that `http` reads what the writer publishes and never the sources' locks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub messages: u64,
    pub late: u64,
    pub dead_reasons: BTreeMap<&'static str, u64>,
    pub partitions: BTreeMap<i32, PartitionGauges>,
}

impl Snapshot {
    /// Per partition, the lag last seen.
    pub fn lags(&self) -> BTreeMap<i32, Option<i64>> {
        self.partitions.iter().map(|(p, g)| (*p, g.lag)).collect()
    }
}

/// What `/metrics` shows of one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionGauges {
    /// Records read (including re-read ones a resumed job drops).
    pub read: u64,
    /// Records between the position and the partition's last stable offset, when known.
    pub lag: Option<i64>,
    /// Start of the earliest epoch the partition may still add to (seconds since 1970), once it
    /// has shown a record.
    pub watermark_secs: Option<i64>,
}

/// Why a source stopped the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A fetched batch cannot be decoded: librdkafka would fetch it again for ever.
    Undecodable(String),
    /// The topic grew and a new partition falls to a worker that has released its epochs; a
    /// restart resumes from the checkpoint and reads it.
    Restart(String),
    /// A source could not start (its partitions' offsets stayed out of reach).
    Failed(String),
}

impl Stop {
    /// What the user is told.
    pub fn message(&self) -> &str {
        match self {
            Stop::Undecodable(m) | Stop::Restart(m) | Stop::Failed(m) => m,
        }
    }

    /// The exit status the stop means: a restart goes on from the checkpoint.
    pub fn exit_code(&self) -> u8 {
        match self {
            Stop::Restart(_) => retail_common::exit::RESTART,
            Stop::Undecodable(_) | Stop::Failed(_) => retail_common::exit::ERROR,
        }
    }
}

impl Metrics {
    /// The counters the live page shows, as of now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            messages: self.messages.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            dead_reasons: crate::locked(&self.dead_reasons).clone(),
            partitions: crate::locked(&self.partitions).clone(),
        }
    }

    /// Why a source stopped the job, if one did.
    pub fn fatal(&self) -> Option<Stop> {
        crate::locked(&self.fatal).clone()
    }

    /// Stops the job for `stop` (the first reason is kept): logs it and tells every source of
    /// this process to stop, holding its epochs open.
    pub(crate) fn stop_job(&self, stop: Stop, shutdown: &AtomicBool) {
        tracing::error!("{}", stop.message());
        let mut slot = crate::locked(&self.fatal);
        slot.get_or_insert(stop);
        shutdown.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_to_stop_is_kept_and_every_source_told() {
        let metrics = Metrics::default();
        let shutdown = AtomicBool::new(false);
        assert_eq!(metrics.fatal(), None);
        metrics.stop_job(Stop::Failed("cannot start".into()), &shutdown);
        assert!(shutdown.load(Ordering::Relaxed));
        metrics.stop_job(Stop::Restart("the topic grew".into()), &shutdown);
        assert_eq!(metrics.fatal(), Some(Stop::Failed("cannot start".into())));
    }

    #[test]
    fn only_a_restart_exits_with_the_restart_status() {
        use retail_common::exit::{ERROR, RESTART};
        assert_ne!(RESTART, ERROR);
        assert_eq!(Stop::Restart("r".into()).exit_code(), RESTART);
        assert_eq!(Stop::Undecodable("u".into()).exit_code(), ERROR);
        assert_eq!(Stop::Failed("f".into()).exit_code(), ERROR);
        assert_eq!(Stop::Undecodable("u".into()).message(), "u");
    }
}
