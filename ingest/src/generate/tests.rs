//! Tests of the generator: determinism per seed, the fixed catalogue, the data set's shape over
//! 100k records, the live clock and the dice.

use super::*;
use std::collections::{HashMap, HashSet};

fn simulated() -> Clock {
    Clock::Simulated(crate::cli::default_start())
}

fn json(seed: u64, n: usize) -> Vec<u8> {
    let mut generator = Generator::new(seed, simulated());
    let mut sale = blank_sale();
    let mut out = Vec::new();
    for _ in 0..n {
        generator.next_into(&mut sale);
        sale.write_json(&mut out);
        out.push(b'\n');
    }
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = json(42, 5_000);
    assert_eq!(a, json(42, 5_000));
    assert_ne!(a, json(43, 5_000));
    // A prefix of a longer run is the shorter run.
    assert!(json(42, 6_000).starts_with(&a));
    let first = std::str::from_utf8(&a).unwrap().lines().next().unwrap();
    assert!(
        first.starts_with(r#"{"invoice_no":"536365","#)
            || first.starts_with(r#"{"invoice_no":"C536365","#),
        "{first}"
    );
    assert!(
        first.contains(r#""invoice_date":"2010-12-01T08:00:00""#),
        "{first}"
    );
}

#[test]
fn the_catalogue_is_fixed_and_distinct() {
    let shop = Shop::new();
    assert_eq!(shop.products.len(), CATALOGUE_SIZE + 1);
    let codes: HashSet<_> = shop.products.iter().map(|p| &p.stock_code).collect();
    assert_eq!(codes.len(), CATALOGUE_SIZE + 1);
    assert!(shop.products.iter().all(|p| p.price.0 > 0));
    let three_decimals = shop.products.iter().filter(|p| p.price.0 % 10 != 0).count();
    assert!((40..=250).contains(&three_decimals), "{three_decimals}");
    let again = Shop::new();
    assert!(
        shop.products
            .iter()
            .zip(&again.products)
            .all(|(a, b)| a.stock_code == b.stock_code
                && a.description == b.description
                && a.price == b.price)
    );
}

#[test]
fn properties_over_100k_records() {
    const N: usize = 100_000;
    let mut generator = Generator::new(42, simulated());
    let mut out = Vec::new();
    let mut sales = Vec::with_capacity(N);
    for _ in 0..N {
        let sale = generator.next_sale();
        out.clear();
        sale.write_json(&mut out);
        assert_eq!(Sale::from_json(&out).as_ref(), Ok(&sale));
        sales.push(sale);
    }

    let share = |count: usize| count as f64 / N as f64;
    let cancelled = sales.iter().filter(|s| s.is_cancellation()).count();
    assert!(
        (0.015..=0.025).contains(&share(cancelled)),
        "cancellations {cancelled}"
    );
    assert!(
        sales
            .iter()
            .filter(|s| s.is_cancellation())
            .all(|s| s.quantity < 0)
    );
    assert!(
        sales
            .iter()
            .filter(|s| !s.is_cancellation())
            .all(|s| s.quantity > 0)
    );
    let guests = sales.iter().filter(|s| s.customer_id.is_none()).count();
    assert!((0.20..=0.30).contains(&share(guests)), "guests {guests}");
    let uk = sales
        .iter()
        .filter(|s| s.country == "United Kingdom")
        .count();
    assert!((0.85..=0.90).contains(&share(uk)), "UK {uk}");
    let countries: HashSet<_> = sales.iter().map(|s| s.country.as_str()).collect();
    assert!(countries.len() >= 20, "{countries:?}");

    // Invoices: contiguous, several lines, one time, customer and country each.
    let mut lines: HashMap<&str, Vec<&Sale>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for sale in &sales {
        if order.last() != Some(&sale.invoice_no.as_str()) {
            order.push(&sale.invoice_no);
        }
        lines.entry(&sale.invoice_no).or_default().push(sale);
    }
    assert_eq!(
        order.len(),
        lines.len(),
        "each invoice's lines are contiguous"
    );
    let mean = N as f64 / lines.len() as f64;
    assert!(
        (5.0..=15.0).contains(&mean),
        "mean lines per invoice {mean}"
    );
    let singles = lines.values().filter(|l| l.len() == 1).count();
    assert!(singles > lines.len() / 10, "small invoices are common");
    for invoice in lines.values() {
        let first = invoice[0];
        assert!(invoice.iter().all(|s| s.invoice_date == first.invoice_date
            && s.customer_id == first.customer_id
            && s.country == first.country));
    }
    assert!(
        sales
            .windows(2)
            .all(|w| w[0].invoice_date <= w[1].invoice_date)
    );
    let span = sales[N - 1].invoice_date - sales[0].invoice_date;
    assert!(
        span > TimeDelta::hours(12) && span < TimeDelta::days(10),
        "{span}"
    );

    // Cancellations mostly undo what the customer bought before.
    let mut bought: HashSet<(&str, &str)> = HashSet::new();
    let (mut undo, mut cancel_lines) = (0, 0);
    for sale in &sales {
        let customer = sale.customer_id.as_deref().unwrap_or("");
        if sale.is_cancellation() {
            cancel_lines += 1;
            undo += usize::from(bought.contains(&(customer, sale.stock_code.as_str())));
        } else if !customer.is_empty() {
            bought.insert((customer, &sale.stock_code));
        }
    }
    assert!(undo * 10 >= cancel_lines * 7, "{undo} of {cancel_lines}");

    // Heavy-tailed popularity over a large catalogue.
    let mut popularity: HashMap<&str, usize> = HashMap::new();
    for sale in &sales {
        *popularity.entry(&sale.stock_code).or_default() += 1;
    }
    let mut counts: Vec<usize> = popularity.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    assert!(counts.len() >= 2_000, "{} distinct products", counts.len());
    assert!(counts[0] > 10 * counts[counts.len() / 2], "{counts:?}");
    assert!(
        sales.iter().any(|s| s.unit_price.0 % 10 != 0),
        "3-decimal prices occur"
    );

    // The anomalies the alert rules should flag.
    assert!(
        sales
            .iter()
            .any(|s| s.unit_price.0 == 0 && s.stock_code != "POST")
    );
    assert!(sales.iter().any(|s| s.quantity >= 10_000));
    let value = |invoice: &[&Sale]| invoice.iter().map(|s| s.value().0).sum::<i64>();
    assert!(
        lines
            .values()
            .any(|l| l.len() >= 200 && value(l) > 5_000_000)
    );
    assert!(
        lines
            .iter()
            .any(|(invoice, l)| invoice.starts_with('C') && l.len() > 5)
    );
    assert!(sales.iter().any(|s| s.stock_code == "POST"));
}

#[test]
fn live_clock_stamps_now() {
    let before = Utc::now().naive_utc() - TimeDelta::seconds(1);
    let sale = Generator::new(1, Clock::Live).next_sale();
    assert!(sale.invoice_date >= before);
    assert!(sale.invoice_date <= Utc::now().naive_utc());
    assert_eq!(sale.invoice_date.nanosecond(), 0);
}

#[test]
fn dice_are_uniform_enough() {
    let mut dice = Dice::new(7);
    let mut buckets = [0u32; 10];
    for _ in 0..100_000 {
        buckets[dice.below(10) as usize] += 1;
        let u = dice.unit();
        assert!((0.0..1.0).contains(&u));
    }
    assert!(
        buckets.iter().all(|&b| (9_500..=10_500).contains(&b)),
        "{buckets:?}"
    );
    assert_eq!(dice.weighted(&[(5, 0), (6, 1)]), 6);
    let cdf = cumulative([0.0, 1.0, 0.0]);
    assert!((0..100).all(|_| dice.pick(&cdf) == 1));
}
