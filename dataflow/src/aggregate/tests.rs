//! The aggregates against a from-scratch fold, with 1, 2 and 3 workers, without Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use differential_dataflow::consolidation::consolidate;
use differential_dataflow::input::Input;

use super::*;

/// Deterministic pseudo-random numbers from `seed`: each call gives one below its argument.
pub(super) fn numbers(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |m: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % m
    }
}

/// Deterministic pseudo-random lines over a few epochs, with cancellations, guests, zero
/// prices, large quantities and big invoices so that every rule and aggregate is exercised.
fn sample_lines(n: usize) -> Vec<Line> {
    let mut next = numbers(0x9E37_79B9_7F4A_7C15);
    let countries = ["United Kingdom", "France", "Germany", "EIRE", "Spain"];
    (0..n)
        .map(|i| {
            let invoice_no = i as u64 / 4;
            let cancel = next(20) == 0;
            let customer = (next(4) != 0).then(|| format!("{}", 12_000 + next(30)));
            let mut quantity = 1 + next(24) as i64;
            if next(500) == 0 {
                quantity = 12_000;
            }
            if cancel {
                quantity = -quantity;
            }
            let unit_price_milli = if next(100) == 0 {
                0
            } else {
                10 + next(20_000) as i64
            };
            Line {
                epoch: invoice_no / 25,
                // Some invoice numbers do not pack into a u64 (see `invoice`).
                invoice: format!(
                    "{}{}",
                    match (cancel, invoice_no % 7) {
                        (true, _) => "C",
                        (false, 3) => "A",
                        (false, 5) => "0",
                        _ => "",
                    },
                    500_000 + invoice_no
                )
                .into(),
                stock_code: format!("P{:03}", next(40)).into(),
                customer: customer.map(Into::into),
                country: countries[next(5) as usize].into(),
                quantity,
                unit_price_milli,
                late: next(50) == 0,
            }
        })
        .collect()
}

/// Thresholds low enough for every rule to fire on [`sample_lines`].
fn sample_rules() -> AlertRules {
    AlertRules {
        invoice_value_milli: 300_000,
        quantity: 10_000,
        cancellations_per_epoch: 2,
    }
}

/// Runs the aggregates on `workers` workers and returns every output update.
fn run(lines: &[Line], workers: usize, rules: AlertRules) -> Vec<(Output, u64, isize)> {
    run_from(&[], 0, lines, workers, rules, false).0
}

/// What retention closes, and the epoch it closes at.
type Closings = Vec<(Closing, u64)>;

/// Runs the aggregates from a `restored` state fed at time `at`, over `lines`; returns every
/// output update and, with `save`, every change of the saved state.
fn run_from(
    restored: &[Saved],
    at: u64,
    lines: &[Line],
    workers: usize,
    rules: AlertRules,
    save: bool,
) -> (Updates<Output>, Updates<Saved>) {
    run_with(restored, at, lines, &Vec::new(), workers, rules, save)
}

/// [`run_from`], with invoices closed by retention.
fn run_with(
    restored: &[Saved],
    at: u64,
    lines: &[Line],
    closings: &Closings,
    workers: usize,
    rules: AlertRules,
    save: bool,
) -> (Updates<Output>, Updates<Saved>) {
    let collected = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let sink = Arc::clone(&collected);
    let (lines, restored, closings) = (lines.to_vec(), restored.to_vec(), closings.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let sink = Arc::clone(&sink);
        let (mut input, mut state, mut close) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, lines) = scope.new_collection::<Line, isize>();
            let (state, restored) = scope.new_collection::<Saved, isize>();
            let (close, closed) = scope.new_collection::<Closing, isize>();
            // No names: they have tests of their own.
            let (_, names) = scope.new_collection::<Text, Name>();
            let built = build(lines, closed, names, restored, rules, save);
            let outputs = Arc::clone(&sink);
            built.outputs.inspect(move |(o, t, r)| {
                outputs.lock().unwrap().0.push((o.clone(), *t, *r));
            });
            if let Some(saved) = built.saved {
                saved.inspect(move |(s, t, r)| {
                    sink.lock().unwrap().1.push((s.clone(), *t, *r));
                });
            }
            (input, state, close)
        });
        if worker.index() == 0 {
            state.advance_to(at);
            for s in restored.clone() {
                state.insert(s);
            }
            let mut sorted = lines.clone();
            sorted.sort_by_key(|l| l.epoch);
            for line in sorted {
                let epoch = line.epoch;
                input.update_at(line, epoch, 1);
            }
            for (closing, epoch) in closings.clone() {
                close.update_at(closing, epoch, 1);
            }
        }
        state.close();
        input.close();
        close.close();
    })
    .expect("timely runs");
    let (mut updates, mut saved) = collected.lock().unwrap().clone();
    consolidate_triples(&mut updates);
    saved.sort();
    (updates, saved)
}

/// The state as a checkpoint keeps it after `through`: the last value of each identity.
fn saved_state(changes: &[(Saved, u64, isize)], through: u64) -> Vec<Saved> {
    let mut by_time: Vec<(Saved, u64, isize)> = changes
        .iter()
        .filter(|(_, t, _)| *t <= through)
        .cloned()
        .collect();
    differential_dataflow::consolidation::consolidate_updates(&mut by_time);
    by_time.sort_by_key(|(_, t, r)| (*t, *r));
    let mut state = BTreeMap::new();
    for (s, _, r) in &by_time {
        // Within a time the retraction of the old value sorts before the new one.
        if *r > 0 {
            state.insert(s.identity(), s.clone());
        } else if state.get(&s.identity()) == Some(s) {
            state.remove(&s.identity());
        }
    }
    state.into_values().collect()
}

fn consolidate_triples(updates: &mut Vec<(Output, u64, isize)>) {
    let mut pairs: Vec<((Output, u64), isize)> =
        updates.drain(..).map(|(o, t, r)| ((o, t), r)).collect();
    consolidate(&mut pairs);
    updates.extend(pairs.into_iter().map(|((o, t), r)| (o, t, r)));
}

/// The final state: every output row whose accumulated count is positive.
fn final_state(updates: &[(Output, u64, isize)]) -> BTreeSet<Output> {
    let mut counts: BTreeMap<&Output, isize> = BTreeMap::new();
    for (o, _, r) in updates {
        *counts.entry(o).or_default() += r;
    }
    counts
        .into_iter()
        .filter(|(_, c)| {
            assert!(*c == 0 || *c == 1, "an output row is counted {c} times");
            *c == 1
        })
        .map(|(o, _)| o.clone())
        .collect()
}

fn top(by_product: &BTreeMap<Text, i64>, n: usize) -> Ranked {
    let mut ranked: Vec<(Text, i64)> = by_product.iter().map(|(p, r)| (p.clone(), *r)).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(n);
    ranked
}

/// The expected final state, folded over the lines directly.
fn fold(lines: &[Line], rules: AlertRules) -> BTreeSet<Output> {
    let add = |acc: &mut Sums, l: &Line| {
        let s = l.sums();
        acc.lines += s.lines;
        acc.units += s.units;
        acc.revenue_milli += s.revenue_milli;
        acc.cancellation_lines += s.cancellation_lines;
        acc.cancellation_value_milli += s.cancellation_value_milli;
        acc.late_lines += s.late_lines;
    };
    let mut total = Sums::default();
    let mut countries: BTreeMap<Text, Sums> = BTreeMap::new();
    let mut epochs: BTreeMap<u64, Sums> = BTreeMap::new();
    let mut epoch_invoices: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    let mut invoices = BTreeSet::new();
    let mut customers = BTreeSet::new();
    let mut products: BTreeMap<Text, i64> = BTreeMap::new();
    let mut epoch_products: BTreeMap<u64, BTreeMap<Text, i64>> = BTreeMap::new();
    let mut invoice_value: BTreeMap<&str, i64> = BTreeMap::new();
    let mut bursts: BTreeMap<(u64, &str), i64> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for l in lines {
        add(&mut total, l);
        add(countries.entry(l.country.clone()).or_default(), l);
        add(epochs.entry(l.epoch).or_default(), l);
        epoch_invoices
            .entry(l.epoch)
            .or_default()
            .insert(&l.invoice);
        invoices.insert(&l.invoice);
        if let Some(c) = &l.customer {
            customers.insert(c);
            if l.is_cancellation() {
                *bursts.entry((l.epoch, c)).or_default() += 1;
            }
        }
        *products.entry(l.stock_code.clone()).or_default() += l.value_milli();
        *epoch_products
            .entry(l.epoch)
            .or_default()
            .entry(l.stock_code.clone())
            .or_default() += l.value_milli();
        *invoice_value.entry(&l.invoice).or_default() += l.value_milli();
        out.extend(rules.line_alerts(l).map(Output::Alert));
    }
    total.invoices = invoices.len() as i64;
    total.customers = customers.len() as i64;
    out.insert(Output::Totals(total));
    out.extend(countries.into_iter().map(|(c, s)| Output::Country(c, s)));
    out.insert(Output::TopProducts(top(&products, TOP_PRODUCTS)));
    for (e, mut s) in epochs {
        s.invoices = epoch_invoices[&e].len() as i64;
        let ps = epoch_products.remove(&e).unwrap_or_default();
        out.insert(Output::Epoch(e, s, top(&ps, TOP_PRODUCTS_PER_EPOCH)));
    }
    for (invoice, value) in invoice_value {
        out.extend(rules.invoice_alert(invoice, value).map(Output::Alert));
    }
    for ((epoch, customer), n) in bursts {
        out.extend(
            rules
                .cancellation_alert(epoch, customer, n)
                .map(Output::Alert),
        );
    }
    out
}

#[test]
fn aggregates_equal_a_fold_for_any_worker_count() {
    let lines = sample_lines(4_000);
    let rules = sample_rules();
    let expected = fold(&lines, rules);
    // The sample must exercise every alert rule, or the comparison proves little.
    for rule in [
        "large_invoice",
        "non_positive_price",
        "large_quantity",
        "cancellation_burst",
    ] {
        assert!(
            expected
                .iter()
                .any(|o| matches!(o, Output::Alert(a) if a.rule() == rule)),
            "sample raises no {rule}"
        );
    }
    let one = run(&lines, 1, rules);
    assert_eq!(final_state(&one), expected);
    for workers in [2, 3] {
        let many = run(&lines, workers, rules);
        assert_eq!(
            many, one,
            "{workers} workers differ from 1 in some epoch's changes"
        );
    }
}

#[test]
fn epochs_only_change_at_their_own_time() {
    let lines = sample_lines(1_000);
    let mut rows = 0;
    for (o, t, _) in run(&lines, 2, AlertRules::default()) {
        if let Output::Epoch(e, ..) = o {
            assert_eq!(e, t, "epoch {e} changed at time {t}");
            rows += 1;
        }
    }
    // Every epoch of the sample has its row.
    let epochs: std::collections::BTreeSet<u64> = lines.iter().map(|l| l.epoch).collect();
    assert!(
        rows >= epochs.len() && !epochs.is_empty(),
        "{rows} epoch rows for {} epochs",
        epochs.len()
    );
}

#[test]
fn a_restored_state_continues_exactly_like_an_uninterrupted_run() {
    let lines = sample_lines(3_000);
    let rules = sample_rules();
    let (all, changes) = run_from(&[], 0, &lines, 2, rules, true);
    let last = lines.iter().map(|l| l.epoch).max().unwrap();
    for committed in [0, last / 3, last / 2, last - 1] {
        let state = saved_state(&changes, committed);
        // Bounded by keys, not lines: no entry is about a single epoch.
        assert!(state.len() < lines.len(), "{} entries", state.len());
        let rest: Vec<Line> = lines
            .iter()
            .filter(|l| l.epoch > committed)
            .cloned()
            .collect();
        for workers in [1, 3] {
            let (resumed, _) = run_from(&state, committed, &rest, workers, rules, false);
            let after = |u: &[(Output, u64, isize)]| -> Vec<(Output, u64, isize)> {
                u.iter()
                    .filter(|(_, t, _)| *t > committed)
                    .cloned()
                    .collect()
            };
            assert_eq!(
                after(&resumed),
                after(&all),
                "resumed after epoch {committed} on {workers} workers"
            );
        }
    }
}

#[test]
fn closed_invoices_leave_the_state_and_settle_their_alerts_but_stay_counted() {
    let lines = sample_lines(2_000);
    let rules = sample_rules();
    // Every invoice closes three epochs after its last line, with the alerts of its lines
    // (once per line), as the source closes it.
    let mut by_invoice: BTreeMap<Text, (u64, Vec<Alert>)> = BTreeMap::new();
    for line in &lines {
        let (last, alerts) = by_invoice.entry(line.invoice.clone()).or_default();
        *last = (*last).max(line.epoch);
        alerts.extend(rules.line_alerts(line));
    }
    let closings: Closings = by_invoice
        .iter()
        .flat_map(|(i, (last, alerts))| {
            let at = last + 3;
            std::iter::once((Closing::Invoice(i.clone()), at)).chain(
                alerts
                    .iter()
                    .map(move |a| (Closing::LineAlert(a.clone()), at)),
            )
        })
        .collect();
    let one = run_with(&[], 0, &lines, &closings, 1, rules, false).0;
    for workers in [2, 3] {
        assert_eq!(
            run_with(&[], 0, &lines, &closings, workers, rules, false).0,
            one
        );
    }
    // Totals (distinct invoices included), countries, products and epochs are unchanged; every
    // alert about an invoice is settled, the customers' cancellation bursts stay.
    let kept = final_state(&run(&lines, 1, rules));
    let about_invoices = |o: &Output| matches!(o, Output::Alert(a) if a.invoice().is_some());
    assert!(
        kept.iter().filter(|o| about_invoices(o)).count() > 3,
        "the sample raises too few alerts about invoices"
    );
    let expected: BTreeSet<Output> = kept.into_iter().filter(|o| !about_invoices(o)).collect();
    assert_eq!(final_state(&one), expected);
    // And the saved state ends without any invoice or alert about one.
    let (_, saved) = run_with(&[], 0, &lines, &closings, 1, rules, true);
    let state = saved_state(&saved, u64::MAX);
    assert!(!state.iter().any(|s| matches!(s, Saved::Invoice(..))));
    assert!(
        !state
            .iter()
            .any(|s| matches!(s, Saved::LineAlert(a) if a.invoice().is_some()))
    );
    assert!(state.iter().any(|s| matches!(s, Saved::Measure(..))));
}

#[test]
fn only_a_retraction_followed_by_its_entry_s_new_value_is_dropped() {
    let invoice = |n: &str, lines| {
        Saved::Invoice(
            n.into(),
            Revenue {
                lines,
                revenue_milli: 0,
            },
        )
    };
    let mut changes = vec![
        // Changed at time 3: only the new value is needed.
        (invoice("1", 1), 3, -1),
        (invoice("1", 2), 3, 1),
        // Removed: the retraction deletes it.
        (invoice("2", 1), 3, -1),
        // A new value at another time, or of another entry, supersedes nothing.
        (invoice("3", 1), 3, -1),
        (invoice("3", 2), 4, 1),
        (invoice("4", 1), 3, -1),
        (invoice("5", 1), 3, 1),
        // An addition before a retraction stays as it is.
        (invoice("6", 1), 3, 1),
        (invoice("6", 1), 3, -1),
    ];
    drop_superseded(&mut changes);
    assert_eq!(
        changes,
        vec![
            (invoice("1", 2), 3, 1),
            (invoice("2", 1), 3, -1),
            (invoice("3", 1), 3, -1),
            (invoice("3", 2), 4, 1),
            (invoice("4", 1), 3, -1),
            (invoice("5", 1), 3, 1),
            (invoice("6", 1), 3, 1),
            (invoice("6", 1), 3, -1),
        ]
    );
}

#[test]
fn identities_are_spelled_as_the_state_topic_keys_them() {
    // Checkpoints written earlier are keyed this way: the spelling must not change.
    let open = Saved::Open {
        partition: 3,
        invoice: Text::from("C536365"),
        last: 9,
    };
    assert_eq!(open.identity(), r#"open:3:"C536365""#);
    let invoice = Saved::Invoice(Text::from("536365"), Revenue::default());
    assert_eq!(invoice.identity(), r#"invoice:"536365""#);
    let seen = Saved::Seen(DistinctKey::Customer(Text::from("12346")));
    assert_eq!(seen.identity(), r#"seen:{"Customer":"12346"}"#);
}
