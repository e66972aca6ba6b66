//! The PostgreSQL sink's tables read back for `tests/postgres.rs`, in the shapes of
//! `summary.json` and the JSON-lines files, and compared with them.

use std::collections::BTreeMap;
use std::path::Path;

use retail_testkit::{read_jsonl, read_summary};
use serde_json::{Value, json};

pub fn client(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).expect("the test database answers")
}

/// Rows of `sql` (which selects one JSON text column).
fn json_rows(db: &mut ::postgres::Client, sql: &str, job: &str) -> Vec<Value> {
    (db.query(sql, &[&job])
        .unwrap_or_else(|e| panic!("{sql}: {e}")))
    .iter()
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
    .collect()
}

const EPOCH: &str = r#"to_char(epoch_start, 'YYYY-MM-DD"T"HH24:MI:SS')"#;

/// Everything the tables hold for `job`, in the shapes of `summary.json` and the JSON lines.
pub fn tables(url: &str, schema: &str, job: &str) -> BTreeMap<&'static str, Value> {
    let mut db = client(url);
    let q = |db: &mut ::postgres::Client, select: &str, from: &str, order: &str| {
        let sql = format!(
            "SELECT row_to_json(t)::text FROM (SELECT {select} FROM {schema}.{from} \
             WHERE job_id = $1 ORDER BY {order}) t"
        );
        json_rows(db, &sql, job)
    };
    let milli = |c: &str| format!("({c} * 1000)::bigint AS {c}_milli");
    let totals = q(
        &mut db,
        &format!(
            "lines, units, {}, invoices, customers, cancellation_lines, {}, late_lines",
            milli("revenue"),
            milli("cancellation_value")
        ),
        "totals",
        "job_id",
    );
    let countries = q(
        &mut db,
        &format!("country, lines, units, {}", milli("revenue")),
        "by_country",
        "country",
    );
    let top = q(
        &mut db,
        &format!("stock_code, description, {}", milli("revenue")),
        "top_products",
        "rank",
    );
    let epochs = q(
        &mut db,
        &format!(
            "{EPOCH} AS key, lines, units, {}, invoices, late_lines, top_products",
            milli("revenue")
        ),
        "epochs",
        "epoch_start",
    );
    let alerts = q(
        &mut db,
        &format!("{EPOCH} AS epoch, key, diff, alert"),
        "alerts",
        "1, 2, 3",
    );
    let dead = q(
        &mut db,
        &format!(
            "{EPOCH} AS epoch, partition, \"offset\", reason, detail, key, payload, payload_hex"
        ),
        "dead_letters",
        "2, 3",
    );
    let keyed = |rows: Vec<Value>, key: &str| -> Value {
        let map: serde_json::Map<String, Value> = rows
            .into_iter()
            .map(|mut r| {
                let k = r[key].take().as_str().unwrap().to_owned();
                r.as_object_mut().unwrap().remove(key);
                (k, r)
            })
            .collect();
        Value::Object(map)
    };
    let dead: Vec<Value> = dead
        .into_iter()
        .map(without_nulls("payload", "payload_hex"))
        .collect();
    BTreeMap::from([
        ("totals", totals.into_iter().next().unwrap_or(Value::Null)),
        ("by_country", keyed(countries, "country")),
        ("top_products", Value::Array(top)),
        ("epochs", keyed(epochs, "key")),
        ("alerts", Value::Array(alerts)),
        ("dead_letters", Value::Array(dead)),
    ])
}

/// Drops the one of two payload fields that is null (a dead letter has one of them).
fn without_nulls(a: &'static str, b: &'static str) -> impl Fn(Value) -> Value {
    move |mut v| {
        for f in [a, b] {
            if v[f].is_null() {
                v.as_object_mut().unwrap().remove(f);
            }
        }
        v
    }
}

/// What the tables must hold after a run into `out`: its summary and its JSON lines.
pub fn expected(out: &Path) -> BTreeMap<&'static str, Value> {
    let summary = read_summary(out);
    let mut epochs = serde_json::Map::new();
    for line in read_jsonl(out, "epochs") {
        let key = line["key"].as_str().unwrap().to_owned();
        match &line["value"] {
            Value::Null => epochs.remove(&key),
            v => epochs.insert(key, v.clone()),
        };
    }
    let alerts = read_jsonl(out, "alerts")
        .into_iter()
        .map(|l| json!({"epoch": l["epoch"], "key": l["key"], "diff": l["diff"], "alert": l["alert"]}))
        .collect();
    // PostgreSQL text holds no NUL: such a payload is kept in hex, as the sink documents.
    let dead = read_jsonl(out, "dlq")
        .into_iter()
        .map(|mut d| {
            let nul = d["payload"]
                .as_str()
                .filter(|p| p.contains('\0'))
                .map(str::to_owned);
            if let Some(p) = nul {
                let hex: String = p.bytes().map(|b| format!("{b:02x}")).collect();
                d["payload_hex"] = Value::from(hex);
                d.as_object_mut().unwrap().remove("payload");
            }
            if let Some(k) = d["key"].as_str().filter(|k| k.contains('\0')) {
                d["key"] = Value::from(k.replace('\0', "\u{FFFD}"));
            }
            d
        })
        .collect();
    BTreeMap::from([
        ("totals", summary["totals"].clone()),
        ("by_country", summary["by_country"].clone()),
        ("top_products", summary["top_products"].clone()),
        ("epochs", Value::Object(epochs)),
        ("alerts", Value::Array(alerts)),
        ("dead_letters", Value::Array(dead)),
    ])
}

/// History rows compare as sets: sorted by their text.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Array(rows) => {
            let mut rows = rows.clone();
            rows.sort_by_cached_key(|r| r.to_string());
            Value::Array(rows)
        }
        other => other.clone(),
    }
}

pub fn assert_tables(actual: &BTreeMap<&str, Value>, expected: &BTreeMap<&str, Value>, what: &str) {
    for (table, want) in expected {
        let history = matches!(*table, "alerts" | "dead_letters");
        let (got, want) = match history {
            true => (sorted(&actual[table]), sorted(want)),
            false => (actual[table].clone(), want.clone()),
        };
        let (got, want) = (&got, &want);
        assert!(
            got == want,
            "{what}: table {table} differs: {}",
            short(want, got)
        );
    }
}

/// The rows or keys of `want` and `got` that differ (at most 20 of each), or both whole.
fn short(want: &Value, got: &Value) -> String {
    let texts = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(rows) => rows.iter().map(Value::to_string).collect(),
            Value::Object(map) => map.iter().map(|(k, v)| format!("{k}: {v}")).collect(),
            other => vec![other.to_string()],
        }
    };
    let (w, g) = (texts(want), texts(got));
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .filter(|x| !b.contains(x))
            .take(20)
            .cloned()
            .collect()
    };
    format!(
        "{} rows expected, {} found\nonly expected:\n  {}\nonly found:\n  {}",
        w.len(),
        g.len(),
        only(&w, &g).join("\n  "),
        only(&g, &w).join("\n  ")
    )
}
