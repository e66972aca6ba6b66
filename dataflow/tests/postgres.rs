//! `--sinks postgres` against the real PostgreSQL of `scripts/postgres`: the tables after a
//! bounded run equal `summary.json` and the JSON-lines files; a run that sees the database
//! stopped for a while loses nothing; a job killed with SIGKILL again and again (some kills
//! right after a PostgreSQL commit, before the Kafka one) ends with the tables of a clean run;
//! a wrong password, a missing database and a table of another shape stop the start within
//! seconds, with no secret in any output. Skipped, saying why, where PostgreSQL is not
//! installed.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pg_tables::{assert_tables, client, expected, tables};
use common::*;

/// A fresh schema for one test: its tables are its own.
fn schema(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

fn pg_job(topic: &str, out: &Path, url: &str, schema: &str, extra: &[&str]) -> Command {
    let mut cmd = dataflow(
        topic,
        out,
        &["--sinks", "jsonl,postgres", "--pg-schema", schema],
    );
    cmd.args(["--pg-url", url]).args(extra);
    cmd
}

fn progress(url: &str, schema: &str, job: &str) -> i64 {
    let sql = format!("SELECT coalesce(epoch, -1) FROM {schema}.progress WHERE job_id = $1");
    match client(url).query_opt(&sql, &[&job]) {
        Ok(Some(row)) => row.get(0),
        _ => -1,
    }
}

#[test]
fn tables_after_a_bounded_run_equal_the_summary_and_the_files() {
    if !postgres_installed() {
        return;
    }
    let url = postgres_up(None);
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pg-bounded");
    let dirt = publish_dirty(&topic, 30_000, 11, dir.path());
    assert!(!dirt.bad.is_empty());
    let schema = schema("bounded");
    let out = dir.path().join("one");
    let job = job_id(&topic, &out);
    run_ok(&mut pg_job(
        &topic,
        &out,
        &url,
        &schema,
        &["-w", "2", "--lateness", "1h"],
    ));
    let want = expected(&out);
    assert!(want["dead_letters"].as_array().unwrap().len() >= dirt.bad.len());
    assert_tables(&tables(&url, &schema, &job), &want, "after the run");
    // Again: nothing new, nothing written; then --reset: the same rows, not twice.
    run_ok(&mut pg_job(
        &topic,
        &out,
        &url,
        &schema,
        &["-w", "2", "--lateness", "1h"],
    ));
    assert_tables(
        &tables(&url, &schema, &job),
        &want,
        "after a run that found nothing new",
    );
    run_ok(&mut pg_job(
        &topic,
        &out,
        &url,
        &schema,
        &["-w", "1", "--lateness", "1h", "--reset"],
    ));
    assert_tables(&tables(&url, &schema, &job), &want, "after --reset");
    // Two processes: process 0 writes, the same rows; a second job shares the schema.
    let two = dir.path().join("two");
    dataflow_cluster(
        &topic,
        &two,
        2,
        1,
        &[
            "--sinks",
            "jsonl,postgres",
            "--pg-schema",
            &schema,
            "--pg-url",
            &url,
            "--lateness",
            "1h",
        ],
    );
    assert_tables(
        &tables(&url, &schema, &job_id(&topic, &two)),
        &want,
        "two processes",
    );
    assert_tables(
        &tables(&url, &schema, &job),
        &want,
        "the first job beside the second",
    );
    // --no-checkpoint: idempotent through the progress row alone.
    let loose = dir.path().join("loose");
    for _ in 0..2 {
        run_ok(&mut pg_job(
            &topic,
            &loose,
            &url,
            &schema,
            &["--lateness", "1h", "--no-checkpoint"],
        ));
    }
    assert_tables(
        &tables(&url, &schema, &job_id(&topic, &loose)),
        &want,
        "--no-checkpoint twice",
    );
    delete_topics(&[&topic]);
}

#[test]
fn a_database_outage_mid_run_pauses_the_job_and_loses_nothing() {
    if !postgres_installed() {
        return;
    }
    // A server of this test's own: stopping it disturbs no other test.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("pg");
    std::fs::create_dir_all(&cache).unwrap();
    // The server runs as the user postgres when the test runs as root: it must reach its cache.
    let open = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    open(dir.path());
    let port = free_port("127.0.0.1");
    let server = Some((cache.as_path(), port));
    let url = postgres_up(server);
    let topic = unique("pg-outage");
    publish(&topic, &["--generate", "200000", "--seed", "5"], dir.path());
    let schema = schema("outage");
    let out = dir.path().join("out");
    let job = job_id(&topic, &out);
    let log = dir.path().join("run.log");
    let mut child = pg_job(&topic, &out, &url, &schema, &["--epoch", "1m", "-w", "2"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Down right after the first epochs are in the database, for 12 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress(&url, &schema, &job) < 0 {
        assert!(Instant::now() < deadline, "no epoch written in 120 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the outage"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    postgres_script(server, &["down"]);
    // Back-pressure: once the commit under way has written its files, nothing more is.
    std::thread::sleep(Duration::from_secs(2));
    let paused = progress_in_files(&out);
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the job did not wait for the database"
    );
    assert_eq!(
        progress_in_files(&out),
        paused,
        "the writer went on without the database"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let warnings = logged.matches("PostgreSQL unavailable").count();
    assert!(
        (2..=4).contains(&warnings),
        "{warnings} warnings in 12 s:\n{logged}"
    );
    postgres_up(server);
    let status = wait_exit(&mut child, RUN_LIMIT).expect("the run ends");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}\n{logged}");
    assert!(logged.contains("PostgreSQL is back"), "{logged}");
    assert_tables(
        &tables(&url, &schema, &job),
        &expected(&out),
        "after the outage",
    );
    postgres_script(server, &["down"]);
    delete_topics(&[&topic]);
}

/// Epoch rows in the run's files so far.
fn progress_in_files(out: &Path) -> usize {
    std::fs::read_to_string(out.join("epochs.jsonl")).map_or(0, |t| t.lines().count())
}

/// Waits until the run logging to `log` has committed `k` epochs to Kafka (its `/metrics`), or,
/// with `after_pg`, until the database's progress row moves past what it showed when asked:
/// a kill then lands between a PostgreSQL commit and the Kafka one, or just after both.
fn wait_for_point(child: &mut Child, log: &Path, k: u64, pg: Option<(&str, &str, &str)>) {
    let deadline = Instant::now() + Duration::from_secs(180);
    // One connection, polled without pause: the kill must come soon after the commit.
    let mut db = pg.map(|(url, schema, job)| {
        let sql =
            format!("SELECT coalesce(max(epoch), -1) FROM {schema}.progress WHERE job_id = $1");
        (client(url), sql, job, progress(url, schema, job))
    });
    let mut addr = None;
    loop {
        assert!(Instant::now() < deadline, "no kill point within 180 s");
        let status = child.try_wait().unwrap();
        assert!(
            status.is_none(),
            "the run ended before the kill: {status:?}"
        );
        if let Some((db, sql, job, start)) = &mut db {
            // Before the run's tables exist, the query fails: not yet.
            let now = db
                .query_one(sql.as_str(), &[job])
                .map_or(-1, |r| r.get::<_, i64>(0));
            if now > *start {
                return;
            }
            continue;
        }
        if addr.is_none() {
            addr = http_addr_in(&std::fs::read_to_string(log).unwrap_or_default());
        }
        let committed = addr.as_deref().map_or(0, epochs_committed);
        if committed >= k {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_job_killed_at_any_point_ends_with_the_tables_of_a_clean_run() {
    if !postgres_installed() {
        return;
    }
    let url = postgres_up(None);
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pg-chaos");
    publish_dirty(&topic, 300_000, 21, dir.path());
    let schema = schema("chaos");
    let flags = [
        "--epoch",
        "15m",
        "--lateness",
        "1h",
        "-w",
        "2",
        "--invoice-retention",
        "6h",
    ];
    let clean = dir.path().join("clean");
    run_ok(&mut pg_job(&topic, &clean, &url, &schema, &flags));
    let want = tables(&url, &schema, &job_id(&topic, &clean));
    assert_tables(&want, &expected(&clean), "the clean run");
    let epochs = read_jsonl(&clean, "epochs").len() as u64;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("{epochs} epochs; kill seed {seed}");
    let killed = dir.path().join("killed");
    let job = job_id(&topic, &killed);
    for round in 0..4 {
        let log = dir.path().join(format!("run-{round}.log"));
        let mut child = pg_job(&topic, &killed, &url, &schema, &flags)
            .args(["--http", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Odd rounds: right after a PostgreSQL commit; even ones: after 1 to a sixth of the
        // epochs committed to Kafka by this run.
        let k = 1 + (seed.rotate_left(round * 13) % (epochs / 6).max(1));
        let pg = (round % 2 == 1).then_some((url.as_str(), schema.as_str(), job.as_str()));
        wait_for_point(&mut child, &log, k, pg);
        signal(child.id(), "-KILL");
        let _ = child.wait();
        eprintln!(
            "round {round}: killed at progress {}",
            progress(&url, &schema, &job)
        );
    }
    run_ok(&mut pg_job(&topic, &killed, &url, &schema, &flags));
    // The files first: a difference there is the job's, not the sink's.
    assert_same_outputs(&clean, &killed);
    assert_tables(&tables(&url, &schema, &job), &want, "after four kills");
    delete_topics(&[&topic]);
}

#[test]
fn a_wrong_password_a_missing_database_or_a_foreign_table_stop_the_start() {
    if !postgres_installed() {
        return;
    }
    let url = postgres_up(None);
    let password = url
        .split(':')
        .nth(2)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let topic = unique("pg-refused");
    publish(&topic, &["--generate", "2000", "--seed", "1"], dir.path());
    let schema = schema("refused");
    let wrong = url.replace(&password, "Wr0ngPassw0rd");
    let missing = url.rsplit_once('/').unwrap().0.to_owned() + "/no_such_db";
    let cases: [(&str, String, &str); 3] = [
        ("wrong", wrong, "password authentication failed"),
        ("missing", missing, "database \"no_such_db\" does not exist"),
        (
            "foreign",
            url.clone(),
            "table FOREIGN.by_country: column revenue is double precision",
        ),
    ];
    let foreign = schema.clone() + "_f";
    client(&url)
        .batch_execute(&format!(
            "CREATE SCHEMA {foreign}; CREATE TABLE {foreign}.by_country (job_id text, \
             country text, lines bigint, units bigint, revenue double precision, \
             epoch_start timestamp)"
        ))
        .unwrap();
    for (name, target, message) in cases {
        let out = dir.path().join(name);
        let schema = if name == "foreign" { &foreign } else { &schema };
        let message = message.replace("FOREIGN", schema);
        let (output, took) = run_timeout(
            dataflow(
                &topic,
                &out,
                &["--sinks", "jsonl,postgres", "--pg-schema", schema],
            )
            .env("PGURL", &target),
            Duration::from_secs(60),
        );
        let printed = text(&output.stdout) + &text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}:\n{printed}");
        assert!(took < Duration::from_secs(15), "{name}: took {took:?}");
        assert!(
            printed.contains(&message),
            "{name}: no {message:?} in:\n{printed}"
        );
        for secret in [password.as_str(), "Wr0ngPassw0rd"] {
            assert!(
                !printed.contains(secret),
                "{name}: a password was printed:\n{printed}"
            );
        }
        assert!(!out.join("summary.json").exists());
    }
    // Nor in --help, whose [env: PGURL] would otherwise show the value.
    let help = text(
        &run_ok(
            Command::new(binary("dataflow"))
                .arg("--help")
                .env("PGURL", &url),
        )
        .stdout,
    );
    assert!(
        help.contains("--pg-url") && !help.contains(&password),
        "{help}"
    );
    delete_topics(&[&topic]);
}
