//! The differential-dataflow part of the job: incremental aggregates over sale lines.
//!
//! One operator (`derive`) reads each batch of lines once and folds it into the input of
//! every aggregate, summed per key. Each aggregate is then a `count_total` (or `distinct`)
//! over those sums, so an epoch's work is proportional to the keys it touches, never to the
//! history; the per-invoice sums, with a key per invoice, are the same computation kept in a
//! hash map (`running`). The overall ranking follows the per-product sums (`top`); per-epoch statistics
//! are folded apart (`per_epoch`); alerts filter aggregates or single lines. All of them end as
//! one collection of [`Output`] rows whose changes per epoch the sinks write.
//!
//! With checkpoints, the job also streams the [`Saved`] state: the current value of every
//! arrangement input that outlives its epoch (totals, countries, invoices, customers, products,
//! per-line alerts). A resumed job feeds it back in at the committed epoch, which rebuilds the
//! same arrangements without re-reading the records. Keys of closed epochs are left out: no
//! record can reach a closed epoch again, so they never change.

pub(crate) mod alerts;
pub(crate) mod derive;
pub(crate) mod invoice;
pub(crate) mod names;
pub(crate) mod per_epoch;
pub(crate) mod running;
pub(crate) mod sums;
pub(crate) mod top;

use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::ThresholdTotal;
use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map as _;

pub use alerts::{Alert, AlertRules};
pub use names::Name;

/// Short text (invoice numbers, stock codes, countries, customers) kept inline: cloning a
/// line for each aggregate then allocates nothing.
pub type Text = compact_str::CompactString;
pub use sums::{Revenue, Sums};

/// A validated sale line as the dataflow carries it: only the fields aggregates use.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Line {
    /// The epoch the line was assigned to (equal to its timestamp in the dataflow).
    pub epoch: u64,
    pub invoice: Text,
    pub stock_code: Text,
    pub customer: Option<Text>,
    pub country: Text,
    pub quantity: i64,
    pub unit_price_milli: i64,
    /// Folded forward from an older epoch (see `epoch`).
    pub late: bool,
}

impl Line {
    /// Quantity x unit price, in thousandths (validated not to overflow).
    pub fn value_milli(&self) -> i64 {
        self.quantity * self.unit_price_milli
    }

    pub fn is_cancellation(&self) -> bool {
        self.invoice.starts_with('C')
    }

    /// One line and its net value: what products and invoices accumulate.
    pub fn revenue(&self) -> Revenue {
        Revenue {
            lines: 1,
            revenue_milli: self.value_milli(),
        }
    }

    /// The additive measures of this line alone.
    pub fn sums(&self) -> Sums {
        let value = self.value_milli();
        let cancel = self.is_cancellation();
        Sums {
            lines: 1,
            units: self.quantity,
            revenue_milli: value,
            cancellation_lines: i64::from(cancel),
            cancellation_value_milli: if cancel { value } else { 0 },
            late_lines: i64::from(self.late),
            ..Sums::default()
        }
    }
}

/// What `count_total` groups the measures by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StatKey {
    Total,
    Country(Text),
}

/// Keys whose distinct count is wanted overall (invoices are counted from their sums; per
/// epoch, see `per_epoch`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DistinctKey {
    Customer(Text),
}

/// A product and its net revenue in thousandths, as ranked.
pub type Ranked = Vec<(Text, i64)>;

/// One row of the job's output. `Totals`, `Country`, `TopProducts` and `Epoch` hold one value
/// per key (a change retracts the old value and adds the new one); `Alert` is a set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Output {
    Totals(Sums),
    Country(Text, Sums),
    TopProducts(Ranked),
    /// An epoch's own lines: measures, distinct invoices (in `Sums::invoices`), top products.
    Epoch(u64, Sums, Ranked),
    Alert(Alert),
    /// A product's name (stock code, description) as of the epoch: rendered beside its code,
    /// never a row of its own.
    Name(Text, Text),
}

/// One entry of the aggregate state a checkpoint keeps: the accumulated input of an
/// arrangement for one key that outlives its epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Saved {
    /// Measures of the total or of a country, without the distinct counts (those come back
    /// from the `Seen` entries). Boxed, as the rare large variant: entries are held by the
    /// hundred thousand while a checkpoint is written.
    Measure(StatKey, Box<Sums>),
    /// A customer seen at least once.
    Seen(DistinctKey),
    /// Net revenue and lines of a product over all epochs.
    Product(Text, Revenue),
    /// Net value and lines of an invoice (its presence counts the invoice as seen).
    Invoice(Text, Revenue),
    /// An alert raised by a single line (boxed, as `Measure`).
    LineAlert(Box<Alert>),
    /// An invoice still open under `--invoice-retention`: the partition its lines come from
    /// and the latest epoch any of them was assigned to. Written by the source; with the
    /// invoice's `Invoice` entry it rebuilds the source's open invoices on resume.
    Open {
        partition: i32,
        invoice: Text,
        last: u64,
    },
    /// A product's current name (see `names`).
    Name(Text, Name),
}

/// What identifies a [`Saved`] entry, borrowed from it: two entries with the same key are
/// values of the same entry. Comparing and hashing it copies nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SavedKey<'a> {
    Measure(&'a StatKey),
    Seen(&'a DistinctKey),
    Product(&'a Text),
    Invoice(&'a Text),
    LineAlert(&'a Alert),
    Open(i32, &'a Text),
    Name(&'a Text),
}

impl Saved {
    /// The entry's key.
    pub fn key(&self) -> SavedKey<'_> {
        match self {
            Saved::Measure(k, _) => SavedKey::Measure(k),
            Saved::Seen(k) => SavedKey::Seen(k),
            Saved::Product(p, _) => SavedKey::Product(p),
            Saved::Invoice(i, _) => SavedKey::Invoice(i),
            Saved::LineAlert(a) => SavedKey::LineAlert(a),
            Saved::Open {
                partition, invoice, ..
            } => SavedKey::Open(*partition, invoice),
            Saved::Name(code, _) => SavedKey::Name(code),
        }
    }

    /// Whether `other` is a value of the same entry (the same key).
    pub fn same_entry(&self, other: &Saved) -> bool {
        self.key() == other.key()
    }

    /// The identity of the entry: a newer entry with the same identity replaces it.
    pub fn identity(&self) -> String {
        self.key().identity()
    }
}

impl SavedKey<'_> {
    /// The entry's identity as the state topic's keys spell it.
    pub fn identity(&self) -> String {
        let mut out = Vec::new();
        self.write_identity(&mut out);
        String::from_utf8(out).expect("identities are UTF-8")
    }

    /// Appends the entry's identity to `out` (a commit writes hundreds of thousands of keys
    /// into one buffer).
    pub fn write_identity(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        fn json<T: Serialize>(out: &mut Vec<u8>, prefix: &str, v: &T) {
            out.extend_from_slice(prefix.as_bytes());
            serde_json::to_writer(out, v).expect("keys serialise");
        }
        match self {
            SavedKey::Measure(k) => json(out, "measure:", k),
            SavedKey::Seen(k) => json(out, "seen:", k),
            SavedKey::Product(p) => json(out, "product:", p),
            SavedKey::Invoice(i) => json(out, "invoice:", i),
            SavedKey::LineAlert(a) => json(out, "line_alert:", a),
            SavedKey::Open(partition, invoice) => {
                // `open:<partition>:<invoice>`, written in place (one per open invoice a
                // commit changes).
                write!(out, "open:{partition}:").expect("writing to a Vec cannot fail");
                json(out, "", invoice);
            }
            SavedKey::Name(code) => json(out, "name:", code),
        }
    }
}

/// Leaves out each retraction of a state entry that the entry's new value follows at the same
/// time. A checkpoint writes only an entry's newest value (a retraction alone deletes it), and
/// `count_total` emits a key's old value right before its new one, so about half the changes
/// need not travel to the writer at all. Any retraction left in is still correct.
pub fn drop_superseded(changes: &mut Vec<(Saved, u64, isize)>) {
    let superseded: Vec<bool> = changes
        .iter()
        .zip(changes.iter().skip(1).map(Some).chain([None]))
        .map(|((entry, time, r), next)| {
            *r < 0
                && next.is_some_and(|(newer, t, n)| *n > 0 && t == time && newer.same_entry(entry))
        })
        .collect();
    let mut flags = superseded.into_iter();
    changes.retain(|_| !flags.next().unwrap_or(false));
}

/// The changes of `saved` that a checkpoint writes, as `emit` wraps them for the writer: only
/// the new values of changed entries (and the retractions of removed ones) cross to it (see
/// [`drop_superseded`]).
pub fn newest_saved<'scope, E: Clone + 'static>(
    saved: VecCollection<'scope, u64, Saved>,
    emit: fn(Saved, u64, isize) -> E,
) -> Stream<'scope, u64, Vec<E>> {
    saved
        .inner
        .unary::<CapacityContainerBuilder<Vec<E>>, _, _, _>(Pipeline, "NewestSaved", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    drop_superseded(data);
                    output
                        .session(&cap)
                        .give_iterator(data.drain(..).map(|(s, t, r)| emit(s, t, r)));
                });
            }
        })
}

/// What `--invoice-retention` takes out of the aggregates when an invoice closes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Closing {
    /// The invoice: its running sum (lines and net value) is dropped.
    Invoice(Text),
    /// An alert one of its lines raised (once per such line): settled with the invoice.
    LineAlert(Alert),
}

/// Updates of a collection as a timely stream carries them: data, time, difference.
pub type Updates<D, R = isize> = Vec<(D, u64, R)>;

/// Sizes of the rankings.
pub const TOP_PRODUCTS: usize = 10;
pub const TOP_PRODUCTS_PER_EPOCH: usize = 5;

/// The job's outputs, and the state to checkpoint when asked for.
pub struct Built<'scope> {
    pub outputs: VecCollection<'scope, u64, Output>,
    pub saved: Option<VecCollection<'scope, u64, Saved>>,
}

/// Keeps the entries of `restored` that `pick` maps into an arrangement's input.
fn restore<'scope, D, R>(
    restored: &VecCollection<'scope, u64, Saved>,
    pick: impl Fn(Saved) -> Option<(D, R)> + 'static,
) -> VecCollection<'scope, u64, D, R>
where
    D: Clone + Ord + 'static,
    R: Semigroup + differential_dataflow::difference::Multiply<isize, Output = R> + 'static,
{
    restored.clone().explode(pick)
}

/// One distinct invoice per key of a per-invoice sum, as a contribution to the totals.
fn one_each<'scope, K: Clone + 'static>(
    sums: VecCollection<'scope, u64, (K, Revenue)>,
) -> VecCollection<'scope, u64, StatKey, Sums> {
    sums.explode(|_| {
        let s = Sums {
            invoices: 1,
            ..Sums::default()
        };
        Some((StatKey::Total, s))
    })
}

/// Builds every aggregate over `lines` (timestamps are epochs), and the products' names from
/// the source's `names` candidates, starting from the `restored` state of a checkpoint; with
/// `save`, also returns the state's changes. `closed` holds what
/// `--invoice-retention` closes: the invoices leave the per-invoice running sums (and their
/// alerts the alert set) and are counted among the distinct invoices from then on.
pub fn build<'scope>(
    lines: VecCollection<'scope, u64, Line>,
    closed: VecCollection<'scope, u64, Closing>,
    names: VecCollection<'scope, u64, Text, Name>,
    restored: VecCollection<'scope, u64, Saved>,
    rules: AlertRules,
    save: bool,
) -> Built<'scope> {
    let derived = derive::derive(lines, rules);
    // The restored names are candidates at the committed epoch, so they stay until a later
    // epoch names the product again.
    let restored_names = restored
        .inner
        .clone()
        .flat_map(|(s, t, r)| match s {
            Saved::Name(code, name) if r > 0 => Some((code, t, name)),
            _ => None,
        })
        .as_collection();
    let names = names::latest(names.concat(restored_names));
    // A closed invoice leaves its running sums (which drop its value) and counts as one closed
    // invoice of the total. (Its large-invoice alert goes with the sum's key; its lines'
    // alerts are retracted one for each line that raised them.)
    let closed_numbers = closed.clone().flat_map(|c| match c {
        Closing::Invoice(i) => invoice::pack(&i),
        Closing::LineAlert(_) => None,
    });
    let closed_named = closed.clone().flat_map(|c| match c {
        Closing::Invoice(i) if invoice::pack(&i).is_none() => Some(i),
        _ => None,
    });
    let settled = closed.clone().explode(|c| match c {
        Closing::LineAlert(a) => Some((a, -1isize)),
        Closing::Invoice(..) => None,
    });
    let closed_count = closed.explode(|c| {
        let s = Sums {
            closed_invoices: 1,
            ..Sums::default()
        };
        matches!(c, Closing::Invoice(..)).then_some((StatKey::Total, s))
    });
    // Net value and lines per invoice (for the large-invoice rule), kept apart for packed
    // numbers and other texts. Their keys are the distinct invoices: each appears once in the
    // output with +1 (a later change retracts the old value and adds the new one), which
    // counts distinct invoices without an arrangement of their own.
    let numbered = derived
        .invoice_numbers
        .concat(restore(&restored, |s| match s {
            Saved::Invoice(i, m) => invoice::pack(&i).map(|n| (n, m)),
            _ => None,
        }));
    let numbered =
        running::running_sums(numbered, closed_numbers, "Running sums: invoices by number");
    let named = derived.invoices.concat(restore(&restored, |s| match s {
        Saved::Invoice(i, m) if invoice::pack(&i).is_none() => Some((i, m)),
        _ => None,
    }));
    let named = running::running_sums(named, closed_named, "Running sums: invoices by text");
    let seen = derived
        .customers
        .concat(restore(&restored, |s| match s {
            Saved::Seen(k) => Some((k, 1isize)),
            _ => None,
        }))
        .arrange_by_self_named("Arrange: customers seen")
        .distinct_total();
    let customers = seen.clone().explode(|_| {
        let s = Sums {
            customers: 1,
            ..Sums::default()
        };
        Some((StatKey::Total, s))
    });
    let distinct_invoices = one_each(numbered.clone()).concat(one_each(named.clone()));
    // Measures of the total and per country, plus distinct invoice and customer counts, all
    // accumulated by one count_total over the same key space.
    let stats = derived
        .measures
        .concat(restore(&restored, |s| match s {
            Saved::Measure(k, m) => Some((k, *m)),
            _ => None,
        }))
        .concat(customers)
        .concat(distinct_invoices)
        .concat(closed_count)
        .arrange_by_self_named("Arrange: totals and countries")
        .count_total();

    // Net revenue per product, and the top N.
    let products = top::products(
        derived.products.concat(restore(&restored, |s| match s {
            Saved::Product(p, m) => Some((p, m)),
            _ => None,
        })),
        TOP_PRODUCTS,
        save,
    );

    // Distinct invoices are the open ones (keys of the arrangements) and the closed ones.
    let totals = stats.clone().map(|(key, s)| {
        let s = Sums {
            invoices: s.invoices + s.closed_invoices,
            closed_invoices: 0,
            ..s
        };
        match key {
            StatKey::Total => Output::Totals(s),
            StatKey::Country(c) => Output::Country(c, s),
        }
    });
    // Per-epoch rows and cancellation bursts.
    let epochs = per_epoch::epoch_rows(derived.epoch_parts, rules).as_collection();

    // Alerts of single lines (kept as a set) and of invoices over the threshold.
    let line_alerts = derived
        .line_alerts
        .concat(settled)
        .concat(restore(&restored, |s| match s {
            Saved::LineAlert(a) => Some((*a, 1isize)),
            _ => None,
        }))
        .arrange_by_self_named("Arrange: line alerts")
        .distinct_total();
    let invoice_alerts = numbered
        .clone()
        .filter(move |(_, s)| rules.is_large_invoice(s.revenue_milli))
        .flat_map(move |(n, s)| rules.invoice_alert(&invoice::unpack(n), s.revenue_milli))
        .concat(
            named
                .clone()
                .flat_map(move |(i, s)| rules.invoice_alert(&i, s.revenue_milli)),
        );
    let alerts = line_alerts
        .clone()
        .concat(invoice_alerts)
        .map(Output::Alert);

    let saved = save.then(|| {
        let measures = stats.map(|(key, s)| {
            Saved::Measure(
                key,
                Box::new(Sums {
                    invoices: 0,
                    customers: 0,
                    ..s
                }),
            )
        });
        measures
            .concat(seen.map(Saved::Seen))
            .concat(products.sums.map(|(p, s)| Saved::Product(p, s)))
            .concat(numbered.map(|(n, s)| Saved::Invoice(invoice::unpack(n), s)))
            .concat(named.map(|(i, s)| Saved::Invoice(i, s)))
            .concat(line_alerts.map(|a| Saved::LineAlert(Box::new(a))))
            .concat(names.clone().map(|(code, name)| Saved::Name(code, name)))
    });
    Built {
        outputs: totals
            .concat(epochs)
            .concat(products.top)
            .concat(alerts)
            .concat(names.map(|(code, name)| Output::Name(code, name.description))),
        saved,
    }
}

#[cfg(test)]
mod tests;
