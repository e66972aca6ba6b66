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
//! it whenever it changes.

use std::hash::Hash;

use differential_dataflow::difference::{IsZero, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::{Filter, Map};

use super::Text;
use super::running::running_sums;

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
/// checkpoint restored): `(code, name)` with -1 when a name is replaced and +1 for the new one.
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
    running_sums(candidates, never, "Running: product names")
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
