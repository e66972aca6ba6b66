//! The retail-stream dataflow job: Kafka sales in, incremental aggregates out.
//!
//! Layout:
//! - [`cli`]: flags (ours and timely's) and the validated configuration.
//! - [`source`]: Kafka partitions to timely, parsing and validation, dead letters.
//! - [`epoch`]: event time to epochs, per-partition watermarks and lateness.
//! - [`aggregate`]: the differential-dataflow aggregates and alert rules.
//! - [`sink`]: the single writer and its console, JSON-lines and Kafka outputs.
//! - [`checkpoint`]: what is committed, for exactly-once output across restarts.
//! - [`job`]: wires them together and runs one process of the job.

pub mod aggregate;
pub mod checkpoint;
pub mod cli;
pub mod epoch;
pub mod job;
pub mod sink;
pub mod source;
