//! Product names: one description per stock code, shown beside the code wherever products are.
//!
//! The rule, independent of the order records arrive in and of the worker and process count:
//! as of epoch E, a product's name is the description of its lines in the latest epoch at or
//! before E that has any, the greatest in byte order where that epoch's lines differ. Only
//! lines with a positive unit price and a description that is not blank name a product
//! (free-price lines carry notes such as `?` or `damaged`); a product without such a line has
//! no name.
//!
//! The source offers each line's description to a [`Namer`] of its partition, which passes on
//! only what may change a name; [`latest`] keeps the current name of each product and emits
//! it whenever its description changes.

use std::hash::Hash;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::{Filter, Map};

use super::Text;
use super::running::running_sums_shown;

/// A candidate name of a product: a description and the epoch of the line that carried it.
/// Candidates combine by taking the greatest (latest epoch, then greatest description), which
/// makes them a semigroup: differential carries them as the difference of a product's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Name {
    pub epoch: u64,
    pub description: Text,
}

impl IsZero for Name {
    fn is_zero(&self) -> bool {
        false
    }
}

impl Semigroup for Name {
    fn plus_equals(&mut self, rhs: &Self) {
        if *rhs > *self {
            self.clone_from(rhs);
        }
    }
}

/// The description a line offers as its product's name: a positive unit price and a
/// description that is not blank, trimmed.
pub fn offered(unit_price_milli: i64, description: Option<&str>) -> Option<&str> {
    let d = description?.trim();
    (unit_price_milli > 0 && !d.is_empty()).then_some(d)
}

/// The greatest candidate passed on so far per product, for one partition: a line whose
/// candidate cannot change any name is not passed on. Almost every line of a product repeats
/// the description of the one before in the same epoch, and costs one lookup.
#[derive(Debug, Default)]
pub struct Namer(HashMap<Text, Name>);

impl Namer {
    /// The candidate to pass on for a line of `code` at `epoch` describing it as
    /// `description`, if it may change a name: for each product and epoch, the greatest
    /// description of the epoch's lines is passed on.
    pub fn offer(&mut self, code: &str, epoch: u64, description: &str) -> Option<(Text, Name)> {
        let name = || Name {
            epoch,
            description: description.into(),
        };
        match self.0.get_mut(code) {
            // The epoch's greatest description is passed on already.
            Some(best) if best.epoch == epoch && best.description.as_str() >= description => None,
            // A later epoch than any before: it becomes the greatest.
            Some(best) if best.epoch <= epoch => {
                *best = name();
                Some((code.into(), best.clone()))
            }
            // An earlier epoch (another partition's clock, or out of order): passed on, as
            // it names the product in the epochs between, but not kept.
            Some(_) => Some((code.into(), name())),
            None => {
                let name = name();
                self.0.insert(code.into(), name.clone());
                Some((code.into(), name))
            }
        }
    }
}

/// The name of each product as of each epoch, from the candidates passed on (and the names a
/// checkpoint restored): `(code, name)` with -1 when a name's description is replaced and +1
/// for the new one.
pub fn latest<'scope>(
    candidates: VecCollection<'scope, u64, Text, Name>,
) -> VecCollection<'scope, u64, (Text, Name)> {
    // Names never leave: nothing closes them.
    let never = candidates
        .inner
        .clone()
        .filter(|_| false)
        .map(|(code, t, _)| (code, t, 1isize))
        .as_collection();
    // A name's epoch advances with every epoch that names the product; only a change of its
    // description is a change anyone sees (and a checkpoint needs: a resumed job's new
    // candidates all come from later epochs, whatever epoch the saved name carries).
    running_sums_shown(candidates, never, "Running: product names", |old, new| {
        old.description == new.description
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_priced_lines_with_a_description_name_a_product() {
        assert_eq!(offered(1_000, Some(" LANTERN ")), Some("LANTERN"));
        assert_eq!(offered(0, Some("damaged")), None);
        assert_eq!(offered(-5, Some("Adjust bad debt")), None);
        assert_eq!(offered(1_000, Some("  ")), None);
        assert_eq!(offered(1_000, None), None);
    }

    #[test]
    fn a_namer_passes_on_each_epochs_greatest_description() {
        let mut namer = Namer::default();
        let got = |n: Option<(Text, Name)>| {
            n.map(|(c, n)| (c.to_string(), n.epoch, n.description.to_string()))
        };
        assert_eq!(
            got(namer.offer("A", 5, "LAMP")),
            Some(("A".into(), 5, "LAMP".into()))
        );
        // The same or a smaller description in the same epoch changes nothing.
        assert_eq!(got(namer.offer("A", 5, "LAMP")), None);
        assert_eq!(got(namer.offer("A", 5, "BULB")), None);
        // A greater one does.
        assert_eq!(
            got(namer.offer("A", 5, "TORCH")),
            Some(("A".into(), 5, "TORCH".into()))
        );
        // An earlier epoch is passed on, and does not replace the greatest.
        assert_eq!(
            got(namer.offer("A", 3, "BULB")),
            Some(("A".into(), 3, "BULB".into()))
        );
        assert_eq!(got(namer.offer("A", 5, "SHADE")), None);
        // A later epoch replaces it, whatever its description.
        assert_eq!(
            got(namer.offer("A", 6, "BULB")),
            Some(("A".into(), 6, "BULB".into()))
        );
        assert_eq!(
            got(namer.offer("B", 1, "CUP")),
            Some(("B".into(), 1, "CUP".into()))
        );
    }

    /// `latest` over `candidates` (code, epoch, description) on `workers` workers: its
    /// changes, consolidated, as (code, description, epoch, diff).
    fn latest_of(
        candidates: &[(&str, u64, &str)],
        workers: usize,
    ) -> Vec<(String, String, u64, isize)> {
        use differential_dataflow::consolidation::consolidate_updates;
        use differential_dataflow::input::Input;
        use std::sync::{Arc, Mutex};
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        let candidates: Vec<(String, u64, String)> = (candidates.iter())
            .map(|(c, e, d)| (c.to_string(), *e, d.to_string()))
            .collect();
        timely::execute(timely::Config::process(workers), move |worker| {
            let sink = Arc::clone(&sink);
            let mut input = worker.dataflow::<u64, _, _>(|scope| {
                let (input, candidates) = scope.new_collection::<Text, Name>();
                latest(candidates).inspect(move |((code, name), t, r)| {
                    let change = (code.to_string(), name.description.to_string(), *t, *r);
                    sink.lock().unwrap().push(change);
                });
                input
            });
            // Each worker offers every other candidate, in the order given.
            for (i, (code, epoch, description)) in candidates.iter().enumerate() {
                if i % worker.peers() == worker.index() {
                    let name = Name {
                        epoch: *epoch,
                        description: description.as_str().into(),
                    };
                    input.update_at(code.as_str().into(), *epoch, name);
                }
            }
        })
        .expect("timely runs");
        let mut changes: Vec<((String, String), u64, isize)> = (got.lock().unwrap().iter())
            .map(|(c, d, t, r)| ((c.clone(), d.clone()), *t, *r))
            .collect();
        consolidate_updates(&mut changes);
        changes
            .into_iter()
            .map(|((c, d), t, r)| (c, d, t, r))
            .collect()
    }

    #[test]
    fn a_name_changes_only_when_its_description_does_whatever_the_workers() {
        let candidates = [
            ("A", 3, "WHITE LANTERN"),
            ("A", 1, "LANTERN"),
            ("A", 2, "LANTERN"),
            // The epoch's greatest description wins, whatever the order.
            ("A", 2, "CANDLE"),
            ("A", 3, "CREAM LANTERN"),
            // A later epoch with the same description changes nothing anyone sees.
            ("A", 4, "WHITE LANTERN"),
            ("B", 2, "CUP"),
        ];
        let expected = vec![
            ("A".to_string(), "LANTERN".to_string(), 1, 1),
            ("A".to_string(), "LANTERN".to_string(), 3, -1),
            ("A".to_string(), "WHITE LANTERN".to_string(), 3, 1),
            ("B".to_string(), "CUP".to_string(), 2, 1),
        ];
        for workers in [1, 2, 3] {
            assert_eq!(
                latest_of(&candidates, workers),
                expected,
                "{workers} workers"
            );
        }
    }

    #[test]
    fn names_combine_to_the_latest_epochs_greatest_description() {
        let mut n = Name {
            epoch: 2,
            description: "B".into(),
        };
        n.plus_equals(&Name {
            epoch: 1,
            description: "Z".into(),
        });
        assert_eq!((n.epoch, n.description.as_str()), (2, "B"));
        n.plus_equals(&Name {
            epoch: 2,
            description: "C".into(),
        });
        assert_eq!((n.epoch, n.description.as_str()), (2, "C"));
    }
}
