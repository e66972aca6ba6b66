//! Property tests of the wire parser's equivalence: the fast scan (`wire_scan::scan`) against
//! serde_json's full parse, and [`SaleRef::from_json`] / [`Sale::from_json`] against the
//! serde-only parser kept as the oracle (`message_tests::reference`), on generated records and on
//! mutated messages. Equal means equal: the same [`Sale`] for every message, and for every bad
//! one the same [`Reject`], kind and detail text, so dead letters stay byte-identical.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use super::message_tests::{reference, reject_cases, tricky_messages};
use super::tests::row;
use super::wire_scan;
use super::*;

/// Characters of every class the parser treats apart: JSON's specials and escapes, control
/// characters, ASCII and Unicode whitespace, number and structure characters, multi-byte and
/// astral characters, and any character at all.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('A', 'Z'),
        2 => Just(' '),
        3 => prop::sample::select(vec![
            '"', '\\', '/', '\u{0}', '\u{8}', '\t', '\n', '\u{b}', '\u{c}', '\r', '\u{1f}',
            '\u{7f}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', '\u{feff}', '\u{e9}',
            '\u{1f600}', '.', '0', '9', '-', '+', 'e', ':', ',', '{', '}', 'u',
        ]),
        2 => any::<char>(),
    ]
}

/// Any text, empty and blank included.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::collection::vec(any_char(), 0..24).prop_map(|c| c.into_iter().collect()),
        1 => prop::sample::select(vec!["", " ", "  ", "\t", "\u{a0}"]).prop_map(str::to_owned),
    ]
    .boxed()
}

/// A field's JSON value: a string written with some choice of escapes, `null`, absent, or
/// raw JSON text (numbers, other types, broken values).
#[derive(Clone, Debug)]
enum Value {
    Text(String, Vec<u8>),
    Null,
    Absent,
    Raw(String),
}

/// Style bytes for [`json_string`]: mostly none (every character as serde_json writes it).
fn styles() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 0..32),
    ]
}

/// A string value: realistic text of the field's kind, or any text; each character is written
/// raw or escaped as the style bytes pick.
fn text_value(realistic: &'static str) -> BoxedStrategy<Value> {
    let content = prop_oneof![6 => realistic, 1 => text()];
    (content, styles())
        .prop_map(|(text, styles)| Value::Text(text, styles))
        .boxed()
}

/// Raw JSON values of another type, or not quite JSON.
fn wrong_value() -> BoxedStrategy<Value> {
    prop::sample::select(vec![
        "12",
        "-0",
        "1.5",
        "1e2",
        "true",
        "[]",
        "[1]",
        "{}",
        "{\"a\":null}",
        "\"",
        "nul",
        "\"a\"\"b\"",
    ])
    .prop_map(|raw| Value::Raw(raw.to_owned()))
    .boxed()
}

/// A required string field.
fn required_value(realistic: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![
        40 => text_value(realistic),
        1 => Just(Value::Null),
        1 => Just(Value::Absent),
        1 => wrong_value(),
    ]
    .boxed()
}

/// `description` and `customer_id`: may be `null` or absent.
fn optional_value(realistic: &'static str) -> BoxedStrategy<Value> {
    prop_oneof![
        30 => text_value(realistic),
        4 => Just(Value::Null),
        1 => Just(Value::Absent),
        1 => wrong_value(),
    ]
    .boxed()
}

/// `quantity`: an `i64` (small, any, the extremes) or number text serde_json reads otherwise.
fn quantity() -> BoxedStrategy<Value> {
    let integer = prop_oneof![
        6 => -30i64..30,
        2 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, 0, -1]),
    ];
    prop_oneof![
        30 => integer.prop_map(|q| Value::Raw(q.to_string())),
        2 => prop::sample::select(vec![
            "-0", "00", "01", "-01", "1.0", "6.5", "1e2", "-", "+1", "9223372036854775808",
            "-9223372036854775809", "18446744073709551616", "\"6\"", "true",
        ])
        .prop_map(|raw| Value::Raw(raw.to_owned())),
        1 => Just(Value::Null),
        1 => Just(Value::Absent),
    ]
    .boxed()
}

/// `invoice_date`: the wire form of any timestamp from 1900 to 2100, other ISO forms and
/// near misses, or any text.
fn invoice_date() -> BoxedStrategy<Value> {
    let wire = (-2_208_988_800i64..4_102_444_800).prop_map(|seconds| {
        let t = chrono::DateTime::from_timestamp(seconds, 0)
            .expect("in range")
            .naive_utc();
        time::WireBuffer::new().format(t).to_owned()
    });
    let shaped =
        "[0-9+ -]?[0-9]{3}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?)?(\\.5|Z|\\+01:00)?";
    let content = prop_oneof![6 => wire, 2 => shaped, 1 => text()];
    prop_oneof![
        40 => (content, styles())
            .prop_map(|(text, styles)| Value::Text(text, styles)),
        1 => Just(Value::Null),
        1 => Just(Value::Absent),
        1 => wrong_value(),
    ]
    .boxed()
}

/// `unit_price`: the shortest decimal of any amount, decimals of any shape, or any text.
fn unit_price() -> BoxedStrategy<Value> {
    let amount = prop_oneof![0i64..100_000, any::<i64>()]
        .prop_map(|m| DecimalBuffer::new().format(Milli(m)).to_owned());
    let shaped = "[-+ ]?[0-9]{0,20}(\\.[0-9]{0,6})?[ e]?";
    let content = prop_oneof![6 => amount, 3 => shaped, 1 => text()];
    prop_oneof![
        40 => (content, styles())
            .prop_map(|(text, styles)| Value::Text(text, styles)),
        1 => Just(Value::Null),
        1 => Just(Value::Absent),
        1 => wrong_value(),
    ]
    .boxed()
}

/// `text` as a JSON string. Characters JSON requires escaped get their short escape or a
/// `\u` escape; others are written raw, as a `\u` escape (a surrogate pair beyond the BMP,
/// upper- or lower-case hex), or `/` as `\/`, as each character's style byte says.
fn json_string(text: &str, styles: &[u8]) -> String {
    let mut out = String::from("\"");
    for (i, c) in text.chars().enumerate() {
        let style = styles.get(i).copied().unwrap_or(1);
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '/' if style % 3 == 0 => Some("\\/"),
            _ => None,
        };
        if style % 13 == 0 || (short.is_none() && u32::from(c) < 0x20) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                if style % 2 == 0 {
                    write!(out, "\\u{unit:04X}").expect("to a String");
                } else {
                    write!(out, "\\u{unit:04x}").expect("to a String");
                }
            }
        } else if let Some(escape) = short {
            out.push_str(escape);
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

const KEYS: [&str; 8] = [
    "invoice_no",
    "stock_code",
    "description",
    "quantity",
    "invoice_date",
    "unit_price",
    "customer_id",
    "country",
];

/// A message's layout beyond its values: key order, spaces between tokens, an extra or a
/// repeated key.
#[derive(Clone, Debug)]
struct Layout {
    order: Vec<usize>,
    /// Whitespace before each token, by token number (cycled); mostly none.
    spaces: Vec<&'static str>,
    extra: Option<&'static str>,
}

fn layout() -> impl Strategy<Value = Layout> {
    let order = prop_oneof![
        8 => Just((0..8).collect::<Vec<usize>>()),
        1 => Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
    ];
    let space = prop_oneof![
        30 => Just(""),
        1 => prop::sample::select(vec![" ", "\n", "\t", "\r\n  "]),
    ];
    let spaces = prop_oneof![
        8 => Just(vec![""]),
        1 => prop::collection::vec(space, 1..40),
    ];
    let extra = prop_oneof![
        16 => Just(None),
        1 => prop::sample::select(vec![
            r#""extra":[1,{"a":null}]"#,
            r#""country":"France""#,
            r#""quantity":1"#,
            r#""invoice\u005fno":"1""#,
        ])
        .prop_map(Some),
    ];
    (order, spaces, extra).prop_map(|(order, spaces, extra)| Layout {
        order,
        spaces,
        extra,
    })
}

/// A generated record: one value per key in [`KEYS`] order, and its layout.
#[derive(Clone, Debug)]
struct Record {
    values: Vec<Value>,
    layout: Layout,
}

fn record() -> impl Strategy<Value = Record> {
    let values = (
        required_value("C?[0-9]{6}"),
        required_value("[0-9]{5}[A-Z]?"),
        optional_value("[A-Z0-9 .'\"/-]{0,35}"),
        quantity(),
        invoice_date(),
        unit_price(),
        optional_value("[0-9]{5}(\\.0{0,2})?"),
        required_value("United Kingdom|France|EIRE| Germany"),
    );
    (values, layout()).prop_map(|((a, b, c, d, e, f, g, h), layout)| Record {
        values: vec![a, b, c, d, e, f, g, h],
        layout,
    })
}

impl Record {
    /// The JSON text, spaces placed before tokens as the layout says.
    fn json(&self) -> String {
        let spaces = &self.layout.spaces;
        let mut token = 0;
        let mut out = String::new();
        let mut put = |out: &mut String, text: &str| {
            out.push_str(spaces[token % spaces.len()]);
            out.push_str(text);
            token += 1;
        };
        put(&mut out, "{");
        let mut first = true;
        for &i in &self.layout.order {
            let value = match &self.values[i] {
                Value::Text(text, styles) => json_string(text, styles),
                Value::Null => "null".to_owned(),
                Value::Absent => continue,
                Value::Raw(raw) => raw.clone(),
            };
            if !first {
                put(&mut out, ",");
            }
            first = false;
            put(&mut out, &format!("\"{}\"", KEYS[i]));
            put(&mut out, ":");
            put(&mut out, &value);
        }
        if let Some(extra) = self.layout.extra {
            if !first {
                put(&mut out, ",");
            }
            put(&mut out, extra);
        }
        put(&mut out, "}");
        put(&mut out, "");
        out
    }
}

/// A change to a message's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR of one byte (may break UTF-8).
    Flip(Index, u8),
    Truncate(Index),
    Remove(Index),
    Insert(Index, &'static [u8]),
    /// A run of bytes repeated in place.
    Repeat(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special: &'static [&'static [u8]] = &[
        b"\"",
        b"\\",
        b"\\\"",
        b"\\n",
        b"\\u0041",
        b"\\ud83d",
        b"\\x",
        b"\x01",
        b"\x1f",
        b"\n",
        b" ",
        b"-",
        b"0",
        b"9",
        b".",
        b"e",
        b"+",
        b",",
        b":",
        b"}",
        b"{",
        b"null",
        b"true",
        b"\xc3\xa9",
        b"\xff",
        b"\xc3",
        b"[",
        b"]",
        b"\t",
        b"\\/",
    ];
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(at, bits)| Mutation::Flip(at, bits)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => any::<Index>().prop_map(Mutation::Remove),
        3 => (any::<Index>(), prop::sample::select(special))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (any::<Index>(), 1..8usize).prop_map(|(at, len)| Mutation::Repeat(at, len)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(at, bits) if len > 0 => bytes[at.index(len)] ^= bits,
            Mutation::Truncate(at) => bytes.truncate(at.index(len + 1)),
            Mutation::Remove(at) if len > 0 => {
                bytes.remove(at.index(len));
            }
            Mutation::Insert(at, insert) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, insert.iter().copied());
            }
            Mutation::Repeat(at, run) if len > 0 => {
                let at = at.index(len);
                let run = bytes[at..(at + run).min(len)].to_vec();
                bytes.splice(at..at, run);
            }
            _ => {}
        }
    }
    bytes
}

/// Messages of every kind: generated records (mostly intact, some mutated), and the unit
/// tests' reject and tricky messages mutated.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let mut bases: Vec<Vec<u8>> = reject_cases().into_iter().map(|(m, _)| m).collect();
    bases.extend(tricky_messages());
    let mutations = || prop::collection::vec(mutation(), 0..4);
    prop_oneof![
        3 => record().prop_map(|r| r.json().into_bytes()),
        2 => (record(), mutations()).prop_map(|(r, m)| mutate(r.json().into_bytes(), &m)),
        1 => (prop::sample::select(bases), mutations()).prop_map(|(b, m)| mutate(b, &m)),
    ]
}

/// The outcome of every parser on `bytes` is the serde-only path's, which is the oracle's; and
/// where the scan reads the message, serde_json reads the same fields.
///
/// One known difference from the oracle from before `SaleRef` is left as it is: a message
/// without a `description` or `customer_id` key (ingest always writes both, `null` when
/// empty) is rejected as `missing_field` (serde's `deserialize_with` makes the field
/// required), where the oracle read it as `null`.
fn same_outcome(bytes: &[u8]) -> Result<(), TestCaseError> {
    let serde_only = SaleRef::from_json_serde_only(bytes).map(SaleRef::into_owned);
    let text = String::from_utf8_lossy(bytes);
    prop_assert_eq!(
        &SaleRef::from_json(bytes).map(SaleRef::into_owned),
        &serde_only,
        "SaleRef::from_json: {:?}",
        text
    );
    prop_assert_eq!(
        &Sale::from_json(bytes),
        &serde_only,
        "Sale::from_json: {:?}",
        text
    );
    let absent_optional = serde_only.as_ref().is_err_and(|r| {
        r.detail.starts_with("missing field `description`")
            || r.detail.starts_with("missing field `customer_id`")
    });
    if !absent_optional {
        prop_assert_eq!(
            &serde_only,
            &reference::from_json(bytes),
            "oracle: {:?}",
            text
        );
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Some(scanned) = wire_scan::scan(text)
    {
        let serde: Result<Wire<'_>, _> = serde_json::from_str(text);
        prop_assert_eq!(serde.ok(), Some(scanned), "scan: {:?}", text);
    }
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    /// Generated and mutated messages: every parser gives the oracle's Sale or Reject.
    #[test]
    fn every_parser_gives_the_oracles_outcome(bytes in message()) {
        same_outcome(&bytes)?;
    }

    /// What ingest writes, from records with any text at all: the scan reads it itself unless a
    /// field holds a control character other than `\b \f \n \r \t` (serde_json writes those
    /// as `\u` escapes, which the scan leaves to serde_json), and every parser agrees.
    #[test]
    fn the_scan_reads_what_ingest_writes(
        invoice_no in text(),
        stock_code in text(),
        description in prop::option::of(text()),
        quantity in any::<i64>(),
        seconds in -2_208_988_800i64..4_102_444_800,
        unit_price in any::<i64>(),
        customer_id in prop::option::of(text()),
        country in text(),
    ) {
        let sale = Sale {
            invoice_no,
            stock_code,
            description,
            quantity,
            invoice_date: chrono::DateTime::from_timestamp(seconds, 0).expect("in range").naive_utc(),
            unit_price: Milli(unit_price),
            customer_id,
            country,
        };
        let json = sale.to_json();
        let unicode_escape = |t: &str| t.chars().any(|c| c < ' ' && !"\u{8}\u{c}\n\r\t".contains(c));
        let fields = [&sale.invoice_no, &sale.stock_code, &sale.country];
        let escaped = fields.iter().any(|t| unicode_escape(t))
            || sale.description.as_deref().is_some_and(unicode_escape)
            || sale.customer_id.as_deref().is_some_and(unicode_escape);
        prop_assert_eq!(wire_scan::scan(&json).is_some(), !escaped, "{:?}", json);
        same_outcome(json.as_bytes())?;
    }
}

/// The generator is not vacuous: over a fixed sample it reaches the scan's fast path often,
/// every reason a JSON message can be rejected for (not `oversized`, which the dataflow
/// decides before parsing, nor the CSV-only and retention reasons), and valid records.
#[test]
fn the_messages_reach_every_outcome() {
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut scanned = 0;
    for _ in 0..20_000 {
        let bytes = strategy.new_tree(&mut runner).expect("a message").current();
        let outcome = match SaleRef::from_json_serde_only(&bytes) {
            Ok(_) => "ok",
            Err(reject) => reject.kind.code(),
        };
        *outcomes.entry(outcome).or_default() += 1;
        if std::str::from_utf8(&bytes)
            .ok()
            .and_then(wire_scan::scan)
            .is_some()
        {
            scanned += 1;
        }
    }
    for outcome in [
        "ok",
        "not_utf8",
        "not_json",
        "missing_field",
        "wrong_type",
        "empty_field",
        "bad_price",
        "bad_date",
        "value_overflow",
    ] {
        assert!(
            outcomes.get(outcome).is_some_and(|&n| n >= 50),
            "{outcome}: {outcomes:?}"
        );
    }
    assert!(scanned >= 3_000, "the scan read {scanned}: {outcomes:?}");
    // The unit tests' good record is among them, so the fast path meets realistic text too.
    let good = Sale::from_fields(&row()).expect("good row").to_json();
    assert!(wire_scan::scan(&good).is_some());
}
