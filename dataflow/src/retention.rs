//! Invoice retention (`--invoice-retention`): the invoices of one partition that are still open.
//!
//! An invoice is open from its first line until its partition's earliest open epoch (the
//! watermark) has moved more than the retention past the latest epoch any of its lines was
//! assigned to. It then closes: the source tells the per-invoice running sums to drop it and
//! counts it as a closed invoice, so memory and the state topic hold only the invoices of the
//! last retention period. Only the latest epoch of each open invoice is kept here (16 bytes
//! a packed invoice); its value is in the running sums. A line behind the same horizon
//! is a dead letter (`invoice_closed`, see [`crate::parse`]). Everything here follows the
//! order of records within their own partition, so closings fall in the same epochs for any
//! worker count and after any restart.

use std::collections::BTreeMap;
use std::hash::Hash;

use foldhash::HashMap;

use crate::aggregate::{Alert, Text, invoice};

/// Open invoices under one kind of key.
#[derive(Debug)]
struct Keyed<K> {
    /// Each open invoice's latest epoch any of its lines was assigned to. A B-tree: with
    /// invoices opening and closing all the time a hash table's deleted slots eventually make
    /// it double (see [`crate::aggregate::running`]).
    open: BTreeMap<K, u64>,
    /// Invoices by the `last` epoch they had when filed; an entry whose invoice has moved on
    /// since is skipped when its epoch expires.
    by_last: BTreeMap<u64, Vec<K>>,
    /// The alerts raised by the lines of open invoices (few invoices have any), once per line.
    alerts: HashMap<K, Vec<Alert>>,
    /// The invoice added last and its entry in `open`: an invoice's lines arrive together, so
    /// most lines are settled here without a search of `open`.
    recent: Option<(K, u64)>,
}

impl<K> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            open: BTreeMap::new(),
            by_last: BTreeMap::new(),
            alerts: HashMap::default(),
            recent: None,
        }
    }
}

impl<K: Ord + Hash + Clone> Keyed<K> {
    fn add(&mut self, key: K, epoch: u64, alerts: impl Iterator<Item = Alert>) -> Option<Moved> {
        for alert in alerts {
            self.alerts.entry(key.clone()).or_default().push(alert);
        }
        if let Some((recent, last)) = &self.recent
            && *recent == key
            && epoch <= *last
        {
            return None;
        }
        let moved = match self.open.get_mut(&key) {
            Some(last) => {
                if epoch <= *last {
                    self.recent = Some((key, *last));
                    return None;
                }
                let from = Some(*last);
                *last = epoch;
                Moved { from, to: epoch }
            }
            None => {
                self.open.insert(key.clone(), epoch);
                Moved {
                    from: None,
                    to: epoch,
                }
            }
        };
        self.recent = Some((key.clone(), epoch));
        self.by_last.entry(epoch).or_default().push(key);
        Some(moved)
    }

    fn restore(&mut self, key: K, last: u64, alerts: Vec<Alert>) {
        self.recent = None;
        self.by_last.entry(last).or_default().push(key.clone());
        if !alerts.is_empty() {
            self.alerts.insert(key.clone(), alerts);
        }
        self.open.insert(key, last);
    }

    fn expire(
        &mut self,
        open_from: u64,
        retention: u64,
        text: impl Fn(K) -> Text,
        closed: &mut Vec<Closed>,
    ) {
        while let Some(entry) = self.by_last.first_entry() {
            let last = *entry.key();
            if last.saturating_add(retention) >= open_from {
                break;
            }
            for key in entry.remove() {
                // Filed again under a later epoch since: not expired yet.
                if self.open.get(&key) == Some(&last) {
                    self.open.remove(&key);
                    self.recent = None;
                    let alerts = self.alerts.remove(&key).unwrap_or_default();
                    closed.push(Closed {
                        invoice: text(key),
                        last,
                        alerts,
                    });
                }
            }
        }
    }
}

/// The open invoices of one partition. Usual invoice numbers are kept packed into a `u64`
/// ([`invoice::pack`]), 8 bytes a key instead of 24.
#[derive(Debug, Default)]
pub struct OpenInvoices {
    numbers: Keyed<u64>,
    texts: Keyed<Text>,
    /// The horizon (`open_from`, `retention`) of the last expiry: nothing added since can be
    /// behind it (such a line is a dead letter), so the same horizon need not be searched again.
    expired: Option<(u64, u64)>,
}

/// A change of an open invoice's latest epoch: what the checkpoint's entry becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moved {
    /// Its latest epoch before (`None`: the invoice opened with this line).
    pub from: Option<u64>,
    pub to: u64,
}

/// An invoice that closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    pub invoice: Text,
    pub last: u64,
    /// The alerts its lines raised, once per line.
    pub alerts: Vec<Alert>,
}

/// An open invoice as a checkpoint restores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredInvoice {
    pub invoice: Text,
    pub last: u64,
    /// Its lines' alerts (once each: the restored alert set counts each once).
    pub alerts: Vec<Alert>,
}

impl OpenInvoices {
    /// Adds a line of `invoice` assigned to `epoch`; says when the invoice's latest epoch
    /// moved (or it opened).
    pub fn add(
        &mut self,
        invoice: &Text,
        epoch: u64,
        alerts: impl Iterator<Item = Alert>,
    ) -> Option<Moved> {
        match invoice::pack(invoice) {
            Some(n) => self.numbers.add(n, epoch, alerts),
            None => self.texts.add(invoice.clone(), epoch, alerts),
        }
    }

    /// A restored open invoice (a resumed job).
    pub fn restore(&mut self, r: RestoredInvoice) {
        self.expired = None;
        match invoice::pack(&r.invoice) {
            Some(n) => self.numbers.restore(n, r.last, r.alerts),
            None => self.texts.restore(r.invoice, r.last, r.alerts),
        }
    }

    /// The restored alerts of an invoice that was not open at the committed epoch though a
    /// line of it was: an out-of-order line landed in a committed epoch while the invoice's
    /// other lines (and so its open entry) are in later ones. Those lines, read again, open it
    /// anew, and it closes with these alerts as it would have without the restart.
    pub fn restore_alerts(&mut self, invoice: &Text, alerts: &[Alert]) {
        let found = match invoice::pack(invoice) {
            Some(n) => self.numbers.alerts.entry(n).or_default(),
            None => self.texts.alerts.entry(invoice.clone()).or_default(),
        };
        found.extend_from_slice(alerts);
    }

    /// Closes the invoices whose latest epoch is more than `retention` epochs before
    /// `open_from` (the partition's earliest open epoch).
    pub fn expire(&mut self, open_from: u64, retention: u64, closed: &mut Vec<Closed>) {
        if self.expired.replace((open_from, retention)) == Some((open_from, retention)) {
            return;
        }
        self.numbers
            .expire(open_from, retention, invoice::unpack, closed);
        self.texts.expire(open_from, retention, |t| t, closed);
    }

    /// How many invoices are open (for the tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.numbers.open.len() + self.texts.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expire(open: &mut OpenInvoices, open_from: u64, retention: u64) -> Vec<Closed> {
        let mut closed = Vec::new();
        open.expire(open_from, retention, &mut closed);
        closed
    }

    #[test]
    fn an_invoice_closes_exactly_when_the_watermark_passes_its_last_line_by_the_retention() {
        let mut open = OpenInvoices::default();
        let a: Text = "536365".into();
        assert_eq!(
            open.add(&a, 10, std::iter::empty()),
            Some(Moved { from: None, to: 10 })
        );
        assert_eq!(open.add(&a, 10, std::iter::empty()), None);
        // Retention 3 epochs: open while the watermark is at most 13.
        assert!(expire(&mut open, 13, 3).is_empty());
        assert_eq!(open.len(), 1);
        assert_eq!(
            expire(&mut open, 14, 3),
            vec![Closed {
                invoice: a.clone(),
                last: 10,
                alerts: vec![],
            }]
        );
        assert_eq!(open.len(), 0);
        // Its number coming back later opens a new invoice.
        assert_eq!(
            open.add(&a, 20, std::iter::empty()),
            Some(Moved { from: None, to: 20 })
        );
    }

    #[test]
    fn a_later_line_keeps_the_invoice_open_longer() {
        let mut open = OpenInvoices::default();
        let a: Text = "A1".into();
        let b: Text = "B2".into();
        open.add(&a, 5, std::iter::empty());
        open.add(&b, 6, std::iter::empty());
        assert_eq!(
            open.add(&a, 8, std::iter::empty()),
            Some(Moved {
                from: Some(5),
                to: 8
            })
        );
        // Epoch 5's entry of A is stale; B (last 6) closes first.
        let closed = expire(&mut open, 10, 3);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].invoice, b);
        let closed = expire(&mut open, 12, 3);
        assert_eq!(
            closed,
            vec![Closed {
                invoice: a,
                last: 8,
                alerts: vec![],
            }]
        );
    }

    #[test]
    fn lines_in_a_row_of_one_invoice_move_it_and_others_open_beside_it() {
        for a in ["536365", "A1"] {
            let mut open = OpenInvoices::default();
            let a: Text = a.into();
            let b: Text = format!("{a}0").as_str().into();
            assert_eq!(
                open.add(&a, 5, std::iter::empty()),
                Some(Moved { from: None, to: 5 })
            );
            // The next line of the same invoice, in a later epoch: it moves.
            assert_eq!(
                open.add(&a, 7, std::iter::empty()),
                Some(Moved {
                    from: Some(5),
                    to: 7
                })
            );
            assert_eq!(open.add(&a, 6, std::iter::empty()), None);
            // Another invoice in an earlier epoch opens.
            assert_eq!(
                open.add(&b, 4, std::iter::empty()),
                Some(Moved { from: None, to: 4 })
            );
            assert_eq!(open.len(), 2);
            assert_eq!(
                expire(&mut open, 8, 3),
                vec![Closed {
                    invoice: b,
                    last: 4,
                    alerts: vec![],
                }]
            );
            assert_eq!(expire(&mut open, 11, 3)[0].invoice, a);
        }
    }

    #[test]
    fn restored_invoices_close_like_the_ones_they_were() {
        let mut open = OpenInvoices::default();
        let alert = Alert::LargeQuantity {
            invoice: "X".into(),
            stock_code: "P".into(),
            quantity: 20_000,
        };
        open.restore(RestoredInvoice {
            invoice: "X".into(),
            last: 4,
            alerts: vec![alert.clone()],
        });
        // A later line raising the same alert: settled once per line.
        open.add(&"X".into(), 4, std::iter::once(alert.clone()));
        assert!(expire(&mut open, 6, 2).is_empty());
        let closed = expire(&mut open, 7, 2);
        assert_eq!(closed[0].last, 4);
        assert_eq!(closed[0].alerts, vec![alert.clone(), alert]);
    }

    #[test]
    fn an_invoice_reopened_after_a_restart_settles_the_alerts_of_its_committed_lines() {
        let alert = Alert::NonPositivePrice {
            invoice: "547572".into(),
            stock_code: "53995".into(),
            unit_price_milli: 0,
            quantity: 3,
        };
        // Uninterrupted: a line in epoch 5, then an out-of-order one in epoch 4 that raises
        // the alert.
        let mut clean = OpenInvoices::default();
        clean.add(&"547572".into(), 5, std::iter::empty());
        clean.add(&"547572".into(), 4, std::iter::once(alert.clone()));
        // Resumed after epoch 4 was committed: the alert's line is not read again, and the
        // invoice was not open at the checkpoint (its open entry is at epoch 5).
        let mut resumed = OpenInvoices::default();
        resumed.restore_alerts(&"547572".into(), std::slice::from_ref(&alert));
        resumed.add(&"547572".into(), 5, std::iter::empty());
        for open in [&mut clean, &mut resumed] {
            let closed = expire(open, 8, 2);
            assert_eq!(closed.len(), 1);
            assert_eq!(closed[0].alerts, vec![alert.clone()]);
        }
    }
}
