//! Exact money: a price is an integer number of thousandths of the currency unit.
//!
//! Prices in the source data have at most three fractional digits (`0.001` occurs), so
//! thousandths hold every price exactly and sums never drift the way floats do.

use std::fmt;

/// An amount in thousandths (`2.55` is `Milli(2550)`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Milli(pub i64);

/// Why a decimal text is not an exact price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceError {
    /// Not of the form `[-+]digits[.digits]`.
    NotDecimal,
    /// More than three non-zero fractional digits: not representable in thousandths.
    TooPrecise,
    /// Outside the range of `i64` thousandths.
    Overflow,
}

impl fmt::Display for PriceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PriceError::NotDecimal => "not a decimal number",
            PriceError::TooPrecise => "more than 3 decimal places",
            PriceError::Overflow => "out of range",
        })
    }
}

impl Milli {
    /// Parses a plain decimal (`2.55`, `-11062.06`, `.5`, `0`, `3.000`); trailing zeros past
    /// the third fractional digit are accepted since they change nothing. Exponents, thousands
    /// separators and currency signs are rejected.
    pub fn parse(text: &str) -> Result<Milli, PriceError> {
        let (negative, body) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
        if (whole.is_empty() && frac.is_empty())
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(PriceError::NotDecimal);
        }
        if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
            return Err(PriceError::TooPrecise);
        }
        let mut value: i64 = 0;
        for b in whole.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(b - b'0')))
                .ok_or(PriceError::Overflow)?;
        }
        let mut thousandths = 0i64;
        for (i, b) in frac.bytes().take(3).enumerate() {
            thousandths += i64::from(b - b'0') * [100, 10, 1][i];
        }
        let value = value
            .checked_mul(1000)
            .and_then(|v| v.checked_add(thousandths))
            .ok_or(PriceError::Overflow)?;
        Ok(Milli(if negative { -value } else { value }))
    }

    /// `quantity` units at this price, or `None` on overflow.
    pub fn times(self, quantity: i64) -> Option<Milli> {
        self.0.checked_mul(quantity).map(Milli)
    }
}

/// The shortest decimal text: `2550` -> `2.55`, `0` -> `0`, `1` -> `0.001`.
impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (whole, frac) = (abs / 1000, abs % 1000);
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{frac:03}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_prices() {
        assert_eq!(Milli::parse("2.55"), Ok(Milli(2550)));
        assert_eq!(Milli::parse("0"), Ok(Milli(0)));
        assert_eq!(Milli::parse("0.001"), Ok(Milli(1)));
        assert_eq!(Milli::parse("-11062.06"), Ok(Milli(-11_062_060)));
        assert_eq!(Milli::parse(".5"), Ok(Milli(500)));
        assert_eq!(Milli::parse("7."), Ok(Milli(7000)));
        assert_eq!(Milli::parse("+1.250"), Ok(Milli(1250)));
        assert_eq!(Milli::parse("1.2500"), Ok(Milli(1250)));
    }

    #[test]
    fn rejects_inexact_or_malformed_prices() {
        assert_eq!(Milli::parse("1.2345"), Err(PriceError::TooPrecise));
        assert_eq!(Milli::parse("0.0001"), Err(PriceError::TooPrecise));
        for bad in [
            "", ".", "-", "1e3", "1,000.00", "£2", "2.5.5", " 2", "abc", "NaN",
        ] {
            assert_eq!(Milli::parse(bad), Err(PriceError::NotDecimal), "{bad:?}");
        }
        assert_eq!(
            Milli::parse("99999999999999999999"),
            Err(PriceError::Overflow)
        );
    }

    #[test]
    fn displays_shortest_decimal_and_round_trips() {
        for (milli, text) in [
            (2550, "2.55"),
            (0, "0"),
            (1, "0.001"),
            (-11_062_060, "-11062.06"),
        ] {
            assert_eq!(Milli(milli).to_string(), text);
            assert_eq!(Milli::parse(text), Ok(Milli(milli)));
        }
    }

    #[test]
    fn line_value_is_exact() {
        assert_eq!(Milli(2550).times(6), Some(Milli(15_300)));
        assert_eq!(Milli(1).times(-3), Some(Milli(-3)));
        assert_eq!(Milli(i64::MAX).times(2), None);
    }
}
