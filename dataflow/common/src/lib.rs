//! The one definition of a retail sale that every part of retail-stream shares.
//!
//! `ingest` types CSV rows into [`Sale`]s and publishes them as JSON; `dataflow` parses that
//! JSON back with [`Sale::from_json`] (or, without copying its text, [`SaleRef::from_json`]) and
//! applies the same validation. Keeping both directions
//! here means a record that ingest accepts is a record the dataflow accepts, byte for byte.
//!
//! Layout:
//! - [`money`]: exact decimal prices as integer thousandths.
//! - [`time`]: the accepted InvoiceDate forms and the ISO-8601 form written out.
//! - [`record`]: the typed record, its JSON wire format and its validation.
//! - [`kafka`]: client settings shared by the binaries (`-b`, `-X key=value`, topic creation).
//! - [`heartbeat`]: the datagrams with which a job's processes and its launcher watch each other.
//! - [`metrics`]: the Prometheus registry helpers, process metrics and the `/metrics` server.

pub mod exit;
pub mod heartbeat;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod money;
pub mod record;
pub mod time;

pub use record::{Reject, RejectKind, Sale, SaleRef};

/// Topic the point-of-sale edge (ingest) writes and the dataflow reads.
pub const DEFAULT_TOPIC: &str = "retail-transactions";
