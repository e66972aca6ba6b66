//! Allocations on the hot path, counted: placing a valid sale in `ingest`'s layout (parse,
//! validate, assign its epoch, build the line the aggregates take) allocates nothing on the
//! heap, so the job's cost per record is not an allocator's; a record with an escape in a
//! string, which goes to serde_json's full parser, takes at most two. dhat's allocator counts them, in this
//! test binary only.

use std::time::Duration;

use dataflow::epoch::{EpochClock, PartitionClock};
use dataflow::parse::{Placed, Rules, place};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Heap blocks allocated so far in this process.
fn allocations() -> u64 {
    dhat::HeapStats::get().total_blocks
}

/// `n` wire records as `ingest` writes them: invoices of a few lines, the usual key forms and
/// field lengths, a description with an escape, guests without a customer, cancellations.
fn messages(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let invoice = if i % 50 == 7 {
                format!("C{}", 536_365 + i / 4)
            } else {
                (536_365 + i / 4).to_string()
            };
            let customer = if i % 4 == 0 {
                "null".to_owned()
            } else {
                format!("\"{}\"", 12_346 + i % 4000)
            };
            let description = if i % 97 == 0 {
                "RECORD FRAME 7\\\" SINGLE SIZE "
            } else {
                "WHITE HANGING HEART T-LIGHT HOLDER"
            };
            format!(
                r#"{{"invoice_no":"{invoice}","stock_code":"{}","description":"{description}","quantity":{},"invoice_date":"2011-0{}-{:02}T{:02}:{:02}:00","unit_price":"{}.{:02}","customer_id":{customer},"country":"{}"}}"#,
                if i % 3 == 0 { "85123A".to_owned() } else { (20_000 + i % 3000).to_string() },
                if i % 50 == 7 { -((i % 12) as i64) - 1 } else { (i % 24) as i64 + 1 },
                1 + i / 200_000 % 9,
                1 + (i / 4000) % 28,
                8 + (i / 400) % 10,
                (i / 7) % 60,
                i % 20,
                i % 100,
                if i % 5 == 0 { "France" } else { "United Kingdom" },
            )
            .into_bytes()
        })
        .collect()
}

#[test]
fn placing_a_valid_sale_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let clock = EpochClock::new(Duration::from_secs(3600), Duration::ZERO).unwrap();
    let rules = Rules {
        clock: &clock,
        max_message_bytes: 65_536,
        frontier: 0,
        committed: None,
        counted_through: -1,
        dead_through: -1,
        retention: Some(24 * 30),
    };
    let messages = messages(20_000);
    let mut partition = PartitionClock::default();
    let mut lines = Vec::with_capacity(messages.len());
    // (allocations, messages) for records in `ingest`'s plain layout, and for those with an
    // escape in a string, which go to serde_json's full parser.
    let (mut plain, mut escaped) = ((0, 0), (0, 0));
    for (offset, message) in messages.iter().enumerate() {
        let before = allocations();
        let placed = place(
            &rules,
            &mut partition,
            0,
            offset as i64,
            Some(b"k"),
            message,
        );
        let allocations = allocations() - before;
        let kind = if message.contains(&b'\\') {
            &mut escaped
        } else {
            &mut plain
        };
        *kind = (kind.0 + allocations, kind.1 + 1);
        match placed {
            Placed::Line(line, _) => lines.push(line),
            other => panic!("message {offset} was not a line: {other:?}"),
        }
    }
    assert_eq!(lines.len(), messages.len());
    assert!(plain.1 > 19_000 && escaped.1 > 100, "{plain:?} {escaped:?}");
    assert_eq!(
        plain.0, 0,
        "{} heap allocations placing {} sales in ingest's layout",
        plain.0, plain.1
    );
    // The fallback builds the escaped strings (which also shows that the count sees heap
    // allocations at all): at most the two a description takes.
    assert!(
        escaped.0 > 0 && escaped.0 <= 2 * escaped.1,
        "{} heap allocations placing {} sales with escapes",
        escaped.0,
        escaped.1
    );
}
