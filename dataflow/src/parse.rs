//! Parse, validate and place: what one Kafka message becomes. A valid sale becomes a [`Line`]
//! at the epoch its partition's clock assigns; anything else a [`DeadLetter`], kept with all
//! that is needed to find and replay it, at the partition's earliest open epoch. Records a
//! resumed job re-reads that belong to committed epochs are dropped (their effect is in the
//! restored state).

use serde::{Deserialize, Serialize};

use retail_common::record::{Reject, RejectKind, SaleRef};
use retail_common::time::epoch_seconds;

use std::borrow::Cow;

use crate::aggregate::names::{Name, offered};
use crate::aggregate::{Closing, Line, Saved, Text};
use crate::epoch::{Assignment, EpochClock, PartitionClock};

/// A message that failed validation, kept with everything needed to find and replay it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// Serialises as [`RejectKind::code`].
    pub reason: RejectKind,
    pub detail: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// One item out of the source besides its lines (which have an output of their own).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub(crate) enum Parsed {
    Dead(DeadLetter),
    /// How far a partition has been read (its next offset) and its watermark state there, for
    /// checkpoints and lag.
    Position(i32, i64, PartitionClock),
    /// The last offset of a partition an activation counted at this epoch (checkpoints).
    Counted(i32, i64),
    /// What closing an invoice under `--invoice-retention` takes out of the aggregates.
    Close(Closing),
    /// A change of the state the source keeps for checkpoints (its open invoices).
    Saved(Saved, isize),
    /// A candidate name of a product (see `aggregate::names`).
    Name(Text, Name),
}

/// What placing a message needs to know besides the message.
pub struct Rules<'a> {
    pub clock: &'a EpochClock,
    /// Larger messages are dead letters.
    pub max_message_bytes: usize,
    /// The worker's current epoch: nothing is placed before it.
    pub frontier: u64,
    /// The last committed epoch of a resumed job.
    pub committed: Option<u64>,
    /// The partition's last record counted in a committed epoch (resumed jobs): records at or
    /// before it that fall in committed epochs are replays; records after it are new.
    pub counted_through: i64,
    /// Dead letters at or before this offset are committed already (resumed jobs).
    pub dead_through: i64,
    /// `--invoice-retention` in epochs: a line whose epoch is this far or further behind its
    /// partition's earliest open epoch belongs to a closed invoice.
    pub retention: Option<u64>,
}

/// What a message became.
#[derive(Debug, PartialEq)]
pub enum Placed<'a> {
    /// A sale line, and the description it offers as its product's name (see
    /// [`offered`]).
    Line(Line, Option<Cow<'a, str>>),
    /// A dead letter and its epoch.
    Dead(DeadLetter, u64),
    /// Re-read after a restart: already in the restored state or committed as a dead letter.
    Committed,
}

/// Parses and validates the message at `offset` of `partition` and places it with the
/// partition's `clock` (which it advances).
pub fn place<'a>(
    rules: &Rules<'_>,
    clock: &mut PartitionClock,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: &'a [u8],
) -> Placed<'a> {
    let parsed = if payload.len() > rules.max_message_bytes {
        Err(Reject::new(
            RejectKind::Oversized,
            format!(
                "{} bytes, more than --max-message-bytes {}",
                payload.len(),
                rules.max_message_bytes
            ),
        ))
    } else {
        SaleRef::from_json(payload)
    };
    let sale = match parsed {
        Ok(sale) => sale,
        Err(_) if offset <= rules.dead_through => return Placed::Committed,
        Err(reject) => return dead(rules, clock, partition, offset, key, payload, reject),
    };
    let event = rules.clock.epoch_of(epoch_seconds(sale.invoice_date));
    if let Some(retention) = rules.retention {
        let open_from = clock.open_from(rules.clock);
        if event.saturating_add(retention) < open_from {
            if offset <= rules.dead_through {
                return Placed::Committed;
            }
            let detail = format!(
                "invoice {} dated {} is more than --invoice-retention behind its partition's \
                 watermark (epochs before {} are closed): the invoice is closed",
                sale.invoice_no,
                rules.clock.label(event),
                rules.clock.label(open_from - retention),
            );
            let reject = Reject::new(RejectKind::InvoiceClosed, detail);
            return dead(rules, clock, partition, offset, key, payload, reject);
        }
    }
    let mut at = clock.assign(rules.clock, event);
    if let Some(committed) = rules.committed
        && at.epoch <= committed
    {
        if offset <= rules.counted_through {
            return Placed::Committed;
        }
        // New since the checkpoint, dated in an epoch it has committed: late, at the
        // partition's earliest open epoch.
        at = Assignment {
            epoch: clock
                .open_from(rules.clock)
                .max(committed + 1)
                .max(rules.frontier),
            late: true,
        };
    }
    let name = match sale.description {
        Some(Cow::Borrowed(d)) => offered(sale.unit_price.0, Some(d)).map(Cow::Borrowed),
        // Unescaped into a string of its own: kept, unless trimming shortens it.
        Some(Cow::Owned(d)) => match offered(sale.unit_price.0, Some(&d)) {
            Some(t) if t.len() == d.len() => Some(Cow::Owned(d)),
            t => t.map(|t| Cow::Owned(t.to_owned())),
        },
        None => None,
    };
    let line = Line {
        epoch: at.epoch,
        quantity: sale.quantity,
        unit_price_milli: sale.unit_price.0,
        late: at.late,
        invoice: sale.invoice_no.into(),
        stock_code: sale.stock_code.into(),
        customer: sale.customer_id.map(Into::into),
        country: sale.country.into(),
    };
    Placed::Line(line, name)
}

/// A dead letter of `reject`, at the partition's earliest open epoch.
fn dead(
    rules: &Rules<'_>,
    clock: &PartitionClock,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    payload: &[u8],
    reject: Reject,
) -> Placed<'static> {
    let epoch = clock.open_from(rules.clock).max(rules.frontier);
    let letter = DeadLetter {
        partition,
        offset,
        reason: reject.kind,
        detail: reject.detail,
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
    };
    Placed::Dead(letter, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(clock: &EpochClock) -> Rules<'_> {
        Rules {
            clock,
            max_message_bytes: 1000,
            frontier: 0,
            committed: None,
            counted_through: -1,
            dead_through: -1,
            retention: None,
        }
    }

    const SALE: &[u8] = br#"{"invoice_no":"536365","stock_code":"85123A","description":null,"quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}"#;

    #[test]
    fn a_sale_is_a_line_at_its_epoch_and_garbage_a_dead_letter() {
        let clock =
            EpochClock::new(std::time::Duration::from_secs(3600), Default::default()).unwrap();
        let mut partition = PartitionClock::default();
        let Placed::Line(line, _) = place(&rules(&clock), &mut partition, 3, 7, None, SALE) else {
            panic!("not a line");
        };
        assert_eq!(line.quantity, 6);
        assert_eq!(line.unit_price_milli, 2550);
        let epoch = line.epoch;
        match place(&rules(&clock), &mut partition, 3, 8, Some(b"k"), b"{") {
            Placed::Dead(letter, at) => {
                assert_eq!((letter.partition, letter.offset), (3, 8));
                assert_eq!(letter.key.as_deref(), Some(&b"k"[..]));
                assert_eq!(at, epoch);
            }
            other => panic!("{other:?}"),
        }
        let small = Rules {
            max_message_bytes: 10,
            ..rules(&clock)
        };
        assert!(matches!(
            place(&small, &mut partition, 3, 9, None, SALE),
            Placed::Dead(ref d, _) if d.reason == RejectKind::Oversized
        ));
    }

    #[test]
    fn a_message_of_exactly_the_limit_is_read() {
        let clock =
            EpochClock::new(std::time::Duration::from_secs(3600), Default::default()).unwrap();
        let limit = |max_message_bytes| Rules {
            max_message_bytes,
            ..rules(&clock)
        };
        let mut partition = PartitionClock::default();
        assert!(matches!(
            place(&limit(SALE.len()), &mut partition, 0, 0, None, SALE),
            Placed::Line(..)
        ));
        assert!(matches!(
            place(&limit(SALE.len() - 1), &mut partition, 0, 1, None, SALE),
            Placed::Dead(ref d, _) if d.reason == RejectKind::Oversized
        ));
    }

    #[test]
    fn a_new_line_of_a_committed_epoch_goes_after_the_committed_ones() {
        // Whatever the worker's frontier says, nothing new lands in a committed epoch.
        let clock =
            EpochClock::new(std::time::Duration::from_secs(3600), Default::default()).unwrap();
        let epoch = clock.epoch_of(1_291_191_960); // SALE's 2010-12-01T08:26:00
        let resumed = Rules {
            committed: Some(epoch + 2),
            frontier: 0,
            ..rules(&clock)
        };
        match place(&resumed, &mut PartitionClock::default(), 0, 0, None, SALE) {
            Placed::Line(line, _) => assert_eq!((line.epoch, line.late), (epoch + 3, true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_resumed_job_drops_what_it_counted_and_counts_what_is_new() {
        let clock =
            EpochClock::new(std::time::Duration::from_secs(3600), Default::default()).unwrap();
        let Placed::Line(fresh, _) =
            place(&rules(&clock), &mut Default::default(), 0, 0, None, SALE)
        else {
            panic!("not a line");
        };
        // The sale's epoch is committed; the checkpoint counted offsets up to 7 and dead
        // letters up to 8.
        let resumed = Rules {
            committed: Some(fresh.epoch),
            counted_through: 7,
            dead_through: 8,
            frontier: fresh.epoch + 1,
            ..rules(&clock)
        };
        let mut partition = PartitionClock::default();
        assert_eq!(
            place(&resumed, &mut partition, 0, 7, None, SALE),
            Placed::Committed
        );
        assert_eq!(
            place(&resumed, &mut partition, 0, 8, None, b"{"),
            Placed::Committed
        );
        // After the counted offsets: new, late at the first open epoch.
        match place(&resumed, &mut partition, 0, 9, None, SALE) {
            Placed::Line(line, _) => {
                assert_eq!((line.epoch, line.late), (fresh.epoch + 1, true));
                assert_eq!(line.quantity, 6);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            place(&resumed, &mut partition, 0, 10, None, b"{"),
            Placed::Dead(_, at) if at == fresh.epoch + 1
        ));
        // A counted offset whose epoch is still open is counted again (it was not committed).
        let later = String::from_utf8_lossy(SALE).replace("08:26:00", "10:26:00");
        assert!(matches!(
            place(&resumed, &mut partition, 0, 5, None, later.as_bytes()),
            Placed::Line(ref l, _) if l.epoch == fresh.epoch + 2 && !l.late
        ));
    }

    #[test]
    fn a_line_behind_the_retention_horizon_is_an_invoice_closed_dead_letter() {
        let clock =
            EpochClock::new(std::time::Duration::from_secs(3600), Default::default()).unwrap();
        let kept = Rules {
            retention: Some(2),
            ..rules(&clock)
        };
        let mut partition = PartitionClock::default();
        assert!(matches!(
            place(&kept, &mut partition, 0, 0, None, SALE),
            Placed::Line(..)
        ));
        // Two hours earlier: at the horizon, still open (a late line).
        let at_horizon = String::from_utf8_lossy(SALE).replace("08:26:00", "06:26:00");
        assert!(matches!(
            place(&kept, &mut partition, 0, 1, None, at_horizon.as_bytes()),
            Placed::Line(ref l, _) if l.late
        ));
        // Three hours earlier: closed.
        let behind = String::from_utf8_lossy(SALE).replace("08:26:00", "05:26:00");
        match place(
            &kept,
            &mut partition,
            0,
            2,
            Some(b"536365"),
            behind.as_bytes(),
        ) {
            Placed::Dead(letter, at) => {
                assert_eq!(letter.reason, RejectKind::InvoiceClosed);
                assert!(letter.detail.contains("536365"), "{}", letter.detail);
                assert_eq!(at, partition.open_from(&clock));
            }
            other => panic!("{other:?}"),
        }
        // Resumed with that dead letter committed: a replay; after it, a new dead letter.
        let resumed = Rules {
            dead_through: 2,
            ..kept
        };
        assert_eq!(
            place(&resumed, &mut partition, 0, 2, None, behind.as_bytes()),
            Placed::Committed
        );
        assert!(matches!(
            place(&resumed, &mut partition, 0, 3, None, behind.as_bytes()),
            Placed::Dead(ref d, _) if d.reason == RejectKind::InvoiceClosed
        ));
        // Without retention the same line is late, not dead.
        assert!(matches!(
            place(&rules(&clock), &mut partition, 0, 3, None, behind.as_bytes()),
            Placed::Line(ref l, _) if l.late
        ));
    }
}
