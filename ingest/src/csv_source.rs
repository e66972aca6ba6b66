//! Streaming CSV input: plain or gzip (told apart by the magic bytes), either header dialect of
//! the UCI data set mapped by column name, each row typed with [`Sale::from_fields`].
//!
//! Memory stays constant however large the file: one [`ByteRecord`] is refilled per row
//! (xsv's `count` does the same), fields are borrowed from it, and only a row with bytes that
//! are not UTF-8 allocates for its lossy decoding. The reader is `flexible`, so a row with the
//! wrong number of fields becomes a [`RejectKind::BadRow`] reject instead of ending the run.
//! Rejected rows go to a [`RejectWriter`].

use std::borrow::Cow;
use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use csv::ByteRecord;
use flate2::read::MultiGzDecoder;
use retail_common::record::{Fields, RejectKind, Sale};

use crate::cli::Input;
use crate::error::IngestError;

/// The schema's columns in [`Fields`] order, each with its accepted header names, normalised
/// as [`normalise_header`] does: the first is the UCI *Online Retail* name, then the *Online
/// Retail II* one where it differs.
const COLUMNS: [(&str, &[&str]); 8] = [
    ("InvoiceNo", &["invoiceno", "invoice"]),
    ("StockCode", &["stockcode"]),
    ("Description", &["description"]),
    ("Quantity", &["quantity"]),
    ("InvoiceDate", &["invoicedate"]),
    ("UnitPrice", &["unitprice", "price"]),
    ("CustomerID", &["customerid"]),
    ("Country", &["country"]),
];

/// The two bytes every gzip member starts with (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A header name as compared: trimmed, without a UTF-8 byte-order mark, lower case, and
/// without spaces, underscores or hyphens, so `Customer ID`, `customer_id` and `CustomerID`
/// are one name.
fn normalise_header(name: &str) -> String {
    name.trim_start_matches('\u{feff}')
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '_' | '-'))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Where each schema column is in a row, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnMap {
    /// Positions in [`Fields`] order.
    index: [usize; 8],
    /// Fields in the header; a row with another count is rejected.
    width: usize,
}

impl ColumnMap {
    /// Maps the header by name (any order, extra columns ignored); the first column of a
    /// name wins. A missing column is an error naming it.
    pub fn from_header(header: &ByteRecord, input: &str) -> Result<ColumnMap, IngestError> {
        let names: Vec<String> = header
            .iter()
            .map(|field| normalise_header(&String::from_utf8_lossy(field)))
            .collect();
        let mut index = [0; 8];
        for (slot, (column, accepted)) in index.iter_mut().zip(COLUMNS) {
            *slot = names
                .iter()
                .position(|name| accepted.contains(&name.as_str()))
                .ok_or_else(|| IngestError::MissingColumn {
                    input: input.to_owned(),
                    column,
                    accepted: accepted.join(", "),
                    header: String::from_utf8_lossy(&join_csv(header)).into_owned(),
                })?;
        }
        Ok(ColumnMap {
            index,
            width: header.len(),
        })
    }
}

/// Re-joins a record as one CSV line (no terminator), quoting as the csv crate does.
pub fn join_csv(record: &ByteRecord) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    writer.write_byte_record(record).expect("write to Vec");
    let mut line = writer.into_inner().expect("flush to Vec");
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    line
}

/// Reads up to two bytes to tell gzip from plain text, and gives back a reader that still
/// yields every byte.
pub fn sniff_gzip<R: Read>(mut reader: R) -> io::Result<(bool, impl Read)> {
    let mut head = [0u8; 2];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let is_gzip = head[..filled] == GZIP_MAGIC;
    Ok((
        is_gzip,
        io::Cursor::new(head).take(filled as u64).chain(reader),
    ))
}

/// Counts the bytes read through it (compressed bytes for gzip), for the progress bar.
struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// What the next row turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Row {
    /// A valid sale.
    Sale(Sale),
    /// The row was rejected (already written to the rejects file and counted).
    Rejected,
    /// End of input.
    End,
}

/// An open CSV input with its header mapped.
pub struct CsvSource {
    reader: csv::Reader<Box<dyn Read>>,
    /// The one record refilled for every row.
    record: ByteRecord,
    columns: ColumnMap,
    /// How the input is named in messages.
    name: String,
    /// Whether the input was gzip-compressed (for the log).
    pub gzip: bool,
    /// Bytes read from the file or stdin so far.
    bytes_read: Rc<Cell<u64>>,
    /// Size of the input file, when known (not for stdin).
    pub total_bytes: Option<u64>,
    /// Data rows read (not counting the header).
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
    /// Rows with bytes that are not UTF-8 in the schema's fields, decoded with U+FFFD and
    /// kept (such a row may still be rejected for another reason).
    pub lossy_utf8_rows: u64,
}

impl CsvSource {
    /// Opens the input, detects gzip and maps the header.
    pub fn open(input: &Input) -> Result<CsvSource, IngestError> {
        let (raw, total_bytes): (Box<dyn Read>, Option<u64>) = match input {
            Input::Stdin => (Box::new(io::stdin()), None),
            Input::Path(path) => {
                let open_error = |source| IngestError::OpenInput {
                    path: path.clone(),
                    source,
                };
                let file = File::open(path).map_err(open_error)?;
                let size = file.metadata().map_err(open_error)?.len();
                (Box::new(file), Some(size))
            }
        };
        CsvSource::from_reader(raw, input.to_string(), total_bytes)
    }

    /// Wraps any reader (used by [`CsvSource::open`] and by tests).
    pub fn from_reader(
        raw: Box<dyn Read>,
        name: String,
        total_bytes: Option<u64>,
    ) -> Result<CsvSource, IngestError> {
        let bytes_read = Rc::new(Cell::new(0));
        let counted = CountingReader {
            inner: raw,
            count: Rc::clone(&bytes_read),
        };
        let (gzip, sniffed) = sniff_gzip(counted).map_err(|source| IngestError::ReadInput {
            input: name.clone(),
            line: 1,
            source: source.into(),
        })?;
        let decoded: Box<dyn Read> = if gzip {
            Box::new(MultiGzDecoder::new(sniffed))
        } else {
            Box::new(sniffed)
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .buffer_capacity(1 << 16)
            .from_reader(decoded);
        let header = reader
            .byte_headers()
            .map_err(|source| IngestError::ReadInput {
                input: name.clone(),
                line: 1,
                source,
            })?
            .clone();
        if header.is_empty() {
            return Err(IngestError::NoHeader { input: name });
        }
        let columns = ColumnMap::from_header(&header, &name)?;
        Ok(CsvSource {
            reader,
            record: ByteRecord::new(),
            columns,
            name,
            gzip,
            bytes_read,
            total_bytes,
            rows: 0,
            rejected: 0,
            lossy_utf8_rows: 0,
        })
    }

    /// Bytes of the input consumed so far (compressed bytes for gzip).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.get()
    }

    /// Reads and types the next row; a row that fails is written to `rejects`.
    pub fn next_row(&mut self, rejects: &mut RejectWriter) -> Result<Row, IngestError> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|source| IngestError::ReadInput {
                input: self.name.clone(),
                line: self.reader.position().line(),
                source,
            })?;
        if !more {
            return Ok(Row::End);
        }
        self.rows += 1;
        let line = self.record.position().map_or(0, |p| p.line());
        if self.record.len() != self.columns.width {
            let detail = format!(
                "expected {} fields, found {}",
                self.columns.width,
                self.record.len()
            );
            return self.reject(rejects, line, RejectKind::BadRow, &detail);
        }
        // Borrowed when the bytes are UTF-8 (the usual case), decoded with U+FFFD otherwise.
        let field: [Cow<'_, str>; 8] =
            std::array::from_fn(|i| String::from_utf8_lossy(&self.record[self.columns.index[i]]));
        if field.iter().any(|f| matches!(f, Cow::Owned(_))) {
            self.lossy_utf8_rows += 1;
        }
        let typed = Sale::from_fields(&Fields {
            invoice_no: &field[0],
            stock_code: &field[1],
            description: &field[2],
            quantity: &field[3],
            invoice_date: &field[4],
            unit_price: &field[5],
            customer_id: &field[6],
            country: &field[7],
        });
        match typed {
            Ok(sale) => Ok(Row::Sale(sale)),
            Err(reject) => self.reject(rejects, line, reject.kind, &reject.detail),
        }
    }

    fn reject(
        &mut self,
        rejects: &mut RejectWriter,
        line: u64,
        kind: RejectKind,
        detail: &str,
    ) -> Result<Row, IngestError> {
        if self.rejected == 0 {
            tracing::warn!(
                line,
                reason = kind.code(),
                detail,
                "first rejected row of {}; every rejected row goes to {}",
                self.name,
                rejects.path.display()
            );
        } else {
            tracing::trace!(line, reason = kind.code(), detail, "rejected row");
        }
        self.rejected += 1;
        rejects.write(line, kind, detail, &self.record)?;
        Ok(Row::Rejected)
    }
}

/// The rejects file: CSV with a header `line,reason,detail,raw`.
pub struct RejectWriter {
    writer: csv::Writer<Box<dyn Write>>,
    path: PathBuf,
}

impl RejectWriter {
    /// Creates (or truncates) the file and writes its header, so it exists even when no row
    /// is rejected. Without a path, rejected rows are only counted.
    pub fn create(path: Option<&Path>) -> Result<RejectWriter, IngestError> {
        let Some(path) = path else {
            return Ok(RejectWriter {
                writer: csv::Writer::from_writer(Box::new(std::io::sink())),
                path: PathBuf::new(),
            });
        };
        let file = File::create(path).map_err(|e| IngestError::rejects(path, e))?;
        let out: Box<dyn Write> = Box::new(BufWriter::new(file));
        let mut writer = csv::Writer::from_writer(out);
        writer
            .write_record(["line", "reason", "detail", "raw"])
            .map_err(|e| IngestError::rejects(path, e))?;
        Ok(RejectWriter {
            writer,
            path: path.to_owned(),
        })
    }

    /// Appends one rejected row; `raw` is re-joined as CSV with its original bytes.
    pub fn write(
        &mut self,
        line: u64,
        kind: RejectKind,
        detail: &str,
        raw: &ByteRecord,
    ) -> Result<(), IngestError> {
        let line = line.to_string();
        let raw = join_csv(raw);
        self.writer
            .write_record([
                line.as_bytes(),
                kind.code().as_bytes(),
                detail.as_bytes(),
                &raw,
            ])
            .map_err(|e| IngestError::rejects(&self.path, e))
    }

    /// Flushes the file.
    pub fn finish(mut self) -> Result<(), IngestError> {
        self.writer
            .flush()
            .map_err(|e| IngestError::rejects(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UCI: &str =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n";
    const ROW: &str = "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";
    const FIRST_JSON: &str = r#"{"invoice_no":"536365","stock_code":"85123A","description":"WHITE HANGING HEART T-LIGHT HOLDER","quantity":6,"invoice_date":"2010-12-01T08:26:00","unit_price":"2.55","customer_id":"17850","country":"United Kingdom"}"#;

    fn source(bytes: Vec<u8>) -> Result<CsvSource, IngestError> {
        CsvSource::from_reader(Box::new(io::Cursor::new(bytes)), "test".into(), None)
    }

    fn rejects(dir: &tempfile::TempDir) -> RejectWriter {
        RejectWriter::create(Some(&dir.path().join("rejects.csv"))).unwrap()
    }

    /// Reads every row; returns the sales as JSON and the rejects file.
    fn read_all(bytes: Vec<u8>) -> (Vec<String>, String, CsvSource) {
        let dir = tempfile::tempdir().unwrap();
        let mut out = rejects(&dir);
        let mut src = source(bytes).unwrap();
        let mut sales = Vec::new();
        loop {
            match src.next_row(&mut out).unwrap() {
                Row::Sale(sale) => sales.push(sale.to_json()),
                Row::Rejected => {}
                Row::End => break,
            }
        }
        out.finish().unwrap();
        let text = std::fs::read_to_string(dir.path().join("rejects.csv")).unwrap();
        (sales, text, src)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn maps_the_online_retail_header() {
        let (sales, rejects, src) = read_all(format!("{UCI}{ROW}").into_bytes());
        assert_eq!(sales, [FIRST_JSON]);
        assert_eq!(rejects, "line,reason,detail,raw\n");
        assert_eq!((src.rows, src.rejected, src.lossy_utf8_rows), (1, 0, 0));
        assert!(!src.gzip);
    }

    #[test]
    fn maps_the_online_retail_ii_header_in_any_order() {
        let csv = "\u{feff}Country, customer id ,Price,InvoiceDate,Quantity,Description,StockCode,Invoice,Extra\n\
                   United Kingdom,17850.0,2.55,2010-12-01 08:26:00,6,WHITE HANGING HEART T-LIGHT HOLDER,85123A,536365,x\n";
        let (sales, _, _) = read_all(csv.as_bytes().to_vec());
        assert_eq!(sales, [FIRST_JSON]);
    }

    #[test]
    fn a_missing_column_is_named() {
        let csv = "Invoice,StockCode,Description,Quantity,InvoiceDate,Customer ID,Country\n";
        let err = source(csv.as_bytes().to_vec()).err().unwrap();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                IngestError::MissingColumn {
                    column: "UnitPrice",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("no UnitPrice column"), "{text}");
        assert!(text.contains("unitprice, price"), "{text}");
        assert!(matches!(
            source(Vec::new()),
            Err(IngestError::NoHeader { .. })
        ));
    }

    #[test]
    fn detects_gzip_by_magic_bytes() {
        let (is_gzip, mut rest) = sniff_gzip(io::Cursor::new(vec![0x1f, 0x8b, 8, 0])).unwrap();
        assert!(is_gzip);
        let mut all = Vec::new();
        rest.read_to_end(&mut all).unwrap();
        assert_eq!(all, [0x1f, 0x8b, 8, 0]);
        for short in [&b""[..], b"I", b"\x1f", b"\x1fX"] {
            let (is_gzip, mut rest) = sniff_gzip(io::Cursor::new(short.to_vec())).unwrap();
            assert!(!is_gzip);
            let mut all = Vec::new();
            rest.read_to_end(&mut all).unwrap();
            assert_eq!(all, short);
        }

        let plain = format!("{UCI}{ROW}{ROW}");
        let (sales, _, src) = read_all(gzip(plain.as_bytes()));
        assert!(src.gzip);
        assert_eq!(sales, [FIRST_JSON, FIRST_JSON]);
        // Two concatenated gzip members read as one stream.
        let mut two = gzip(UCI.as_bytes());
        two.extend(gzip(ROW.as_bytes()));
        assert_eq!(read_all(two).0, [FIRST_JSON]);
    }

    #[test]
    fn lossy_utf8_rows_are_kept_and_counted() {
        let mut csv = UCI.as_bytes().to_vec();
        csv.extend_from_slice(
            b"536365,85123A,CAF\xe9 MUG,6,12/1/2010 8:26,2.55,17850,United Kingdom\n",
        );
        csv.extend_from_slice(ROW.as_bytes());
        let (sales, rejects, src) = read_all(csv);
        assert_eq!(sales.len(), 2);
        assert!(
            sales[0].contains("\"description\":\"CAF\u{fffd} MUG\""),
            "{}",
            sales[0]
        );
        assert_eq!((src.rows, src.rejected, src.lossy_utf8_rows), (2, 0, 1));
        assert_eq!(rejects, "line,reason,detail,raw\n");
    }

    #[test]
    fn bad_rows_go_to_the_rejects_file() {
        let csv = format!(
            "{UCI}{ROW}536366,22633,\"HAND WARMER, UNION JACK\",6,12/1/2010 8:28\n\
             536367,84879,BIRD,lots,12/1/2010 8:34,1.69,13047,United Kingdom\n{ROW}"
        );
        let (sales, rejects, src) = read_all(csv.into_bytes());
        assert_eq!(sales.len(), 2);
        assert_eq!((src.rows, src.rejected), (4, 2));
        let expected = "line,reason,detail,raw\n\
            3,bad_row,\"expected 8 fields, found 5\",\"536366,22633,\"\"HAND WARMER, UNION JACK\"\",6,12/1/2010 8:28\"\n\
            4,bad_quantity,\"quantity \"\"lots\"\" is not an integer\",\"536367,84879,BIRD,lots,12/1/2010 8:34,1.69,13047,United Kingdom\"\n";
        assert_eq!(rejects, expected);
    }

    #[test]
    fn line_numbers_count_physical_lines() {
        // A quoted description spanning two lines: the next row starts on line 4.
        let csv = format!(
            "{UCI}536365,1,\"TWO\nLINES\",1,12/1/2010 8:26,1,,UK\n536365,2,X,1,bad date,1,,UK\n"
        );
        let (_, rejects, _) = read_all(csv.into_bytes());
        assert!(rejects.contains("\n4,bad_date,"), "{rejects}");
    }
}
