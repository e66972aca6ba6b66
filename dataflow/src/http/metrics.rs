//! `/metrics` of one process of the job, in the Prometheus text format.
//!
//! The source's counters are read from its [`Metrics`] at each scrape (the workers only add to
//! atomics, and fill the per-partition table once per activation); the commit metrics are
//! updated by the [`super::Hub`] as commits are confirmed, on process 0 only.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::hub::CommitMetrics;
use crate::metrics::Metrics;
use retail_common::metrics::encode_one;

/// The source's metrics, read at scrape time.
#[derive(Debug)]
struct SourceCollector(Arc<Metrics>);

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let partitions = crate::locked(&m.partitions).clone();
        let reasons = crate::locked(&m.dead_reasons).clone();

        let mut family = encoder.encode_descriptor(
            "retail_stream_records_read",
            "Records read from the source topic, per partition (re-read ones included)",
            None,
            MetricType::Counter,
        )?;
        for (p, g) in &partitions {
            let labels = [("partition", p.to_string())];
            ConstCounter::new(g.read).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "retail_stream_dead_letters",
            "Records sent to the dead-letter queue, per reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in &reasons {
            let labels = [("reason", reason.to_string())];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }

        encode_one(
            &mut encoder,
            "retail_stream_late_lines",
            "Lines older than their partition's watermark, folded into the earliest open epoch",
            ConstCounter::new(m.late.load(Relaxed)),
        )?;
        encode_one(
            &mut encoder,
            "retail_stream_lines",
            "Valid sales lines read",
            ConstCounter::new(m.lines.load(Relaxed)),
        )?;

        encode_one(
            &mut encoder,
            "retail_stream_buffered_bytes",
            "Message bytes read for epochs still open (flow control holds partitions back \
             above --max-buffered)",
            ConstGauge::new(m.buffered.load(Relaxed) as i64),
        )?;
        encode_one(
            &mut encoder,
            "retail_stream_partitions_held",
            "Partitions flow control leaves unread until the partitions behind them catch up",
            ConstGauge::new(m.held.load(Relaxed)),
        )?;

        let mut family = encoder.encode_descriptor(
            "retail_stream_consumer_lag",
            "Records between the job's position and the partition's last stable offset",
            None,
            MetricType::Gauge,
        )?;
        for (p, g) in &partitions {
            if let Some(lag) = g.lag {
                let labels = [("partition", p.to_string())];
                ConstGauge::new(lag).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "retail_stream_event_time_watermark_seconds",
            "Start of the earliest epoch the partition may still add to (Unix seconds)",
            None,
            MetricType::Gauge,
        )?;
        for (p, g) in &partitions {
            if let Some(secs) = g.watermark_secs {
                let labels = [("partition", p.to_string())];
                ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry of one process: process and source metrics, and the commit metrics when this
/// process writes.
pub fn registry(source: Arc<Metrics>, commits: Option<&CommitMetrics>) -> Registry {
    let mut registry = retail_common::metrics::registry_with_process();
    registry.register_collector(Box::new(SourceCollector(source)));
    if let Some(c) = commits {
        registry.register(
            "retail_stream_epochs_committed",
            "Epochs committed (their output confirmed written)",
            c.epochs.clone(),
        );
        registry.register(
            "retail_stream_commit_duration_seconds",
            "From rendering a commit to its confirmation (files written, Kafka transaction done)",
            c.duration.clone(),
        );
        registry.register(
            "retail_stream_state_entries",
            "Entries of the writer's state: totals, countries, ranked products, open alerts, \
             dead-letter reasons",
            c.state_entries.clone(),
        );
    }
    registry
}
