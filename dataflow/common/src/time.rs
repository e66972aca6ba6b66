//! InvoiceDate: the forms accepted on input and the one form written out.
//!
//! The UCI file writes `12/1/2010 8:26` (M/D/YYYY H:MM, shop-local time without a zone);
//! Online Retail II and most exports write ISO-8601 (`2010-12-01 08:26:00`). Both become a
//! naive timestamp, written out as `YYYY-MM-DDTHH:MM:SS`. An ISO value with a zone offset or
//! `Z` is converted to UTC first, so every record on the wire is in one form.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

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
    let layout_ok = b.len() == 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':';
    if !layout_ok {
        return None;
    }
    NaiveDateTime::parse_from_str(text, WIRE_FORMAT).ok()
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
}
