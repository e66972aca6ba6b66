//! Alert rules for orders that look wrong.
//!
//! | rule | fires when | default |
//! |---|---|---|
//! | `large_invoice` | an invoice's net value exceeds `--alert-invoice-value` | 5000 |
//! | `non_positive_price` | a sale line (quantity > 0) has a unit price <= 0 | always on |
//! | `large_quantity` | a line's absolute quantity is at least `--alert-quantity` | 10000 |
//! | `cancellation_burst` | a customer cancels more than `--alert-cancellations` lines in one epoch | 5 |
//!
//! Alerts form a set that the dataflow maintains: an alert appears (+1) when its condition
//! becomes true and disappears (-1) if it stops being true (for instance an invoice's value
//! changes, which retracts the old alert and adds the new one).

use serde::{Deserialize, Serialize};

use super::{Line, Text};

/// Thresholds of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertRules {
    /// `large_invoice`: net invoice value strictly above this, in thousandths.
    pub invoice_value_milli: i64,
    /// `large_quantity`: absolute quantity at or above this.
    pub quantity: i64,
    /// `cancellation_burst`: more than this many cancellation lines of one customer in an epoch.
    pub cancellations_per_epoch: i64,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            invoice_value_milli: 5_000_000,
            quantity: 10_000,
            cancellations_per_epoch: 5,
        }
    }
}

/// One alert.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Alert {
    LargeInvoice {
        invoice: Text,
        value_milli: i64,
    },
    NonPositivePrice {
        invoice: Text,
        stock_code: Text,
        unit_price_milli: i64,
        quantity: i64,
    },
    LargeQuantity {
        invoice: Text,
        stock_code: Text,
        quantity: i64,
    },
    CancellationBurst {
        epoch: u64,
        customer: Text,
        lines: i64,
    },
}

impl Alert {
    /// The invoice the alert is about (none for a customer's cancellation burst).
    pub fn invoice(&self) -> Option<&Text> {
        match self {
            Alert::LargeInvoice { invoice, .. }
            | Alert::NonPositivePrice { invoice, .. }
            | Alert::LargeQuantity { invoice, .. } => Some(invoice),
            Alert::CancellationBurst { .. } => None,
        }
    }

    /// The rule's stable name.
    pub fn rule(&self) -> &'static str {
        match self {
            Alert::LargeInvoice { .. } => "large_invoice",
            Alert::NonPositivePrice { .. } => "non_positive_price",
            Alert::LargeQuantity { .. } => "large_quantity",
            Alert::CancellationBurst { .. } => "cancellation_burst",
        }
    }

    /// The alert's key: rule plus the entity it is about.
    pub fn key(&self) -> String {
        match self {
            Alert::LargeInvoice { invoice, .. } => format!("large_invoice/{invoice}"),
            Alert::NonPositivePrice {
                invoice,
                stock_code,
                ..
            } => format!("non_positive_price/{invoice}/{stock_code}"),
            Alert::LargeQuantity {
                invoice,
                stock_code,
                ..
            } => format!("large_quantity/{invoice}/{stock_code}"),
            Alert::CancellationBurst {
                epoch, customer, ..
            } => format!("cancellation_burst/{epoch}/{customer}"),
        }
    }
}

impl AlertRules {
    /// The alerts a single line raises on its own.
    pub fn line_alerts(&self, line: &Line) -> impl Iterator<Item = Alert> + use<> {
        let price =
            (line.quantity > 0 && line.unit_price_milli <= 0).then(|| Alert::NonPositivePrice {
                invoice: line.invoice.clone(),
                stock_code: line.stock_code.clone(),
                unit_price_milli: line.unit_price_milli,
                quantity: line.quantity,
            });
        let quantity = (line.quantity.unsigned_abs() >= self.quantity.unsigned_abs()).then(|| {
            Alert::LargeQuantity {
                invoice: line.invoice.clone(),
                stock_code: line.stock_code.clone(),
                quantity: line.quantity,
            }
        });
        price.into_iter().chain(quantity)
    }

    /// Whether an invoice of net value `value_milli` breaks the `large_invoice` rule.
    pub fn is_large_invoice(&self, value_milli: i64) -> bool {
        value_milli > self.invoice_value_milli
    }

    /// `large_invoice` for an invoice whose net value is `value_milli`.
    pub fn invoice_alert(&self, invoice: &str, value_milli: i64) -> Option<Alert> {
        self.is_large_invoice(value_milli)
            .then(|| Alert::LargeInvoice {
                invoice: invoice.into(),
                value_milli,
            })
    }

    /// `cancellation_burst` for a customer with `lines` cancellation lines in `epoch`.
    pub fn cancellation_alert(&self, epoch: u64, customer: &str, lines: i64) -> Option<Alert> {
        (lines > self.cancellations_per_epoch).then(|| Alert::CancellationBurst {
            epoch,
            customer: customer.into(),
            lines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(quantity: i64, unit_price_milli: i64) -> Line {
        Line {
            epoch: 1,
            invoice: "536365".into(),
            stock_code: "85123A".into(),
            customer: Some("17850".into()),
            country: "United Kingdom".into(),
            quantity,
            unit_price_milli,
            late: false,
        }
    }

    #[test]
    fn non_positive_price_fires_on_sales_only() {
        let rules = AlertRules::default();
        let fired: Vec<_> = rules.line_alerts(&line(3, 0)).collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule(), "non_positive_price");
        assert_eq!(fired[0].key(), "non_positive_price/536365/85123A");
        assert_eq!(rules.line_alerts(&line(3, -1)).count(), 1);
        assert_eq!(rules.line_alerts(&line(-3, 0)).count(), 0);
        assert_eq!(rules.line_alerts(&line(3, 1)).count(), 0);
    }

    #[test]
    fn large_quantity_fires_at_the_threshold_either_sign() {
        let rules = AlertRules::default();
        let rule_of = |l: &Line| rules.line_alerts(l).map(|a| a.rule()).collect::<Vec<_>>();
        assert_eq!(rule_of(&line(10_000, 100)), ["large_quantity"]);
        assert_eq!(rule_of(&line(-80_995, 2080)), ["large_quantity"]);
        assert!(rule_of(&line(9_999, 100)).is_empty());
        assert_eq!(
            rule_of(&line(10_000, 0)),
            ["non_positive_price", "large_quantity"]
        );
    }

    #[test]
    fn large_invoice_is_strictly_above_the_threshold() {
        let rules = AlertRules::default();
        assert_eq!(rules.invoice_alert("1", 5_000_000), None);
        assert_eq!(
            rules.invoice_alert("1", 5_000_001),
            Some(Alert::LargeInvoice {
                invoice: "1".into(),
                value_milli: 5_000_001
            })
        );
    }

    #[test]
    fn cancellation_burst_needs_more_than_k_lines() {
        let rules = AlertRules::default();
        assert_eq!(rules.cancellation_alert(7, "12346", 5), None);
        let alert = rules.cancellation_alert(7, "12346", 6).unwrap();
        assert_eq!(alert.key(), "cancellation_burst/7/12346");
    }
}
