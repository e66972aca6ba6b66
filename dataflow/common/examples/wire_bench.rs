//! Micro-benchmark of the wire format's hot paths: `Sale::write_json` (ingest) and
//! `Sale::from_json` / `SaleRef::from_json` (dataflow), in ns per record.
//!
//! ```sh
//! cargo run --release -p retail-common --example wire_bench -- [RECORDS] [ROUNDS]
//! ```
//!
//! The records are generated here with a tiny fixed-seed PRNG (retail-common cannot depend on
//! ingest's generator): realistic field lengths, a few descriptions with a JSON escape (the real
//! data set has `7" FRAME`), a quarter of guests without CustomerID. Each measurement runs
//! `ROUNDS` times (default 5) and prints the best and the median, since a shared machine is
//! noisy; the best is the figure to compare.

use std::hint::black_box;
use std::time::Instant;

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use retail_common::money::Milli;
use retail_common::record::{Sale, SaleRef};

const DESCRIPTIONS: [&str; 8] = [
    "WHITE HANGING HEART T-LIGHT HOLDER",
    "WHITE METAL LANTERN",
    "CREAM CUPID HEARTS COAT HANGER",
    "KNITTED UNION FLAG HOT WATER BOTTLE",
    "RED WOOLLY HOTTIE WHITE HEART.",
    "SET 7 BABUSHKA NESTING BOXES",
    "GLASS STAR FROSTED T-LIGHT HOLDER",
    "RECORD FRAME 7\" SINGLE SIZE ",
];
const COUNTRIES: [&str; 5] = [
    "United Kingdom",
    "United Kingdom",
    "United Kingdom",
    "Germany",
    "France",
];

/// xorshift64*: deterministic and good enough to vary the fields.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn generate(n: usize) -> Vec<Sale> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start: NaiveDateTime = NaiveDate::from_ymd_opt(2010, 12, 1)
        .and_then(|d| d.and_hms_opt(8, 0, 0))
        .expect("valid start");
    let mut date = start;
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                date += TimeDelta::seconds(rng.below(600) as i64);
            }
            let cancelled = rng.below(50) == 0;
            let invoice = 536_365 + (i / 5) as u64;
            Sale {
                invoice_no: if cancelled {
                    format!("C{invoice}")
                } else {
                    invoice.to_string()
                },
                stock_code: format!("{}{}", 20_000 + rng.below(3_000), ["", "A", "B"][i % 3]),
                description: (rng.below(100) != 0)
                    .then(|| DESCRIPTIONS[rng.below(8) as usize].to_owned()),
                quantity: (1 + rng.below(24) as i64) * if cancelled { -1 } else { 1 },
                invoice_date: date,
                unit_price: Milli(rng.below(20_000) as i64 * 5),
                customer_id: (rng.below(4) != 0).then(|| (12_346 + rng.below(6_000)).to_string()),
                country: COUNTRIES[rng.below(5) as usize].to_owned(),
            }
        })
        .collect()
}

/// Runs `f` over all records `rounds` times; returns (best, median) ns per record.
fn measure(rounds: usize, records: usize, mut f: impl FnMut() -> u64) -> (f64, f64) {
    let mut times: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            black_box(f());
            started.elapsed().as_nanos() as f64 / records as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2])
}

fn report(name: &str, (best, median): (f64, f64)) {
    println!("{name:<32} best {best:7.1} ns/record   median {median:7.1} ns/record");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let records: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("RECORDS"));
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let sales = generate(records);

    let mut out = Vec::with_capacity(512);
    report(
        "write_json",
        measure(rounds, records, || {
            let mut bytes = 0;
            for sale in &sales {
                out.clear();
                sale.write_json(&mut out);
                bytes += out.len() as u64;
            }
            bytes
        }),
    );

    let messages: Vec<Vec<u8>> = sales
        .iter()
        .map(|s| {
            let mut m = Vec::new();
            s.write_json(&mut m);
            m
        })
        .collect();
    let size: usize = messages.iter().map(Vec::len).sum();
    println!(
        "{records} records, {:.0} bytes per message on average",
        size as f64 / records as f64
    );

    report(
        "Sale::from_json (owned)",
        measure(rounds, records, || {
            let mut sum = 0u64;
            for m in &messages {
                let sale = Sale::from_json(m).expect("valid");
                sum = sum.wrapping_add(sale.quantity as u64 + sale.invoice_no.len() as u64);
            }
            sum
        }),
    );
    report(
        "SaleRef::from_json (borrowed)",
        measure(rounds, records, || {
            let mut sum = 0u64;
            for m in &messages {
                let sale = SaleRef::from_json(m).expect("valid");
                sum = sum.wrapping_add(sale.quantity as u64 + sale.invoice_no.len() as u64);
            }
            sum
        }),
    );

    // The parsed records must be the generated ones: a benchmark of a wrong parser is worthless.
    for (sale, m) in sales.iter().zip(&messages).step_by(997) {
        assert_eq!(&Sale::from_json(m).expect("valid"), sale);
        assert_eq!(&SaleRef::from_json(m).expect("valid").into_owned(), sale);
    }
}
