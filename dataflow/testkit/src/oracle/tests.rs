//! Tests of the oracle itself: Kafka's default partitioner against Java's, prices in
//! thousandths, and the fold on small inputs (late lines, retention).

use super::*;

/// Computed with kafka-clients 4.1.1: `Utils.murmur2(key.getBytes(UTF_8))` and
/// `Utils.toPositive(h) % 8`.
const JAVA: [(&str, i32, i32); 9] = [
    ("", 275646681, 1),
    ("a", -1563381124, 4),
    ("21", -973932308, 4),
    ("foobar", -790332482, 6),
    ("536365", -1735058606, 2),
    ("C536379", 328085676, 4),
    ("a-little-bit-longer-string", -1486304829, 3),
    ("bad-498", 303752994, 2),
    (
        "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
        -58897971,
        5,
    ),
];

#[test]
fn murmur2_equals_the_java_client() {
    for (key, hash, partition) in JAVA {
        assert_eq!(murmur2(key.as_bytes()), hash, "{key:?}");
        assert_eq!(java_partition(key.as_bytes(), 8), partition, "{key:?}");
    }
}

#[test]
fn prices_are_thousandths_with_at_most_three_decimals() {
    assert_eq!(milli("2.55"), Some(2550));
    assert_eq!(milli("0.001"), Some(1));
    assert_eq!(milli("-11062.06"), Some(-11_062_060));
    assert_eq!(milli("7"), Some(7000));
    for bad in ["2.5501", "", ".5", "1.", "1e3", "a", "1.2.3"] {
        assert_eq!(milli(bad), None, "{bad}");
    }
}

fn message(partition: i32, offset: i64, invoice: &str, date: &str, qty: i64) -> TopicMessage {
    let payload = format!(
        r#"{{"invoice_no":"{invoice}","stock_code":"S{qty}","description":null,"quantity":{qty},"invoice_date":"{date}","unit_price":"1.5","customer_id":"c1","country":"X"}}"#
    );
    TopicMessage {
        partition,
        offset,
        key: None,
        payload: payload.into_bytes(),
    }
}

#[test]
fn late_lines_fold_into_the_partitions_earliest_open_epoch() {
    let messages = [
        message(0, 0, "1", "2011-01-01T05:10:00", 2),
        message(0, 1, "2", "2011-01-01T03:00:00", 4),
        // Another partition's watermark is its own.
        message(1, 0, "3", "2011-01-01T03:00:00", 8),
    ];
    let flags = Flags {
        lateness_secs: 3600,
        ..Flags::default()
    };
    let e = oracle(&messages, &flags);
    assert_eq!(e.summary["totals"]["late_lines"], 1);
    assert_eq!(e.epochs["2011-01-01T04:00:00"]["late_lines"], 1);
    assert_eq!(e.epochs["2011-01-01T04:00:00"]["units"], 4);
    assert_eq!(e.epochs["2011-01-01T03:00:00"]["units"], 8);
    assert_eq!(e.summary["totals"]["revenue_milli"], 21_000);
}

#[test]
fn retention_closes_invoices_and_dead_letters_their_late_lines() {
    let messages = [
        message(0, 0, "1", "2011-01-01T00:10:00", 20_000),
        message(0, 1, "2", "2011-01-01T09:00:00", 1),
        message(0, 2, "1", "2011-01-01T00:20:00", 1),
        message(0, 3, "not json", "", 0),
    ];
    let mut messages = messages.to_vec();
    messages[3].payload = b"{".to_vec();
    let flags = Flags {
        retention_secs: Some(3 * 3600),
        ..Flags::default()
    };
    let e = oracle(&messages, &flags);
    // Invoice 1's large quantity alert was settled when it closed.
    assert!(e.alerts.is_empty(), "{:?}", e.alerts);
    assert_eq!(e.summary["totals"]["invoices"], 2);
    let dead: Vec<_> = e.dead.iter().map(|d| (d.1, d.2.as_str())).collect();
    assert_eq!(dead, [(2, "invoice_closed"), (3, "not_json")]);
    let off = oracle(
        &messages,
        &Flags {
            retention_secs: None,
            ..flags
        },
    );
    let keys: Vec<&str> = off.alerts.keys().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["large_invoice/1", "large_quantity/1/S20000"]);
}
