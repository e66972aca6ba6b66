//! The generator's only source of randomness: uniform, normal, weighted and Zipf draws built
//! directly on ChaCha8's 64-bit output (not on `rand`'s distributions, whose algorithms may
//! change between versions), so a seed gives the same records with every build.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Uniform draws built directly on the generator's 64-bit output.
pub(super) struct Dice(ChaCha8Rng);

impl Dice {
    pub(super) fn new(seed: u64) -> Dice {
        Dice(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [0, 1), 53 bits.
    pub(super) fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in 0..n (multiply-shift; the bias is below 2^-40 for our n).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in lo..=hi.
    pub(super) fn between(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// An index drawn with the weights whose running sums are `cumulative`.
    pub(super) fn pick(&mut self, cumulative: &[f64]) -> usize {
        let total = *cumulative.last().expect("non-empty weights");
        let x = self.unit() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len() - 1)
    }

    /// A value from a small weighted table.
    pub(super) fn weighted<T: Copy>(&mut self, table: &[(T, u64)]) -> T {
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut x = self.below(total);
        for &(value, weight) in table {
            if x < weight {
                return value;
            }
            x -= weight;
        }
        table[table.len() - 1].0
    }
}

/// Running sums of `weights`.
pub(super) fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    weights
        .into_iter()
        .scan(0.0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect()
}

/// The Zipf weight 1/k^s of the item at 0-based `rank` (k = rank + 1).
pub(super) fn zipf(rank: usize, s: f64) -> f64 {
    ((rank + 1) as f64).powf(-s)
}
