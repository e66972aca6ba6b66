//! The retail-stream dataflow job: Kafka sales in, incremental aggregates out.
//!
//! Layout:
//! - [`epoch`]: event time to epochs, per-partition watermarks and lateness.
//! - [`aggregate`]: the differential-dataflow aggregates and alert rules.

pub mod aggregate;
pub mod epoch;
