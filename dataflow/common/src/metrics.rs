//! Prometheus metrics shared by the binaries: the standard process metrics, the text encoding
//! and a `/metrics`-only HTTP server (ingest's `--http`).
//!
//! The registry and the text format come from `prometheus-client`; the server is `tiny_http` on
//! threads of its own, so a scrape never waits on the work it measures (every value is read from
//! atomics or from `/proc` when the scrape comes in).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`encode`] writes (Prometheus text format 0.0.4).
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `process_resident_memory_bytes`, `process_cpu_seconds_total` and
/// `process_start_time_seconds` of this process, read from `/proc` at each scrape (the names
/// every Prometheus client library uses, so stock dashboards work).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A process whose /proc cannot be read (not Linux) simply has no process metrics.
        let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) else {
            return Ok(());
        };
        let ticks = procfs::ticks_per_second() as f64;
        encode_one(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            ConstGauge::new((stat.rss * procfs::page_size()) as f64),
        )?;
        encode_one(
            &mut encoder,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            ConstCounter::new((stat.utime + stat.stime) as f64 / ticks),
        )?;
        if let Ok(boot) = procfs::boot_time_secs() {
            encode_one(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                ConstGauge::new(boot as f64 + stat.starttime as f64 / ticks),
            )?;
        }
        Ok(())
    }
}

/// Encodes one metric without labels (a `ConstCounter` or `ConstGauge` of a value read at
/// scrape time) under `name`, with `help`.
pub fn encode_one(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A registry with the process metrics in it.
pub fn registry_with_process() -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// The registry's metrics in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// A server that could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {reason}")]
pub struct ServeError {
    pub addr: String,
    pub reason: String,
}

/// Binds `addr` (`HOST:PORT`) for the HTTP server; a clear error when the address is taken or
/// not one.
pub fn bind(addr: &str) -> Result<Arc<tiny_http::Server>, ServeError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| ServeError {
        addr: addr.to_owned(),
        reason: "not an IP address and port (for example 127.0.0.1:8080)".into(),
    })?;
    tiny_http::Server::http(parsed)
        .map(Arc::new)
        .map_err(|e| ServeError {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })
}

/// The address a bound server listens on (its port when `:0` was asked for).
pub fn local_addr(server: &tiny_http::Server) -> String {
    match server.server_addr() {
        tiny_http::ListenAddr::IP(a) => a.to_string(),
        other => format!("{other:?}"),
    }
}

/// Answers `/metrics` with the registry and everything else with 404, on a thread of its own,
/// until the process exits.
pub fn serve_metrics(
    server: Arc<tiny_http::Server>,
    registry: Registry,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("http-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = if path == "/metrics" {
                    text_response(encode(&registry), CONTENT_TYPE, 200)
                } else {
                    text_response(
                        "not found: this server has /metrics only\n".into(),
                        "text/plain; charset=utf-8",
                        404,
                    )
                };
                // A scraper that went away is no concern of the process.
                let _ = request.respond(response);
            }
        })
}

/// A response with `body` of `content_type` and `status`.
pub fn text_response(
    body: String,
    content_type: &str,
    status: u16,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header =
        tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_encoded_with_their_standard_names() {
        let text = encode(&registry_with_process());
        assert!(
            text.contains("# TYPE process_resident_memory_bytes gauge"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        let rss = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("an RSS sample");
        assert!(rss > 0.0);
    }
}
