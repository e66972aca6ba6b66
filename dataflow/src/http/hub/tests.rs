//! The hub's unit tests: what a published commit shows, and the open epoch's running figures
//! kept apart from it.

use super::*;
use crate::aggregate::{Alert, Output, Sums};
use crate::sink::Renderer;
use crate::state::State;

fn sums(lines: i64, revenue_milli: i64) -> Sums {
    Sums {
        lines,
        revenue_milli,
        ..Sums::default()
    }
}

#[test]
fn a_published_commit_shows_each_epoch_the_state_after_it_and_a_progress_entry() {
    let clock = EpochClock {
        epoch_secs: 3600,
        lateness_epochs: 0,
    };
    let mut renderer = Renderer {
        clock,
        state: State::default(),
    };
    let hub = Hub::new(
        clock,
        "sales".into(),
        "job".into(),
        &BTreeMap::new(),
        CommitMetrics::default(),
    );
    let mut update = Update::begin();
    for (epoch, lines) in [(1u64, 2i64), (2, 3)] {
        let total = sums(lines + if epoch == 2 { 2 } else { 0 }, 1000 * epoch as i64);
        let mut outputs = vec![
            (Output::Totals(total), 1),
            (
                Output::Epoch(epoch, sums(lines, 500), vec![("A".into(), 500)]),
                1,
            ),
        ];
        if epoch == 2 {
            outputs.push((Output::Totals(sums(2, 1000)), -1));
            let alert = Alert::LargeInvoice {
                invoice: "9".into(),
                value_milli: 7,
            };
            outputs.push((Output::Alert(alert), 1));
        }
        let batch = renderer.render(epoch, outputs, vec![]);
        update.add(&batch);
    }
    // The health shown is the sources as the writer saw them at the commit.
    let source = Snapshot {
        messages: 7,
        late: 1,
        dead_reasons: BTreeMap::from([("not_json", 2)]),
        partitions: BTreeMap::from([(0, Default::default())]),
    };
    update.close(&renderer.state, &BTreeMap::new(), source);
    hub.publish(update);

    let state = hub.state().expect("a state");
    assert_eq!(state["epoch"], "1970-01-01T02:00:00");
    assert_eq!(state["totals"]["lines"], 5);
    assert_eq!(state["epochs"], 2);
    assert_eq!(state["open_alerts"][0]["rule"], "large_invoice");
    assert_eq!(state["open_alerts"][0]["key"], "large_invoice/9");
    let rows = hub.epochs(10);
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[1]["epoch"], "1970-01-01T02:00:00");
    assert_eq!(rows[1]["lines"], 3);
    assert_eq!(hub.epochs(1)[0], rows[1]);
    let progress = hub.progress_entries(5);
    assert_eq!(progress.as_array().unwrap().len(), 1);
    assert_eq!(progress[0]["numInputRows"], 5);
    assert_eq!(progress[0]["batchId"], 1);
    assert_eq!(
        progress[0]["epochs"],
        json!(["1970-01-01T01:00:00", "1970-01-01T02:00:00"])
    );
    // One event for the commit, with both epochs' rows and the alert the second opened.
    let mut changed = hub.subscribe();
    let (seq, events) = hub.events_since(0);
    assert_eq!(seq, 1);
    assert_eq!(events.len(), 1);
    let event = std::str::from_utf8(&events[0]).unwrap();
    assert!(event.starts_with("event: epoch\ndata: {"));
    assert!(event.contains("\"opened_in\":\"1970-01-01T02:00:00\""));
    assert!(event.contains("\"epoch\":\"1970-01-01T01:00:00\""));
    let (_, current) = hub.current();
    assert_eq!(
        current, events[0],
        "a new stream starts with the latest view"
    );
    let current = std::str::from_utf8(&current).unwrap();
    let view: Value =
        serde_json::from_str(&current["event: epoch\ndata: ".len()..]).expect("the current view");
    let health = &view["health"];
    assert_eq!(health["records_read"], 7);
    assert_eq!(health["late_lines"], 1);
    assert_eq!(health["dead_letters"], json!({"not_json": 2}));
    assert_eq!(health["partitions"][0]["partition"], 0);
    assert!(hub.events_since(1).1.is_empty());
    assert!(!changed.has_changed().unwrap());
    hub.finish();
    assert!(
        changed.has_changed().unwrap(),
        "streams are told of the event"
    );
    assert_eq!(*changed.borrow_and_update(), 2);
    let (_, events) = hub.events_since(1);
    assert!(events[0].starts_with(b"event: finished\n"));
    assert_eq!(hub.metrics().epochs.get(), 2);
}

#[test]
fn the_open_epoch_is_shown_apart_and_dropped_once_committed() {
    use crate::provisional::{Part, Provisional};
    let clock = EpochClock {
        epoch_secs: 3600,
        lateness_epochs: 0,
    };
    let mut renderer = Renderer {
        clock,
        state: State::default(),
    };
    let provisional = Arc::new(Provisional::default());
    let hub = Hub::new(
        clock,
        "sales".into(),
        "job".into(),
        &BTreeMap::new(),
        CommitMetrics::default(),
    )
    .with_provisional(Arc::clone(&provisional));
    let products = [("A".into(), 700), ("B".into(), 900)];
    let part = |epoch| Part {
        epoch,
        lines: 3,
        revenue_milli: 1600,
        products: &products,
    };
    provisional.add([part(1)]);
    hub.sample_provisional();
    let shown = hub.provisional();
    assert_eq!(shown["epoch"], "1970-01-01T01:00:00");
    assert_eq!(shown["lines"], 3);
    assert_eq!(shown["revenue_milli"], 1600);
    assert_eq!(shown["top_products"][0]["stock_code"], "B");
    let (seq, events) = hub.events_since(0);
    assert!(events[0].starts_with(b"event: provisional\ndata: {"));
    // Unchanged figures make no event.
    hub.sample_provisional();
    assert_eq!(hub.events_since(seq).1.len(), 0);
    // The commit of epoch 1 drops it, at once: the state has no open epoch.
    let mut update = Update::begin();
    let outputs = vec![
        (Output::Totals(sums(3, 1600)), 1),
        (Output::Epoch(1, sums(3, 1600), vec![("B".into(), 900)]), 1),
        (Output::Name("B".into(), "BLUE MUG".into()), 1),
    ];
    update.add(&renderer.render(1, outputs, vec![]));
    update.close(&renderer.state, &BTreeMap::new(), Snapshot::default());
    hub.publish(update);
    let state = hub.state().unwrap();
    assert_eq!(state["provisional"], Value::Null);
    assert_eq!(state["totals"]["lines"], 3, "committed figures only");
    let (_, events) = hub.events_since(seq);
    assert!(events[0].starts_with(b"event: epoch\n"));
    assert_eq!(&events[1][..], b"event: provisional\ndata: null\n\n");
    // A later epoch shows up apart from the committed state.
    provisional.add([part(2)]);
    hub.sample_provisional();
    let state = hub.state().unwrap();
    assert_eq!(state["provisional"]["epoch"], "1970-01-01T02:00:00");
    assert_eq!(state["totals"]["lines"], 3);
    // Its products carry their names as of the last commit; one never named has none.
    let top = &state["provisional"]["top_products"];
    assert_eq!(top[0]["description"], "BLUE MUG");
    assert_eq!(top[1]["stock_code"], "A");
    assert_eq!(top[1]["description"], Value::Null);
}
