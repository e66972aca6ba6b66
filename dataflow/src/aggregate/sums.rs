//! `Sums` and `Revenue`: additive measures of sales, used as differential *difference* types.
//!
//! Each record is exploded into `(key, Sums)` and `count_total` accumulates the Sums per key,
//! so every aggregate is maintained incrementally with one arrangement entry per key rather
//! than per record. `Revenue` is the two-field measure of invoices and products: the
//! arrangements with the most keys keep 16 bytes per update instead of 64.

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
    /// Invoices closed by `--invoice-retention` (no longer keys of the per-invoice
    /// arrangement): the outputs count them with `invoices`.
    /// (Not skipped when zero: timely's exchange encoding is not self-describing.)
    #[serde(default)]
    pub closed_invoices: i64,
}

/// Lines and net value of an invoice or a product, in thousandths. Reads the JSON of a
/// [`Sums`] too (its other fields are ignored).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revenue {
    pub lines: i64,
    pub revenue_milli: i64,
}

/// Implements the difference traits field by field.
macro_rules! additive {
    ($t:ident { $($f:ident),+ }) => {
        impl IsZero for $t {
            fn is_zero(&self) -> bool {
                true $(&& self.$f == 0)+
            }
        }

        impl Semigroup for $t {
            fn plus_equals(&mut self, rhs: &Self) {
                $(self.$f += rhs.$f;)+
            }
        }

        impl Monoid for $t {
            fn zero() -> Self {
                $t::default()
            }
        }

        impl Abelian for $t {
            fn negate(&mut self) {
                $(self.$f = -self.$f;)+
            }
        }

        impl Multiply<isize> for $t {
            type Output = $t;
            fn multiply(mut self, rhs: &isize) -> $t {
                let k = *rhs as i64;
                $(self.$f *= k;)+
                self
            }
        }
    };
}

additive!(Sums {
    lines,
    units,
    revenue_milli,
    cancellation_lines,
    cancellation_value_milli,
    late_lines,
    invoices,
    customers,
    closed_invoices
});
additive!(Revenue {
    lines,
    revenue_milli
});

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

    #[test]
    fn revenue_group_laws_and_reads_the_json_of_sums() {
        let a = Revenue {
            lines: 2,
            revenue_milli: -1_250,
        };
        let mut n = a.multiply(&-3);
        n.plus_equals(&a.multiply(&3));
        assert!(n.is_zero());
        let mut b = a;
        b.negate();
        assert_eq!(b.revenue_milli, 1_250);
        let sums = Sums {
            lines: 2,
            units: 9,
            revenue_milli: -1_250,
            ..Sums::default()
        };
        let read: Revenue = serde_json::from_str(&serde_json::to_string(&sums).unwrap()).unwrap();
        assert_eq!(read, a);
    }
}
