//! Where one message goes: the line or dead letter it becomes, filed under its epoch, and the
//! partition's open invoices, which `--invoice-retention` closes once its watermark has left
//! them behind.

use std::collections::BTreeMap;
use std::time::Instant;

use super::reader::PartitionState;
use super::{Filed, SourceConfig};
use crate::aggregate::{Closing, Saved};
use crate::native::fetch::Fetched;
use crate::parse::{self, Parsed, Placed, Rules};
use crate::retention::Closed;
use retail_common::record::RejectKind;

/// What placing a record in an epoch needs to know in one activation.
pub(super) struct Placing<'a> {
    pub(super) config: &'a SourceConfig,
    /// The worker's current epoch.
    pub(super) frontier: u64,
    pub(super) now: Instant,
    /// The last committed epoch of a resumed job.
    pub(super) committed: Option<u64>,
}

/// Counts of one activation, added to the [`Metrics`](super::Metrics) at its end.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) handled: usize,
    pub(super) lines: u64,
    pub(super) late: u64,
    pub(super) dead: u64,
    pub(super) replayed: u64,
    pub(super) bytes: u64,
    /// Message bytes filed under each epoch (flow control).
    pub(super) read: BTreeMap<u64, u64>,
    /// The reason of each dead letter.
    pub(super) dead_reasons: Vec<RejectKind>,
}

/// Handles one message (or end of partition) of `state`'s partition: parses and validates it
/// and files the line or dead letter under its epoch. Partitions of a bounded run that reach
/// their end are added to `finished`.
pub(super) fn handle(
    state: &mut PartitionState,
    polled: Option<Fetched<'_>>,
    place: &Placing<'_>,
    tally: &mut Tally,
    filed: &mut Filed,
    finished: &mut Vec<i32>,
) {
    let config = place.config;
    let Some(message) = polled else {
        // The end of the partition.
        state.caught_up = true;
        if state.end.is_some() && !state.done {
            state.done = true;
            finished.push(state.partition);
        }
        return;
    };
    let (p, offset) = (message.partition, message.offset);
    // Before the next offset: handled already (a restarted fetch starts there; librdkafka
    // drops what the old one had queued, and this keeps it so).
    if state.done || state.end.is_some_and(|e| offset >= e) || offset < state.next_offset {
        return;
    }
    tally.handled += 1;
    state.read += 1;
    if state.caught_up
        && config
            .idle_timeout
            .is_some_and(|t| place.now.duration_since(state.last_message) >= t)
    {
        // The partition was skipped as idle; it may not add to closed epochs.
        state.clock.raise_floor(place.frontier);
    }
    state.caught_up = false;
    state.last_message = place.now;
    state.next_offset = offset + 1;
    let payload = message.payload.unwrap_or_default();
    tally.bytes += payload.len() as u64;
    let rules = Rules {
        clock: &config.clock,
        max_message_bytes: config.max_message_bytes,
        frontier: place.frontier,
        committed: place.committed,
        counted_through: state.counted_through,
        dead_through: state.dead_through,
        retention: config.retention,
    };
    let filed_at = match parse::place(&rules, &mut state.clock, p, offset, message.key, payload) {
        Placed::Line(line, name) => {
            tally.lines += 1;
            tally.late += u64::from(line.late);
            let epoch = line.epoch;
            if let Some(name) = name
                && let Some((code, name)) = state.names.offer(&line.stock_code, epoch, &name)
            {
                filed
                    .other(epoch)
                    .push((Parsed::Name(code, name), epoch, 1));
            }
            let alerts = config.retention.map(|_| config.rules.line_alerts(&line));
            if let Some(alerts) = alerts
                && let Some(moved) = state.invoices.add(&line.invoice, epoch, alerts)
                && config.save
            {
                let open = |last| Saved::Open {
                    partition: p,
                    invoice: line.invoice.clone(),
                    last,
                };
                let batch = filed.other(epoch);
                if let Some(from) = moved.from {
                    batch.push((Parsed::Saved(open(from), -1), epoch, 1));
                }
                batch.push((Parsed::Saved(open(moved.to), 1), epoch, 1));
            }
            filed.line(line, epoch, tally.handled);
            Some(epoch)
        }
        Placed::Dead(letter, epoch) => {
            tally.dead += 1;
            tally.dead_reasons.push(letter.reason);
            filed.other(epoch).push((Parsed::Dead(letter), epoch, 1));
            Some(epoch)
        }
        Placed::Committed => None,
    };
    match filed_at {
        Some(epoch) => {
            *tally.read.entry(epoch).or_default() += payload.len() as u64;
            if config.save {
                state.count(epoch, offset);
            }
        }
        // Re-read after a restart: its effect is in the restored state already.
        None => tally.replayed += 1,
    }
    if let Some(retention) = config.retention {
        close_expired(state, retention, place, filed);
    }
    if state.end.is_some_and(|e| offset + 1 >= e) {
        state.done = true;
        finished.push(p);
    }
}

/// Closes the invoices of `state`'s partition that its watermark has left `retention` epochs
/// behind, at the partition's earliest open epoch. A resumed job re-derives closings of
/// committed epochs; their effect is in the restored state, so they are dropped.
fn close_expired(
    state: &mut PartitionState,
    retention: u64,
    place: &Placing<'_>,
    filed: &mut Filed,
) {
    let open_from = state.clock.open_from(&place.config.clock);
    let mut closed = Vec::new();
    state.invoices.expire(open_from, retention, &mut closed);
    if closed.is_empty() {
        return;
    }
    let at = open_from.max(place.frontier);
    if place.committed.is_some_and(|c| at <= c) {
        return;
    }
    let batch = filed.other(at);
    for Closed {
        invoice,
        last,
        alerts,
    } in closed
    {
        for alert in alerts {
            batch.push((Parsed::Close(Closing::LineAlert(alert)), at, 1));
        }
        if place.config.save {
            let open = Saved::Open {
                partition: state.partition,
                invoice: invoice.clone(),
                last,
            };
            batch.push((Parsed::Saved(open, -1), at, 1));
        }
        batch.push((Parsed::Close(Closing::Invoice(invoice)), at, 1));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicI32;
    use std::time::Duration;

    use super::*;
    use crate::aggregate::AlertRules;
    use crate::epoch::{EpochClock, PartitionClock};
    use crate::flow::Buffered;
    use crate::source::StartFrom;
    use retail_common::kafka::ClientSettings;

    /// A bounded run's configuration, epochs of an hour, no lateness, checkpoints on.
    fn config(retention: Option<u64>) -> SourceConfig {
        SourceConfig {
            settings: ClientSettings {
                bootstrap: String::new(),
                extra: Vec::new(),
            },
            topic: "sales".into(),
            partitions: 1,
            watch: Arc::new(AtomicI32::new(1)),
            from: StartFrom::Earliest,
            until_end: true,
            clock: EpochClock::new(Duration::from_secs(3600), Duration::ZERO).unwrap(),
            idle_timeout: None,
            max_message_bytes: 1000,
            buffered: Arc::new(Buffered::new(u64::MAX)),
            group_id: "test".into(),
            retention,
            rules: AlertRules::default(),
            save: true,
            resume: None,
        }
    }

    fn placing(config: &SourceConfig, frontier: u64) -> Placing<'_> {
        Placing {
            config,
            frontier,
            now: Instant::now(),
            committed: None,
        }
    }

    fn message(offset: i64, payload: &[u8]) -> Option<Fetched<'_>> {
        Some(Fetched {
            partition: 0,
            offset,
            key: None,
            payload: Some(payload),
        })
    }

    fn sale(invoice: &str, date: &str) -> Vec<u8> {
        format!(
            r#"{{"invoice_no":"{invoice}","stock_code":"85123A","description":null,"quantity":6,"invoice_date":"{date}","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}}"#
        )
        .into_bytes()
    }

    /// What one partition's messages were handled into.
    #[derive(Default)]
    struct Run {
        tally: Tally,
        filed: Filed,
        finished: Vec<i32>,
    }

    impl Run {
        fn handle(
            &mut self,
            state: &mut PartitionState,
            polled: Option<Fetched<'_>>,
            place: &Placing<'_>,
        ) {
            let Run {
                tally,
                filed,
                finished,
            } = self;
            handle(state, polled, place, tally, filed, finished);
        }

        /// The invoices closed, with the epoch they closed at.
        fn closed(&self) -> Vec<(String, u64)> {
            (self.filed.other.values().flatten())
                .filter_map(|(parsed, at, _)| match parsed {
                    Parsed::Close(Closing::Invoice(invoice)) => Some((invoice.to_string(), *at)),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn a_bounded_partition_skips_what_it_handled_and_stops_at_its_end() {
        let config = config(None);
        let place = placing(&config, 3);
        let mut run = Run::default();
        let mut state = PartitionState::new(0, PartitionClock::default(), 5, Some(8));
        state.dead_through = 5;
        for offset in 4..=8 {
            assert_eq!(state.done, offset == 8);
            run.handle(&mut state, message(offset, b"{"), &place);
        }
        assert_eq!(state.next_offset, 8);
        assert_eq!(state.read, 3, "4 is before the next offset, 8 past the end");
        assert_eq!(run.finished, [0]);
        let tally = &run.tally;
        assert_eq!((tally.handled, tally.dead, tally.replayed), (3, 2, 1));
        assert_eq!(tally.bytes, 3);
        // The dead letter at 5 was committed already: not filed, not counted as read.
        assert_eq!(tally.read, BTreeMap::from([(3, 2)]));
        let dead: Vec<(i64, u64)> = (run.filed.other.values().flatten())
            .filter_map(|(parsed, at, _)| match parsed {
                Parsed::Dead(letter) => Some((letter.offset, *at)),
                _ => None,
            })
            .collect();
        assert_eq!(dead, [(6, 3), (7, 3)], "at the worker's epoch");
    }

    #[test]
    fn the_end_of_a_partition_ends_a_bounded_run_only() {
        let config = config(None);
        let place = placing(&config, 0);
        let mut run = Run::default();
        let mut live = PartitionState::new(0, PartitionClock::default(), 5, None);
        run.handle(&mut live, None, &place);
        assert!(live.caught_up && !live.done);
        assert!(run.finished.is_empty());
        let mut bounded = PartitionState::new(1, PartitionClock::default(), 5, Some(9));
        run.handle(&mut bounded, None, &place);
        assert!(bounded.caught_up && bounded.done);
        assert_eq!(run.finished, [1]);
        assert_eq!(run.tally.handled, 0);
    }

    #[test]
    fn an_invoice_the_watermark_leaves_behind_closes_with_its_checkpoint_entry() {
        let config = config(Some(1));
        let place = placing(&config, 0);
        let mut run = Run::default();
        let mut state = PartitionState::new(0, PartitionClock::default(), 0, None);
        let first = sale("536365", "2010-12-01T08:26:00");
        run.handle(&mut state, message(0, &first), &place);
        let epoch = state.clock.latest();
        // One epoch later: within the retention.
        let second = sale("536366", "2010-12-01T09:26:00");
        run.handle(&mut state, message(1, &second), &place);
        assert_eq!(state.clock.latest(), epoch + 1);
        assert!(run.closed().is_empty());
        // Two epochs later: the first invoice closes at the partition's earliest open epoch.
        let third = sale("536367", "2010-12-01T10:26:00");
        run.handle(&mut state, message(2, &third), &place);
        let at = epoch + 2;
        assert_eq!(run.closed(), [("536365".to_owned(), at)]);
        let gone = Saved::Open {
            partition: 0,
            invoice: "536365".into(),
            last: epoch,
        };
        assert!(run.filed.other[&at].contains(&(Parsed::Saved(gone, -1), at, 1)));
        assert_eq!(run.tally.lines, 3);
    }
}
