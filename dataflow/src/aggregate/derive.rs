//! One pass over each batch of lines that makes the input of every aggregate.
//!
//! A line feeds six aggregates (measures, invoices, products, customers, per-line alerts,
//! per-epoch statistics). Instead of cloning every line into six operators, one operator
//! reads each batch once and folds it by key and time in hash maps, on the worker that read
//! it, so the thousands of lines of a batch that touch the same total, country, invoice or
//! product leave as one update. The updates are the same collections the lines would make one
//! by one, summed: results are unchanged, only the work shrinks.

use std::collections::BTreeMap;
use std::hash::Hash;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::{AsCollection, VecCollection};
use foldhash::HashMap;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::progress::operate::FrontierInterest;

use super::per_epoch::EpochPart;
use super::{Alert, AlertRules, DistinctKey, Line, Revenue, StatKey, Sums, Text, Updates, invoice};
use crate::provisional::Part;

/// The inputs of the aggregates, each already summed per key and time within a batch.
pub struct Derived<'scope> {
    /// Measures of the total and of each country.
    pub measures: VecCollection<'scope, u64, StatKey, Sums>,
    /// Lines and net value per invoice whose number packs into a `u64` ([`invoice::pack`]).
    pub invoice_numbers: VecCollection<'scope, u64, u64, Revenue>,
    /// Lines and net value per other invoice.
    pub invoices: VecCollection<'scope, u64, Text, Revenue>,
    /// Lines and net revenue per product (stock code).
    pub products: VecCollection<'scope, u64, Text, Revenue>,
    /// Customers seen (the count is the number of lines).
    pub customers: VecCollection<'scope, u64, DistinctKey>,
    /// Alerts raised by single lines (the count is the number of lines raising each).
    pub line_alerts: VecCollection<'scope, u64, Alert>,
    /// Per-epoch statistics and cancellations of the batch, at the epoch's time.
    pub epoch_parts: Stream<'scope, u64, Updates<EpochPart>>,
}

/// Sums of one batch, per key and time; emptied into updates after each batch.
struct Folded<K, R>(HashMap<(K, u64), R>);

impl<K: Hash + Eq, R: Semigroup> Folded<K, R> {
    fn new() -> Self {
        Folded(HashMap::default())
    }

    fn add(&mut self, key: K, time: u64, diff: R) {
        self.0
            .entry((key, time))
            .and_modify(|sum| sum.plus_equals(&diff))
            .or_insert(diff);
    }

    /// The non-zero sums as updates; the map keeps its capacity for the next batch.
    fn drain(&mut self) -> Updates<K, R> {
        self.0
            .drain()
            .filter(|(_, r)| !r.is_zero())
            .map(|((k, t), r)| (k, t, r))
            .collect()
    }
}

/// Consecutive lines of one invoice at one time, summed before they reach the hash maps: the
/// lines of an invoice arrive together and share its country and customer, so most lines
/// cost a comparison here instead of four hash-map updates.
struct Run {
    time: u64,
    invoice: Text,
    country: Text,
    customer: Option<Text>,
    sums: Sums,
    revenue: Revenue,
    count: isize,
}

impl Run {
    fn holds(&self, line: &Line, time: u64) -> bool {
        self.time == time
            && self.invoice == line.invoice
            && self.country == line.country
            && self.customer == line.customer
    }
}

/// The per-batch folds of every aggregate input.
struct Fold {
    /// Lines not yet in `measures`, `customers` and the invoices.
    run: Option<Run>,
    measures: Folded<StatKey, Sums>,
    invoice_numbers: Folded<u64, Revenue>,
    invoices: Folded<Text, Revenue>,
    products: Folded<Text, Revenue>,
    customers: Folded<DistinctKey, isize>,
    line_alerts: Folded<Alert, isize>,
    /// Cancellation lines per customer (per-epoch statistics only).
    cancellations: Folded<Text, i64>,
}

impl Fold {
    fn new() -> Self {
        Fold {
            run: None,
            measures: Folded::new(),
            invoice_numbers: Folded::new(),
            invoices: Folded::new(),
            products: Folded::new(),
            customers: Folded::new(),
            line_alerts: Folded::new(),
            cancellations: Folded::new(),
        }
    }

    /// What the batch adds to each epoch's own statistics, read off the folds before they are
    /// drained: a line's epoch is its time, so the per-epoch sums, products and invoices are
    /// the folds' entries at that time.
    fn epoch_parts(&mut self) -> Updates<EpochPart> {
        fn part(parts: &mut BTreeMap<u64, EpochPart>, t: u64) -> &mut EpochPart {
            parts.entry(t).or_insert_with(|| EpochPart {
                epoch: t,
                ..EpochPart::default()
            })
        }
        let mut parts = BTreeMap::new();
        for ((key, t), sums) in &self.measures.0 {
            if *key == StatKey::Total {
                part(&mut parts, *t).sums = *sums;
            }
        }
        for ((code, t), revenue) in &self.products.0 {
            let products = &mut part(&mut parts, *t).products;
            products.push((code.clone(), revenue.revenue_milli));
        }
        for (number, t) in self.invoice_numbers.0.keys() {
            part(&mut parts, *t).invoice_numbers.push(*number);
        }
        for (invoice, t) in self.invoices.0.keys() {
            part(&mut parts, *t).invoices.push(invoice.clone());
        }
        for ((customer, t), lines) in self.cancellations.0.drain() {
            part(&mut parts, t).cancellations.push((customer, lines));
        }
        parts.into_iter().map(|(t, part)| (part, t, 1)).collect()
    }

    fn add(&mut self, mut line: Line, t: u64, r: isize, rules: &AlertRules) {
        if let Some(customer) = line.customer.as_ref().filter(|_| line.is_cancellation()) {
            self.cancellations.add(customer.clone(), t, r as i64);
        }
        for alert in rules.line_alerts(&line) {
            self.line_alerts.add(alert, t, r);
        }
        let sums = line.sums().multiply(&r);
        let revenue = line.revenue().multiply(&r);
        self.products
            .add(std::mem::take(&mut line.stock_code), t, revenue);
        match &mut self.run {
            Some(run) if run.holds(&line, t) => {
                run.sums.plus_equals(&sums);
                run.revenue.plus_equals(&revenue);
                run.count += r;
            }
            _ => {
                self.flush();
                self.run = Some(Run {
                    time: t,
                    invoice: line.invoice,
                    country: line.country,
                    customer: line.customer,
                    sums,
                    revenue,
                    count: r,
                });
            }
        }
    }

    /// Adds the pending run of lines to the hash maps.
    fn flush(&mut self) {
        let Some(run) = self.run.take() else { return };
        let t = run.time;
        self.measures.add(StatKey::Total, t, run.sums);
        self.measures
            .add(StatKey::Country(run.country), t, run.sums);
        if let Some(customer) = run.customer {
            self.customers
                .add(DistinctKey::Customer(customer), t, run.count);
        }
        match invoice::pack(&run.invoice) {
            Some(number) => self.invoice_numbers.add(number, t, run.revenue),
            None => self.invoices.add(run.invoice, t, run.revenue),
        }
    }
}

/// Reads `lines` once and makes every aggregate's input from them.
pub fn derive<'scope>(
    lines: VecCollection<'scope, u64, Line>,
    rules: AlertRules,
) -> Derived<'scope> {
    let mut builder = OperatorBuilder::new("Derive".to_owned(), lines.inner.scope());
    let mut input = builder.new_input(lines.inner, Pipeline);
    builder.set_notify_for(0, FrontierInterest::Never);
    let (measures, measures_stream) = builder.new_output();
    let (invoice_numbers, invoice_numbers_stream) = builder.new_output();
    let (invoices, invoices_stream) = builder.new_output();
    let (products, products_stream) = builder.new_output();
    let (customers, customers_stream) = builder.new_output();
    let (line_alerts, line_alerts_stream) = builder.new_output();
    let (parts, parts_stream) = builder.new_output();
    let mut measures = OutputBuilder::from(measures);
    let mut invoice_numbers = OutputBuilder::from(invoice_numbers);
    let mut invoices = OutputBuilder::from(invoices);
    let mut products = OutputBuilder::from(products);
    let mut customers = OutputBuilder::from(customers);
    let mut line_alerts = OutputBuilder::from(line_alerts);
    let mut parts = OutputBuilder::from(parts);
    builder.build(move |_| {
        let mut fold = Fold::new();
        // `--http` on the process that serves the page: the open epoch's running figures take
        // each batch's per-epoch sums (one lock per batch); `None` otherwise.
        let provisional = crate::provisional::installed();
        move |_frontiers| {
            let mut measures = measures.activate();
            let mut invoice_numbers = invoice_numbers.activate();
            let mut invoices = invoices.activate();
            let mut products = products.activate();
            let mut customers = customers.activate();
            let mut line_alerts = line_alerts.activate();
            let mut parts = parts.activate();
            // All the containers of one time (stamp) that arrived since the last activation fold
            // together: the source's batches reach this operator in containers of a few dozen
            // lines, too few to share many invoices, products or customers.
            input.for_each_stamp(|cap, data| {
                for container in data {
                    for (line, t, r) in container.drain(..) {
                        fold.add(line, t, r, &rules);
                    }
                }
                fold.flush();
                let mut epoch_parts = fold.epoch_parts();
                if let Some(provisional) = &provisional {
                    provisional.add(epoch_parts.iter().map(|(part, _, _)| Part {
                        epoch: part.epoch,
                        lines: part.sums.lines,
                        revenue_milli: part.sums.revenue_milli,
                        products: &part.products,
                    }));
                }
                parts.session(&cap).give_container(&mut epoch_parts);
                measures
                    .session(&cap)
                    .give_container(&mut fold.measures.drain());
                invoice_numbers
                    .session(&cap)
                    .give_container(&mut fold.invoice_numbers.drain());
                invoices
                    .session(&cap)
                    .give_container(&mut fold.invoices.drain());
                products
                    .session(&cap)
                    .give_container(&mut fold.products.drain());
                customers
                    .session(&cap)
                    .give_container(&mut fold.customers.drain());
                line_alerts
                    .session(&cap)
                    .give_container(&mut fold.line_alerts.drain());
            });
        }
    });
    Derived {
        measures: measures_stream.as_collection(),
        invoice_numbers: invoice_numbers_stream.as_collection(),
        invoices: invoices_stream.as_collection(),
        products: products_stream.as_collection(),
        customers: customers_stream.as_collection(),
        line_alerts: line_alerts_stream.as_collection(),
        epoch_parts: parts_stream,
    }
}
