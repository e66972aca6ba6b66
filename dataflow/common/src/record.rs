//! The typed sale record, its JSON wire format and its validation.
//!
//! One invoice line of the UCI *Online Retail* schema. On the wire it is one UTF-8 JSON object:
//!
//! ```json
//! {"invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER",
//!  "quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850",
//!  "country":"United Kingdom"}
//! ```
//!
//! `unit_price` is a decimal *string* so that no JSON reader turns it into a float; `description`
//! and `customer_id` may be `null`. The same rules apply to a CSV row ([`Sale::from_fields`])
//! and to a JSON message ([`Sale::from_json`]).

use std::borrow::Cow;
use std::fmt;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::money::Milli;
use crate::time;

/// One validated invoice line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    /// Invoice number; a leading `C` marks a cancellation.
    pub invoice_no: String,
    pub stock_code: String,
    pub description: Option<String>,
    /// Units sold; negative on cancellations and adjustments.
    pub quantity: i64,
    /// Shop-local time of the invoice, without a zone.
    pub invoice_date: NaiveDateTime,
    pub unit_price: Milli,
    /// Absent for guests.
    pub customer_id: Option<String>,
    pub country: String,
}

/// The columns of one input row, borrowed from the reader, before typing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    pub invoice_no: &'a str,
    pub stock_code: &'a str,
    pub description: &'a str,
    pub quantity: &'a str,
    pub invoice_date: &'a str,
    pub unit_price: &'a str,
    pub customer_id: &'a str,
    pub country: &'a str,
}

/// Why a row or message was rejected: a stable code for machines plus a detail for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// The message bytes are not valid UTF-8.
    NotUtf8,
    /// The message is not a JSON object.
    NotJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    WrongType,
    /// InvoiceNo, StockCode or Country is empty.
    EmptyField,
    /// Quantity is not an integer.
    BadQuantity,
    /// UnitPrice is not an exact decimal of at most 3 fractional digits.
    BadPrice,
    /// InvoiceDate is in none of the accepted forms.
    BadDate,
    /// Quantity x UnitPrice does not fit in 64-bit thousandths.
    ValueOverflow,
    /// The message is larger than the configured limit.
    Oversized,
    /// A CSV row that cannot be read as the schema (wrong column count, unreadable line).
    BadRow,
}

impl RejectKind {
    /// The stable code written to rejects files and dead-letter headers.
    pub fn code(self) -> &'static str {
        match self {
            RejectKind::NotUtf8 => "not_utf8",
            RejectKind::NotJson => "not_json",
            RejectKind::MissingField => "missing_field",
            RejectKind::WrongType => "wrong_type",
            RejectKind::EmptyField => "empty_field",
            RejectKind::BadQuantity => "bad_quantity",
            RejectKind::BadPrice => "bad_price",
            RejectKind::BadDate => "bad_date",
            RejectKind::ValueOverflow => "value_overflow",
            RejectKind::Oversized => "oversized",
            RejectKind::BadRow => "bad_row",
        }
    }

    /// Every kind, in code order; used for per-reason counters.
    pub const ALL: [RejectKind; 11] = [
        RejectKind::NotUtf8,
        RejectKind::NotJson,
        RejectKind::MissingField,
        RejectKind::WrongType,
        RejectKind::EmptyField,
        RejectKind::BadQuantity,
        RejectKind::BadPrice,
        RejectKind::BadDate,
        RejectKind::ValueOverflow,
        RejectKind::Oversized,
        RejectKind::BadRow,
    ];
}

/// A rejected row or message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub kind: RejectKind,
    pub detail: String,
}

impl Reject {
    pub fn new(kind: RejectKind, detail: impl Into<String>) -> Reject {
        Reject {
            kind,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.code(), self.detail)
    }
}

impl std::error::Error for Reject {}

/// The JSON object on the wire, borrowing from the message where no unescaping is needed.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
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

fn required(name: &str, value: &str) -> Result<String, Reject> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Reject::new(
            RejectKind::EmptyField,
            format!("{name} is empty"),
        ));
    }
    Ok(value.to_owned())
}

fn optional(value: &str) -> Option<String> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then(|| value.to_owned())
}

/// CustomerID as a plain identifier: `17850.0` (a float artefact of spreadsheet exports) becomes
/// `17850`; any other non-empty text is kept as it is.
pub fn normalise_customer_id(value: &str) -> Option<String> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Some((whole, frac)) = value.split_once('.')
        && !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b == b'0')
    {
        return Some(whole.to_owned());
    }
    Some(value.to_owned())
}

fn price(text: &str) -> Result<Milli, Reject> {
    Milli::parse(text.trim())
        .map_err(|e| Reject::new(RejectKind::BadPrice, format!("unit_price {text:?}: {e}")))
}

fn checked_value(quantity: i64, unit_price: Milli) -> Result<(), Reject> {
    unit_price.times(quantity).map(|_| ()).ok_or_else(|| {
        Reject::new(
            RejectKind::ValueOverflow,
            format!("quantity {quantity} x unit_price {unit_price} overflows"),
        )
    })
}

impl Sale {
    /// Types one CSV row (either header dialect, already mapped to [`Fields`]).
    pub fn from_fields(f: &Fields<'_>) -> Result<Sale, Reject> {
        let invoice_no = required("invoice_no", f.invoice_no)?;
        let stock_code = required("stock_code", f.stock_code)?;
        let country = required("country", f.country)?;
        let quantity = f.quantity.trim().parse::<i64>().map_err(|_| {
            Reject::new(
                RejectKind::BadQuantity,
                format!("quantity {:?} is not an integer", f.quantity),
            )
        })?;
        let unit_price = price(f.unit_price)?;
        let invoice_date = time::parse_invoice_date(f.invoice_date).ok_or_else(|| {
            Reject::new(
                RejectKind::BadDate,
                format!(
                    "invoice_date {:?} is not M/D/YYYY H:MM or ISO-8601",
                    f.invoice_date
                ),
            )
        })?;
        checked_value(quantity, unit_price)?;
        Ok(Sale {
            invoice_no,
            stock_code,
            description: optional(f.description),
            quantity,
            invoice_date,
            unit_price,
            customer_id: normalise_customer_id(f.customer_id),
            country,
        })
    }

    /// Parses and validates one JSON message as ingest writes it.
    pub fn from_json(bytes: &[u8]) -> Result<Sale, Reject> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            Reject::new(
                RejectKind::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        let wire: Wire<'_> = serde_json::from_str(text).map_err(classify_json_error)?;
        let invoice_no = required("invoice_no", &wire.invoice_no)?;
        let stock_code = required("stock_code", &wire.stock_code)?;
        let country = required("country", &wire.country)?;
        let unit_price = price(&wire.unit_price)?;
        let invoice_date = time::parse_wire(&wire.invoice_date)
            .or_else(|| time::parse_iso(&wire.invoice_date))
            .ok_or_else(|| {
                Reject::new(
                    RejectKind::BadDate,
                    format!("invoice_date {:?} is not ISO-8601", wire.invoice_date),
                )
            })?;
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

    /// Appends the JSON wire form to `out` (the caller clears and reuses the buffer).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let date = self.invoice_date.format(time::WIRE_FORMAT).to_string();
        let wire = Wire {
            invoice_no: Cow::Borrowed(&self.invoice_no),
            stock_code: Cow::Borrowed(&self.stock_code),
            description: self.description.as_deref().map(Cow::Borrowed),
            quantity: self.quantity,
            invoice_date: Cow::Owned(date),
            unit_price: Cow::Owned(self.unit_price.to_string()),
            customer_id: self.customer_id.as_deref().map(Cow::Borrowed),
            country: Cow::Borrowed(&self.country),
        };
        serde_json::to_writer(out, &wire).expect("writing JSON to a Vec cannot fail");
    }

    /// The JSON wire form as a string.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// Net value of the line: quantity x unit price, in thousandths. Validation guarantees
    /// that it fits.
    pub fn value(&self) -> Milli {
        self.unit_price
            .times(self.quantity)
            .expect("validated sale value fits in i64")
    }

    /// A cancellation line (InvoiceNo starting with `C`).
    pub fn is_cancellation(&self) -> bool {
        self.invoice_no.starts_with('C')
    }
}

fn classify_json_error(e: serde_json::Error) -> Reject {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Data => {
            if e.to_string().starts_with("missing field") {
                RejectKind::MissingField
            } else {
                RejectKind::WrongType
            }
        }
        Category::Syntax | Category::Eof | Category::Io => RejectKind::NotJson,
    };
    Reject::new(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Fields<'static> {
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
        assert_eq!(Sale::from_json(json.as_bytes()).unwrap(), sale);
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

    #[test]
    fn customer_id_normalisation() {
        assert_eq!(normalise_customer_id("17850.0").as_deref(), Some("17850"));
        assert_eq!(normalise_customer_id("17850").as_deref(), Some("17850"));
        assert_eq!(normalise_customer_id(" 12.00 ").as_deref(), Some("12"));
        assert_eq!(normalise_customer_id("12.5").as_deref(), Some("12.5"));
        assert_eq!(normalise_customer_id(""), None);
    }

    #[test]
    fn each_message_reject_reason() {
        let good = Sale::from_fields(&row()).unwrap().to_json();
        let swap = |from: &str, to: &str| good.replace(from, to).into_bytes();
        let cases: Vec<(Vec<u8>, RejectKind)> = vec![
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
        ];
        for (bytes, kind) in cases {
            let err = Sale::from_json(&bytes).unwrap_err();
            assert_eq!(
                err.kind,
                kind,
                "{} -> {err}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert!(Sale::from_json(good.as_bytes()).is_ok());
    }
}
