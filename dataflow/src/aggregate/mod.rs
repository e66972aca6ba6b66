//! The differential-dataflow part of the job: incremental aggregates over sale lines.
//!
//! Every aggregate is an `explode` of lines into `(key, Sums)` followed by `count_total`, so an
//! epoch's work is proportional to the keys it touches, never to the history. Rankings reduce
//! over the per-product sums; alerts filter aggregates or single lines. All of them end as one
//! collection of [`Output`] rows whose changes per epoch the sinks write.

pub mod alerts;
pub mod sums;

use differential_dataflow::consolidation::consolidate_updates;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

pub use alerts::{Alert, AlertRules};

/// Short text (invoice numbers, stock codes, countries, customers) kept inline: cloning a
/// line for each aggregate then allocates nothing.
pub type Text = compact_str::CompactString;
pub use sums::Sums;

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
enum StatKey {
    Total,
    Country(Text),
    Epoch(u64),
}

/// Keys whose distinct count is wanted: invoices overall and per epoch, customers overall.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum DistinctKey {
    Invoice(Option<u64>, Text),
    Customer(Text),
}

/// Scope of a product ranking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum RankKey {
    Total,
    Epoch(u64),
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
}

/// Sizes of the rankings.
pub const TOP_PRODUCTS: usize = 10;
pub const TOP_PRODUCTS_PER_EPOCH: usize = 5;

/// Consolidates each batch of updates on the worker that made it, before any exchange: the
/// thousands of lines of a batch that touch the same total, country, epoch or invoice cross
/// the exchange as one update. Results are unchanged; only the work shrinks.
fn pre_aggregate<'scope, K, R>(
    c: VecCollection<'scope, u64, K, R>,
) -> VecCollection<'scope, u64, K, R>
where
    K: Ord + Clone + 'static,
    R: Semigroup + 'static,
{
    c.inner
        .unary(Pipeline, "PreAggregate", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    consolidate_updates(data);
                    output.session(&cap).give_container(data);
                });
            }
        })
        .as_collection()
}

/// Builds every aggregate over `lines` (timestamps are epochs).
pub fn build<'scope>(
    lines: VecCollection<'scope, u64, Line>,
    rules: AlertRules,
) -> VecCollection<'scope, u64, Output> {
    // Measures per total / country / epoch, plus distinct invoice and customer counts, all
    // accumulated by one count_total over the same key space.
    let measures = lines.clone().explode(|l: Line| {
        let s = l.sums();
        [
            (StatKey::Total, s),
            (StatKey::Epoch(l.epoch), s),
            (StatKey::Country(l.country), s),
        ]
    });
    let distinct = lines.clone().flat_map(|l: Line| {
        let customer = l.customer.map(DistinctKey::Customer);
        [
            DistinctKey::Invoice(None, l.invoice.clone()),
            DistinctKey::Invoice(Some(l.epoch), l.invoice),
        ]
        .into_iter()
        .chain(customer)
    });
    let distinct = pre_aggregate(distinct).distinct().explode(|k| {
        let (key, s) = match k {
            DistinctKey::Invoice(None, _) => (
                StatKey::Total,
                Sums {
                    invoices: 1,
                    ..Sums::default()
                },
            ),
            DistinctKey::Invoice(Some(e), _) => (
                StatKey::Epoch(e),
                Sums {
                    invoices: 1,
                    ..Sums::default()
                },
            ),
            DistinctKey::Customer(_) => (
                StatKey::Total,
                Sums {
                    customers: 1,
                    ..Sums::default()
                },
            ),
        };
        Some((key, s))
    });
    let stats = pre_aggregate(measures.concat(distinct)).count_total();

    // Net revenue per product, overall and per epoch, then the top N of each.
    let per_product = lines.clone().explode(|l: Line| {
        let s = Sums {
            lines: 1,
            revenue_milli: l.value_milli(),
            ..Sums::default()
        };
        [
            ((RankKey::Total, l.stock_code.clone()), s),
            ((RankKey::Epoch(l.epoch), l.stock_code), s),
        ]
    });
    let rankings = pre_aggregate(per_product)
        .count_total()
        .map(|((scope, product), s)| (scope, (-s.revenue_milli, product)))
        .reduce_named("TopProducts", |scope, products, out| {
            let n = match scope {
                RankKey::Total => TOP_PRODUCTS,
                RankKey::Epoch(_) => TOP_PRODUCTS_PER_EPOCH,
            };
            // Values arrive sorted by (-revenue, stock code): the best first, ties by code.
            let top: Ranked = products
                .iter()
                .filter(|(_, count)| *count > 0)
                .take(n)
                .map(|((neg_revenue, product), _)| (product.clone(), -neg_revenue))
                .collect();
            out.push((top, 1isize));
        });

    let totals = stats.clone().flat_map(|(key, s)| match key {
        StatKey::Total => Some(Output::Totals(s)),
        StatKey::Country(c) => Some(Output::Country(c, s)),
        StatKey::Epoch(_) => None,
    });
    let epoch_stats = stats.flat_map(|(key, s)| match key {
        StatKey::Epoch(e) => Some((e, s)),
        _ => None,
    });
    let epoch_top = rankings.clone().flat_map(|(scope, top)| match scope {
        RankKey::Epoch(e) => Some((e, top)),
        RankKey::Total => None,
    });
    let epochs = epoch_stats.join_map(epoch_top, |e, s, top| Output::Epoch(*e, *s, top.clone()));
    let top_products = rankings.flat_map(|(scope, top)| match scope {
        RankKey::Total => Some(Output::TopProducts(top)),
        RankKey::Epoch(_) => None,
    });

    totals
        .concat(epochs)
        .concat(top_products)
        .concat(build_alerts(lines, rules))
}

fn build_alerts<'scope>(
    lines: VecCollection<'scope, u64, Line>,
    rules: AlertRules,
) -> VecCollection<'scope, u64, Output> {
    let per_line = lines
        .clone()
        .flat_map(move |l: Line| rules.line_alerts(&l))
        .distinct();
    let per_invoice = lines.clone().explode(|l: Line| {
        let s = Sums {
            lines: 1,
            revenue_milli: l.value_milli(),
            ..Sums::default()
        };
        Some((l.invoice, s))
    });
    let invoices = pre_aggregate(per_invoice)
        .count_total()
        .flat_map(move |(invoice, s)| rules.invoice_alert(&invoice, s.revenue_milli));
    let bursts = lines
        .filter(|l: &Line| l.is_cancellation() && l.customer.is_some())
        .explode(|l: Line| {
            let s = Sums {
                lines: 1,
                ..Sums::default()
            };
            l.customer.map(|c| ((l.epoch, c), s))
        })
        .count_total()
        .flat_map(move |((epoch, customer), s)| {
            rules.cancellation_alert(epoch, &customer, s.lines)
        });
    per_line.concat(invoices).concat(bursts).map(Output::Alert)
}

#[cfg(test)]
mod tests;
