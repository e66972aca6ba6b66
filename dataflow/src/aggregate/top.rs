//! The best products over all epochs, ranked incrementally.
//!
//! Only a few products change per epoch, so re-ranking all of them at every epoch (a `reduce`
//! over a single key) would cost a pass over every product each time. This operator keeps the
//! products ordered by net revenue on one worker (the last, as worker 0 writes), applies an epoch's changes once the epoch is
//! complete, and emits the top N when it differs from the last: the same updates the `reduce`
//! would make, for the work of the changes alone.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Output, Ranked, Revenue, Text};
use crate::epoch::take_closed;

/// Products ranked by net revenue (best first, ties by stock code), as one `TopProducts` row
/// of at most `n` that changes only when the ranking does.
pub fn top_products<'scope>(
    products: VecCollection<'scope, u64, (Text, Revenue)>,
    n: usize,
) -> VecCollection<'scope, u64, Output> {
    // The last worker ranks: worker 0 already writes the outputs and the checkpoints.
    let ranker = products.inner.scope().peers() as u64 - 1;
    products
        .inner
        .unary_frontier(
            Exchange::new(move |_: &((Text, Revenue), u64, isize)| ranker),
            "TopProducts",
            move |_, _| {
                // Changes of each time not yet complete, with a capability to emit at it.
                type Pending = Vec<((i64, Text), isize)>;
                let mut pending: BTreeMap<u64, (Capability<u64>, Pending)> = BTreeMap::new();
                // Every product by (-revenue, stock code), with its count.
                let mut ranked: BTreeMap<(i64, Text), isize> = BTreeMap::new();
                let mut shown: Option<Ranked> = None;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for ((product, sums), time, diff) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| {
                                    (cap.delayed(&time, output.output_index()), Vec::new())
                                })
                                .1
                                .push(((-sums.revenue_milli, product), diff));
                        }
                    });
                    for (time, (cap, changes)) in take_closed(&mut pending, frontier) {
                        for (key, diff) in changes {
                            match ranked.entry(key) {
                                Entry::Occupied(mut e) => {
                                    *e.get_mut() += diff;
                                    if *e.get() == 0 {
                                        e.remove();
                                    }
                                }
                                Entry::Vacant(e) => {
                                    if diff != 0 {
                                        e.insert(diff);
                                    }
                                }
                            }
                        }
                        let top = (!ranked.is_empty()).then(|| {
                            ranked
                                .iter()
                                .filter(|(_, count)| **count > 0)
                                .take(n)
                                .map(|((neg_revenue, product), _)| (product.clone(), -neg_revenue))
                                .collect::<Ranked>()
                        });
                        if top != shown {
                            let mut session = output.session(&cap);
                            if let Some(old) = shown.take() {
                                session.give((Output::TopProducts(old), time, -1));
                            }
                            if let Some(new) = &top {
                                session.give((Output::TopProducts(new.clone()), time, 1));
                            }
                            shown = top;
                        }
                    }
                }
            },
        )
        .as_collection()
}
