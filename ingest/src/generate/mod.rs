//! Synthetic sales in the UCI schema, deterministic for a seed: load tests and demos without
//! the real file, and a stream that never ends (with `--live --rate`).
//!
//! The shape follows the real data set: invoices of several lines (1-40, most small) that share
//! a time, customer and country; product popularity Zipf-distributed over a fixed catalogue of
//! about 4,000 stock codes (each with one description and one price, mostly 2 decimals,
//! sometimes 3); a UK-heavy country mix; about 2% of lines on cancellation invoices (`C` plus
//! the invoice number, negative quantities, usually of something that customer bought before);
//! about 25% of lines by guests without a CustomerID; postage lines on foreign orders; and a few
//! anomalies that are valid records but that the dataflow's alert rules (at their default
//! thresholds) flag: a sale at price zero (`non_positive_price`), a quantity of 10,000 or more
//! (`large_quantity`), a wholesale invoice of hundreds of lines worth far more than 5,000
//! (`large_invoice`), and a customer cancelling a whole order of 6 to 15 lines
//! (`cancellation_burst`).
//!
//! Every random choice is drawn from one `ChaCha8Rng` through the small `Dice` helpers
//! of `dice` (not through `rand`'s distributions, whose algorithms may change between versions),
//! so the same seed and count give byte-identical records with a given build. The catalogue
//! and the customers come from a fixed seed, like a real shop's; `--seed` drives the sales.

use std::fmt::Write;

use chrono::{NaiveDateTime, TimeDelta, Timelike, Utc};
use retail_common::Sale;
use retail_common::money::Milli;

use crate::cli::Clock;

mod dice;
#[cfg(test)]
mod tests;

use dice::{Dice, cumulative, zipf};

/// Number of ordinary products in the catalogue.
pub const CATALOGUE_SIZE: usize = 4000;
/// Number of registered customers.
const CUSTOMERS: usize = 4400;
/// Seed of the catalogue and customer base (fixed, so every run sells the same products).
const SHOP_SEED: u64 = 0x5EED_5407_CAFE;
/// First invoice number, as in the UCI file.
const FIRST_INVOICE: u64 = 536_365;
/// Zipf exponent of product popularity (1.0 would give the top product 11% of all lines).
const PRODUCT_ZIPF: f64 = 0.7;
/// Zipf exponent of how often a customer of a country comes back.
const CUSTOMER_ZIPF: f64 = 0.6;
/// Share of invoices that are cancellations; they are short, so this gives ~2% of lines.
const CANCEL_INVOICE_P: f64 = 0.11;
/// Share of (non-cancellation) invoices by guests without a CustomerID.
const GUEST_P: f64 = 0.25;
/// Mean of the exponential that draws the number of lines of an ordinary invoice.
const MEAN_LINES: f64 = 9.0;
/// Most lines of an ordinary invoice.
const MAX_LINES: u64 = 40;
/// Anomaly: a wholesale invoice of hundreds of lines, per invoice.
const LARGE_INVOICE_P: f64 = 0.0003;
/// Quantities on a wholesale invoice are this many times the usual pack sizes.
const WHOLESALE_FACTOR: i64 = 5;
/// Anomaly: a line sold at price zero, per line.
const ZERO_PRICE_P: f64 = 0.0005;
/// Anomaly: a line with a huge quantity (10,000 to 80,000), per line.
const HUGE_QUANTITY_P: f64 = 0.0002;
/// Anomaly: a cancellation of a whole order (6 to 15 lines), per cancellation invoice.
const WHOLE_ORDER_CANCEL_P: f64 = 0.02;
/// Share of foreign invoices that carry a postage line.
const POSTAGE_P: f64 = 0.5;
/// Seconds the simulated clock advances per invoice: 1 to this.
const MAX_STEP_SECONDS: u64 = 8;

/// Countries and their share of invoices (normalised when sampled).
const COUNTRIES: &[(&str, f64)] = &[
    ("United Kingdom", 0.680),
    ("Germany", 0.019),
    ("France", 0.017),
    ("EIRE", 0.016),
    ("Spain", 0.0055),
    ("Netherlands", 0.0055),
    ("Belgium", 0.0040),
    ("Switzerland", 0.0038),
    ("Portugal", 0.0028),
    ("Australia", 0.0026),
    ("Norway", 0.0020),
    ("Italy", 0.0015),
    ("Channel Islands", 0.0014),
    ("Finland", 0.0013),
    ("Cyprus", 0.0012),
    ("Sweden", 0.0009),
    ("Unspecified", 0.0008),
    ("Austria", 0.0007),
    ("Denmark", 0.0007),
    ("Japan", 0.0007),
    ("Poland", 0.0006),
    ("USA", 0.0005),
    ("Israel", 0.0005),
    ("Singapore", 0.0004),
    ("Iceland", 0.0003),
    ("Canada", 0.0003),
    ("Greece", 0.0003),
    ("Malta", 0.0002),
    ("United Arab Emirates", 0.0001),
    ("European Community", 0.0001),
    ("RSA", 0.0001),
    ("Lebanon", 0.0001),
    ("Lithuania", 0.0001),
    ("Brazil", 0.0001),
    ("Czech Republic", 0.0001),
    ("Bahrain", 0.0001),
    ("Saudi Arabia", 0.00005),
];
/// Index of the United Kingdom in [`COUNTRIES`] (no postage lines at home).
const HOME: usize = 0;

#[rustfmt::skip]
const STYLES: &[&str] = &[
    "VINTAGE", "RETRO", "HANGING", "SET OF 3", "SET OF 6", "LARGE", "SMALL", "JUMBO", "MINI",
    "REGENCY", "FRENCH", "ANTIQUE", "GLASS", "WOODEN", "ENAMEL", "CERAMIC", "PAPER", "FELTCRAFT",
    "CHRISTMAS", "PARTY",
];
#[rustfmt::skip]
const MOTIFS: &[&str] = &[
    "WHITE", "RED", "PINK", "BLUE", "GREEN", "IVORY", "CREAM", "BLACK", "SILVER", "GOLD", "SPOTTY",
    "PAISLEY", "HEART", "STAR", "ROSE", "DOILY", "POLKADOT", "STRIPE", "BIRD", "FLORAL", "SKULL",
    "DOLLY GIRL", "SPACEBOY", "WOODLAND", "CHERRY", "LOVE",
];
#[rustfmt::skip]
const THINGS: &[&str] = &[
    "T-LIGHT HOLDER", "LUNCH BAG", "CAKE CASES", "JAM MAKING SET", "TEA CUP AND SAUCER", "LANTERN",
    "PHOTO FRAME", "CUSHION COVER", "HOT WATER BOTTLE", "ALARM CLOCK", "DOORMAT", "BUNTING",
    "NAPKINS", "PARASOL", "CHILDRENS APRON", "STORAGE TIN", "WATER BOTTLE", "PURSE", "NOTEBOOK",
    "GIFT WRAP", "PAPER CHAIN KIT", "CANDLE", "MUG", "BOWL", "PLATE", "TRINKET BOX", "COAT RACK",
    "WALL CLOCK", "SHOPPER BAG", "PENCILS", "MAGNETS", "SIGN", "BAKING SET", "DRAWER KNOB",
    "CHALKBOARD", "GARLAND", "BELL", "ORNAMENT", "TISSUES", "HAND WARMER",
];

/// Pack sizes and their weights by price band: cheap items go by the dozen, dear ones singly.
#[rustfmt::skip]
const CHEAP_QUANTITIES: &[(i64, u64)] = &[
    (1, 4), (2, 4), (3, 2), (4, 4), (6, 6), (10, 4), (12, 28), (24, 16), (25, 2), (36, 4), (48, 8),
    (72, 4), (96, 4), (100, 2), (144, 3),
];
#[rustfmt::skip]
const MID_QUANTITIES: &[(i64, u64)] = &[
    (1, 18), (2, 14), (3, 6), (4, 12), (6, 18), (8, 8), (12, 14), (16, 2), (24, 5), (36, 1),
    (48, 2),
];
const DEAR_QUANTITIES: &[(i64, u64)] =
    &[(1, 50), (2, 22), (3, 7), (4, 10), (6, 6), (8, 3), (12, 2)];

struct Product {
    stock_code: String,
    description: String,
    price: Milli,
}

/// What a shop has before it sells anything: products and customers.
struct Shop {
    /// [`CATALOGUE_SIZE`] products, then postage.
    products: Vec<Product>,
    /// Cumulative popularity by product index (postage excluded).
    popularity: Vec<f64>,
    country_weights: Vec<f64>,
    customer_ids: Vec<String>,
    /// Customers of each country, with the cumulative Zipf weights of how often they buy.
    customers_by_country: Vec<(Vec<u32>, Vec<f64>)>,
}

impl Shop {
    fn new() -> Shop {
        let mut dice = Dice::new(SHOP_SEED);
        let mut products = Vec::with_capacity(CATALOGUE_SIZE + 1);
        let mut seen = std::collections::HashSet::new();
        for i in 0..CATALOGUE_SIZE {
            // Distinct five-digit codes in order, some with a letter (variants, like 85123A).
            let number = 10_000 + i as u64 * 20 + dice.below(20);
            let stock_code = if dice.chance(0.2) {
                format!("{number}{}", char::from(b'A' + dice.below(6) as u8))
            } else {
                number.to_string()
            };
            let description = loop {
                let text = format!(
                    "{} {} {}",
                    STYLES[dice.below(STYLES.len() as u64) as usize],
                    MOTIFS[dice.below(MOTIFS.len() as u64) as usize],
                    THINGS[dice.below(THINGS.len() as u64) as usize]
                );
                if seen.insert(text.clone()) {
                    break text;
                }
            };
            products.push(Product {
                stock_code,
                description,
                price: catalogue_price(&mut dice),
            });
        }
        products.push(Product {
            stock_code: "POST".into(),
            description: "POSTAGE".into(),
            price: Milli(18_000),
        });
        // Popularity rank is unrelated to catalogue order: shuffle the ranks.
        let mut rank: Vec<usize> = (0..CATALOGUE_SIZE).collect();
        shuffle(&mut dice, &mut rank);
        let popularity = cumulative(rank.iter().map(|&r| zipf(r, PRODUCT_ZIPF)));

        // Customers: ids spread like the UCI ones (12346..18287), countries in proportion to
        // the mix (at least two each), assigned in shuffled order.
        let mut countries: Vec<usize> = Vec::with_capacity(CUSTOMERS);
        let total: f64 = COUNTRIES.iter().map(|(_, w)| w).sum();
        for (c, (_, w)) in COUNTRIES.iter().enumerate() {
            let n = ((w / total) * CUSTOMERS as f64).round().max(2.0) as usize;
            countries.extend(std::iter::repeat_n(c, n));
        }
        shuffle(&mut dice, &mut countries);
        let customer_ids: Vec<String> = (0..countries.len())
            .map(|i| (12_346 + i * 135 / 100).to_string())
            .collect();
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); COUNTRIES.len()];
        for (customer, &country) in countries.iter().enumerate() {
            members[country].push(customer as u32);
        }
        let customers_by_country = members
            .into_iter()
            .map(|list| {
                let weights = cumulative((0..list.len()).map(|r| zipf(r, CUSTOMER_ZIPF)));
                (list, weights)
            })
            .collect();
        Shop {
            products,
            popularity,
            country_weights: cumulative(COUNTRIES.iter().map(|(_, w)| *w)),
            customer_ids,
            customers_by_country,
        }
    }

    fn postage(&self) -> u32 {
        CATALOGUE_SIZE as u32
    }
}

/// A catalogue price: log-normal around two pounds, mostly rounded to 5p, sometimes to the
/// penny, and now and then with three decimals (as `0.001` or `1.695` occur in the UCI file).
fn catalogue_price(dice: &mut Dice) -> Milli {
    let pounds = (2.0f64.ln() + 0.85 * dice.normal()).exp().clamp(0.1, 250.0);
    let milli = (pounds * 1000.0).round() as i64;
    let roll = dice.unit();
    Milli(if roll < 0.03 {
        // Three decimals: make sure the last digit is not zero.
        if milli % 10 == 0 { milli + 5 } else { milli }
    } else if roll < 0.65 {
        ((milli + 25) / 50 * 50).max(50)
    } else {
        ((milli + 5) / 10 * 10).max(10)
    })
}

fn shuffle<T>(dice: &mut Dice, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = dice.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// The last purchases of a customer, for cancellations.
#[derive(Clone, Copy, Default)]
struct History {
    /// (product, quantity), a ring buffer.
    items: [(u32, i64); 8],
    len: u8,
    next: u8,
}

impl History {
    fn push(&mut self, product: u32, quantity: i64) {
        self.items[usize::from(self.next)] = (product, quantity);
        self.next = (self.next + 1) % 8;
        self.len = (self.len + 1).min(8);
    }
}

#[derive(Clone, Copy)]
struct Line {
    product: u32,
    quantity: i64,
    price: Milli,
}

/// The invoice whose lines are being handed out.
struct Invoice {
    number: String,
    customer: Option<u32>,
    country: usize,
    date: NaiveDateTime,
    lines: Vec<Line>,
    /// Index of the next line to hand out.
    next: usize,
}

/// An endless, deterministic stream of synthetic sales.
pub struct Generator {
    dice: Dice,
    shop: Shop,
    clock: Clock,
    /// The simulated clock (unused with [`Clock::Live`]).
    now: NaiveDateTime,
    next_invoice: u64,
    invoice: Invoice,
    history: Vec<History>,
}

impl Generator {
    pub fn new(seed: u64, clock: Clock) -> Generator {
        let shop = Shop::new();
        let history = vec![History::default(); shop.customer_ids.len()];
        let now = match clock {
            Clock::Simulated(start) => start,
            Clock::Live => live_now(),
        };
        Generator {
            dice: Dice::new(seed),
            shop,
            clock,
            now,
            next_invoice: FIRST_INVOICE,
            invoice: Invoice {
                number: String::new(),
                customer: None,
                country: HOME,
                date: now,
                lines: Vec::with_capacity(64),
                next: 0,
            },
            history,
        }
    }

    /// The next sale as a new record.
    pub fn next_sale(&mut self) -> Sale {
        let mut sale = blank_sale();
        self.next_into(&mut sale);
        sale
    }

    /// Overwrites `sale` with the next sale, reusing its strings' allocations.
    pub fn next_into(&mut self, sale: &mut Sale) {
        if self.invoice.next == self.invoice.lines.len() {
            self.start_invoice();
        }
        let line = self.invoice.lines[self.invoice.next];
        self.invoice.next += 1;
        let product = &self.shop.products[line.product as usize];
        set(&mut sale.invoice_no, &self.invoice.number);
        set(&mut sale.stock_code, &product.stock_code);
        set_some(&mut sale.description, &product.description);
        sale.quantity = line.quantity;
        sale.invoice_date = self.invoice.date;
        sale.unit_price = line.price;
        match self.invoice.customer {
            Some(c) => set_some(&mut sale.customer_id, &self.shop.customer_ids[c as usize]),
            None => sale.customer_id = None,
        }
        set(&mut sale.country, COUNTRIES[self.invoice.country].0);
    }

    fn start_invoice(&mut self) {
        let date = match self.clock {
            Clock::Simulated(_) => {
                let date = self.now;
                let step = 1 + self.dice.below(MAX_STEP_SECONDS);
                self.now += TimeDelta::seconds(step as i64);
                date
            }
            Clock::Live => live_now(),
        };
        let number = self.next_invoice;
        self.next_invoice += 1;
        let country = self.dice.pick(&self.shop.country_weights);
        let (members, weights) = &self.shop.customers_by_country[country];
        let mut customer = members[self.dice.pick(weights)];
        let cancellation = self.dice.chance(CANCEL_INVOICE_P);
        if cancellation {
            // Who cancels has bought before: look a little for such a customer.
            for _ in 0..8 {
                if self.history[customer as usize].len > 0 {
                    break;
                }
                customer = members[self.dice.pick(weights)];
            }
        }

        let mut lines = std::mem::take(&mut self.invoice.lines);
        lines.clear();
        let customer = if cancellation {
            self.cancellation_lines(customer, &mut lines);
            Some(customer)
        } else {
            let guest = self.dice.chance(GUEST_P);
            self.sale_lines(&mut lines);
            if !guest {
                let history = &mut self.history[customer as usize];
                for line in &lines {
                    history.push(line.product, line.quantity);
                }
            }
            if country != HOME && self.dice.chance(POSTAGE_P) {
                let postage = self.shop.postage();
                lines.push(Line {
                    product: postage,
                    quantity: self.dice.between(1, 3),
                    price: self.shop.products[postage as usize].price,
                });
            }
            (!guest).then_some(customer)
        };
        let invoice = &mut self.invoice;
        invoice.number.clear();
        let prefix = if cancellation { "C" } else { "" };
        write!(invoice.number, "{prefix}{number}").expect("write to String");
        invoice.customer = customer;
        invoice.country = country;
        invoice.date = date;
        invoice.lines = lines;
        invoice.next = 0;
    }

    /// An ordinary invoice: distinct products, pack-size quantities, rare anomalies.
    fn sale_lines(&mut self, lines: &mut Vec<Line>) {
        let wholesale = self.dice.chance(LARGE_INVOICE_P);
        let count = if wholesale {
            self.dice.between(200, 500) as u64
        } else {
            let exponential = -(1.0 - self.dice.unit()).ln() * MEAN_LINES;
            (1 + exponential as u64).min(MAX_LINES)
        };
        for _ in 0..count {
            // Popular products come up again and again: redraw a few times to keep an
            // invoice's lines distinct, as they mostly are in the real data.
            let mut product = self.dice.pick(&self.shop.popularity) as u32;
            for _ in 0..8 {
                if !lines.iter().any(|l| l.product == product) {
                    break;
                }
                product = self.dice.pick(&self.shop.popularity) as u32;
            }
            let price = self.shop.products[product as usize].price;
            let table = match price.0 {
                ..1_000 => CHEAP_QUANTITIES,
                1_000..5_000 => MID_QUANTITIES,
                _ => DEAR_QUANTITIES,
            };
            let mut quantity = self.dice.weighted(table);
            if wholesale {
                quantity *= WHOLESALE_FACTOR;
            }
            if self.dice.chance(HUGE_QUANTITY_P) {
                quantity = self.dice.between(10_000, 80_000);
            }
            let price = if self.dice.chance(ZERO_PRICE_P) {
                Milli(0)
            } else {
                price
            };
            lines.push(Line {
                product,
                quantity,
                price,
            });
        }
    }

    /// A cancellation: one to a few lines (now and then a whole order), usually of what the
    /// customer bought before, with negative quantities.
    fn cancellation_lines(&mut self, customer: u32, lines: &mut Vec<Line>) {
        let count = if self.dice.chance(WHOLE_ORDER_CANCEL_P) {
            self.dice.between(6, 15)
        } else {
            match self.dice.below(20) {
                0..15 => 1,
                15..18 => 2,
                _ => self.dice.between(3, 5),
            }
        };
        let history = self.history[customer as usize];
        for _ in 0..count {
            let (product, quantity) = if history.len > 0 && self.dice.chance(0.9) {
                let (product, bought) =
                    history.items[self.dice.below(u64::from(history.len)) as usize];
                // Usually all of it, sometimes part.
                let quantity = if self.dice.chance(0.7) {
                    bought
                } else {
                    self.dice.between(1, bought.max(1))
                };
                (product, quantity)
            } else {
                let product = self.dice.pick(&self.shop.popularity) as u32;
                (product, self.dice.between(1, 6))
            };
            lines.push(Line {
                product,
                quantity: -quantity,
                price: self.shop.products[product as usize].price,
            });
        }
    }
}

/// The current UTC time, to the second (the wire form has no fraction).
fn live_now() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    now.with_nanosecond(0).unwrap_or(now)
}

/// An empty record to fill with [`Generator::next_into`].
pub fn blank_sale() -> Sale {
    Sale {
        invoice_no: String::new(),
        stock_code: String::new(),
        description: None,
        quantity: 0,
        invoice_date: NaiveDateTime::default(),
        unit_price: Milli(0),
        customer_id: None,
        country: String::new(),
    }
}

fn set(target: &mut String, value: &str) {
    target.clear();
    target.push_str(value);
}

fn set_some(target: &mut Option<String>, value: &str) {
    set(target.get_or_insert_with(String::new), value);
}
