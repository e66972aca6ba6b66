//! Unit tests of the record model: CSV rows typed or rejected with their reasons, the wire
//! form, customer ids; the parsers every message test runs against.

use super::*;

/// Dead letters serialise their reason with serde: it must read exactly as the code.
#[test]
fn reject_kind_serialises_as_its_code() {
    for kind in RejectKind::ALL {
        let text = serde_json::to_string(&kind).unwrap();
        assert_eq!(text, format!("\"{}\"", kind.code()));
        assert_eq!(serde_json::from_str::<RejectKind>(&text).unwrap(), kind);
    }
}

pub(super) type Parser = fn(&[u8]) -> Result<Sale, Reject>;

/// Every JSON parser, as one signature: the tests of `from_json` run against each.
pub(super) const PARSERS: [(&str, Parser); 2] = [
    ("Sale::from_json", Sale::from_json),
    ("SaleRef::from_json", |bytes| {
        SaleRef::from_json(bytes).map(SaleRef::into_owned)
    }),
];

pub(super) fn row() -> Fields<'static> {
    Fields {
        invoice_no: "536365",
        stock_code: "85123A",
        description: "WHITE HANGING HEART T-LIGHT HOLDER",
        quantity: "6",
        invoice_date: "12/1/2010 8:26",
        unit_price: "2.55",
        customer_id: "17850.0",
        country: "United Kingdom",
    }
}

#[test]
fn types_a_good_row_and_writes_the_wire_form() {
    let sale = Sale::from_fields(&row()).unwrap();
    assert_eq!(
        sale.to_json(),
        r#"{"invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER","quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}"#
    );
    assert_eq!(sale.value(), Milli(15_300));
    assert!(!sale.is_cancellation());
}

#[test]
fn json_round_trip() {
    let sale = Sale::from_fields(&Fields {
        invoice_no: "C536379",
        description: "",
        customer_id: "",
        quantity: "-1",
        unit_price: "0.001",
        invoice_date: "2011-12-09 12:50:00",
        ..row()
    })
    .unwrap();
    let json = sale.to_json();
    assert!(json.contains(r#""description":null"#), "{json}");
    assert!(json.contains(r#""customer_id":null"#), "{json}");
    for (name, parse) in PARSERS {
        assert_eq!(parse(json.as_bytes()).unwrap(), sale, "{name}");
    }
    assert!(sale.is_cancellation());
    assert_eq!(sale.value(), Milli(-1));
}

#[test]
fn each_row_reject_reason() {
    let cases: Vec<(Fields<'static>, RejectKind)> = vec![
        (
            Fields {
                invoice_no: " ",
                ..row()
            },
            RejectKind::EmptyField,
        ),
        (
            Fields {
                stock_code: "",
                ..row()
            },
            RejectKind::EmptyField,
        ),
        (
            Fields {
                country: "",
                ..row()
            },
            RejectKind::EmptyField,
        ),
        (
            Fields {
                quantity: "6.5",
                ..row()
            },
            RejectKind::BadQuantity,
        ),
        (
            Fields {
                quantity: "",
                ..row()
            },
            RejectKind::BadQuantity,
        ),
        (
            Fields {
                unit_price: "2.5555",
                ..row()
            },
            RejectKind::BadPrice,
        ),
        (
            Fields {
                unit_price: "1e2",
                ..row()
            },
            RejectKind::BadPrice,
        ),
        (
            Fields {
                unit_price: "",
                ..row()
            },
            RejectKind::BadPrice,
        ),
        (
            Fields {
                invoice_date: "2010-02-30 10:00",
                ..row()
            },
            RejectKind::BadDate,
        ),
        (
            Fields {
                invoice_date: "",
                ..row()
            },
            RejectKind::BadDate,
        ),
        (
            Fields {
                quantity: "9223372036854775807",
                unit_price: "2",
                ..row()
            },
            RejectKind::ValueOverflow,
        ),
    ];
    for (fields, kind) in cases {
        let err = Sale::from_fields(&fields).unwrap_err();
        assert_eq!(err.kind, kind, "{fields:?} -> {err}");
    }
}

/// The shortcut of `trim` gives what `str::trim` gives, whatever the text starts and ends
/// with: ASCII and Unicode whitespace, control characters, printable and non-ASCII text.
#[test]
fn trim_is_str_trim() {
    let ends = [
        "", " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{1c}", "\u{1f}", "\u{0}", "\u{7f}",
        "\u{85}", "\u{a0}", "\u{2000}", "\u{3000}", "\u{feff}", "\u{e9}", "a", "!", "~", "0",
    ];
    for a in ends {
        for b in ["", "x", "ab", " x ", "\u{a0}"] {
            for c in ends {
                let text = format!("{a}{b}{c}");
                assert_eq!(trim(&text), text.trim(), "{text:?}");
            }
        }
    }
}

#[test]
fn customer_id_normalisation() {
    assert_eq!(normalise_customer_id("17850.0").as_deref(), Some("17850"));
    assert_eq!(normalise_customer_id("17850").as_deref(), Some("17850"));
    assert_eq!(normalise_customer_id(" 12.00 ").as_deref(), Some("12"));
    assert_eq!(normalise_customer_id("12.5").as_deref(), Some("12.5"));
    assert_eq!(normalise_customer_id(""), None);
}

#[test]
fn customer_ids_lose_only_an_all_zero_fraction() {
    for (text, id) in [
        ("17850.000", Some("17850")),
        ("17850.", Some("17850")),
        (".0", Some(".0")),
        ("1a.0", Some("1a.0")),
        ("12.50", Some("12.50")),
        ("   ", None),
    ] {
        assert_eq!(normalise_customer_id(text).as_deref(), id, "{text:?}");
    }
}

#[test]
fn reject_codes_are_the_stable_names() {
    // Written to rejects files and dead-letter headers: other programs match on them.
    let codes = RejectKind::ALL.map(RejectKind::code);
    assert_eq!(
        codes,
        [
            "not_utf8",
            "not_json",
            "missing_field",
            "wrong_type",
            "empty_field",
            "bad_quantity",
            "bad_price",
            "bad_date",
            "value_overflow",
            "oversized",
            "bad_row",
            "invoice_closed",
        ]
    );
    let reject = Reject::new(
        RejectKind::BadPrice,
        "unit_price \"x\": not a decimal number",
    );
    assert_eq!(
        reject.to_string(),
        "bad_price: unit_price \"x\": not a decimal number"
    );
}
