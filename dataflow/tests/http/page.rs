//! The live page of a finished run, read in headless Chromium: totals, top products,
//! countries, the last epoch, health, alerts, the chart and the phone layout.

use super::*;

/// The page of a finished bounded run, in Chromium, shows the same numbers as its
/// `summary.json` (`summary`), its report line (`report`) and its final epoch rows (`rows`);
/// screenshots of a desktop and a phone are kept as artifacts.
pub(crate) fn assert_page_shows(
    addr: &str,
    summary: &Value,
    report: &Value,
    rows: &BTreeMap<String, Value>,
) {
    let (last_label, last_row) = rows.last_key_value().expect("epoch rows");
    // The page, in Chromium, shows the same numbers.
    let shot = artifacts().join("dashboard-final.png");
    let _ = std::fs::remove_file(&shot);
    let _ = std::fs::remove_file(artifacts().join("dashboard-final-phone.png"));
    let lines = read_page(&[
        "final",
        &format!("http://{addr}/"),
        &shot.display().to_string(),
    ]);
    let page = &lines[0];
    let phones: Vec<&Value> = lines.iter().filter(|l| l.get("phone").is_some()).collect();
    assert_eq!(phones.len(), 1, "{lines:?}");
    assert!(shot.is_file(), "no screenshot at {}", shot.display());
    assert_eq!(page["status"], "finished");
    assert_eq!(page["last_epoch"], last_label.as_str());
    let totals = &summary["totals"];
    let shown = |key: &str| digits(page[key].as_str().unwrap());
    assert_eq!(
        milli(page["total_revenue"].as_str().unwrap()),
        totals["revenue_milli"]
    );
    for (key, field) in [
        ("total_lines", "lines"),
        ("total_units", "units"),
        ("total_invoices", "invoices"),
        ("total_customers", "customers"),
    ] {
        assert_eq!(shown(key), totals[field].to_string(), "{key}");
    }
    assert_eq!(shown("total_epochs"), summary["epochs"].to_string());
    let top: Vec<Value> = page["top_products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (p, revenue) = (&r[1], milli(r[2].as_str().unwrap()));
            json!({"stock_code": p["stock_code"], "description": p["description"], "revenue_milli": revenue})
        })
        .collect();
    // Products show their names (every product of the data has one).
    assert!(
        top.iter().all(|p| p["description"].is_string()),
        "a product without its name: {top:?}"
    );
    assert_eq!(Value::from(top), summary["top_products"]);
    let countries: serde_json::Map<String, Value> = page["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r[0].as_str().unwrap().to_owned();
            let c = &summary["by_country"][&name];
            assert_eq!(
                digits(r[1].as_str().unwrap()),
                c["lines"].to_string(),
                "{name} lines"
            );
            (name, Value::from(milli(r[2].as_str().unwrap())))
        })
        .collect();
    let expected: serde_json::Map<String, Value> = summary["by_country"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, c)| (k.clone(), c["revenue_milli"].clone()))
        .collect();
    assert_eq!(countries, expected);
    // The last epoch's row.
    assert_eq!(page["epoch_label"], last_label.as_str());
    assert_eq!(
        milli(page["epoch_revenue"].as_str().unwrap()),
        last_row["revenue_milli"]
    );
    assert_eq!(shown("epoch_lines"), last_row["lines"].to_string());
    assert_eq!(shown("epoch_invoices"), last_row["invoices"].to_string());
    let epoch_top: Vec<Value> = page["epoch_top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let (p, revenue) = (&r[0], milli(r[1].as_str().unwrap()));
            json!({"stock_code": p["stock_code"], "description": p["description"], "revenue_milli": revenue})
        })
        .collect();
    let expected: Vec<Value> = last_row["top_products"]
        .as_array()
        .unwrap()
        .iter()
        .take(5)
        .cloned()
        .collect();
    assert_eq!(epoch_top, expected);
    // Health and alerts.
    assert_eq!(shown("records_read"), report["messages"].to_string());
    assert_eq!(shown("late_lines"), report["late"].to_string());
    let mut dead: Vec<String> = summary["dead_letters"]["by_reason"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(r, n)| format!("{r}: {n}"))
        .collect();
    let mut shown_dead: Vec<String> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let (reason, n) = d.as_str().unwrap().split_once(": ").unwrap();
            format!("{reason}: {}", digits(n))
        })
        .collect();
    dead.sort();
    shown_dead.sort();
    assert_eq!(shown_dead, dead);
    assert_eq!(shown("open_alerts"), summary["alerts"].to_string());
    if summary["alerts"].as_u64().unwrap() > 0 {
        let alerts = page["alerts"].as_array().unwrap();
        assert!(!alerts.is_empty());
        let rules = [
            "large_invoice",
            "large_quantity",
            "cancellation_burst",
            "non_positive_price",
        ];
        for a in alerts {
            let a = a.as_str().unwrap();
            assert!(
                rules.iter().any(|r| a.starts_with(r)),
                "alert without its rule: {a}"
            );
        }
    }
    assert_eq!(page["lag"].as_array().unwrap().len(), 8);
    assert_eq!(page["chart_bars"], rows.len().min(60));
    // The chart has a value axis in money (0 and four ticks up to the highest bar), epoch
    // labels, and each bar's exact value on hover.
    let axis: Vec<&str> = page["chart_axis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(axis[0], "£0", "{axis:?}");
    assert!(axis[..5].iter().all(|t| t.starts_with('£')), "{axis:?}");
    assert!(
        axis.contains(&&last_label.replace('T', " ")[..16]),
        "{axis:?}"
    );
    let hover = page["chart_hover"].as_array().unwrap();
    let last_hover = hover.last().unwrap().as_str().unwrap();
    let (_, revenue) = last_hover.split_once(": revenue ").unwrap();
    let (revenue, _) = revenue.split_once(", ").unwrap();
    assert!(last_hover.starts_with(last_label.as_str()), "{last_hover}");
    assert_eq!(milli(revenue), last_row["revenue_milli"], "{last_hover}");
    // On a phone, nothing is wider than the screen.
    let phone = &phones[0]["phone"];
    assert_eq!(
        phone["scroll_width"], phone["width"],
        "horizontal scrolling on a phone"
    );
    let phone_shot = artifacts().join("dashboard-final-phone.png");
    assert!(
        phone_shot.is_file(),
        "no screenshot at {}",
        phone_shot.display()
    );
}
