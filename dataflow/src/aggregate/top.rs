//! Net revenue per product and the best products over all epochs, kept incrementally.
//!
//! Each worker keeps the products whose key hashes to it: their sums in a hash map and their
//! ranking by net revenue. Once an epoch is complete it applies the epoch's updates and, when
//! its own best N change, sends them to the last worker (worker 0 already writes), which ranks
//! the workers' lists together. The best N overall are always among the best N of some worker,
//! so this emits what `count_total` followed by a ranking of every product would, for the work
//! of the changes alone, spread over the workers. Products never leave (a line always adds to
//! a product's line count), so the sums need no B-tree (see [`super::running`]).

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use foldhash::HashMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;

use super::{Output, Ranked, Revenue, Text, Updates};
use crate::epoch::take_closed;

/// The products' sums and the best products.
pub struct Products<'scope> {
    /// `(product, sum)` changes: the old sum retracted and the new one added at each epoch
    /// where a product's sum changes (only with `save`: they are the checkpoint's entries).
    pub sums: VecCollection<'scope, u64, (Text, Revenue)>,
    /// One `TopProducts` row of at most `n`, best first (ties by stock code), that changes
    /// only when the ranking does.
    pub top: VecCollection<'scope, u64, Output>,
}

/// One worker's best products as of an epoch: its index and the list.
type Local = (u64, Ranked);

/// An epoch's updates on one worker, held until the frontier passes it.
struct Pending {
    top: Capability<u64>,
    sums: Option<Capability<u64>>,
    updates: HashMap<Text, Revenue>,
}

/// Sums the `updates` of each product over the epochs and ranks the best `n`.
pub fn products<'scope>(
    updates: VecCollection<'scope, u64, Text, Revenue>,
    n: usize,
    save: bool,
) -> Products<'scope> {
    let scope = updates.inner.scope();
    let worker = scope.index() as u64;
    let ranker = scope.peers() as u64 - 1;
    let mut builder = OperatorBuilder::new("Products".to_owned(), scope);
    let mut input = builder.new_input(
        updates.inner,
        Exchange::new(|(product, _, _): &(Text, u64, Revenue)| product.hashed()),
    );
    let (local, local_stream) = builder.new_output::<Vec<(Local, u64, isize)>>();
    let (sums, sums_stream) = builder.new_output::<Updates<(Text, Revenue)>>();
    let mut local = OutputBuilder::from(local);
    let mut sums = OutputBuilder::from(sums);
    builder.build(move |_| {
        let mut totals: HashMap<Text, Revenue> = HashMap::default();
        let mut ranked: BTreeSet<(i64, Text)> = BTreeSet::new();
        let mut shown: Ranked = Vec::new();
        let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
        move |frontiers| {
            let mut local = local.activate();
            let mut sums = sums.activate();
            input.for_each(|cap, data| {
                for (product, time, diff) in data.drain(..) {
                    let epoch = pending.entry(time).or_insert_with(|| Pending {
                        top: cap.delayed(&time, 0),
                        sums: save.then(|| cap.delayed(&time, 1)),
                        updates: HashMap::default(),
                    });
                    epoch
                        .updates
                        .entry(product)
                        .and_modify(|sum| sum.plus_equals(&diff))
                        .or_insert(diff);
                }
            });
            for (time, epoch) in take_closed(&mut pending, &frontiers[0]) {
                let mut changes = Vec::new();
                for (product, diff) in epoch.updates {
                    if diff.is_zero() {
                        continue;
                    }
                    let old = totals.get(&product).copied();
                    let mut new = old.unwrap_or_default();
                    new.plus_equals(&diff);
                    if let Some(old) = old {
                        ranked.remove(&(-old.revenue_milli, product.clone()));
                        if save {
                            changes.push(((product.clone(), old), time, -1));
                        }
                    }
                    if new.is_zero() {
                        totals.remove(&product);
                    } else {
                        ranked.insert((-new.revenue_milli, product.clone()));
                        if save {
                            changes.push(((product.clone(), new), time, 1));
                        }
                        totals.insert(product, new);
                    }
                }
                if let Some(cap) = &epoch.sums {
                    sums.session(cap).give_container(&mut changes);
                }
                let best: Ranked = ranked
                    .iter()
                    .take(n)
                    .map(|(neg_revenue, product)| (product.clone(), -neg_revenue))
                    .collect();
                if best != shown {
                    local
                        .session(&epoch.top)
                        .give(((worker, best.clone()), time, 1));
                    shown = best;
                }
            }
        }
    });
    let top = rank(local_stream, ranker, n);
    Products {
        sums: sums_stream.as_collection(),
        top,
    }
}

/// The best `n` of the workers' lists, on worker `ranker`.
fn rank<'scope>(
    lists: Stream<'scope, u64, Vec<(Local, u64, isize)>>,
    ranker: u64,
    n: usize,
) -> VecCollection<'scope, u64, Output> {
    lists
        .unary_frontier(
            Exchange::new(move |_: &(Local, u64, isize)| ranker),
            "TopProducts",
            move |_, _| {
                let mut pending: BTreeMap<u64, (Capability<u64>, Vec<Local>)> = BTreeMap::new();
                let mut lists: BTreeMap<u64, Ranked> = BTreeMap::new();
                let mut shown: Option<Ranked> = None;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        for (list, time, _) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| {
                                    (cap.delayed(&time, output.output_index()), Vec::new())
                                })
                                .1
                                .push(list);
                        }
                    });
                    for (time, (cap, changed)) in take_closed(&mut pending, frontier) {
                        lists.extend(changed);
                        let mut all: Vec<(i64, &Text)> = lists
                            .values()
                            .flatten()
                            .map(|(product, revenue)| (-revenue, product))
                            .collect();
                        all.sort_unstable();
                        let top = (!all.is_empty()).then(|| {
                            all.iter()
                                .take(n)
                                .map(|(neg_revenue, product)| ((*product).clone(), -neg_revenue))
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::consolidation::consolidate_updates;
    use differential_dataflow::input::Input;

    use super::*;

    type Got = (
        Vec<(Output, u64, isize)>,
        Vec<((Text, Revenue), u64, isize)>,
    );

    /// Runs `products` over `updates` (product, epoch, revenue) on `workers` workers.
    fn run(updates: &[(u32, u64, i64)], workers: usize) -> Got {
        let got = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let sink = Arc::clone(&got);
        let updates = updates.to_vec();
        timely::execute(timely::Config::process(workers), move |worker| {
            let (tops, sums) = (Arc::clone(&sink), Arc::clone(&sink));
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, updates) = scope.new_collection::<Text, Revenue>();
                let ranked = products(updates, 3, true);
                ranked.top.inspect(move |(o, t, r)| {
                    tops.lock().unwrap().0.push((o.clone(), *t, *r));
                });
                ranked.sums.inspect(move |(d, t, r)| {
                    sums.lock().unwrap().1.push((d.clone(), *t, *r));
                });
                input
            });
            if worker.index() == 0 {
                for (product, time, revenue) in &updates {
                    input.advance_to(*time);
                    let diff = Revenue {
                        lines: 1,
                        revenue_milli: *revenue,
                    };
                    input.update_at(format!("P{product:02}").into(), *time, diff);
                }
            }
            input.close();
        })
        .expect("timely runs");
        let (mut tops, mut sums) = got.lock().unwrap().clone();
        consolidate_updates(&mut tops);
        consolidate_updates(&mut sums);
        (tops, sums)
    }

    /// The same, epoch by epoch over every product's total.
    fn expected(updates: &[(u32, u64, i64)]) -> Got {
        let (mut tops, mut sums) = (Vec::new(), Vec::new());
        let mut totals: BTreeMap<Text, Revenue> = BTreeMap::new();
        let mut shown: Option<Ranked> = None;
        let last = updates.iter().map(|u| u.1).max().unwrap_or(0);
        for time in 0..=last {
            let mut changed: BTreeMap<Text, Revenue> = BTreeMap::new();
            for (product, _, revenue) in updates.iter().filter(|u| u.1 == time) {
                let key: Text = format!("P{product:02}").into();
                let total = totals.entry(key.clone()).or_default();
                changed.entry(key).or_insert(*total);
                total.plus_equals(&Revenue {
                    lines: 1,
                    revenue_milli: *revenue,
                });
            }
            for (key, old) in changed {
                if !old.is_zero() {
                    sums.push(((key.clone(), old), time, -1));
                }
                sums.push(((key.clone(), totals[&key]), time, 1));
            }
            let mut all: Vec<(i64, Text)> = totals
                .iter()
                .map(|(p, s)| (-s.revenue_milli, p.clone()))
                .collect();
            all.sort();
            let top = (!all.is_empty())
                .then(|| all.iter().take(3).map(|(r, p)| (p.clone(), -r)).collect());
            if top != shown {
                if let Some(old) = shown.take() {
                    tops.push((Output::TopProducts(old), time, -1));
                }
                if let Some(new) = &top {
                    tops.push((Output::TopProducts(new.clone()), time, 1));
                }
                shown = top;
            }
        }
        consolidate_updates(&mut tops);
        consolidate_updates(&mut sums);
        (tops, sums)
    }

    #[test]
    fn the_top_and_the_sums_are_those_of_every_product_for_any_worker_count() {
        let mut next = crate::aggregate::tests::numbers(7);
        // Sorted by epoch; revenue that falls as well as rises, and ties.
        let mut updates: Vec<(u32, u64, i64)> = (0..600)
            .map(|_| {
                let revenue = next(9) as i64 * 500 - 1_500;
                (next(17) as u32, next(40), revenue)
            })
            .collect();
        updates.sort_by_key(|u| u.1);
        let want = expected(&updates);
        assert!(want.0.len() > 20, "the ranking should change often");
        for workers in [1, 2, 3, 4] {
            assert_eq!(run(&updates, workers), want, "{workers} workers");
        }
    }
}
