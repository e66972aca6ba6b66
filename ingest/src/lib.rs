//! `ingest`: the point-of-sale edge of retail-stream. It reads sales (a UCI *Online Retail* CSV
//! file, plain or gzip, or a seeded generator), types and validates every row with the shared
//! [`retail_common::Sale`], and publishes each as one JSON object to a Kafka topic keyed by
//! InvoiceNo, for the `dataflow` job to aggregate.
//!
//! `main.rs` only parses the command line, sets up logging, calls [`run`] and maps the
//! [`Summary`] or error to an exit code; everything else is here so tests can call it.
//!
//! Layout:
//! - [`cli`]: the flags ([`cli::Args`], clap derive) and the validated [`Config`].
//! - [`csv_source`]: streaming CSV/gzip reader, header mapping for both dialects, rejects file.
//! - [`generate`]: deterministic synthetic sales.
//! - [`pace`]: `--rate`, a token-bucket schedule.
//! - [`publish`]: the Kafka producer and the JSON-lines output.
//! - [`progress`]: progress bar or periodic lines on stderr.
//! - [`error`]: [`IngestError`], why a run stops.

pub mod cli;
pub mod csv_source;
pub mod error;
pub mod generate;
pub mod metrics;
pub mod pace;
pub mod progress;
pub mod publish;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

pub use cli::{Args, Config};
pub use error::IngestError;
use metrics::IngestMetrics;

use retail_common::Sale;

use crate::cli::Source;
use crate::csv_source::{CsvSource, RejectWriter, Row};
use crate::generate::{Generator, blank_sale};
use crate::pace::Pacer;
use crate::progress::{Progress, Snapshot, Unit};
use crate::publish::Sink;

/// Exit statuses (rejected rows alone do not fail a run), shared with dataflow and cluster.
pub use retail_common::exit::{
    ERROR as EXIT_ERROR, INTERRUPTED as EXIT_INTERRUPTED, OK as EXIT_OK,
    UNDELIVERED as EXIT_DELIVERY, USAGE as EXIT_USAGE,
};

/// What a run did; printed as one JSON line at the end.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Rows read from the file (not counting the header), or records generated.
    pub read: u64,
    /// Records acknowledged by Kafka (or written, without Kafka).
    pub published: u64,
    /// Rows written to the rejects file.
    pub rejected: u64,
    /// Records that Kafka did not acknowledge.
    pub failed: u64,
    /// Rows with bytes that are not UTF-8 in their fields: decoded with U+FFFD replacement
    /// characters and kept (published unless they fail validation for another reason).
    pub lossy_utf8_rows: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Wall time of the run, from start to the last acknowledgement.
    pub seconds: f64,
    /// `published / seconds`, rounded.
    pub records_per_sec: u64,
    /// The topic, or null without Kafka.
    pub topic: Option<String>,
    /// True if Ctrl-C stopped the run early.
    pub interrupted: bool,
    /// The first delivery error, for the message on stderr.
    #[serde(skip)]
    pub first_error: Option<String>,
}

impl Summary {
    /// The exit code this run deserves: a failed delivery outranks an interruption.
    pub fn exit_code(&self) -> u8 {
        if self.failed > 0 {
            EXIT_DELIVERY
        } else if self.interrupted {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        }
    }

    /// The one-line JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a summary serialises")
    }
}

/// Where the records come from, opened.
enum Records {
    Csv(CsvSource, RejectWriter),
    Generated {
        generator: Generator,
        /// Records still to make.
        left: u64,
        made: u64,
    },
}

/// What [`Records::next`] put in the record slot.
enum Next {
    Record,
    Rejected,
    End,
}

impl Records {
    fn open(config: &Config) -> Result<Records, IngestError> {
        Ok(match &config.source {
            Source::File(input) => {
                let source = CsvSource::open(input)?;
                tracing::info!(%input, gzip = source.gzip, "reading CSV");
                Records::Csv(source, RejectWriter::create(config.rejects.as_deref())?)
            }
            Source::Generate { count, seed, clock } => {
                tracing::info!(count, seed, "generating synthetic sales");
                Records::Generated {
                    generator: Generator::new(*seed, *clock),
                    left: *count,
                    made: 0,
                }
            }
        })
    }

    /// Fills `sale` with the next record.
    fn next(&mut self, sale: &mut Sale) -> Result<Next, IngestError> {
        Ok(match self {
            Records::Csv(source, rejects) => match source.next_row(rejects)? {
                Row::Sale(row) => {
                    *sale = row;
                    Next::Record
                }
                Row::Rejected => Next::Rejected,
                Row::End => Next::End,
            },
            Records::Generated { left: 0, .. } => Next::End,
            Records::Generated {
                generator,
                left,
                made,
            } => {
                *left -= 1;
                *made += 1;
                generator.next_into(sale);
                Next::Record
            }
        })
    }

    fn progress_unit(&self) -> Unit {
        match self {
            Records::Csv(source, _) => Unit::Bytes(source.total_bytes),
            Records::Generated { left, .. } => Unit::Records(*left),
        }
    }

    /// (progress position, records read, rejected) so far.
    fn counts(&self) -> (u64, u64, u64) {
        match self {
            Records::Csv(source, _) => (source.bytes_read(), source.rows, source.rejected),
            Records::Generated { made, .. } => (*made, *made, 0),
        }
    }
}

/// Moves records from `records` to `sink` until the input ends, a delivery fails or
/// `shutdown` is set; returns whether it was interrupted.
fn pump(
    records: &mut Records,
    sink: &mut Sink,
    progress: &mut Progress,
    mut pacer: Option<Pacer>,
    shutdown: &AtomicBool,
    metrics: Option<&IngestMetrics>,
) -> Result<bool, IngestError> {
    let mut sale = blank_sale();
    let mut json = Vec::with_capacity(512);
    let mut handled = 0u64;
    loop {
        handled += 1;
        if let Some(m) = metrics
            && handled.is_multiple_of(metrics::STORE_EVERY)
        {
            store(m, records, sink);
        }
        if shutdown.load(Ordering::Relaxed) {
            return Ok(true);
        }
        if sink.has_failed() {
            return Ok(false);
        }
        match records.next(&mut sale)? {
            Next::End => return Ok(false),
            Next::Rejected => {}
            Next::Record => {
                if let Some(pacer) = &mut pacer {
                    let wait = pacer.delay(Instant::now());
                    if !wait.is_zero() {
                        sink.wait(wait, shutdown)?;
                    }
                }
                json.clear();
                sale.write_json(&mut json);
                sink.send(&sale.invoice_no, &json)?;
            }
        }
        progress.update(|| {
            let (position, read, rejected) = records.counts();
            Snapshot {
                position,
                read,
                published: sink.published(),
                rejected,
            }
        });
    }
}

/// Stores the run's counts for `/metrics`.
fn store(metrics: &IngestMetrics, records: &Records, sink: &Sink) {
    metrics.published.store(sink.published(), Ordering::Relaxed);
    metrics
        .rejected
        .store(records.counts().2, Ordering::Relaxed);
    metrics.failed.store(sink.failed(), Ordering::Relaxed);
    metrics.in_flight.store(sink.in_flight(), Ordering::Relaxed);
}

/// Runs one ingest: reads every record, publishes it, waits for the acknowledgements.
///
/// `shutdown` (set by Ctrl-C) stops the reading; what was sent is still flushed and the
/// summary says `interrupted`. Rejected rows and failed deliveries are in the summary, not
/// errors; an error means the run could not go on (exit code 1).
pub fn run(config: &Config, shutdown: &AtomicBool) -> Result<Summary, IngestError> {
    let started = Instant::now();
    // The input first: a missing file or column should not wait on the broker.
    let mut records = Records::open(config)?;
    let mut sink = Sink::open(&config.sink)?;
    let mut progress = Progress::new(records.progress_unit(), config.rate.is_some());
    let metrics = match &config.http {
        Some(addr) => {
            let m = Arc::new(IngestMetrics::default());
            let local = metrics::serve(addr, &m).map_err(IngestError::Http)?;
            retail_common::say!("http: metrics on http://{local}/metrics");
            Some(m)
        }
        None => None,
    };
    let pumped = pump(
        &mut records,
        &mut sink,
        &mut progress,
        config.rate.map(Pacer::new),
        shutdown,
        metrics.as_deref(),
    );
    if let Some(m) = &metrics {
        store(m, &records, &sink);
    }
    if let Ok(true) = pumped {
        tracing::warn!("interrupted: waiting for the messages already sent");
    }
    // Even when reading failed, wait for what was sent: it is then in the topic for sure.
    let topic = sink.topic().map(str::to_owned);
    let finished = sink.finish();
    progress.finish();
    let interrupted = match pumped {
        Ok(interrupted) => interrupted,
        Err(error) => {
            if let Ok(outcome) = &finished {
                tracing::warn!(
                    published = outcome.published,
                    "stopping on an error; the records sent before it were flushed"
                );
            }
            return Err(error);
        }
    };
    let outcome = finished?;
    if let Some(m) = &metrics {
        m.published.store(outcome.published, Ordering::Relaxed);
        m.failed.store(outcome.failed, Ordering::Relaxed);
        m.in_flight.store(0, Ordering::Relaxed);
    }
    let (_, read, rejected) = records.counts();
    let lossy_utf8_rows = match records {
        Records::Csv(source, rejects) => {
            rejects.finish()?;
            source.lossy_utf8_rows
        }
        Records::Generated { .. } => 0,
    };
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        read,
        published: outcome.published,
        rejected,
        failed: outcome.failed,
        lossy_utf8_rows,
        bytes: outcome.bytes,
        seconds: (seconds * 1000.0).round() / 1000.0,
        records_per_sec: (outcome.published as f64 / seconds.max(1e-9)).round() as u64,
        topic,
        interrupted,
        first_error: outcome.first_error,
    };
    tracing::info!(
        read,
        published = summary.published,
        rejected,
        failed = summary.failed,
        seconds = summary.seconds,
        "done"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            read: 3,
            published: 2,
            rejected: 1,
            failed: 0,
            lossy_utf8_rows: 0,
            bytes: 400,
            seconds: 0.5,
            records_per_sec: 4,
            topic: Some("t".into()),
            interrupted: false,
            first_error: None,
        }
    }

    #[test]
    fn summary_is_one_json_line_in_a_fixed_order() {
        assert_eq!(
            summary().to_json(),
            r#"{"read":3,"published":2,"rejected":1,"failed":0,"lossy_utf8_rows":0,"bytes":400,"seconds":0.5,"records_per_sec":4,"topic":"t","interrupted":false}"#
        );
    }

    #[test]
    fn exit_codes_rank_failures_over_interruptions() {
        assert_eq!(summary().exit_code(), EXIT_OK);
        let interrupted = Summary {
            interrupted: true,
            ..summary()
        };
        assert_eq!(interrupted.exit_code(), EXIT_INTERRUPTED);
        let failed = Summary {
            failed: 1,
            ..interrupted
        };
        assert_eq!(failed.exit_code(), EXIT_DELIVERY);
    }
}
