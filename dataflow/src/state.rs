//! The writer's view of every aggregate: the current value of each, as rendered into the
//! output rows, summed up in `summary.json`, and kept in every checkpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::aggregate::{Ranked, Sums, Text};

/// The current value of every aggregate, kept by the writer (and checkpointed: the alerts as
/// entries of their own, the rest in the checkpoint record).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub totals: Sums,
    pub by_country: BTreeMap<Text, Sums>,
    pub top_products: Ranked,
    pub epochs: u64,
    #[serde(skip)]
    pub alerts: BTreeMap<String, Value>,
    pub dead_letters: BTreeMap<String, u64>,
    /// Each product's name, by stock code (checkpointed as state entries).
    #[serde(skip)]
    pub names: BTreeMap<Text, Text>,
}

/// A country's (or an epoch's) measures as JSON.
pub fn sums_json(s: &Sums) -> Value {
    json!({"lines": s.lines, "units": s.units, "revenue_milli": s.revenue_milli})
}

/// The totals as JSON.
pub fn totals_json(s: &Sums) -> Value {
    json!({
        "lines": s.lines,
        "units": s.units,
        "revenue_milli": s.revenue_milli,
        "invoices": s.invoices,
        "customers": s.customers,
        "cancellation_lines": s.cancellation_lines,
        "cancellation_value_milli": s.cancellation_value_milli,
        "late_lines": s.late_lines,
    })
}

/// A ranking of products as JSON, each with its name from `names` (`null` if it has none).
pub fn ranked_json(r: &Ranked, names: &BTreeMap<Text, Text>) -> Value {
    Value::Array(
        r.iter()
            .map(|(p, rev)| json!({"stock_code": p, "description": names.get(p), "revenue_milli": rev}))
            .collect(),
    )
}

impl State {
    /// The final state in the documented `summary.json` shape (countries sorted).
    pub fn summary(&self) -> Value {
        let by_country: serde_json::Map<String, Value> = self
            .by_country
            .iter()
            .map(|(c, s)| (c.to_string(), sums_json(s)))
            .collect();
        let dead_total: u64 = self.dead_letters.values().sum();
        json!({
            "totals": totals_json(&self.totals),
            "by_country": by_country,
            "top_products": ranked_json(&self.top_products, &self.names),
            "epochs": self.epochs,
            "alerts": self.alerts.len(),
            "dead_letters": {"total": dead_total, "by_reason": self.dead_letters},
        })
    }
}
