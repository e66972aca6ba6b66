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
//! - [`native`]: the calls into C that the safe wrappers do not offer (the only `unsafe`).

pub mod aggregate;
pub(crate) mod checkpoint;
pub mod cli;
pub mod epoch;
pub(crate) mod flow;
pub(crate) mod http;
pub mod job;
#[allow(unsafe_code)]
pub mod native;
pub mod outcome;
pub mod parse;
pub mod peers;
pub(crate) mod retention;
pub mod sink;
pub(crate) mod source;
pub(crate) mod state;
