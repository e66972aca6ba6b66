//! The retail-stream dataflow job: Kafka sales in, incremental aggregates out.
//!
//! Layout (the modules without a link are internal to the crate):
//! - [`cli`]: flags (ours and timely's) and the validated configuration.
//! - `source`: Kafka partitions to timely: assignment, flow control, new partitions.
//! - `flow`: the memory budget of flow control (`--max-buffered`).
//! - [`parse`]: what one message becomes: a line at its epoch, or a dead letter.
//! - [`epoch`]: event time to epochs, per-partition watermarks and lateness.
//! - [`aggregate`]: the differential-dataflow aggregates and alert rules.
//! - [`sink`]: the single writer and its console, JSON-lines and Kafka outputs.
//! - `state`: the current value of every aggregate, as the writer keeps it.
//! - `checkpoint`: what is committed, for exactly-once output across restarts.
//! - [`job`]: wires them together and runs one process of the job.
//! - [`outcome`]: what a run ends with: its report, or its error and the exit status it means.
//! - [`peers`]: heartbeats between the processes of a job, so that a failed one is noticed.
//! - `http`: `--http`: the live page, the query API and `/metrics`.
//! - `provisional`: the open epoch's running figures, for the page only.
//! - [`native`]: the calls into C that the safe wrappers do not offer (the only `unsafe`).

pub mod aggregate;
pub(crate) mod checkpoint;
pub mod cli;
pub mod epoch;
pub(crate) mod flow;
pub(crate) mod http;
pub mod job;
pub(crate) mod metrics;
#[allow(unsafe_code)]
pub mod native;
pub mod outcome;
pub mod parse;
pub mod peers;
pub(crate) mod provisional;
pub(crate) mod retention;
pub mod sink;
pub(crate) mod source;
pub(crate) mod state;

/// Locks `mutex`, taking its data as it is when a thread panicked while holding it: the one
/// policy for poisoned locks in this crate. The binary's panic hook ends the process at the
/// first panic (`main.rs`), so a poisoned lock is only met while the process ends, or in a
/// test; and every value behind these locks (counters, the commit thread's queue, the page's
/// view, the flow-control ledger) is whole after each statement that changes it.
pub(crate) fn locked<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
