//! `Sums`: the additive measures of sales, used as a differential *difference* type.
//!
//! Each record is exploded into `(key, Sums)` and `count_total` accumulates the Sums per key,
//! so every aggregate is maintained incrementally with one arrangement entry per key rather
//! than per record.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

/// Additive measures; all money in thousandths.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Sums {
    pub lines: i64,
    pub units: i64,
    pub revenue_milli: i64,
    pub cancellation_lines: i64,
    pub cancellation_value_milli: i64,
    pub late_lines: i64,
    pub invoices: i64,
    pub customers: i64,
}

impl Sums {
    fn fields_mut(&mut self) -> [&mut i64; 8] {
        [
            &mut self.lines,
            &mut self.units,
            &mut self.revenue_milli,
            &mut self.cancellation_lines,
            &mut self.cancellation_value_milli,
            &mut self.late_lines,
            &mut self.invoices,
            &mut self.customers,
        ]
    }

    fn fields(&self) -> [i64; 8] {
        [
            self.lines,
            self.units,
            self.revenue_milli,
            self.cancellation_lines,
            self.cancellation_value_milli,
            self.late_lines,
            self.invoices,
            self.customers,
        ]
    }
}

impl IsZero for Sums {
    fn is_zero(&self) -> bool {
        self.fields() == [0; 8]
    }
}

impl Semigroup for Sums {
    fn plus_equals(&mut self, rhs: &Self) {
        for (a, b) in self.fields_mut().into_iter().zip(rhs.fields()) {
            *a += b;
        }
    }
}

impl Monoid for Sums {
    fn zero() -> Self {
        Sums::default()
    }
}

impl Abelian for Sums {
    fn negate(&mut self) {
        for a in self.fields_mut() {
            *a = -*a;
        }
    }
}

impl Multiply<isize> for Sums {
    type Output = Sums;
    fn multiply(mut self, rhs: &isize) -> Sums {
        let k = *rhs as i64;
        for a in self.fields_mut() {
            *a *= k;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_laws() {
        let a = Sums {
            lines: 1,
            units: 6,
            revenue_milli: 15_300,
            ..Sums::default()
        };
        let mut b = a;
        b.plus_equals(&a);
        assert_eq!(b, a.multiply(&2));
        let mut n = a;
        n.negate();
        n.plus_equals(&a);
        assert!(n.is_zero());
        assert!(Sums::zero().is_zero());
    }
}
