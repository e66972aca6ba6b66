//! The fast path of the wire record's parser: a scan of the one layout `ingest` writes
//! (`serde_json` over the record's fields, in their order, without spaces), borrowing every
//! string that has no escape. Anything else, or anything this scan is unsure of (a `\u`
//! escape, a control character, a number that is not a plain integer, another key order,
//! spaces, trailing bytes), returns `None`, and the caller parses with `serde_json`: its
//! result, and so every dead letter's reason and detail, stays exactly what `serde_json`
//! gives. Where the scan returns a record, `serde_json` returns the same one (the equivalence
//! test in `record.rs` and the property tests in `record/properties.rs` compare them on
//! generated and mutated messages).

use std::borrow::Cow;

use super::Wire;

/// Scans `text` (valid UTF-8) as `ingest` writes a record; `None` when it is laid out any
/// other way.
#[inline(always)]
pub(crate) fn scan(text: &str) -> Option<Wire<'_>> {
    // ingest writes no control character anywhere. Outside strings the scan accepts only its
    // literals, digits and `-`, so the strings' scan (`special`) is where they are caught.
    let mut c = Cursor {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    c.literal(b"{\"invoice_no\":")?;
    let invoice_no = c.string()?;
    c.literal(b",\"stock_code\":")?;
    let stock_code = c.string()?;
    c.literal(b",\"description\":")?;
    let description = c.optional_string()?;
    c.literal(b",\"quantity\":")?;
    let quantity = c.integer()?;
    c.literal(b",\"invoice_date\":")?;
    let invoice_date = c.string()?;
    c.literal(b",\"unit_price\":")?;
    let unit_price = c.string()?;
    c.literal(b",\"customer_id\":")?;
    let customer_id = c.optional_string()?;
    c.literal(b",\"country\":")?;
    let country = c.string()?;
    c.literal(b"}")?;
    (c.at == c.bytes.len()).then_some(Wire {
        invoice_no,
        stock_code,
        description,
        quantity,
        invoice_date,
        unit_price,
        customer_id,
        country,
    })
}

/// Where the first byte that ends a plain run of string text is: a quote, a backslash or a
/// control character (below 0x20, which JSON forbids raw in a string). Eight bytes at a time
/// as one `u64` (the fields are short, so this beats a SIMD search's setup per call): a byte equal
/// to the pattern, or below 0x20, sets its high bit in `found`. Bits above the first match
/// may be spurious (a borrow runs on), so only the lowest set bit is read.
#[inline(always)]
fn special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const SPACES: u64 = ONES * 0x20;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let (quote, backslash) = (x ^ QUOTES, x ^ BACKSLASHES);
        let found = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | x.wrapping_sub(SPACES) & !x)
            & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

struct Cursor<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn literal(&mut self, expected: &[u8]) -> Option<()> {
        let found = self.bytes.get(self.at..self.at + expected.len())?;
        (found == expected).then(|| self.at += expected.len())
    }

    /// A JSON string: borrowed when it has no escape. Slices fall on ASCII bytes (quotes,
    /// backslashes), so always on character boundaries. A control character declines.
    #[inline(always)]
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.literal(b"\"")?;
        let start = self.at;
        let end = start + special(&self.bytes[start..])?;
        self.at = end;
        match self.bytes[end] {
            b'"' => {
                self.at += 1;
                Some(Cow::Borrowed(&self.text[start..end]))
            }
            b'\\' => self.escaped(start),
            _ => None,
        }
    }

    /// The rest of a string from its first escape on; `\u` escapes are left to serde_json.
    #[cold]
    #[inline(never)]
    fn escaped(&mut self, start: usize) -> Option<Cow<'a, str>> {
        let mut out = String::with_capacity(self.at - start + 16);
        out.push_str(&self.text[start..self.at]);
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    out.push(match *self.bytes.get(self.at + 1)? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        _ => return None,
                    });
                    self.at += 2;
                }
                0x00..0x20 => return None,
                _ => {
                    let run = self.at;
                    self.at += special(&self.bytes[run..])?;
                    out.push_str(&self.text[run..self.at]);
                }
            }
        }
    }

    #[inline(always)]
    fn optional_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A JSON integer that fits an `i64`, as serde_json reads one into an `i64`: no leading
    /// zero, no fraction or exponent (the next literal would not match), and not `-0`
    /// (serde_json reads that as a float).
    #[inline(always)]
    fn integer(&mut self) -> Option<i64> {
        let negative = self.literal(b"-").is_some();
        let start = self.at;
        // Accumulated negatively, so that i64::MIN fits.
        let mut value: i64 = 0;
        while let Some(&b) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_sub(i64::from(b - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if negative {
            (value != 0).then_some(value)
        } else {
            value.checked_neg()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ingest's layout with `description` and `quantity` as given (raw JSON text).
    fn message(description: &str, quantity: &str) -> String {
        format!(
            r#"{{"invoice_no":"536365","stock_code":"85123A","description":{description},"quantity":{quantity},"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}}"#
        )
    }

    fn serde(text: &str) -> Wire<'_> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn ingests_layout_is_read_in_place() {
        let text = message(r#""WHITE HEART""#, "6");
        let wire = scan(&text).expect("ingest's own layout");
        assert_eq!(wire, serde(&text));
        assert!(matches!(
            wire.description,
            Some(Cow::Borrowed("WHITE HEART"))
        ));
        let text = message("null", "6").replace(r#""17850""#, "null");
        let wire = scan(&text).expect("nulls");
        assert_eq!((wire.description, wire.customer_id), (None, None));
    }

    /// Every escape but `\u` is unescaped by the scan itself, wherever it falls in the string.
    #[test]
    fn the_scan_unescapes_all_but_unicode_escapes() {
        for (escape, unescaped) in [
            (r#"\""#, "\""),
            (r"\\", "\\"),
            (r"\/", "/"),
            (r"\b", "\u{8}"),
            (r"\f", "\u{c}"),
            (r"\n", "\n"),
            (r"\r", "\r"),
            (r"\t", "\t"),
        ] {
            for (description, expected) in [
                (format!("\"{escape}\""), unescaped.to_owned()),
                (
                    format!("\"a{escape}b{escape}\""),
                    format!("a{unescaped}b{unescaped}"),
                ),
                (
                    format!("\"a long text before it{escape} and after\""),
                    format!("a long text before it{unescaped} and after"),
                ),
            ] {
                let text = message(&description, "6");
                let wire = scan(&text).unwrap_or_else(|| panic!("{text}"));
                assert_eq!(
                    wire.description.as_deref(),
                    Some(expected.as_str()),
                    "{text}"
                );
                assert_eq!(wire, serde(&text));
            }
        }
        for declined in [r#""\u0041""#, r#""a\x""#, r#""a\""#] {
            assert!(scan(&message(declined, "6")).is_none(), "{declined}");
        }
    }

    #[test]
    fn integers_are_read_as_serde_json_reads_an_i64() {
        for (text, value) in [
            ("0", 0),
            ("7", 7),
            ("-1", -1),
            ("10", 10),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ] {
            let text = message("null", text);
            assert_eq!(scan(&text).map(|w| w.quantity), Some(value), "{text}");
            assert_eq!(serde(&text).quantity, value);
        }
        // Left to serde_json: leading zeros, -0 (a float to it), fractions, exponents, out of
        // range, no digits.
        for quantity in [
            "00",
            "01",
            "-0",
            "-01",
            "1.0",
            "1e2",
            "9223372036854775808",
            "-9223372036854775809",
            "-",
            "+1",
        ] {
            assert!(scan(&message("null", quantity)).is_none(), "{quantity}");
        }
    }

    #[test]
    fn control_characters_anywhere_are_left_to_serde_json() {
        let text = message(r#""A LONG DESCRIPTION OF AT LEAST SIXTEEN BYTES""#, "6");
        assert!(scan(&text).is_some());
        for at in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            for control in [0x00, 0x09, 0x0a, 0x1f] {
                bytes.insert(at, control);
                let with = String::from_utf8(bytes.clone()).unwrap();
                assert!(scan(&with).is_none(), "{with:?}");
                bytes.remove(at);
            }
        }
        // In the plain run after an escape, too.
        let escaped = message("\"7\\\" FRAME\u{1}\"", "6");
        assert!(scan(&escaped).is_none(), "{escaped:?}");
    }

    /// The eight-byte steps find what a byte-by-byte search finds: every special byte at every
    /// place in and after the steps, after any other byte (a borrow from the byte before must
    /// not hide or fake one), and none in printable and non-ASCII text.
    #[test]
    fn special_finds_the_first_quote_backslash_or_control() {
        let naive = |bytes: &[u8]| {
            bytes
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        };
        let plain = b"abcdefghijklmnopqrstuvwxyz0123456789";
        for len in 0..plain.len() {
            assert_eq!(special(&plain[..len]), None);
            for at in 0..len {
                for target in (0..=0x21).chain([b'\\']) {
                    for before in [
                        0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x5b, 0x5d, 0x7f, 0x80, 0xff,
                    ] {
                        let mut bytes = plain[..len].to_vec();
                        bytes[at] = target;
                        if at > 0 {
                            bytes[at - 1] = before;
                        }
                        assert_eq!(special(&bytes), naive(&bytes), "{bytes:?}");
                    }
                }
            }
        }
        let spaced = " ~\x7f spaces, printable bytes and \u{e9}\u{1f600} are plain";
        assert_eq!(special(spaced.as_bytes()), None);
    }
}
