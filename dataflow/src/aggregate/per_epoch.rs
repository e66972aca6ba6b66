//! Per-epoch statistics (measures, distinct invoices, top products of the epoch's own lines)
//! and the cancellation bursts of each epoch.
//!
//! An epoch's lines all carry its own time, and its row is final once the epoch closes, so it
//! needs no arrangement that lives for ever: each worker folds its lines into small per-epoch
//! parts, the parts are exchanged by epoch, and the owner keeps an epoch's accumulator only
//! until the frontier passes it. Memory is thus bounded by the open epochs, not by history.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Alert, AlertRules, Output, Ranked, Sums, TOP_PRODUCTS_PER_EPOCH, Text, Updates};
use crate::epoch::take_closed;

/// What one batch of one worker contributes to one epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochPart {
    pub epoch: u64,
    pub sums: Sums,
    /// Net revenue per product.
    pub products: Vec<(Text, i64)>,
    /// Invoices whose number packs into a `u64` ([`super::invoice::pack`]), and the others.
    pub invoice_numbers: Vec<u64>,
    pub invoices: Vec<Text>,
    /// Cancellation lines per customer.
    pub cancellations: Vec<(Text, i64)>,
}

/// An open epoch's statistics so far.
#[derive(Default)]
struct Accumulator {
    sums: Sums,
    products: HashMap<Text, i64>,
    invoice_numbers: HashSet<u64>,
    invoices: HashSet<Text>,
    cancellations: HashMap<Text, i64>,
}

impl Accumulator {
    fn add(&mut self, part: EpochPart) {
        use differential_dataflow::difference::Semigroup;
        self.sums.plus_equals(&part.sums);
        for (product, revenue) in part.products {
            *self.products.entry(product).or_default() += revenue;
        }
        self.invoice_numbers.extend(part.invoice_numbers);
        self.invoices.extend(part.invoices);
        for (customer, lines) in part.cancellations {
            *self.cancellations.entry(customer).or_default() += lines;
        }
    }

    /// The epoch's row (measures with its distinct invoices, and its best products by net
    /// revenue, ties by stock code), then its cancellation bursts by customer.
    fn finish(self, epoch: u64, rules: &AlertRules) -> Vec<Output> {
        let mut sums = self.sums;
        sums.invoices = (self.invoice_numbers.len() + self.invoices.len()) as i64;
        let mut products: Vec<(Text, i64)> = self.products.into_iter().collect();
        products.sort_by(|a, b| (-a.1, &a.0).cmp(&(-b.1, &b.0)));
        products.truncate(TOP_PRODUCTS_PER_EPOCH);
        let mut bursts: Vec<Alert> = self
            .cancellations
            .into_iter()
            .filter_map(|(customer, lines)| rules.cancellation_alert(epoch, &customer, lines))
            .collect();
        bursts.sort();
        std::iter::once(Output::Epoch(epoch, sums, products as Ranked))
            .chain(bursts.into_iter().map(Output::Alert))
            .collect()
    }
}

/// One `Output::Epoch` row per epoch with lines, and its `cancellation_burst` alerts, at the
/// epoch's time, once it is closed. (An epoch's cancellations are final when it closes, so
/// the alerts never need retracting.)
pub fn epoch_rows<'scope>(
    parts: Stream<'scope, u64, Updates<EpochPart>>,
    rules: AlertRules,
) -> Stream<'scope, u64, Updates<Output>> {
    parts.unary_frontier(
        Exchange::new(|(part, _, _): &(EpochPart, u64, isize)| part.epoch),
        "EpochRows",
        |_, _| {
            let mut open: BTreeMap<u64, (Capability<u64>, Accumulator)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    for (part, time, _) in data.drain(..) {
                        let slot = open.entry(part.epoch).or_insert_with(|| {
                            (
                                cap.delayed(&time, output.output_index()),
                                Accumulator::default(),
                            )
                        });
                        slot.1.add(part);
                    }
                });
                for (epoch, (cap, acc)) in take_closed(&mut open, frontier) {
                    let mut session = output.session(&cap);
                    for row in acc.finish(epoch, &rules) {
                        session.give((row, epoch, 1));
                    }
                }
            }
        },
    )
}
