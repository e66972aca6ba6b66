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
        match Milli::parse_plain(text.as_bytes()) {
            Some(amount) => Ok(amount),
            None => Milli::parse_general(text),
        }
    }

    /// The common case of [`Milli::parse`] in one pass (the dataflow reads a price per
    /// record): 1 to 15 digits, then optionally a point and at most 3 digits, which cannot
    /// overflow. `None` for anything else (signs, `.5`, more digits, errors), left to
    /// [`Milli::parse_general`], so what is accepted and every error stay its decision.
    fn parse_plain(text: &[u8]) -> Option<Milli> {
        let (whole, frac) = match text.iter().position(|&b| b == b'.') {
            Some(point) => (&text[..point], &text[point + 1..]),
            None => (text, &[][..]),
        };
        if whole.is_empty() || whole.len() > 15 || frac.len() > 3 {
            return None;
        }
        let digits = |d: &[u8]| {
            d.iter().try_fold(0i64, |n, &b| {
                b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
            })
        };
        let scale = [1000, 100, 10, 1][frac.len()];
        Some(Milli(digits(whole)? * 1000 + digits(frac)? * scale))
    }

    /// Every form [`Milli::parse`] accepts, and its errors.
    pub(crate) fn parse_general(text: &str) -> Result<Milli, PriceError> {
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
        f.write_str(DecimalBuffer::new().format(*self))
    }
}

/// Formats [`Milli`] amounts as their shortest decimal text on the stack, like
/// `itoa::Buffer` does integers: the same text as `Display` without allocating (ingest writes
/// one price per record).
#[derive(Clone, Copy, Debug)]
pub struct DecimalBuffer {
    bytes: [u8; DecimalBuffer::CAPACITY],
}

impl Default for DecimalBuffer {
    fn default() -> DecimalBuffer {
        DecimalBuffer::new()
    }
}

impl DecimalBuffer {
    /// `-9223372036854775.808`, the longest amount, is 21 bytes.
    const CAPACITY: usize = 24;

    pub fn new() -> DecimalBuffer {
        DecimalBuffer {
            bytes: [0; DecimalBuffer::CAPACITY],
        }
    }

    /// `amount` as its shortest decimal text: `2550` -> `2.55`, `0` -> `0`, `1` -> `0.001`.
    pub fn format(&mut self, amount: Milli) -> &str {
        let abs = amount.0.unsigned_abs();
        let (mut whole, mut frac) = (abs / 1000, abs % 1000);
        // Written backwards from the end: fraction, point, whole part, sign.
        let mut start = DecimalBuffer::CAPACITY;
        if frac != 0 {
            let mut digits = 3;
            while frac % 10 == 0 {
                frac /= 10;
                digits -= 1;
            }
            for _ in 0..digits {
                start -= 1;
                self.bytes[start] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
            start -= 1;
            self.bytes[start] = b'.';
        }
        loop {
            start -= 1;
            self.bytes[start] = b'0' + (whole % 10) as u8;
            whole /= 10;
            if whole == 0 {
                break;
            }
        }
        if amount.0 < 0 {
            start -= 1;
            self.bytes[start] = b'-';
        }
        std::str::from_utf8(&self.bytes[start..]).expect("a decimal is ASCII")
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

    /// `Display` as it was before [`DecimalBuffer`]: the oracle for the stack formatter.
    fn reference(m: Milli) -> String {
        let sign = if m.0 < 0 { "-" } else { "" };
        let abs = m.0.unsigned_abs();
        let (whole, frac) = (abs / 1000, abs % 1000);
        if frac == 0 {
            return format!("{sign}{whole}");
        }
        let digits = format!("{frac:03}");
        format!("{sign}{whole}.{}", digits.trim_end_matches('0'))
    }

    #[test]
    fn decimal_buffer_writes_the_shortest_decimal() {
        let mut buffer = DecimalBuffer::new();
        let mut amounts: Vec<i64> = (-20_000..=20_000).collect();
        for power in 0..19 {
            let p = 10i64.pow(power);
            amounts.extend([p - 1, p, p + 1, -p + 1, -p, -p - 1, p * 9 + 7]);
        }
        amounts.extend([i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1]);
        for amount in amounts {
            let m = Milli(amount);
            assert_eq!(buffer.format(m), reference(m), "{amount}");
            assert_eq!(m.to_string(), reference(m), "{amount}");
        }
        assert_eq!(buffer.format(Milli(i64::MIN)), "-9223372036854775.808");
        assert_eq!(DecimalBuffer::default().format(Milli(-1)), "-0.001");
    }

    /// The one-pass common case gives what the general parse gives wherever it answers, and
    /// it answers for the prices ingest writes.
    #[test]
    fn the_plain_parse_agrees_with_the_general_one() {
        let pieces = [
            "",
            "0",
            "1",
            "9",
            "00",
            "07",
            "12",
            "255",
            "-",
            "+",
            ".",
            "..",
            "e",
            " ",
            "x",
            "\u{e9}",
            "1000",
            "99999",
            "123456789012345",
            "1234567890123456",
            "9223372036854775",
        ];
        let mut answered = 0;
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    let text = format!("{a}{b}{c}");
                    if let Some(plain) = Milli::parse_plain(text.as_bytes()) {
                        answered += 1;
                        assert_eq!(Ok(plain), Milli::parse_general(&text), "{text:?}");
                    }
                    assert_eq!(Milli::parse(&text), Milli::parse_general(&text), "{text:?}");
                }
            }
        }
        assert!(answered > 1_000, "{answered}");
        let mut buffer = DecimalBuffer::new();
        for amount in (0..=200_000).chain([999_999_999_999_999_999]) {
            let text = buffer.format(Milli(amount));
            assert_eq!(
                Milli::parse_plain(text.as_bytes()),
                Some(Milli(amount)),
                "{text}"
            );
        }
        for text in [
            "0.0010",
            "1234567890123456",
            "-1",
            "+1",
            ".5",
            "1.",
            "1.2.3",
        ] {
            let plain = Milli::parse_plain(text.as_bytes());
            assert!(
                plain.is_none() || plain == Milli::parse_general(text).ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn price_errors_say_why() {
        // Part of every bad_price dead letter's detail.
        assert_eq!(PriceError::NotDecimal.to_string(), "not a decimal number");
        assert_eq!(
            PriceError::TooPrecise.to_string(),
            "more than 3 decimal places"
        );
        assert_eq!(PriceError::Overflow.to_string(), "out of range");
    }
}
