//! The PostgreSQL sink (`--sinks postgres`): each commit's closed epochs as rows of the tables
//! in `--pg-schema`, exactly once across crashes.
//!
//! The writer calls `PostgresSink::write` with the epochs of a commit before it hands the
//! same commit to Kafka. One PostgreSQL transaction holds their rows and the job's `progress`
//! row (the last epoch written), so the database has an epoch whole or not at all, and it is
//! committed before the Kafka transaction that carries the checkpoint past those epochs. Hence
//! the database is never behind the checkpoint: a job killed between the two commits resumes
//! from the older checkpoint, renders the same epochs again (outputs are deterministic), and
//! the sink skips those the progress row already names. A job killed before the PostgreSQL
//! commit has neither. Either way the tables end as an uninterrupted run's.
//!
//! A lost database pauses the writer (it retries with back-off and warns every few seconds),
//! which holds the commits back: nothing is lost, nothing is skipped. Only process 0 writes.
//! Layout and reasoning: `dataflow/docs/postgres.md`.

pub(crate) mod conn;
pub(crate) mod rows;
pub(crate) mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use postgres::{Client, Statement, Transaction};
use tracing::{info, warn};

use conn::ConnectError;
pub use conn::{PgConfigError, PgFlags, PgTarget};
use rows::Rows;
use schema::SchemaError;

use super::Batch;
use crate::epoch::EpochClock;

/// How often a lasting outage is reported.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// The longest pause between two attempts during an outage.
const MOST_WAIT: Duration = Duration::from_secs(2);

/// Why the sink cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("PostgreSQL {target}: {problem}")]
    Schema {
        target: String,
        problem: SchemaError,
    },
    #[error("PostgreSQL {target}: {reason}")]
    Write { target: String, reason: String },
    #[error(
        "PostgreSQL {target} holds {found} for job {job_id:?}, but its checkpoint has committed \
         through the epoch starting {committed}: the tables would miss epochs. Start the job \
         over with --reset (which empties its rows), or give it its own --job-id."
    )]
    Behind {
        target: String,
        job_id: String,
        found: String,
        committed: String,
    },
}

/// The text of a PostgreSQL error: the server's message with its SQLSTATE, or the client's.
fn reason(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Whether an error may pass if tried again: a lost or refused connection, a server shutting
/// down or starting up, a lack of resources, a serialization conflict. A wrong password, a
/// missing database or table, or a bad value is not.
fn transient(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            ["08", "53", "57P", "58"].iter().any(|p| c.starts_with(p))
                || matches!(c, "40001" | "40P01")
        }
    }
}

/// A transaction's outcome besides success.
enum Failed {
    /// Try again (with a fresh connection).
    Again(String),
    Fatal(PgError),
}

impl Failed {
    fn of(target: &PgTarget, e: postgres::Error) -> Failed {
        if transient(&e) {
            Failed::Again(reason(&e))
        } else {
            Failed::Fatal(PgError::Write {
                target: target.to_string(),
                reason: reason(&e),
            })
        }
    }
}

/// The sink of process 0's writer.
pub(crate) struct PostgresSink {
    target: PgTarget,
    job_id: String,
    /// The checkpoint's run: the rows of another run of the job are not this run's. `None`
    /// with `--no-checkpoint`.
    run: Option<u64>,
    clock: EpochClock,
    connection: Option<(Client, Statements)>,
    /// Ctrl-C: an outage is no longer waited out.
    shutdown: Arc<AtomicBool>,
}

impl PostgresSink {
    /// Connects, creates what is missing, checks the tables' columns, and checks that the
    /// database has every epoch the checkpoint (`run`, through `committed`) has committed.
    /// Fails at once, never retrying: a wrong password or a missing database is for people.
    pub fn open(
        target: &PgTarget,
        job_id: &str,
        run: Option<u64>,
        committed: Option<u64>,
        clock: EpochClock,
        shutdown: Arc<AtomicBool>,
    ) -> Result<PostgresSink, PgError> {
        let mut client = init(target)?;
        let statements = Statements::prepare(&mut client, &target.schema)
            .map_err(|e| write_error(target, &e))?;
        let mut sink = PostgresSink {
            target: target.clone(),
            job_id: job_id.to_owned(),
            run,
            clock,
            connection: Some((client, statements)),
            shutdown,
        };
        if let (Some(run), Some(committed)) = (run, committed) {
            let (client, s) = sink.connection.as_mut().expect("connected");
            let row = client
                .query_opt(&s.progress, &[&sink.job_id])
                .map_err(|e| write_error(target, &e))?;
            let (found_run, found) = row.map_or((None, None), |r| (r.get(0), r.get(1)));
            let ours = found_run == Some(run as i64);
            if !ours || found.is_none_or(|f: i64| (f as u64) < committed) {
                let found = match (ours, found) {
                    (true, Some(f)) => format!("epochs through {}", sink.clock.label(f as u64)),
                    (true, None) | (false, None) => "no epoch".to_owned(),
                    (false, Some(_)) => "the rows of another run (--reset)".to_owned(),
                };
                return Err(PgError::Behind {
                    target: target.to_string(),
                    job_id: job_id.to_owned(),
                    found,
                    committed: sink.clock.label(committed).to_string(),
                });
            }
        }
        Ok(sink)
    }

    /// Empties the job's rows: `--reset` with `--no-checkpoint`. (With checkpoints, the
    /// first transaction of a new run replaces the rows of the run before.)
    pub fn reset(&mut self) -> Result<(), PgError> {
        let (client, s) = self.connection.as_mut().expect("opened connected");
        let mut tx = client
            .transaction()
            .map_err(|e| write_error(&self.target, &e))?;
        wipe(&mut tx, s, &self.job_id).map_err(|e| write_error(&self.target, &e))?;
        tx.commit().map_err(|e| write_error(&self.target, &e))
    }

    /// Writes the epochs of a commit after those the database has, in one transaction with
    /// the progress row; `committed` is the last epoch of the job's checkpoint. Waits out an
    /// outage; returns `Ok(false)` when Ctrl-C stopped the wait (nothing written).
    pub fn write(&mut self, batches: &[Batch], committed: Option<u64>) -> Result<bool, PgError> {
        let started = Instant::now();
        let mut warned: Option<Instant> = None;
        let mut wait = Duration::from_millis(100);
        loop {
            let outcome = match self.connection.take() {
                Some(c) => Ok(c),
                None => self.reconnect(),
            }
            .and_then(|(mut client, s)| {
                let done = self.transact(&mut client, &s, batches, committed);
                if !matches!(done, Err(Failed::Again(_))) {
                    self.connection = Some((client, s));
                }
                done
            });
            let why = match outcome {
                Ok(()) => {
                    if warned.is_some() {
                        info!(waited = ?started.elapsed(), "PostgreSQL is back; commits go on");
                    }
                    return Ok(true);
                }
                Err(Failed::Fatal(e)) => return Err(e),
                Err(Failed::Again(why)) => why,
            };
            if warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                warned = Some(Instant::now());
                warn!(
                    target = %self.target,
                    reason = %why,
                    waiting = ?started.elapsed(),
                    "PostgreSQL unavailable: commits wait until it is back"
                );
            }
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.shutdown.load(Ordering::Relaxed) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            wait = (wait * 2).min(MOST_WAIT);
        }
    }

    fn reconnect(&self) -> Result<(Client, Statements), Failed> {
        let mut client = self.target.connect().map_err(|e| match e {
            ConnectError::Postgres(e) => Failed::of(&self.target, e),
            other => Failed::Again(other.to_string()),
        })?;
        let s = Statements::prepare(&mut client, &self.target.schema)
            .map_err(|e| Failed::of(&self.target, e))?;
        Ok((client, s))
    }

    /// One transaction: lock the progress row, replace another run's rows (only before this
    /// run committed anything), skip the epochs the database has, write the rest and the
    /// progress row.
    fn transact(
        &self,
        client: &mut Client,
        s: &Statements,
        batches: &[Batch],
        committed: Option<u64>,
    ) -> Result<(), Failed> {
        let sql = |e| Failed::of(&self.target, e);
        let job = self.job_id.as_str();
        let mut tx = client.transaction().map_err(sql)?;
        tx.execute(&s.claim, &[&job]).map_err(sql)?;
        let row = tx.query_one(&s.lock, &[&job]).map_err(sql)?;
        let (found_run, mut done): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        let run = self.run.map(|r| r as i64);
        let mut changed = false;
        if run.is_some() && found_run != run {
            if committed.is_some() {
                // Another instance of the job (a newer run) owns the rows now.
                return Err(Failed::Fatal(PgError::Write {
                    target: self.target.to_string(),
                    reason: format!(
                        "the rows of job {job:?} now belong to another run of it (a --reset \
                         started after this one); stopping"
                    ),
                }));
            }
            wipe(&mut tx, s, job).map_err(sql)?;
            tx.execute(&s.adopt, &[&job, &run]).map_err(sql)?;
            (done, changed) = (None, true);
        }
        let rows = rows::rows(batches, done.map(|d| d as u64), |e| {
            self.clock.label(e).to_string()
        });
        if !rows.is_empty() {
            write_rows(&mut tx, s, job, &rows).map_err(sql)?;
            let (last, label) = rows.last.as_ref().expect("not empty");
            tx.execute(&s.advance, &[&job, &run, &(*last as i64), label])
                .map_err(sql)?;
            changed = true;
        }
        if changed {
            tx.commit().map_err(sql)?;
        }
        Ok(())
    }
}

/// Connects, creates the schema and the missing tables, and checks their columns (`--pg-init`
/// and the start of every job that writes to PostgreSQL).
pub fn init(target: &PgTarget) -> Result<Client, PgError> {
    let mut client = target.connect().map_err(|e| PgError::Connect {
        target: target.to_string(),
        reason: match &e {
            ConnectError::Postgres(e) => reason(e),
            other => other.to_string(),
        },
    })?;
    // "already exists, skipping" notices are not news.
    let quiet = "SET client_min_messages = warning";
    client
        .batch_execute(quiet)
        .map_err(|e| write_error(target, &e))?;
    for statement in schema::create_statements(&target.schema) {
        client
            .batch_execute(&statement)
            .map_err(|e| write_error(target, &e))?;
    }
    let found =
        schema::columns(&mut client, &target.schema).map_err(|e| write_error(target, &e))?;
    schema::check(&target.schema, &found).map_err(|problem| PgError::Schema {
        target: target.to_string(),
        problem,
    })?;
    Ok(client)
}

fn write_error(target: &PgTarget, e: &postgres::Error) -> PgError {
    PgError::Write {
        target: target.to_string(),
        reason: reason(e),
    }
}

/// Deletes every row of job `job` (the progress row stays, locked by the caller).
fn wipe(tx: &mut Transaction<'_>, s: &Statements, job: &str) -> Result<(), postgres::Error> {
    for delete in &s.wipe {
        tx.execute(delete, &[&job])?;
    }
    Ok(())
}

/// Writes `rows`, one statement per table that has any.
fn write_rows(
    tx: &mut Transaction<'_>,
    s: &Statements,
    job: &str,
    rows: &Rows,
) -> Result<(), postgres::Error> {
    if let Some((totals, at)) = &rows.totals {
        match totals {
            Some(t) => tx.execute(
                &s.totals,
                &[
                    &job,
                    &t.lines,
                    &t.units,
                    &t.revenue_milli,
                    &t.invoices,
                    &t.customers,
                    &t.cancellation_lines,
                    &t.cancellation_value_milli,
                    &t.late_lines,
                    at,
                ],
            )?,
            None => tx.execute(&s.totals_gone, &[&job])?,
        };
    }
    let c = &rows.countries;
    if !c.set.is_empty() {
        let keys: Vec<&str> = c.set.iter().map(|r| r.0.as_str()).collect();
        let lines: Vec<i64> = c.set.iter().map(|r| r.1.lines).collect();
        let units: Vec<i64> = c.set.iter().map(|r| r.1.units).collect();
        let revenue: Vec<i64> = c.set.iter().map(|r| r.1.revenue_milli).collect();
        let at: Vec<&str> = c.set.iter().map(|r| r.2.as_str()).collect();
        tx.execute(&s.countries, &[&job, &keys, &lines, &units, &revenue, &at])?;
    }
    if !c.gone.is_empty() {
        tx.execute(&s.countries_gone, &[&job, &c.gone])?;
    }
    if let Some((top, at)) = &rows.top {
        let ranks: Vec<i32> = (1..=top.len() as i32).collect();
        let codes: Vec<&str> = top.iter().map(|(p, _, _)| p.as_str()).collect();
        let names: Vec<Option<&str>> = top.iter().map(|(_, n, _)| n.as_deref()).collect();
        let revenue: Vec<i64> = top.iter().map(|(_, _, r)| *r).collect();
        tx.execute(&s.top_cut, &[&job, &(top.len() as i32)])?;
        if !top.is_empty() {
            tx.execute(&s.top, &[&job, &ranks, &codes, &names, &revenue, at])?;
        }
    }
    let e = &rows.epochs;
    if !e.set.is_empty() {
        let keys: Vec<&str> = e.set.iter().map(|r| r.0.as_str()).collect();
        let field = |f: fn(&crate::aggregate::Sums) -> i64| -> Vec<i64> {
            e.set.iter().map(|r| f(&r.1.0)).collect()
        };
        let top: Vec<&str> = e.set.iter().map(|r| r.1.1.as_str()).collect();
        tx.execute(
            &s.epochs,
            &[
                &job,
                &keys,
                &field(|s| s.lines),
                &field(|s| s.units),
                &field(|s| s.revenue_milli),
                &field(|s| s.invoices),
                &field(|s| s.late_lines),
                &top,
            ],
        )?;
    }
    if !e.gone.is_empty() {
        tx.execute(&s.epochs_gone, &[&job, &e.gone])?;
    }
    if !rows.alerts.is_empty() {
        let a = &rows.alerts;
        let col = |f: fn(&rows::AlertRow) -> &str| -> Vec<&str> { a.iter().map(f).collect() };
        let diff: Vec<i32> = a.iter().map(|r| r.diff).collect();
        tx.execute(
            &s.alerts,
            &[
                &job,
                &col(|r| &r.epoch_start),
                &col(|r| &r.key),
                &diff,
                &col(|r| &r.rule),
                &col(|r| &r.alert),
            ],
        )?;
    }
    if !rows.dead.is_empty() {
        let d = &rows.dead;
        let col = |f: fn(&rows::DeadRow) -> &str| -> Vec<&str> { d.iter().map(f).collect() };
        let opt = |f: fn(&rows::DeadRow) -> Option<&str>| -> Vec<Option<&str>> {
            d.iter().map(f).collect()
        };
        let partition: Vec<i32> = d.iter().map(|r| r.partition).collect();
        let offset: Vec<i64> = d.iter().map(|r| r.offset).collect();
        tx.execute(
            &s.dead,
            &[
                &job,
                &col(|r| &r.epoch_start),
                &partition,
                &offset,
                &col(|r| &r.reason),
                &col(|r| &r.detail),
                &opt(|r| r.key.as_deref()),
                &opt(|r| r.payload.as_deref()),
                &opt(|r| r.payload_hex.as_deref()),
            ],
        )?;
    }
    Ok(())
}

/// The statements of one connection, prepared once.
struct Statements {
    progress: Statement,
    claim: Statement,
    lock: Statement,
    adopt: Statement,
    advance: Statement,
    wipe: Vec<Statement>,
    totals: Statement,
    totals_gone: Statement,
    countries: Statement,
    countries_gone: Statement,
    top_cut: Statement,
    top: Statement,
    epochs: Statement,
    epochs_gone: Statement,
    alerts: Statement,
    dead: Statement,
}

impl Statements {
    fn prepare(client: &mut Client, schema: &str) -> Result<Statements, postgres::Error> {
        let mut p = |sql: String| client.prepare(&sql);
        let wipe = schema::TABLES[1..]
            .iter()
            .map(|t| p(format!("DELETE FROM {schema}.{} WHERE job_id = $1", t.name)))
            .collect::<Result<_, _>>()?;
        // Money arrives in thousandths: `* 0.001` is exact in numeric.
        Ok(Statements {
            progress: p(format!(
                "SELECT run, epoch FROM {schema}.progress WHERE job_id = $1"
            ))?,
            claim: p(format!(
                "INSERT INTO {schema}.progress (job_id) VALUES ($1) ON CONFLICT DO NOTHING"
            ))?,
            lock: p(format!(
                "SELECT run, epoch FROM {schema}.progress WHERE job_id = $1 FOR UPDATE"
            ))?,
            adopt: p(format!(
                "UPDATE {schema}.progress SET run = $2, epoch = NULL, epoch_start = NULL, \
                 commits = 0, updated_at = now() WHERE job_id = $1"
            ))?,
            advance: p(format!(
                "UPDATE {schema}.progress SET run = $2, epoch = $3, epoch_start = $4::text::timestamp, \
                 commits = commits + 1, updated_at = now() WHERE job_id = $1"
            ))?,
            wipe,
            totals: p(format!(
                "INSERT INTO {schema}.totals {} VALUES ($1, $2, $3, $4::int8 * 0.001, $5, $6, $7, \
                 $8::int8 * 0.001, $9, $10::text::timestamp) ON CONFLICT (job_id) DO UPDATE SET \
                 lines = EXCLUDED.lines, units = EXCLUDED.units, revenue = EXCLUDED.revenue, \
                 invoices = EXCLUDED.invoices, customers = EXCLUDED.customers, \
                 cancellation_lines = EXCLUDED.cancellation_lines, \
                 cancellation_value = EXCLUDED.cancellation_value, \
                 late_lines = EXCLUDED.late_lines, epoch_start = EXCLUDED.epoch_start",
                schema::column_list("totals")
            ))?,
            totals_gone: p(format!("DELETE FROM {schema}.totals WHERE job_id = $1"))?,
            countries: p(format!(
                "INSERT INTO {schema}.by_country {} SELECT $1, c, l, u, r * 0.001, e::timestamp \
                 FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int8[], $6::text[]) \
                 AS t(c, l, u, r, e) ON CONFLICT (job_id, country) DO UPDATE SET \
                 lines = EXCLUDED.lines, units = EXCLUDED.units, revenue = EXCLUDED.revenue, \
                 epoch_start = EXCLUDED.epoch_start",
                schema::column_list("by_country")
            ))?,
            countries_gone: p(format!(
                "DELETE FROM {schema}.by_country WHERE job_id = $1 AND country = ANY($2::text[])"
            ))?,
            top_cut: p(format!(
                "DELETE FROM {schema}.top_products WHERE job_id = $1 AND rank > $2::int4"
            ))?,
            top: p(format!(
                "INSERT INTO {schema}.top_products {} SELECT $1, k, c, d, r * 0.001, \
                 $6::text::timestamp FROM unnest($2::int4[], $3::text[], $4::text[], $5::int8[]) \
                 AS t(k, c, d, r) ON CONFLICT (job_id, rank) DO UPDATE SET \
                 stock_code = EXCLUDED.stock_code, description = EXCLUDED.description, \
                 revenue = EXCLUDED.revenue, epoch_start = EXCLUDED.epoch_start",
                schema::column_list("top_products")
            ))?,
            epochs: p(format!(
                "INSERT INTO {schema}.epochs {} SELECT $1, e::timestamp, l, u, r * 0.001, i, t, \
                 p::jsonb FROM unnest($2::text[], $3::int8[], $4::int8[], $5::int8[], \
                 $6::int8[], $7::int8[], $8::text[]) AS x(e, l, u, r, i, t, p) \
                 ON CONFLICT (job_id, epoch_start) DO UPDATE SET lines = EXCLUDED.lines, \
                 units = EXCLUDED.units, revenue = EXCLUDED.revenue, \
                 invoices = EXCLUDED.invoices, late_lines = EXCLUDED.late_lines, \
                 top_products = EXCLUDED.top_products",
                schema::column_list("epochs")
            ))?,
            epochs_gone: p(format!(
                "DELETE FROM {schema}.epochs WHERE job_id = $1 \
                 AND epoch_start = ANY($2::text[]::timestamp[])"
            ))?,
            alerts: p(format!(
                "INSERT INTO {schema}.alerts {} SELECT $1, e::timestamp, k, d, r, a::jsonb \
                 FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[], $6::text[]) \
                 AS t(e, k, d, r, a)",
                schema::column_list("alerts")
            ))?,
            dead: p(format!(
                "INSERT INTO {schema}.dead_letters {} SELECT $1, e::timestamp, p, o, r, d, k, \
                 y, h FROM unnest($2::text[], $3::int4[], $4::int8[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[]) AS t(e, p, o, r, d, k, y, h)",
                schema::column_list("dead_letters")
            ))?,
        })
    }
}
