//! Flow control by memory: what the sources of one process have read for epochs that are still
//! open, against `--max-buffered`.
//!
//! Records of an open epoch are what the aggregates and the writer must hold until it closes.
//! Every worker's source adds the message bytes it files under each epoch and, at each
//! activation, forgets the epochs the dataflow's frontier has passed. Only while the total is
//! over the budget does a source hold back its partitions that are ahead of the oldest epoch
//! any source still reads (see `source`); the partitions at that epoch are always read, so the
//! frontier keeps moving and the total comes down. A job whose partitions are read evenly never
//! waits.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The message bytes read by one process for each open epoch.
#[derive(Debug)]
pub struct Buffered {
    limit: u64,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    by_epoch: BTreeMap<u64, u64>,
    total: u64,
}

impl Buffered {
    /// A ledger with a budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Buffered {
            limit,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// Forgets the epochs before `frontier` (every epoch when it is `None`: the dataflow is
    /// done), adds `read` (epoch, bytes) and returns the bytes read for open epochs.
    pub fn update(&self, frontier: Option<u64>, read: impl IntoIterator<Item = (u64, u64)>) -> u64 {
        let mut ledger = crate::locked(&self.ledger);
        let closed = match frontier {
            Some(f) => {
                let open = ledger.by_epoch.split_off(&f);
                std::mem::replace(&mut ledger.by_epoch, open)
            }
            None => std::mem::take(&mut ledger.by_epoch),
        };
        ledger.total -= closed.values().sum::<u64>();
        for (epoch, bytes) in read {
            *ledger.by_epoch.entry(epoch).or_default() += bytes;
            ledger.total += bytes;
        }
        ledger.total
    }

    /// Whether `bytes` read for open epochs are over the budget.
    pub fn is_over(&self, bytes: u64) -> bool {
        bytes > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_open_epochs_only() {
        let b = Buffered::new(100);
        assert_eq!(b.update(Some(0), [(3, 60), (5, 40)]), 100);
        assert!(!b.is_over(100));
        // Over the budget until the frontier passes enough epochs.
        assert!(b.is_over(b.update(Some(0), [(5, 1)])));
        assert!(b.is_over(b.update(Some(3), [])));
        assert_eq!(b.update(Some(4), []), 41);
        assert!(!b.is_over(41));
        assert_eq!(b.update(None, [(9, 7)]), 7);
    }

    #[test]
    fn a_zero_budget_is_over_with_anything_open() {
        let b = Buffered::new(0);
        assert!(!b.is_over(b.update(Some(0), [])));
        assert!(b.is_over(b.update(Some(0), [(0, 1)])));
        assert!(!b.is_over(b.update(Some(1), [])));
    }
}
