//! Unit tests of wire messages: every reject reason, tricky messages, and both parsers equal
//! to the serde-only reference on them and on generated records.

use super::tests::{PARSERS, row};
use super::*;

/// One message for each reject reason, from a good one.
pub(super) fn reject_cases() -> Vec<(Vec<u8>, RejectKind)> {
    let good = Sale::from_fields(&row()).unwrap().to_json();
    let swap = |from: &str, to: &str| good.replace(from, to).into_bytes();
    vec![
        (b"\xff\xfe{}".to_vec(), RejectKind::NotUtf8),
        (b"not json".to_vec(), RejectKind::NotJson),
        (b"{\"invoice_no\":".to_vec(), RejectKind::NotJson),
        (
            swap(r#""country":"United Kingdom""#, r#""nation":"UK""#),
            RejectKind::MissingField,
        ),
        (
            swap(r#""quantity":6"#, r#""quantity":"6""#),
            RejectKind::WrongType,
        ),
        (
            swap(r#""quantity":6"#, r#""quantity":6.5"#),
            RejectKind::WrongType,
        ),
        (
            swap(r#""unit_price":"2.55""#, r#""unit_price":2.55"#),
            RejectKind::WrongType,
        ),
        (
            swap(r#""unit_price":"2.55""#, r#""unit_price":"2.5501""#),
            RejectKind::BadPrice,
        ),
        (
            swap("2010-12-01T08:26:00", "2010-12-32T08:26:00"),
            RejectKind::BadDate,
        ),
        (
            swap(r#""invoice_no":"536365""#, r#""invoice_no":"""#),
            RejectKind::EmptyField,
        ),
        (b"[1,2]".to_vec(), RejectKind::WrongType),
    ]
}

#[test]
fn each_message_reject_reason() {
    let good = Sale::from_fields(&row()).unwrap().to_json();
    for (name, parse) in PARSERS {
        for (bytes, kind) in reject_cases() {
            let err = parse(&bytes).unwrap_err();
            assert_eq!(
                err.kind,
                kind,
                "{name}: {} -> {err}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert!(parse(good.as_bytes()).is_ok(), "{name}");
    }
}

/// `Sale::from_json` before `SaleRef`, kept verbatim as the oracle.
pub(super) mod reference {
    use super::super::*;

    /// The wire struct as it was before `SaleRef`, for the oracle below. Its name is part of
    /// serde's messages (`expected struct Wire`), hence a module of its own.
    #[derive(Deserialize)]
    pub(super) struct Wire<'a> {
        #[serde(borrow)]
        invoice_no: Cow<'a, str>,
        #[serde(borrow)]
        stock_code: Cow<'a, str>,
        #[serde(borrow)]
        description: Option<Cow<'a, str>>,
        quantity: i64,
        #[serde(borrow)]
        invoice_date: Cow<'a, str>,
        #[serde(borrow)]
        unit_price: Cow<'a, str>,
        #[serde(borrow)]
        customer_id: Option<Cow<'a, str>>,
        #[serde(borrow)]
        country: Cow<'a, str>,
    }

    /// `Sale::from_json` as it was before `SaleRef`: the oracle the borrowed parser must match.
    pub(in crate::record) fn from_json(bytes: &[u8]) -> Result<Sale, Reject> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Reject::new(
                RejectKind::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        let wire: Wire<'_> = serde_json::from_str(text).map_err(classify_json_error)?;
        // `price` as it was: `str::trim`, and the parse without its one-pass common case.
        let old_price = |text: &str| {
            Milli::parse_general(text.trim())
                .map_err(|e| Reject::new(RejectKind::BadPrice, format!("unit_price {text:?}: {e}")))
        };
        let required = |name: &str, value: &str| -> Result<String, Reject> {
            let value = value.trim();
            if value.is_empty() {
                return Err(Reject::new(
                    RejectKind::EmptyField,
                    format!("{name} is empty"),
                ));
            }
            Ok(value.to_owned())
        };
        let optional = |value: &str| -> Option<String> {
            let trimmed = value.trim();
            (!trimmed.is_empty()).then(|| value.to_owned())
        };
        let invoice_no = required("invoice_no", &wire.invoice_no)?;
        let stock_code = required("stock_code", &wire.stock_code)?;
        let country = required("country", &wire.country)?;
        let unit_price = old_price(&wire.unit_price)?;
        let invoice_date = NaiveDateTime::parse_from_str(&wire.invoice_date, time::WIRE_FORMAT)
            .ok()
            .filter(|_| wire.invoice_date.len() == 19)
            .or_else(|| time::parse_iso(&wire.invoice_date))
            .ok_or_else(|| bad_date(&wire.invoice_date))?;
        checked_value(wire.quantity, unit_price)?;
        Ok(Sale {
            invoice_no,
            stock_code,
            description: wire.description.as_deref().and_then(optional),
            quantity: wire.quantity,
            invoice_date,
            unit_price,
            customer_id: wire.customer_id.as_deref().and_then(normalise_customer_id),
            country,
        })
    }
}

/// Messages beyond the reject cases: escapes (which cannot borrow), spaces to trim,
/// blank optionals, other date forms, several faults at once, odd JSON.
pub(super) fn tricky_messages() -> Vec<Vec<u8>> {
    let good = Sale::from_fields(&row()).unwrap().to_json();
    let swap = |from: &str, to: &str| good.replace(from, to).into_bytes();
    let mut messages: Vec<Vec<u8>> = [
        (r#""536365""#, r#""\u0035\u00336365""#),
        (r#""536365""#, r#"" 536365 ""#),
        (r#""536365""#, r#""\t536365\n""#),
        (r#""536365""#, r#""  ""#),
        (r#""536365""#, r#""\u0020""#),
        (r#""536365""#, "null"),
        (r#""536365""#, "536365"),
        (r#""85123A""#, r#""85123\"A""#),
        (r#""85123A""#, r#""""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, r#""7\" FRAME ""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, r#"" SPACED ""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, r#""   ""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, r#""\t""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, r#""""#),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, "null"),
        (r#""WHITE HANGING HEART T-LIGHT HOLDER""#, "12"),
        (
            r#""WHITE HANGING HEART T-LIGHT HOLDER""#,
            r#""caf\u00e9 \ud83d\ude00""#,
        ),
        (r#""17850""#, r#""17850.0""#),
        (r#""17850""#, r#"" 17850.00 ""#),
        (r#""17850""#, r#""\u00317850.0""#),
        (r#""17850""#, r#""\u0020""#),
        (r#""17850""#, r#"".0""#),
        (r#""17850""#, r#""12.5""#),
        (r#""17850""#, r#""""#),
        (r#""17850""#, "null"),
        (r#""17850""#, "17850"),
        (r#""United Kingdom""#, r#""United\u0020Kingdom""#),
        (r#""United Kingdom""#, r#"" EIRE""#),
        (r#""United Kingdom""#, r#""\n""#),
        (r#""2.55""#, r#"" 2.55 ""#),
        (r#""2.55""#, r#""2.550""#),
        (r#""2.55""#, r#""\u0032.55""#),
        (r#""2.55""#, r#""""#),
        (r#""2.55""#, r#""-0""#),
        (r#""2.55""#, r#""99999999999999999""#),
        (r#""2.55""#, r#""9223372036854775.807""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01 08:26:00""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T08:26""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T09:26:00+01:00""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T08:26:00Z""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T08:26:00.5""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01""#),
        (r#""2010-12-01T08:26:00""#, r#""2016-12-31T23:59:60""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T24:00:00""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-02-29T08:26:00""#),
        (r#""2010-12-01T08:26:00""#, r#""2012-02-29T08:26:00""#),
        (r#""2010-12-01T08:26:00""#, r#""+010-12-01T08:26:00""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T08:26:0 ""#),
        (r#""2010-12-01T08:26:00""#, r#""2010-12-01T08\u003a26:00""#),
        (r#""2010-12-01T08:26:00""#, r#""12/1/2010 8:26""#),
        (r#""2010-12-01T08:26:00""#, "null"),
        (r#""quantity":6"#, r#""quantity":-6"#),
        (r#""quantity":6"#, r#""quantity":9223372036854775807"#),
        (r#""quantity":6"#, r#""quantity":9223372036854775808"#),
        (r#""quantity":6"#, r#""quantity":6e0"#),
        (r#""quantity":6"#, r#""quantity":null"#),
        (r#""quantity":6,"#, ""),
    ]
    .iter()
    .map(|(from, to)| swap(from, to))
    .collect();
    // Several faults at once: the first check in order decides the reason.
    let mut both = good.replace(r#""536365""#, r#""""#);
    both = both.replace("2.55", "x");
    messages.push(both.into_bytes());
    messages.push(
        good.replace("2.55", "x")
            .replace("2010-12", "2010-13")
            .into_bytes(),
    );
    let overflow = good.replace(r#""quantity":6"#, r#""quantity":9223372036854775807"#);
    messages.push(overflow.replace("2010-12", "2010-13").into_bytes());
    for odd in [
        "",
        " ",
        "{}",
        "null",
        "\"536365\"",
        "{\"invoice_no\":\"1\"}",
        "\u{feff}{}",
    ] {
        messages.push(odd.as_bytes().to_vec());
    }
    messages.push(format!(" {good} \n").into_bytes());
    messages.push(format!("{good}x").into_bytes());
    messages.push(format!("{good}{good}").into_bytes());
    messages.push(
        good.replace('}', r#","extra":[1,{"a":null}]}"#)
            .into_bytes(),
    );
    messages.push(good.replace('}', r#","country":"France"}"#).into_bytes());
    messages.push(good.replace("HOLDER", "HOLDER\u{fffd}\u{e9}").into_bytes());
    let mut bad_utf8 = good.clone().into_bytes();
    bad_utf8[30] = 0xc3;
    messages.push(bad_utf8);
    messages
}

#[test]
fn both_parsers_match_the_reference_on_every_message() {
    let good = Sale::from_fields(&row()).unwrap().to_json().into_bytes();
    let mut messages: Vec<Vec<u8>> = reject_cases().into_iter().map(|(m, _)| m).collect();
    messages.extend(tricky_messages());
    messages.push(good);
    let (mut accepted, mut rejected) = (0, 0);
    for bytes in &messages {
        let expected = reference::from_json(bytes);
        match &expected {
            Ok(_) => accepted += 1,
            Err(_) => rejected += 1,
        }
        for (name, parse) in PARSERS {
            assert_eq!(
                parse(bytes),
                expected,
                "{name}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
    // The list must exercise both outcomes, or it proves little.
    assert!(accepted >= 30 && rejected >= 30, "{accepted} {rejected}");
}

#[test]
fn sale_ref_borrows_unless_a_field_has_an_escape() {
    let good = Sale::from_fields(&row()).unwrap().to_json();
    let sale = SaleRef::from_json(good.as_bytes()).unwrap();
    let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
    assert!(borrowed(&sale.invoice_no) && borrowed(&sale.stock_code));
    assert!(borrowed(&sale.country));
    assert!(sale.description.as_ref().is_some_and(borrowed));
    assert!(sale.customer_id.as_ref().is_some_and(borrowed));
    assert_eq!(sale.value(), Milli(15_300));
    assert!(!sale.is_cancellation());
    assert_eq!(Sale::from(sale), Sale::from_fields(&row()).unwrap());

    // Trimming and CustomerID normalisation still borrow.
    let spaced = good
        .replace(r#""536365""#, r#"" C536365 ""#)
        .replace(r#""17850""#, r#"" 17850.00""#);
    let sale = SaleRef::from_json(spaced.as_bytes()).unwrap();
    assert_eq!(sale.invoice_no, Cow::Borrowed("C536365"));
    assert!(borrowed(&sale.invoice_no) && sale.is_cancellation());
    assert_eq!(sale.customer_id, Some(Cow::Borrowed("17850")));
    assert!(sale.customer_id.as_ref().is_some_and(borrowed));

    // An escaped field is unescaped into its own String, trimmed like any other.
    let escaped = good
        .replace(r#""536365""#, r#""\u0035\u00336365 ""#)
        .replace("HOLDER", r#"7\" HOLDER"#)
        .replace(r#""17850""#, r#""\u00317850.0""#);
    let sale = SaleRef::from_json(escaped.as_bytes()).unwrap();
    assert_eq!(sale.invoice_no, "536365");
    assert!(!borrowed(&sale.invoice_no));
    assert_eq!(
        sale.description.as_deref(),
        Some("WHITE HANGING HEART T-LIGHT 7\" HOLDER")
    );
    assert!(!sale.description.as_ref().is_some_and(borrowed));
    assert_eq!(sale.customer_id.as_deref(), Some("17850"));
    assert!(borrowed(&sale.stock_code) && borrowed(&sale.country));
}

#[test]
fn generated_records_round_trip_through_both_parsers() {
    // Every date form write_json can produce, prices of every shape, escapes and nulls.
    let base = Sale::from_fields(&row()).unwrap();
    let start = time::parse_wire("1999-12-31T23:59:59").unwrap();
    for i in 0..20_000i64 {
        let sale = Sale {
            invoice_no: if i % 50 == 0 {
                format!("C{}", 536_365 + i)
            } else {
                (536_365 + i).to_string()
            },
            description: match i % 5 {
                0 => None,
                1 => Some(format!("{i}\" FRAME \\ \u{e9}\t")),
                _ => base.description.clone(),
            },
            quantity: (i % 7 - 3) * 11,
            invoice_date: start + chrono::TimeDelta::seconds(i * 3_607 + i * i),
            unit_price: Milli(i * 37 % 100_000 - 5_000),
            customer_id: (i % 4 != 0).then(|| (12_346 + i).to_string()),
            ..base.clone()
        };
        let json = sale.to_json();
        let expected = reference::from_json(json.as_bytes());
        assert_eq!(expected.as_ref(), Ok(&sale), "{json}");
        for (name, parse) in PARSERS {
            assert_eq!(parse(json.as_bytes()), expected, "{name}: {json}");
        }
    }
}

/// The scan of ingest's layout and serde_json agree on every message the scan takes:
/// records of every shape, then each mutated at random (bytes dropped, replaced,
/// inserted from JSON's special characters, runs repeated), 300,000 messages from a fixed
/// seed. Where the scan declines, from_json uses serde_json itself.
#[test]
fn the_scan_reads_what_serde_json_reads() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    const SPECIAL: &[&[u8]] = &[
        b"\"",
        b"\\",
        b"\\\"",
        b"\\n",
        b"\\u0041",
        b"\\x",
        b"\x01",
        b"\n",
        b" ",
        b"-",
        b"0",
        b"9",
        b".",
        b"e",
        b"E",
        b"+",
        b",",
        b":",
        b"}",
        b"{",
        b"null",
        b"true",
        b"\xc3\xa9",
        b"\xff",
        b"[",
        b"]",
        b"\t",
        b"\\/",
    ];
    let mut bases: Vec<Vec<u8>> = tricky_messages();
    bases.extend(reject_cases().into_iter().map(|(m, _)| m));
    for quantity in [
        "0",
        "-0",
        "00",
        "01",
        "-1",
        "1.0",
        "1e2",
        "-",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551615",
    ] {
        let good = Sale::from_fields(&row()).unwrap().to_json();
        bases.push(
            good.replace(r#""quantity":6"#, &format!(r#""quantity":{quantity}"#))
                .into_bytes(),
        );
    }
    let mut taken = 0;
    for round in 0..300_000 {
        let mut m = bases[round % bases.len()].clone();
        for _ in 0..next(4) {
            let at = next(m.len() + 1);
            match next(4) {
                0 if at < m.len() => {
                    m.remove(at);
                }
                1 if at < m.len() => {
                    let special = SPECIAL[next(SPECIAL.len())];
                    m.splice(at..at + 1, special.iter().copied());
                }
                2 => {
                    let special = SPECIAL[next(SPECIAL.len())];
                    m.splice(at..at, special.iter().copied());
                }
                _ => {
                    let end = (at + next(8)).min(m.len());
                    let run = m[at..end].to_vec();
                    m.splice(at..at, run);
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&m) else {
            continue;
        };
        let Some(scanned) = super::wire_scan::scan(text) else {
            continue;
        };
        taken += 1;
        let serde: Result<Wire<'_>, _> = serde_json::from_str(text);
        assert_eq!(serde.ok(), Some(scanned), "{text}");
    }
    // The scan took a good share: the comparison was not vacuous.
    assert!(taken > 30_000, "the scan took only {taken} messages");
}
