//! "This hour so far": the running figures of the newest epoch not yet committed, for the live
//! page only.
//!
//! The workers of the process that serves the page (process 0, with `--http`) add each batch's
//! per-epoch sums here as they fold it (`aggregate::derive`), one lock per batch; the page's
//! server samples them every second and drops an epoch once the writer commits it. Nothing here
//! reaches a sink: these figures are provisional (lines of the other processes are not in them,
//! and the epoch is still open), and the committed results never read them.
//!
//! The derive operator finds the instance through [`installed`], set once by `--http` before
//! the dataflow is built: a process-wide slot, like the allocator's settings, so that the
//! aggregates' wiring does not carry a page's concern. Without `--http` nothing is installed and
//! the operator does nothing more than check an `Option` once per batch.

use std::sync::{Arc, Mutex, OnceLock};

use foldhash::HashMap;

use crate::aggregate::Text;

/// Products shown for the open epoch.
pub const TOP: usize = 5;

static INSTALLED: OnceLock<Arc<Provisional>> = OnceLock::new();

/// Installs the process's running figures (once; later calls return the same).
pub fn install() -> Arc<Provisional> {
    Arc::clone(INSTALLED.get_or_init(|| Arc::new(Provisional::default())))
}

/// The process's running figures, when `--http` serves the page from this process.
pub fn installed() -> Option<Arc<Provisional>> {
    INSTALLED.get().cloned()
}

/// What one batch adds to one epoch.
pub struct Part<'a> {
    pub epoch: u64,
    pub lines: i64,
    pub revenue_milli: i64,
    /// Net revenue per product.
    pub products: &'a [(Text, i64)],
}

/// The newest open epoch's sums so far, as the workers of this process have read it.
#[derive(Default)]
pub struct Provisional {
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    /// The epoch summed, the newest seen after the last committed one.
    epoch: Option<u64>,
    /// The last epoch the writer committed: nothing at or before it is kept.
    committed: Option<u64>,
    lines: i64,
    revenue_milli: i64,
    products: HashMap<Text, i64>,
}

/// A reading of the open epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub epoch: u64,
    pub lines: i64,
    pub revenue_milli: i64,
    /// The best [`TOP`] products by net revenue (ties by stock code).
    pub top: Vec<(Text, i64)>,
}

impl Provisional {
    /// Adds a batch's per-epoch sums: to the open epoch, or a newer one replaces it; epochs
    /// older than the open one (never shown again) or committed are left out.
    pub fn add<'a>(&self, parts: impl IntoIterator<Item = Part<'a>>) {
        let mut open = crate::locked(&self.open);
        for part in parts {
            if open.committed.is_some_and(|c| part.epoch <= c) {
                continue;
            }
            match open.epoch {
                Some(e) if part.epoch < e => continue,
                Some(e) if part.epoch == e => {}
                _ => {
                    let committed = open.committed;
                    let mut products = std::mem::take(&mut open.products);
                    products.clear();
                    *open = Open {
                        epoch: Some(part.epoch),
                        committed,
                        products,
                        ..Open::default()
                    };
                }
            }
            open.lines += part.lines;
            open.revenue_milli += part.revenue_milli;
            for (code, revenue) in part.products {
                *open.products.entry(code.clone()).or_default() += revenue;
            }
        }
    }

    /// The writer committed every epoch up to `epoch`: drops it if it is the open one.
    pub fn committed(&self, epoch: u64) {
        let mut open = crate::locked(&self.open);
        open.committed = Some(open.committed.map_or(epoch, |c| c.max(epoch)));
        if open.epoch.is_some_and(|e| e <= epoch) {
            open.epoch = None;
            open.lines = 0;
            open.revenue_milli = 0;
            open.products.clear();
        }
    }

    /// The open epoch's figures, `None` when there is none.
    pub fn sample(&self) -> Option<Sample> {
        let open = crate::locked(&self.open);
        let epoch = open.epoch?;
        let mut top: Vec<(Text, i64)> = open
            .products
            .iter()
            .map(|(code, revenue)| (code.clone(), *revenue))
            .collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP);
        Some(Sample {
            epoch,
            lines: open.lines,
            revenue_milli: open.revenue_milli,
            top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(epoch: u64, lines: i64, products: &[(Text, i64)]) -> Part<'_> {
        Part {
            epoch,
            lines,
            revenue_milli: products.iter().map(|(_, r)| r).sum(),
            products,
        }
    }

    #[test]
    fn the_newest_open_epoch_is_summed_until_it_is_committed() {
        let p = Provisional::default();
        assert_eq!(p.sample(), None);
        let a = [(Text::from("A"), 500), (Text::from("B"), 700)];
        let b = [(Text::from("A"), 300), (Text::from("C"), 100)];
        p.add([part(5, 2, &a)]);
        p.add([part(5, 1, &b), part(4, 9, &b)]);
        let s = p.sample().unwrap();
        assert_eq!((s.epoch, s.lines, s.revenue_milli), (5, 3, 1600));
        assert_eq!(
            s.top,
            vec![("A".into(), 800), ("B".into(), 700), ("C".into(), 100)]
        );
        // A newer epoch replaces it; an older one is left out.
        p.add([part(6, 1, &b)]);
        assert_eq!(p.sample().unwrap().epoch, 6);
        assert_eq!(p.sample().unwrap().lines, 1);
        p.committed(5);
        assert_eq!(p.sample().unwrap().epoch, 6, "a newer open epoch stays");
        p.committed(6);
        assert_eq!(p.sample(), None);
        // Lines of a committed epoch (late in a worker) do not bring it back.
        p.add([part(6, 1, &b)]);
        assert_eq!(p.sample(), None);
        let many: Vec<(Text, i64)> = (0..8).map(|i| (Text::from(format!("P{i}")), i)).collect();
        p.add([part(7, 8, &many)]);
        let top = p.sample().unwrap().top;
        assert_eq!(top.len(), TOP);
        assert_eq!(top[0], ("P7".into(), 7));
    }
}
