//! Which state entries a commit writes: the changes of its epochs, coalesced so that each
//! entry is written once, with its newest value (pure: no Kafka here).

use std::convert::Infallible;

use foldhash::HashMap;

use crate::aggregate::{Saved, SavedKey};

/// The state entries a commit writes: the changes of its epochs in the order they happened,
/// of which only the newest of each entry is written. Epochs and commits that coalesce while a
/// transaction runs are appended as they come, and merged into one part (each entry once)
/// only when the changes held have doubled since the last merge: however many epochs a commit
/// spans, each change is looked up a bounded number of times, and the changes held stay within
/// about twice the entries they change.
#[derive(Debug, Default)]
pub struct StateChanges {
    parts: Vec<Part>,
    /// Changes held, and how many the last merge left.
    held: usize,
    merged: usize,
}

/// One epoch's changes: its retractions first (`gone` of them), then new values. Each entry
/// changes at most once an epoch, so the new values' keys are distinct.
#[derive(Debug)]
struct Part {
    changes: Vec<Change>,
    gone: usize,
}

/// An entry's change: its new value, or its deletion (`kept` false).
#[derive(Debug)]
pub(super) struct Change {
    pub(super) entry: Saved,
    pub(super) kept: bool,
}

/// Below this many changes held, parts are not merged before the commit is written.
const MERGE_FROM: usize = 4096;

impl StateChanges {
    /// The changes of one epoch, in which each entry changes at most once: its old value
    /// (`r` < 0) and its new one (`r` > 0). An entry is written, or deleted if it only lost
    /// its value.
    pub fn of_epoch(changes: impl IntoIterator<Item = (Saved, isize)>) -> StateChanges {
        let (mut changes, new): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .map(|(entry, r)| Change { entry, kept: r > 0 })
            .partition(|c| !c.kept);
        let gone = changes.len();
        changes.extend(new);
        StateChanges {
            held: changes.len(),
            merged: 0,
            parts: vec![Part { changes, gone }],
        }
    }

    /// Adds later changes: an entry changed by both keeps only its later change.
    pub fn absorb(&mut self, later: StateChanges) {
        self.parts.extend(later.parts);
        self.held += later.held;
        if self.parts.len() > 1 && self.held >= MERGE_FROM.max(2 * self.merged) {
            self.merge();
        }
    }

    /// Replaces the parts by one that holds the newest change of each entry.
    fn merge(&mut self) {
        let mut keep: Vec<Vec<bool>> = (self.parts.iter())
            .map(|p| vec![false; p.changes.len()])
            .collect();
        let Ok(()) = self.for_each_newest(|i, j, _| {
            keep[i][j] = true;
            Ok::<_, Infallible>(())
        });
        let changes: Vec<Change> = (std::mem::take(&mut self.parts).into_iter().zip(keep))
            .flat_map(|(p, keep)| p.changes.into_iter().zip(keep))
            .filter_map(|(c, keep)| keep.then_some(c))
            .collect();
        self.held = changes.len();
        self.merged = changes.len();
        self.parts = vec![Part { changes, gone: 0 }];
    }

    /// Hands `f` the newest change of each entry with where it is (part, index), each entry
    /// once, in no particular order. The new values of the largest part are not indexed, only
    /// looked up among the other changes: on a commit of one epoch, that index holds its
    /// retractions, and one part without any holds distinct keys (a merged one, say).
    pub(super) fn for_each_newest<E>(
        &self,
        mut f: impl FnMut(usize, usize, &Change) -> Result<(), E>,
    ) -> Result<(), E> {
        let parts = &self.parts;
        let Some(big) = (0..parts.len()).max_by_key(|&i| parts[i].changes.len() - parts[i].gone)
        else {
            return Ok(());
        };
        let others = parts.iter().enumerate().flat_map(|(i, part)| {
            let n = if i == big {
                part.gone
            } else {
                part.changes.len()
            };
            (part.changes[..n].iter().enumerate()).map(move |(j, c)| ((i, j), c))
        });
        // Every other change's key: where the last change of that key is.
        let mut last: HashMap<SavedKey<'_>, (usize, usize)> = HashMap::default();
        for (at, c) in others.clone() {
            last.insert(c.entry.key(), at);
        }
        let part = &parts[big];
        for (j, c) in part.changes.iter().enumerate().skip(part.gone) {
            if last.is_empty() {
                f(big, j, c)?;
                continue;
            }
            match last.get(&c.entry.key()) {
                // Changed again later: that change is the newest.
                Some(&at) if at > (big, j) => {}
                // Changed before only: this one is the newest.
                Some(_) => {
                    last.remove(&c.entry.key());
                    f(big, j, c)?;
                }
                None => f(big, j, c)?,
            }
        }
        for ((i, j), c) in others {
            if last.get(&c.entry.key()) == Some(&(i, j)) {
                f(i, j, c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::aggregate::Revenue;

    fn invoice(number: &str, lines: i64) -> Saved {
        Saved::Invoice(
            number.into(),
            Revenue {
                lines,
                revenue_milli: lines * 1_000,
            },
        )
    }

    #[test]
    fn the_newest_change_wins_whichever_epoch_is_largest() {
        // The largest epoch (2) changes entries changed before it (1), after it (3), both,
        // neither, and deletes one that epoch 3 opens again.
        let mut changes = StateChanges::of_epoch([(invoice("a", 1), 1), (invoice("b", 1), 1)]);
        changes.absorb(StateChanges::of_epoch([
            (invoice("b", 1), -1),
            (invoice("a", 1), -1),
            (invoice("a", 2), 1),
            (invoice("b", 2), 1),
            (invoice("c", 1), 1),
            (invoice("d", 1), 1),
            (invoice("e", 1), 1),
        ]));
        changes.absorb(StateChanges::of_epoch([
            (invoice("c", 1), -1),
            (invoice("b", 3), 1),
            (invoice("c", 2), 1),
            (invoice("b", 2), -1),
            (invoice("e", 1), -1),
            (invoice("f", 1), 1),
        ]));
        let expected: BTreeMap<String, Option<i64>> = [
            ("a", Some(2)),
            ("b", Some(3)),
            ("c", Some(2)),
            ("d", Some(1)),
            ("e", None),
            ("f", Some(1)),
        ]
        .map(|(i, l)| (i.to_owned(), l))
        .into();
        let each_once = |changes: &StateChanges| {
            let mut newest: Vec<(String, Option<i64>)> = Vec::new();
            let Ok(()) = changes.for_each_newest(|_, _, c| {
                let Saved::Invoice(i, r) = &c.entry else {
                    panic!("{c:?}")
                };
                newest.push((i.to_string(), c.kept.then_some(r.lines)));
                Ok::<_, Infallible>(())
            });
            assert_eq!(newest.len(), expected.len(), "each entry once: {newest:?}");
            assert_eq!(newest.into_iter().collect::<BTreeMap<_, _>>(), expected);
        };
        each_once(&changes);
        // Merged into one part, the same.
        changes.merge();
        assert_eq!(changes.parts.len(), 1);
        each_once(&changes);
    }
}
