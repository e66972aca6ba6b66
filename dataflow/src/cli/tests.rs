//! The command line's unit tests: defaults, naming, hand-over to timely, refused combinations.

use super::*;

fn parse(args: &[&str]) -> Result<Config, String> {
    let args = Args::try_parse_from(std::iter::once("dataflow").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    args.into_config().map_err(|e| e.to_string())
}

#[test]
fn defaults() {
    let c = parse(&[]).unwrap();
    assert_eq!(c.topic, "retail-transactions");
    assert_eq!(c.dlq_topic, "retail-transactions.dlq");
    assert_eq!(c.clock.epoch_secs, 3600);
    assert!(c.console && c.jsonl && c.kafka);
    assert_eq!(c.timely_args, ["-w", "1", "-n", "1", "-p", "0"]);
    assert_eq!(c.rules.invoice_value_milli, 5_000_000);
    assert_eq!(c.aggregates_topic, "retail-transactions.aggregates");
    assert_eq!(c.group_id, "retail-stream-dataflow.retail-transactions");
}

#[test]
fn a_jobs_outputs_are_named_after_it_unless_given() {
    let a = parse(&["-t", "a", "--job-id", "ja"]).unwrap();
    let b = parse(&["-t", "a", "--job-id", "jb"]).unwrap();
    assert_eq!(
        (a.aggregates_topic, a.dlq_topic, a.group_id),
        (
            "ja.aggregates".into(),
            "ja.dlq".into(),
            "retail-stream-dataflow.ja".into()
        )
    );
    assert_eq!(b.dlq_topic, "jb.dlq");
    let given = parse(&[
        "--job-id",
        "j",
        "--aggregates-topic",
        "x",
        "--dlq-topic",
        "y",
        "--group-id",
        "z",
    ])
    .unwrap();
    assert_eq!(
        (given.aggregates_topic, given.dlq_topic, given.group_id),
        ("x".into(), "y".into(), "z".into())
    );
}

#[test]
fn timely_flags_are_handed_on() {
    let c = parse(&["-w", "3", "-n", "2", "-p", "1", "-r", "--sinks", "jsonl"]).unwrap();
    assert_eq!(c.timely_args, ["-w", "3", "-n", "2", "-p", "1", "-r"]);
    assert!(!c.console && c.jsonl && !c.kafka);
    timely::Config::from_args(c.timely_args.into_iter()).expect("timely accepts them");
}

#[test]
fn bad_combinations_are_refused() {
    assert!(
        parse(&["-n", "2", "-p", "2"])
            .unwrap_err()
            .contains("out of range")
    );
    assert!(parse(&["-w", "0"]).is_err());
    assert!(parse(&["--epoch", "500ms"]).is_err());
    assert!(parse(&["--epoch", "1x"]).is_err());
    assert!(
        parse(&["-h", "/nonexistent/hosts"])
            .unwrap_err()
            .contains("hostfile")
    );
    assert!(parse(&["--alert-invoice-value", "1.2345"]).is_err());
    assert!(parse(&["--sinks", "printer"]).is_err());
    // Lingering after the end needs a run that ends.
    let linger = ["--http", "127.0.0.1:0", "--http-linger"];
    assert!(parse(&linger).is_err());
    assert!(parse(&[&linger[..], &["--until-end"]].concat()).is_ok());
}

#[test]
fn durations_take_units() {
    assert_eq!(parse(&["--epoch", "1d"]).unwrap().clock.epoch_secs, 86_400);
    assert_eq!(parse(&["--epoch", "15m"]).unwrap().clock.epoch_secs, 900);
    assert_eq!(
        parse(&["--progress-interval", "250ms"])
            .unwrap()
            .progress_interval,
        Some(Duration::from_millis(250))
    );
    assert_eq!(
        parse(&["--progress-interval", "0s"])
            .unwrap()
            .progress_interval,
        None
    );
    assert!(parse(&["--lateness", "soon"]).is_err());
    assert!(parse(&["--http", "localhost"]).is_err());
    assert!(
        parse(&["--http-linger"]).is_err(),
        "--http-linger needs --http"
    );
    let served = parse(&["--http", "127.0.0.1:0", "--http-linger", "--until-end"]).unwrap();
    assert_eq!(served.http.as_deref(), Some("127.0.0.1:0"));
    assert!(served.http_linger);
}

#[test]
fn idle_timeout_can_be_off() {
    assert_eq!(
        parse(&["--idle-timeout", "off"]).unwrap().idle_timeout,
        None
    );
    assert_eq!(
        parse(&["--idle-timeout", "5s"]).unwrap().idle_timeout,
        Some(Duration::from_secs(5))
    );
}
