//! Event time to epochs, with a watermark per Kafka partition.
//!
//! A record belongs to the epoch of its InvoiceDate (`seconds / epoch_len`). Each partition
//! remembers the latest epoch it has shown; a record more than `lateness` epochs older than that
//! is *late* and is folded into the partition's earliest still-open epoch. The assignment thus
//! depends only on the order of records within their own partition, never on which worker reads
//! the partition or when, which is what makes results identical for any worker count.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::progress::frontier::MutableAntichain;

/// An epoch length the clock cannot use.
#[derive(Debug, thiserror::Error)]
#[error("--epoch must be a whole number of seconds, at least 1s (got {0:?})")]
pub struct EpochError(pub Duration);

/// Maps event time to epoch numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochClock {
    /// Epoch length in seconds (at least 1).
    pub epoch_secs: u64,
    /// How many epochs behind its partition's latest a record may be and still count on time.
    pub lateness_epochs: u64,
}

impl EpochClock {
    /// `lateness` is rounded up to whole epochs.
    pub fn new(epoch: Duration, lateness: Duration) -> Result<EpochClock, EpochError> {
        let epoch_secs = epoch.as_secs();
        if epoch_secs == 0 || epoch.subsec_nanos() != 0 {
            return Err(EpochError(epoch));
        }
        Ok(EpochClock {
            epoch_secs,
            lateness_epochs: lateness.as_secs().div_ceil(epoch_secs),
        })
    }

    /// The epoch of an event time (seconds since 1970; earlier times fall into epoch 0).
    pub fn epoch_of(&self, event_secs: i64) -> u64 {
        u64::try_from(event_secs).unwrap_or(0) / self.epoch_secs
    }

    /// Seconds since 1970 at which `epoch` starts.
    pub fn start_secs(&self, epoch: u64) -> i64 {
        i64::try_from(epoch.saturating_mul(self.epoch_secs)).unwrap_or(i64::MAX)
    }

    /// The start of `epoch` as ISO-8601, the label used in every output.
    pub fn label(&self, epoch: u64) -> EpochLabel {
        EpochLabel(self.start_secs(epoch))
    }

    /// The epoch a [`label`](Self::label) names, if it is one.
    pub fn epoch_of_label(&self, label: &str) -> Option<u64> {
        let start = retail_common::time::parse_wire(label)?;
        Some(self.epoch_of(start.and_utc().timestamp()))
    }
}

/// Displays an epoch by its start time, `YYYY-MM-DDTHH:MM:SS`.
#[derive(Clone, Copy, Debug)]
pub struct EpochLabel(i64);

impl fmt::Display for EpochLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp(self.0, 0) {
            Some(t) => write!(
                f,
                "{}",
                t.naive_utc().format(retail_common::time::WIRE_FORMAT)
            ),
            None => write!(f, "@{}", self.0),
        }
    }
}

/// Where one record lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub epoch: u64,
    /// The record was older than its partition's watermark and was moved forward.
    pub late: bool,
}

/// The watermark state of one partition (checkpointed, so that a resumed job assigns the
/// records after its checkpoint exactly as an uninterrupted run would).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Latest epoch this partition has shown, if any record was seen.
    latest: Option<u64>,
    /// Lower bound imposed from outside: set when an idle partition wakes up behind the
    /// worker's frontier (the one wall-clock influence, see `--idle-timeout`).
    floor: u64,
}

impl PartitionClock {
    /// The earliest epoch this partition may still add records to.
    pub fn open_from(&self, clock: &EpochClock) -> u64 {
        let watermark = self
            .latest
            .map_or(0, |e| e.saturating_sub(clock.lateness_epochs));
        watermark.max(self.floor)
    }

    /// Whether the partition has shown any record yet.
    pub fn has_data(&self) -> bool {
        self.latest.is_some()
    }

    /// The latest epoch any record of this partition was assigned to (0 before the first):
    /// every record read so far belongs to an epoch at or before it.
    pub fn latest(&self) -> u64 {
        self.latest.unwrap_or(0)
    }

    /// Assigns a record with event epoch `event_epoch` and advances the watermark.
    pub fn assign(&mut self, clock: &EpochClock, event_epoch: u64) -> Assignment {
        let open_from = self.open_from(clock);
        let (epoch, late) = if event_epoch < open_from {
            (open_from, true)
        } else {
            (event_epoch, false)
        };
        self.latest = Some(self.latest.map_or(epoch, |l| l.max(epoch)));
        Assignment { epoch, late }
    }

    /// Keeps the partition from assigning anything before `epoch` (used when a partition that
    /// was skipped as idle sends again after the worker's frontier moved on).
    pub fn raise_floor(&mut self, epoch: u64) {
        self.floor = self.floor.max(epoch);
    }
}

/// Removes from `open` the entries of the epochs the `frontier` has passed (closed: nothing
/// can reach them any more) and returns them in epoch order.
pub(crate) fn take_closed<S>(
    open: &mut BTreeMap<u64, S>,
    frontier: &MutableAntichain<u64>,
) -> Vec<(u64, S)> {
    let mut closed = Vec::new();
    while let Some(entry) = open.first_entry() {
        if frontier.less_equal(entry.key()) {
            break;
        }
        closed.push((*entry.key(), entry.remove()));
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(lateness_epochs: u64) -> EpochClock {
        EpochClock {
            epoch_secs: 3600,
            lateness_epochs,
        }
    }

    #[test]
    fn a_label_names_its_epoch() {
        let c = clock(0);
        let label = c.label(359_000).to_string();
        assert_eq!(c.epoch_of_label(&label), Some(359_000));
        assert_eq!(c.epoch_of_label("not a label"), None);
    }

    #[test]
    fn clock_rejects_subsecond_epochs_and_rounds_lateness_up() {
        assert!(EpochClock::new(Duration::from_millis(500), Duration::ZERO).is_err());
        assert!(EpochClock::new(Duration::ZERO, Duration::ZERO).is_err());
        let c = EpochClock::new(Duration::from_secs(3600), Duration::from_secs(90 * 60)).unwrap();
        assert_eq!(c.lateness_epochs, 2);
    }

    #[test]
    fn epoch_of_and_label() {
        let c = clock(0);
        // 2010-12-01T08:26:00 is 1291191960.
        let e = c.epoch_of(1_291_191_960);
        assert_eq!(c.label(e).to_string(), "2010-12-01T08:00:00");
        assert_eq!(c.epoch_of(-5), 0);
    }

    #[test]
    fn in_order_records_keep_their_epoch() {
        let c = clock(0);
        let mut p = PartitionClock::default();
        assert_eq!(p.open_from(&c), 0);
        for e in [5, 5, 6, 9] {
            assert_eq!(
                p.assign(&c, e),
                Assignment {
                    epoch: e,
                    late: false
                }
            );
        }
        assert_eq!(p.open_from(&c), 9);
    }

    #[test]
    fn late_records_fold_into_the_earliest_open_epoch() {
        let c = clock(0);
        let mut p = PartitionClock::default();
        p.assign(&c, 10);
        assert_eq!(
            p.assign(&c, 7),
            Assignment {
                epoch: 10,
                late: true
            }
        );
        assert_eq!(
            p.assign(&c, 10),
            Assignment {
                epoch: 10,
                late: false
            }
        );
    }

    #[test]
    fn lateness_keeps_recent_epochs_open() {
        let c = clock(2);
        let mut p = PartitionClock::default();
        p.assign(&c, 10);
        assert_eq!(p.open_from(&c), 8);
        assert_eq!(
            p.assign(&c, 8),
            Assignment {
                epoch: 8,
                late: false
            }
        );
        assert_eq!(
            p.assign(&c, 9),
            Assignment {
                epoch: 9,
                late: false
            }
        );
        assert_eq!(
            p.assign(&c, 7),
            Assignment {
                epoch: 8,
                late: true
            }
        );
        // The watermark follows the latest epoch, not the last record.
        p.assign(&c, 20);
        assert_eq!(p.open_from(&c), 18);
        assert_eq!(
            p.assign(&c, 11),
            Assignment {
                epoch: 18,
                late: true
            }
        );
    }

    #[test]
    fn assignment_depends_only_on_partition_order() {
        // The same sequence gives the same epochs, however it is interleaved with others.
        let c = clock(1);
        let seq = [3u64, 5, 4, 2, 8, 6, 7, 1];
        let run = || {
            let mut p = PartitionClock::default();
            seq.iter().map(|&e| p.assign(&c, e)).collect::<Vec<_>>()
        };
        let a = run();
        let mut p = PartitionClock::default();
        let mut other = PartitionClock::default();
        let mut b = Vec::new();
        for &e in &seq {
            other.assign(&c, 100);
            b.push(p.assign(&c, e));
        }
        assert_eq!(a, b);
        let late: Vec<bool> = a.iter().map(|x| x.late).collect();
        assert_eq!(late, [false, false, false, true, false, true, false, true]);
    }

    #[test]
    fn latest_is_the_latest_assigned_epoch() {
        let c = clock(2);
        let mut p = PartitionClock::default();
        assert!(!p.has_data());
        assert_eq!(p.latest(), 0);
        p.assign(&c, 7);
        assert!(p.has_data());
        assert_eq!(p.latest(), 7);
        // An on-time record of an earlier epoch and a late one moved forward leave it.
        p.assign(&c, 6);
        p.assign(&c, 1);
        assert_eq!(p.latest(), 7);
        p.assign(&c, 9);
        assert_eq!(p.latest(), 9);
    }

    #[test]
    fn floor_moves_a_woken_partition_forward() {
        let c = clock(0);
        let mut p = PartitionClock::default();
        p.raise_floor(12);
        assert_eq!(
            p.assign(&c, 10),
            Assignment {
                epoch: 12,
                late: true
            }
        );
        assert_eq!(
            p.assign(&c, 13),
            Assignment {
                epoch: 13,
                late: false
            }
        );
    }

    #[test]
    fn closed_epochs_are_those_before_the_frontier() {
        let mut open: BTreeMap<u64, &str> = [(3, "a"), (4, "b"), (5, "c"), (7, "d")].into();
        let frontier = MutableAntichain::from_elem(5);
        assert_eq!(take_closed(&mut open, &frontier), [(3, "a"), (4, "b")]);
        assert_eq!(open.keys().copied().collect::<Vec<_>>(), [5, 7]);
        // An empty frontier (the input is done) closes everything.
        assert_eq!(
            take_closed(&mut open, &MutableAntichain::new()),
            [(5, "c"), (7, "d")]
        );
        assert!(open.is_empty());
    }
}
