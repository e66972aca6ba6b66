//! Running sums per key for the aggregates with the most keys (one per invoice).
//!
//! [`running_sums`] produces exactly what differential's `arrange` + `count_total` produces
//! over the job's totally ordered epochs: at each epoch where a key's sum changes, its old sum
//! retracted and its new one added, keys in order. It keeps only the current sum of each key,
//! where an arrangement keeps every update until a merge compacts it and holds both inputs of
//! a merge while it runs (about 100 MB at the peak of 10M records). A key whose sum returns to
//! zero (an invoice closed by retention) leaves at once. The sums are a B-tree, not a hash
//! map: keys come and go all the time (invoices open and close), and a hash table's deleted
//! slots eventually make it double while its live keys stay level (on 30M records the two
//! workers' tables reached 65 MB against 26 MB on 10M); a B-tree's size follows its keys.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::hash::Hash;

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::difference::Semigroup;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::operator::Operator;

/// What one epoch brings, held under a capability for it until the frontier passes it: the
/// keys' updates and the keys that close.
struct Pending<K, R> {
    cap: Capability<u64>,
    updates: Vec<(K, R)>,
    closes: Vec<K>,
}

/// The sum of each key's updates through each epoch, as changes: `(key, sum)` with -1 when an
/// older sum leaves and +1 when a new one arrives. Zero sums are absent. A key in `closes` at
/// an epoch drops the sum it had before that epoch (its own updates at that epoch stay; a
/// close counts once, whatever its multiplicity): `--invoice-retention` closes an invoice this
/// way without keeping its value elsewhere.
pub fn running_sums<'scope, K, R>(
    updates: VecCollection<'scope, u64, K, R>,
    closes: VecCollection<'scope, u64, K>,
    name: &str,
) -> VecCollection<'scope, u64, (K, R), isize>
where
    K: ExchangeData + Hash,
    R: ExchangeData + Semigroup,
{
    running_sums_shown(updates, closes, name, |old, new| old == new)
}

/// [`running_sums`], where a sum's change is emitted only when `same` tells the old and new
/// sums apart: a sum may change in ways no reader sees (a product name's epoch advancing while
/// its description stays). The sum kept is always the newest; the one emitted is the newest
/// that differed.
pub fn running_sums_shown<'scope, K, R>(
    updates: VecCollection<'scope, u64, K, R>,
    closes: VecCollection<'scope, u64, K>,
    name: &str,
    same: fn(&R, &R) -> bool,
) -> VecCollection<'scope, u64, (K, R), isize>
where
    K: ExchangeData + Hash,
    R: ExchangeData + Semigroup,
{
    let by_key = Exchange::new(|(key, _, _): &(K, u64, R)| key.hashed());
    let closing_by_key = Exchange::new(|(key, _, _): &(K, u64, isize)| key.hashed());
    updates
        .inner
        .binary_frontier::<_, CapacityContainerBuilder<Vec<_>>, _, _, _, _>(
            closes.inner,
            by_key,
            closing_by_key,
            name,
            |_, _| {
                let mut sums: BTreeMap<K, R> = BTreeMap::new();
                // The sum last emitted, for the keys whose sum kept has changed unseen since
                // (none when `same` is equality).
                let mut emitted: BTreeMap<K, R> = BTreeMap::new();
                let mut pending: BTreeMap<u64, Pending<K, R>> = BTreeMap::new();
                move |(input, frontier), (closing, closing_frontier), output| {
                    input.for_each(|cap, data| {
                        for (key, time, diff) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| Pending::new(cap.delayed(&time, 0)))
                                .updates
                                .push((key, diff));
                        }
                    });
                    closing.for_each(|cap, data| {
                        for (key, time, _) in data.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| Pending::new(cap.delayed(&time, 0)))
                                .closes
                                .push(key);
                        }
                    });
                    while let Some(epoch) = pending.first_entry() {
                        let time = *epoch.key();
                        if frontier.less_equal(&time) || closing_frontier.less_equal(&time) {
                            break;
                        }
                        let Pending {
                            cap,
                            mut updates,
                            closes,
                        } = epoch.remove();
                        let mut session = output.session(&cap);
                        for key in closes {
                            if let Some(old) = sums.remove(&key) {
                                let shown = emitted.remove(&key).unwrap_or(old);
                                session.give(((key, shown), time, -1));
                            }
                        }
                        // Sorted by key, each key's updates summed, zero sums gone.
                        consolidate(&mut updates);
                        for (key, diff) in updates {
                            match sums.entry(key) {
                                Entry::Occupied(mut sum) => {
                                    let old = sum.get().clone();
                                    sum.get_mut().plus_equals(&diff);
                                    let shown = emitted.remove(sum.key()).unwrap_or(old);
                                    // No change a reader sees (or none at all: a sum that
                                    // keeps its greatest, say): nothing is emitted.
                                    if same(&shown, sum.get()) {
                                        if shown != *sum.get() {
                                            emitted.insert(sum.key().clone(), shown);
                                        }
                                        continue;
                                    }
                                    session.give(((sum.key().clone(), shown), time, -1));
                                    if sum.get().is_zero() {
                                        sum.remove();
                                    } else {
                                        session.give((
                                            (sum.key().clone(), sum.get().clone()),
                                            time,
                                            1,
                                        ));
                                    }
                                }
                                Entry::Vacant(absent) => {
                                    // Never zero: consolidation dropped zero sums.
                                    session.give(((absent.key().clone(), diff.clone()), time, 1));
                                    absent.insert(diff);
                                }
                            }
                        }
                    }
                }
            },
        )
        .as_collection()
}

impl<K, R> Pending<K, R> {
    fn new(cap: Capability<u64>) -> Self {
        Pending {
            cap,
            updates: Vec::new(),
            closes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use differential_dataflow::consolidation::consolidate_updates;
    use differential_dataflow::input::Input;
    use differential_dataflow::operators::count::CountTotal;

    use super::*;

    type Change = ((u64, i64), u64, isize);

    /// Runs `running_sums` and `count_total` side by side over `updates` (key, epoch, diff)
    /// and returns both outputs consolidated.
    fn both(updates: &[(u64, u64, i64)], workers: usize) -> (Vec<Change>, Vec<Change>) {
        let got = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let sink = Arc::clone(&got);
        let updates = updates.to_vec();
        timely::execute(timely::Config::process(workers), move |worker| {
            let sink = Arc::clone(&sink);
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, updates) = scope.new_collection::<u64, i64>();
                let (_, closes) = scope.new_collection::<u64, isize>();
                let left = Arc::clone(&sink);
                running_sums(updates.clone(), closes, "Running").inspect(move |(d, t, r)| {
                    left.lock().unwrap().0.push((*d, *t, *r));
                });
                updates
                    .arrange_by_self()
                    .count_total()
                    .inspect(move |(d, t, r)| {
                        sink.lock().unwrap().1.push((*d, *t, *r));
                    });
                input
            });
            if worker.index() == 0 {
                // Every other update is sent three epochs early, while older epochs are
                // still open; the dataflow runs between epochs.
                let last = updates.iter().map(|(_, t, _)| *t).max().unwrap_or(0);
                for now in 0..=last {
                    input.advance_to(now);
                    for (i, (key, time, diff)) in updates.iter().enumerate() {
                        let send_at = if i % 2 == 0 {
                            time.saturating_sub(3)
                        } else {
                            *time
                        };
                        if send_at == now {
                            input.update_at(*key, *time, *diff);
                        }
                    }
                    input.flush();
                    worker.step();
                }
            }
            input.close();
        })
        .expect("timely runs");
        let (mut running, mut counted) = got.lock().unwrap().clone();
        consolidate_updates(&mut running);
        consolidate_updates(&mut counted);
        (running, counted)
    }

    fn pseudo_random(n: usize) -> Vec<(u64, u64, i64)> {
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        (0..n)
            .map(|_| {
                let diff = next(21) as i64 - 10;
                (next(50), next(12), diff)
            })
            .collect()
    }

    #[test]
    fn same_changes_as_count_total_for_any_worker_count() {
        let updates = pseudo_random(3_000);
        for workers in [1, 2, 3] {
            let (running, counted) = both(&updates, workers);
            assert!(!counted.is_empty());
            assert_eq!(running, counted, "{workers} workers");
        }
    }

    #[test]
    fn a_sum_back_to_zero_leaves_and_a_cancelled_epoch_changes_nothing() {
        // Key 1: +5 at 0, -5 at 2 (gone). Key 2: +3 and -3 within epoch 1 (never seen).
        let updates = [(1, 0, 5), (2, 1, 3), (2, 1, -3), (1, 2, -5), (3, 2, 7)];
        let (running, counted) = both(&updates, 2);
        assert_eq!(running, counted);
        assert_eq!(
            running,
            vec![((1, 5), 0, 1), ((1, 5), 2, -1), ((3, 7), 2, 1)]
        );
    }

    /// `running_sums` alone, with keys closed at the given epochs.
    fn with_closes(updates: &[(u64, u64, i64)], closes: &[(u64, u64)]) -> Vec<Change> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let (updates, closes) = (updates.to_vec(), closes.to_vec());
        timely::execute(timely::Config::process(2), move |worker| {
            let sink = Arc::clone(&sink);
            let (mut input, mut close) = worker.dataflow::<u64, _, _>(|scope| {
                let (input, updates) = scope.new_collection::<u64, i64>();
                let (close, closes) = scope.new_collection::<u64, isize>();
                running_sums(updates, closes, "Running").inspect(move |(d, t, r)| {
                    sink.lock().unwrap().push((*d, *t, *r));
                });
                (input, close)
            });
            if worker.index() == 0 {
                for (key, time, diff) in &updates {
                    input.update_at(*key, *time, *diff);
                }
                for (key, time) in &closes {
                    close.update_at(*key, *time, 1);
                }
            }
        })
        .expect("timely runs");
        let mut changes = got.lock().unwrap().clone();
        consolidate_updates(&mut changes);
        changes
    }

    #[test]
    fn a_closed_key_drops_its_earlier_sum_and_keeps_that_epoch_s_own_updates() {
        // Key 1 closes at 3, where a new sum starts under the same key; key 2 closes at 2.
        let updates = [(1, 0, 5), (1, 1, 2), (2, 0, 7), (1, 3, 4)];
        let changes = with_closes(&updates, &[(1, 3), (2, 2), (9, 2)]);
        assert_eq!(
            changes,
            vec![
                ((1, 4), 3, 1),
                ((1, 5), 0, 1),
                ((1, 5), 1, -1),
                ((1, 7), 1, 1),
                ((1, 7), 3, -1),
                ((2, 7), 0, 1),
                ((2, 7), 2, -1),
            ]
        );
    }
}
