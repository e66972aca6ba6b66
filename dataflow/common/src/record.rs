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
//! and to a JSON message ([`Sale::from_json`], or [`SaleRef::from_json`], which borrows the
//! text from the message instead of copying it).

use std::borrow::Cow;
use std::fmt;

use chrono::NaiveDateTime;
use serde::{Deserialize, Deserializer, Serialize};

use crate::money::{DecimalBuffer, Milli};
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

/// One validated invoice line that borrows its text from the JSON message it was parsed from.
///
/// The dataflow's hot path: [`SaleRef::from_json`] applies exactly the validation of
/// [`Sale::from_json`] without copying the text fields, so a record costs no allocation unless a
/// field holds a JSON escape (`\"`, `\u00e9`, ...), which must be unescaped into its own
/// `String`; `Cow` keeps that case correct. The fields mean what [`Sale`]'s fields mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleRef<'a> {
    pub invoice_no: Cow<'a, str>,
    pub stock_code: Cow<'a, str>,
    pub description: Option<Cow<'a, str>>,
    pub quantity: i64,
    pub invoice_date: NaiveDateTime,
    pub unit_price: Milli,
    pub customer_id: Option<Cow<'a, str>>,
    pub country: Cow<'a, str>,
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
/// Serialises as its [`code`](RejectKind::code) in text formats (JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// A sale line older than its partition's retention horizon (`dataflow
    /// --invoice-retention`): its invoice is closed.
    InvoiceClosed,
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
            RejectKind::InvoiceClosed => "invoice_closed",
        }
    }

    /// Every kind, in code order; used for per-reason counters.
    pub const ALL: [RejectKind; 12] = [
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
        RejectKind::InvoiceClosed,
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
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Wire<'a> {
    #[serde(borrow)]
    pub(crate) invoice_no: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) stock_code: Cow<'a, str>,
    #[serde(borrow, deserialize_with = "optional_cow")]
    pub(crate) description: Option<Cow<'a, str>>,
    pub(crate) quantity: i64,
    #[serde(borrow)]
    pub(crate) invoice_date: Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) unit_price: Cow<'a, str>,
    #[serde(borrow, deserialize_with = "optional_cow")]
    pub(crate) customer_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) country: Cow<'a, str>,
}

/// `Option<Cow<str>>` that borrows: serde's `#[serde(borrow)]` borrows a `Cow<str>` field but
/// not one inside an `Option`, which would copy every description and CustomerID. A newtype
/// with its own borrowed field fixes that; the errors stay serde's (`expected a string`).
fn optional_cow<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Option::<Text<'a>>::deserialize(deserializer).map(|text| text.map(|Text(text)| text))
}

/// `str::trim`, answered at once when the text starts and ends with a printable ASCII byte
/// (no whitespace to trim: the common case, where `trim` would still decode both ends).
fn trim(text: &str) -> &str {
    match text.as_bytes() {
        [first, .., last] if first.is_ascii_graphic() && last.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// InvoiceNo, StockCode and Country: trimmed, and never empty.
fn required<'s>(name: &str, value: &'s str) -> Result<&'s str, Reject> {
    let value = trim(value);
    if value.is_empty() {
        return Err(Reject::new(
            RejectKind::EmptyField,
            format!("{name} is empty"),
        ));
    }
    Ok(value)
}

/// Description: kept as written (surrounding spaces included) unless it is blank.
fn optional(value: &str) -> Option<&str> {
    (!trim(value).is_empty()).then_some(value)
}

/// Applies a rule that picks a part of a text (see [`required`], [`optional`],
/// [`customer_id`]) to a field parsed from JSON, still borrowing from the message when the
/// field did. A field with JSON escapes was unescaped into its own `String` and stays owned.
fn narrow<'a, E>(
    text: Cow<'a, str>,
    rule: impl for<'s> FnOnce(&'s str) -> Result<&'s str, E>,
) -> Result<Cow<'a, str>, E> {
    match text {
        Cow::Borrowed(text) => rule(text).map(Cow::Borrowed),
        // The whole text (no trimming, the common case) keeps its String; a part is copied.
        Cow::Owned(text) => match rule(&text) {
            Ok(part) if part.len() == text.len() => Ok(Cow::Owned(text)),
            Ok(part) => Ok(Cow::Owned(part.to_owned())),
            Err(e) => Err(e),
        },
    }
}

/// CustomerID as a plain identifier: `17850.0` (a float artefact of spreadsheet exports) becomes
/// `17850`; any other non-empty text is kept as it is.
pub fn normalise_customer_id(value: &str) -> Option<String> {
    customer_id(value).map(str::to_owned)
}

/// [`normalise_customer_id`] without the copy: the identifier is always a part of `value`.
fn customer_id(value: &str) -> Option<&str> {
    let value = trim(value);
    if value.is_empty() {
        return None;
    }
    if let Some((whole, frac)) = value.split_once('.')
        && !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b == b'0')
    {
        return Some(whole);
    }
    Some(value)
}

/// Quantity x unit price of a validated line (validation guarantees that it fits).
fn line_value(unit_price: Milli, quantity: i64) -> Milli {
    unit_price
        .times(quantity)
        .expect("validated sale value fits in i64")
}

/// Whether an invoice number is a cancellation's (it starts with `C`).
fn is_cancellation(invoice_no: &str) -> bool {
    invoice_no.starts_with('C')
}

/// The reject of an `invoice_date` that is not ISO-8601.
fn bad_date(text: &str) -> Reject {
    Reject::new(
        RejectKind::BadDate,
        format!("invoice_date {text:?} is not ISO-8601"),
    )
}

fn price(text: &str) -> Result<Milli, Reject> {
    Milli::parse(trim(text))
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
        let invoice_no = required("invoice_no", f.invoice_no)?.to_owned();
        let stock_code = required("stock_code", f.stock_code)?.to_owned();
        let country = required("country", f.country)?.to_owned();
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
            description: optional(f.description).map(str::to_owned),
            quantity,
            invoice_date,
            unit_price,
            customer_id: normalise_customer_id(f.customer_id),
            country,
        })
    }

    /// Parses and validates one JSON message as ingest writes it: [`SaleRef::from_json`], then
    /// owned copies of its text.
    pub fn from_json(bytes: &[u8]) -> Result<Sale, Reject> {
        SaleRef::from_json(bytes).map(SaleRef::into_owned)
    }

    /// Appends the JSON wire form to `out` (the caller clears and reuses the buffer).
    ///
    /// This is ingest's hot path: the date and the price are formatted on the stack, so the
    /// only work per record is serde_json writing the object.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let mut date = time::WireBuffer::new();
        let mut price = DecimalBuffer::new();
        let wire = Wire {
            invoice_no: Cow::Borrowed(&self.invoice_no),
            stock_code: Cow::Borrowed(&self.stock_code),
            description: self.description.as_deref().map(Cow::Borrowed),
            quantity: self.quantity,
            invoice_date: Cow::Borrowed(date.format(self.invoice_date)),
            unit_price: Cow::Borrowed(price.format(self.unit_price)),
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
        line_value(self.unit_price, self.quantity)
    }

    /// A cancellation line (InvoiceNo starting with `C`).
    pub fn is_cancellation(&self) -> bool {
        is_cancellation(&self.invoice_no)
    }
}

impl<'a> SaleRef<'a> {
    /// Parses and validates one JSON message as ingest writes it, borrowing from `bytes`.
    /// Accepts and rejects exactly what [`Sale::from_json`] does, with the same [`Reject`].
    pub fn from_json(bytes: &'a [u8]) -> Result<SaleRef<'a>, Reject> {
        let text = utf8(bytes)?;
        // The layout ingest writes is scanned in place; any other goes through serde_json,
        // whose errors name the reasons.
        // Each path validates its own Wire, so the scan's is built in place rather than copied
        // into a slot shared with serde_json's.
        match wire_scan::scan(text) {
            Some(wire) => SaleRef::from_wire(wire),
            None => SaleRef::from_wire(serde_json::from_str(text).map_err(classify_json_error)?),
        }
    }

    /// [`SaleRef::from_json`] without the scan: serde_json reads every message. The oracle of
    /// the equivalence tests.
    #[cfg(test)]
    pub(crate) fn from_json_serde_only(bytes: &'a [u8]) -> Result<SaleRef<'a>, Reject> {
        let text = utf8(bytes)?;
        SaleRef::from_wire(serde_json::from_str(text).map_err(classify_json_error)?)
    }

    /// Validates the fields of a parsed message.
    #[inline]
    fn from_wire(wire: Wire<'a>) -> Result<SaleRef<'a>, Reject> {
        // The checks run in this order so that a message with several faults gets the same
        // reason as before (and as in from_fields).
        let invoice_no = narrow(wire.invoice_no, |t| required("invoice_no", t))?;
        let stock_code = narrow(wire.stock_code, |t| required("stock_code", t))?;
        let country = narrow(wire.country, |t| required("country", t))?;
        let unit_price = price(&wire.unit_price)?;
        let invoice_date = time::parse_wire(&wire.invoice_date)
            .or_else(|| time::parse_iso(&wire.invoice_date))
            .ok_or_else(|| bad_date(&wire.invoice_date))?;
        checked_value(wire.quantity, unit_price)?;
        Ok(SaleRef {
            invoice_no,
            stock_code,
            description: wire
                .description
                .and_then(|d| narrow(d, |t| optional(t).ok_or(())).ok()),
            quantity: wire.quantity,
            invoice_date,
            unit_price,
            customer_id: wire
                .customer_id
                .and_then(|c| narrow(c, |t| customer_id(t).ok_or(())).ok()),
            country,
        })
    }

    /// The same record with owned text.
    pub fn into_owned(self) -> Sale {
        Sale {
            invoice_no: self.invoice_no.into_owned(),
            stock_code: self.stock_code.into_owned(),
            description: self.description.map(Cow::into_owned),
            quantity: self.quantity,
            invoice_date: self.invoice_date,
            unit_price: self.unit_price,
            customer_id: self.customer_id.map(Cow::into_owned),
            country: self.country.into_owned(),
        }
    }

    /// Net value of the line: quantity x unit price, in thousandths (see [`Sale::value`]).
    pub fn value(&self) -> Milli {
        line_value(self.unit_price, self.quantity)
    }

    /// A cancellation line (InvoiceNo starting with `C`).
    pub fn is_cancellation(&self) -> bool {
        is_cancellation(&self.invoice_no)
    }
}

/// The message as text. simdutf8's check of valid text is several times std's; the error of
/// invalid text (where the first bad byte is) comes from std.
fn utf8(bytes: &[u8]) -> Result<&str, Reject> {
    simdutf8::basic::from_utf8(bytes)
        .or_else(|_| std::str::from_utf8(bytes))
        .map_err(|e| {
            Reject::new(
                RejectKind::NotUtf8,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })
}

impl From<SaleRef<'_>> for Sale {
    fn from(sale: SaleRef<'_>) -> Sale {
        sale.into_owned()
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

mod wire_scan;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod message_tests;
#[cfg(test)]
mod tests;
