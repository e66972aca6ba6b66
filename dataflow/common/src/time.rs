//! InvoiceDate: the forms accepted on input and the one form written out.
//!
//! The UCI file writes `12/1/2010 8:26` (M/D/YYYY H:MM, shop-local time without a zone);
//! Online Retail II and most exports write ISO-8601 (`2010-12-01 08:26:00`). Both become a
//! naive timestamp, written out as `YYYY-MM-DDTHH:MM:SS`. An ISO value with a zone offset or
//! `Z` is converted to UTC first, so every record on the wire is in one form.

use std::fmt::{self, Write as _};

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};

/// The wire format of `invoice_date`.
pub const WIRE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// Parses any accepted InvoiceDate form.
pub fn parse_invoice_date(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if text.contains('/') {
        // UCI: M/D/YYYY H:MM, optionally with seconds.
        return NaiveDateTime::parse_from_str(text, "%m/%d/%Y %H:%M")
            .or_else(|_| NaiveDateTime::parse_from_str(text, "%m/%d/%Y %H:%M:%S"))
            .ok();
    }
    parse_iso(text)
}

/// Parses ISO-8601 with a `T` or space separator, optional seconds and fraction, and an
/// optional zone (converted to UTC). A bare date means midnight.
pub fn parse_iso(text: &str) -> Option<NaiveDateTime> {
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t);
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.naive_utc());
    }
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(t.naive_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

/// Parses exactly the wire form `YYYY-MM-DDTHH:MM:SS` (what ingest writes). This is the
/// dataflow's hot path, so it checks the fixed layout directly before asking chrono.
pub fn parse_wire(text: &str) -> Option<NaiveDateTime> {
    let b = text.as_bytes();
    if !wire_layout(b) {
        return None;
    }
    wire_digits(b).or_else(|| NaiveDateTime::parse_from_str(text, WIRE_FORMAT).ok())
}

/// Whether `b` has the separators of `YYYY-MM-DDTHH:MM:SS` where they belong.
fn wire_layout(b: &[u8]) -> bool {
    b.len() == 19 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':'
}

/// The common case of [`parse_wire`] without chrono's format interpreter: every field plain
/// digits, a valid calendar date, a time before 23:59:60. It answers only when chrono would
/// give the same timestamp; anything else (a leap second, a sign, a space, an invalid value)
/// is left to chrono, so what is accepted and rejected stays chrono's decision.
fn wire_digits(b: &[u8]) -> Option<NaiveDateTime> {
    let number = |range: std::ops::Range<usize>| {
        b[range].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_opt(hour, minute, second)
}

/// Formats timestamps in the wire form on the stack, like `itoa::Buffer` does integers:
/// `WireBuffer::new().format(t)` gives exactly `t.format(WIRE_FORMAT).to_string()` without
/// the allocation and without interpreting the format string per record (ingest's hot path).
#[derive(Clone, Copy, Debug)]
pub struct WireBuffer {
    bytes: [u8; WireBuffer::CAPACITY],
}

impl Default for WireBuffer {
    fn default() -> WireBuffer {
        WireBuffer::new()
    }
}

impl WireBuffer {
    /// The longest form: a signed six-digit year (chrono's range) and `-MM-DDTHH:MM:SS`.
    const CAPACITY: usize = 24;

    pub fn new() -> WireBuffer {
        WireBuffer {
            bytes: [0; WireBuffer::CAPACITY],
        }
    }

    /// `t` as `YYYY-MM-DDTHH:MM:SS`, byte for byte what chrono writes for [`WIRE_FORMAT`].
    pub fn format(&mut self, t: NaiveDateTime) -> &str {
        let year = t.year();
        let len = if (0..=9999).contains(&year) {
            let b = &mut self.bytes;
            two_digits(&mut b[0..2], year as u32 / 100);
            two_digits(&mut b[2..4], year as u32 % 100);
            b[4] = b'-';
            two_digits(&mut b[5..7], t.month());
            b[7] = b'-';
            two_digits(&mut b[8..10], t.day());
            b[10] = b'T';
            two_digits(&mut b[11..13], t.hour());
            b[13] = b':';
            two_digits(&mut b[14..16], t.minute());
            b[16] = b':';
            // A leap second is stored as a nanosecond past 1e9; chrono's %S then writes 60.
            two_digits(&mut b[17..19], t.second() + t.nanosecond() / 1_000_000_000);
            19
        } else {
            // Years chrono writes with a sign and more digits: rare, so let chrono do it.
            let mut cursor = Cursor {
                bytes: &mut self.bytes,
                len: 0,
            };
            write!(cursor, "{}", t.format(WIRE_FORMAT)).expect("the wire form fits the buffer");
            cursor.len
        };
        std::str::from_utf8(&self.bytes[..len]).expect("the wire form is ASCII")
    }
}

/// Writes `value` (below 100) as two decimal digits.
fn two_digits(out: &mut [u8], value: u32) {
    out[0] = b'0' + (value / 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

/// `fmt::Write` into a fixed buffer, for the rare forms chrono formats.
struct Cursor<'b> {
    bytes: &'b mut [u8],
    len: usize,
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Seconds since 1970-01-01T00:00:00, the naive timestamp read as UTC.
pub fn epoch_seconds(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(t: NaiveDateTime) -> String {
        t.format(WIRE_FORMAT).to_string()
    }

    #[test]
    fn uci_form() {
        let t = parse_invoice_date("12/1/2010 8:26").unwrap();
        assert_eq!(wire(t), "2010-12-01T08:26:00");
        let t = parse_invoice_date("1/13/2011 17:05").unwrap();
        assert_eq!(wire(t), "2011-01-13T17:05:00");
    }

    #[test]
    fn iso_forms() {
        for text in [
            "2010-12-01 08:26:00",
            "2010-12-01T08:26:00",
            "2010-12-01T08:26",
            "2010-12-01T08:26:00.000",
            "2010-12-01T09:26:00+01:00",
            "2010-12-01T08:26:00Z",
        ] {
            let t = parse_invoice_date(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(wire(t), "2010-12-01T08:26:00", "{text}");
        }
        assert_eq!(
            wire(parse_invoice_date("2010-12-01").unwrap()),
            "2010-12-01T00:00:00"
        );
    }

    #[test]
    fn rejects_bad_dates() {
        for bad in [
            "",
            "13/1/2010 8:26",
            "2/30/2011 10:00",
            "2010-12-01X08",
            "yesterday",
        ] {
            assert_eq!(parse_invoice_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn wire_form_is_strict() {
        assert!(parse_wire("2010-12-01T08:26:00").is_some());
        assert!(parse_wire("2010-12-01 08:26:00").is_none());
        assert!(parse_wire("2010-13-01T08:26:00").is_none());
        assert!(parse_wire("2010-12-01T08:26:00Z").is_none());
    }

    #[test]
    fn epoch_seconds_reads_naive_as_utc() {
        let t = parse_wire("1970-01-02T00:00:01").unwrap();
        assert_eq!(epoch_seconds(t), 86_401);
    }

    /// Every day of 1895..2105 (leap years 1896, 2000 and 2104, the non-leap 1900 and 2100),
    /// every second of a day, and the years where chrono's form changes width or sign.
    fn sample_times() -> Vec<NaiveDateTime> {
        let mut times = Vec::new();
        let mut day = NaiveDate::from_ymd_opt(1895, 1, 1).unwrap();
        let mut n = 0u32;
        while day.year() < 2105 {
            n += 1;
            let (h, m, s) = (n * 7 % 24, n * 13 % 60, n * 31 % 60);
            times.push(day.and_hms_opt(h, m, s).unwrap());
            times.push(day.and_hms_opt(0, 0, 0).unwrap());
            times.push(day.and_hms_opt(23, 59, 59).unwrap());
            day = day.succ_opt().unwrap();
        }
        let midsummer = NaiveDate::from_ymd_opt(2011, 6, 30).unwrap();
        for second in 0..86_400 {
            times.push(
                midsummer
                    .and_hms_opt(second / 3600, second / 60 % 60, second % 60)
                    .unwrap(),
            );
        }
        for year in [
            -262_000, -10_000, -9_999, -1, 0, 1, 9, 10, 99, 100, 999, 1000, 1969, 1970, 9999,
            10_000, 99_999, 262_000,
        ] {
            for (month, day) in [(1, 1), (2, 28), (12, 31)] {
                let date = NaiveDate::from_ymd_opt(year, month, day).unwrap();
                times.push(date.and_hms_opt(0, 0, 0).unwrap());
                times.push(date.and_hms_opt(23, 59, 59).unwrap());
            }
        }
        times
    }

    #[test]
    fn wire_buffer_writes_what_chrono_writes() {
        let mut buffer = WireBuffer::new();
        let mut times = sample_times();
        // Leap seconds (nanosecond past 1e9), which chrono writes as second 60.
        let eve = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap();
        times.push(eve.and_hms_milli_opt(23, 59, 59, 1_000).unwrap());
        times.push(eve.and_hms_nano_opt(23, 59, 59, 1_999_999_999).unwrap());
        // Fractions are not part of the wire form.
        times.push(eve.and_hms_milli_opt(10, 0, 0, 999).unwrap());
        for t in times {
            assert_eq!(buffer.format(t), wire(t), "{t:?}");
        }
    }

    #[test]
    fn the_wire_layout_needs_every_separator_in_place() {
        let good = *b"2010-12-01T08:26:00";
        assert!(wire_layout(&good));
        for at in [4, 7, 10, 13, 16] {
            let mut text = good;
            text[at] = b'0';
            assert!(!wire_layout(&text), "{}", String::from_utf8_lossy(&text));
        }
        assert!(!wire_layout(&good[..18]));
        assert!(!wire_layout(b"2010-12-01T08:26:00Z"));
    }

    #[test]
    fn a_default_wire_buffer_formats_too() {
        let t = parse_wire("2011-12-09T12:50:07").unwrap();
        assert_eq!(WireBuffer::default().format(t), "2011-12-09T12:50:07");
    }

    /// The fast path answers the common case itself (chrono is only the fallback for the rest):
    /// every valid timestamp of years 0 to 9999 written with plain digits, up to 23:59:59.
    #[test]
    fn the_fast_path_reads_every_plain_timestamp_itself() {
        for t in sample_times() {
            if (0..=9999).contains(&t.year()) {
                let text = wire(t);
                assert_eq!(wire_digits(text.as_bytes()), Some(t), "{text}");
            }
        }
        for text in [
            "2010-12-01T23:59:59",
            "2010-12-31T00:00:00",
            "2012-02-29T12:00:00",
        ] {
            assert_eq!(
                wire_digits(text.as_bytes()).map(wire).as_deref(),
                Some(text)
            );
        }
        // What it leaves to chrono: out-of-range fields, signs, spaces.
        for text in [
            "2010-12-01T24:00:00",
            "2010-12-01T23:60:00",
            "2010-12-01T23:59:60",
            "2010-02-29T10:00:00",
            "+010-12-01T08:26:00",
            "2010-12-01T 8:26:00",
        ] {
            assert_eq!(wire_digits(text.as_bytes()), None, "{text}");
        }
    }

    /// `parse_wire` before its fast path: the layout check, then chrono.
    fn chrono_wire(text: &str) -> Option<NaiveDateTime> {
        wire_layout(text.as_bytes())
            .then(|| NaiveDateTime::parse_from_str(text, WIRE_FORMAT).ok())
            .flatten()
    }

    #[test]
    fn parse_wire_agrees_with_chrono() {
        for t in sample_times() {
            let text = wire(t);
            assert_eq!(parse_wire(&text), chrono_wire(&text), "{text}");
            if (0..=9999).contains(&t.year()) {
                assert_eq!(parse_wire(&text), Some(t), "{text}");
            }
        }
        for text in [
            "2010-02-29T10:00:00",
            "2012-02-29T10:00:00",
            "1900-02-29T10:00:00",
            "2000-02-29T10:00:00",
            "2010-04-31T10:00:00",
            "2010-00-10T10:00:00",
            "2010-10-00T10:00:00",
            "2010-12-01T24:00:00",
            "2010-12-01T23:60:00",
            "2010-12-01T23:59:60",
            "2016-12-31T23:59:60",
            "2010-12-01T23:59:99",
            "0000-01-01T00:00:00",
            "9999-12-31T23:59:59",
            "+010-12-01T08:26:00",
            "-010-12-01T08:26:00",
            " 2010-12-01T08:26:0",
            "2010- 1-01T08:26:00",
            "2010-1 -01T08:26:00",
            "2010-12-01T 8:26:00",
            "2010-12-01T08:+6:00",
            "201x-12-01T08:26:00",
            "2010-12-01T08:26:0\u{0}",
        ] {
            assert_eq!(parse_wire(text), chrono_wire(text), "{text:?}");
        }
        // Random bytes in the digit positions: digits mostly, and the characters chrono might
        // read as a sign or skip as space.
        let alphabet = b"0123456789012345678901234567890123456789 +-.x";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            let mut text = *b"2010-12-01T08:26:00";
            for i in [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state.is_multiple_of(4) {
                    text[i] = alphabet[(state >> 8) as usize % alphabet.len()];
                }
            }
            let text = std::str::from_utf8(&text).unwrap();
            assert_eq!(parse_wire(text), chrono_wire(text), "{text:?}");
        }
    }
}
