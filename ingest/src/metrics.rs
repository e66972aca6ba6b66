//! `ingest --http ADDR`: Prometheus `/metrics` of a run (records published, rows rejected,
//! delivery failures, messages in flight, and the process metrics).
//!
//! The publishing loop stores its counts into atomics every [`STORE_EVERY`] records and at
//! the end; a scrape reads them on the server's own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use retail_common::metrics::{ServeError, encode_one};

/// How many records the loop handles between two stores of its counts.
pub const STORE_EVERY: u64 = 64;

/// The counts a scrape shows.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub published: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
    pub in_flight: AtomicI64,
}

impl Collector for IngestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = [
            (
                "retail_stream_ingest_records_published",
                "Records acknowledged by Kafka (or written with --output)",
                self.published.load(Relaxed),
            ),
            (
                "retail_stream_ingest_rows_rejected",
                "Input rows rejected (written to the rejects file)",
                self.rejected.load(Relaxed),
            ),
            (
                "retail_stream_ingest_delivery_failures",
                "Records Kafka did not acknowledge after the client's retries",
                self.failed.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            encode_one(&mut encoder, name, help, ConstCounter::new(value))?;
        }
        encode_one(
            &mut encoder,
            "retail_stream_ingest_in_flight",
            "Records sent and not yet acknowledged",
            ConstGauge::new(self.in_flight.load(Relaxed)),
        )?;
        Ok(())
    }
}

/// Serves `/metrics` for `metrics` on `addr`; returns the address it listens on.
pub fn serve(addr: &str, metrics: &Arc<IngestMetrics>) -> Result<String, ServeError> {
    let server = retail_common::metrics::bind(addr)?;
    let local = retail_common::metrics::local_addr(&server);
    let mut registry = retail_common::metrics::registry_with_process();
    registry.register_collector(Box::new(Arc::clone(metrics)));
    retail_common::metrics::serve_metrics(server, registry).map_err(|e| ServeError {
        addr: addr.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(local)
}
