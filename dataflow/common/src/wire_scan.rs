//! The fast path of the wire record's parser: a scan of the one layout `ingest` writes
//! (`serde_json` over the record's fields, in their order, without spaces), borrowing every
//! string that has no escape. Anything else, or anything this scan is unsure of (a `\u`
//! escape, a control character, a number that is not a plain integer, another key order,
//! spaces, trailing bytes), returns `None`, and the caller parses with `serde_json`: its
//! result, and so every dead letter's reason and detail, stays exactly what `serde_json`
//! gives. Where the scan returns a record, `serde_json` returns the same one (the equivalence
//! test in `record.rs` compares them on generated and mutated messages).

use std::borrow::Cow;

use crate::record::Wire;

/// Scans `text` (valid UTF-8) as `ingest` writes a record; `None` when it is laid out any
/// other way.
pub(crate) fn scan(text: &str) -> Option<Wire<'_>> {
    // ingest writes no control character anywhere; JSON forbids them raw in strings.
    if has_control(text.as_bytes()) {
        return None;
    }
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

/// Whether any byte is below 0x20, in 16-byte steps the compiler turns into vector compares.
fn has_control(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let found = chunks
        .by_ref()
        .any(|chunk| chunk.iter().fold(false, |found, &b| found | (b < 0x20)));
    found || chunks.remainder().iter().any(|&b| b < 0x20)
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
    /// backslashes), so always on character boundaries.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.literal(b"\"")?;
        let start = self.at;
        let end = start + memchr::memchr2(b'"', b'\\', &self.bytes[start..])?;
        self.at = end;
        if self.bytes[end] == b'\\' {
            return self.escaped(start);
        }
        self.at += 1;
        Some(Cow::Borrowed(&self.text[start..end]))
    }

    /// The rest of a string from its first escape on; `\u` escapes are left to serde_json.
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
                _ => {
                    let run = self.at;
                    while self
                        .bytes
                        .get(self.at)
                        .is_some_and(|&b| b != b'"' && b != b'\\')
                    {
                        self.at += 1;
                    }
                    out.push_str(&self.text[run..self.at]);
                }
            }
        }
    }

    fn optional_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// A JSON integer that fits an `i64`, as serde_json reads one into an `i64`: no leading
    /// zero, no fraction or exponent (the next literal would not match), and not `-0`
    /// (serde_json reads that as a float).
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
        for at in [0, 5, 20, 40, text.len() - 1] {
            let mut bytes = text.clone().into_bytes();
            for control in [0x00, 0x1f] {
                bytes.insert(at, control);
                let with = String::from_utf8(bytes.clone()).unwrap();
                assert!(has_control(with.as_bytes()), "{at}");
                assert!(scan(&with).is_none(), "{with:?}");
                bytes.remove(at);
            }
        }
        // Two in one 16-byte step, and in the tail after the last whole step.
        assert!(has_control(b"0123456789\x01\x01abcdef"));
        assert!(has_control(b"0123456789abcdef0123\x01"));
        assert!(!has_control(
            b" ~\x7f spaces and printable bytes are not control"
        ));
    }
}
