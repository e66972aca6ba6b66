//! `--http ADDR`: the live page, the query API and `/metrics`, served from a thread of their own.
//!
//! Process 0 serves:
//! - `/`: the page (HTML, script and style embedded in the binary; no CDN);
//! - `/events`: server-sent events, one `epoch` event per committed epoch and a `finished`
//!   event when a bounded run has written its summary; each carries the whole view (state,
//!   last epochs, latest alerts, progress, health);
//! - `/api/state`: the last committed state, shaped like `summary.json` plus `epoch` and
//!   `open_alerts`;
//! - `/api/epochs?last=N`: the last N epoch rows (default 60);
//! - `/api/progress?last=N`: per commit, a `StreamingQueryProgress`-shaped entry (default 1);
//! - `/metrics`.
//!
//! Every other process serves `/metrics` only. Everything is served by one thread, `http`,
//! running a single-threaded async runtime ([`server`]: connections and their limits); each
//! request is answered from the [`Hub`] under a short lock ([`Routes`]), and each event stream
//! is a task that waits on the hub's sequence number ([`events`]). The writer only queues
//! confirmed commits for the hub ([`Publisher`]), so no worker ever waits for a reader.
//!
//! Layout:
//! - `server.rs`: the listener, the connection cap, the header and write limits;
//! - `events.rs`: one viewer's event stream;
//! - `hub.rs`: what is shown, as of the last commit; `publish.rs`: the thread that feeds it;
//! - `shapes.rs`: the progress and health shapes; `metrics.rs`: the registry.

pub mod events;
pub mod hub;
pub mod metrics;
pub mod publish;
pub mod server;
pub mod shapes;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tracing::debug;

pub use hub::{CommitMetrics, Hub};
pub use server::{DEFAULT_MAX_CONNECTIONS, Limits};

use crate::checkpoint::Resume;
use crate::epoch::EpochClock;
use crate::metrics::Metrics;
use crate::sink::publish::Publisher;
use events::Events;
use retail_common::metrics::{CONTENT_TYPE, ServeError, encode};
use server::Body;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

const JSON: &str = "application/json";

/// What `--http` serves with: the part of the command line it reads
/// ([`Config::http_config`](crate::cli::Config::http_config)).
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// `--http`: where to listen.
    pub addr: String,
    /// This process's index: process 0 serves the page and the API.
    pub process: usize,
    pub clock: EpochClock,
    pub topic: String,
    pub job_id: String,
    /// `--currency`: how the page shows amounts.
    pub currency: String,
    /// `--http-max-connections`: open connections at most.
    pub max_connections: usize,
}

/// Starts `--http` for this process of the job: on process 0 the page, the API and the commit
/// metrics (the returned publisher is handed to the writer), elsewhere `/metrics` only.
/// Returns the address it listens on, which is also printed.
pub fn serve_job(
    config: &HttpConfig,
    source: &Arc<Metrics>,
    resumed: Option<&BTreeMap<i32, Resume>>,
    ready: Arc<AtomicBool>,
) -> Result<(String, Option<Publisher>), ServeError> {
    let hub = (config.process == 0).then(|| {
        let commits = CommitMetrics::default();
        let hub = Hub::new(
            config.clock,
            config.topic.clone(),
            config.job_id.clone(),
            resumed.unwrap_or(&BTreeMap::new()),
            commits,
        )
        // The open epoch's running figures, which this process's workers add to.
        .with_provisional(crate::provisional::install());
        Arc::new(hub)
    });
    let registry = metrics::registry(Arc::clone(source), hub.as_ref().map(|h| h.metrics()));
    let index: Arc<str> = INDEX_HTML.replace("{{currency}}", &config.currency).into();
    let addr = &config.addr;
    let routes = Routes {
        hub: hub.clone(),
        registry,
        ready,
        index,
    };
    let limits = Limits {
        max_connections: config.max_connections,
    };
    let local = start(addr, routes, limits)?;
    let publisher = hub
        .map(publish::spawn)
        .transpose()
        .map_err(|e| ServeError {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    if publisher.is_some() {
        retail_common::say!(
            "http: the live page is on http://{local}/ (API under /api, metrics on /metrics)"
        );
    } else {
        retail_common::say!(
            "http: process {} serves http://{local}/metrics",
            config.process
        );
    }
    Ok((local, publisher))
}

/// Binds `addr` and serves `routes` from the thread `http`; returns the address it listens on.
pub fn start(addr: &str, routes: Routes, limits: Limits) -> Result<String, ServeError> {
    let failed = |reason: String| ServeError {
        addr: addr.to_owned(),
        reason,
    };
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| failed("not an IP address and port (for example 127.0.0.1:8080)".into()))?;
    let listener = server::bind(parsed).map_err(|e| failed(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| failed(e.to_string()))?
        .to_string();
    let routes = Arc::new(routes);
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            if let Err(e) = server::run(listener, limits, routes) {
                tracing::error!(error = %e, "http: the server stopped");
            }
        })
        .map_err(|e| failed(e.to_string()))?;
    Ok(local)
}

/// What is served, by path: the page and the API from the hub (process 0), metrics and probes
/// on every process.
pub struct Routes {
    /// The committed results; `None` on the processes that serve `/metrics` only.
    pub hub: Option<Arc<Hub>>,
    pub registry: Registry,
    /// `/readyz`: the dataflow runs with every process connected.
    pub ready: Arc<AtomicBool>,
    /// The page, with its currency filled in.
    pub index: Arc<str>,
}

impl Routes {
    /// The answer to `request` (its body is not read: every path is a GET).
    pub fn answer<B>(&self, request: &Request<B>) -> Response<Body> {
        let path = request.uri().path();
        let query = request.uri().query().unwrap_or("");
        debug!(path, "http request");
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return error(405, "only GET is served");
        }
        // Every process: metrics, and the probes of an orchestrator. Alive is answering at all
        // (a frozen process does not); ready is running the dataflow with every peer connected.
        let plain = "text/plain; charset=utf-8";
        match path {
            "/metrics" => return text(encode(&self.registry), CONTENT_TYPE, 200),
            "/healthz" => return text("ok\n", plain, 200),
            "/readyz" => {
                return if self.ready.load(Ordering::Relaxed) {
                    text("ready\n", plain, 200)
                } else {
                    error(503, "starting: the processes are not connected yet")
                };
            }
            _ => {}
        }
        let Some(hub) = &self.hub else {
            return error(
                404,
                "this process serves /metrics only; the page and the API are on process 0",
            );
        };
        match path {
            "/" | "/index.html" => text(
                Bytes::copy_from_slice(self.index.as_bytes()),
                "text/html; charset=utf-8",
                200,
            ),
            "/app.js" => text(APP_JS, "text/javascript; charset=utf-8", 200),
            "/style.css" => text(STYLE_CSS, "text/css; charset=utf-8", 200),
            "/events" => {
                let mut response = Response::new(if request.method() == Method::HEAD {
                    Body::Full(None)
                } else {
                    Body::Events(Box::new(Events::new(Arc::clone(hub))))
                });
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE_HEADER,
                    HeaderValue::from_static("text/event-stream"),
                );
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                response
            }
            "/api/state" => match hub.state() {
                Some(state) => json_response(&state, 200),
                // Before the first commit, the open epoch's running figures may be there.
                None => text(
                    error_body_with(
                        "no epoch has been committed yet",
                        "provisional",
                        hub.provisional(),
                    ),
                    JSON,
                    503,
                ),
            },
            "/api/epochs" => match last(query, 60, hub::KEEP_EPOCHS) {
                Ok(n) => json_response(&hub.epochs(n), 200),
                Err(message) => error(400, &message),
            },
            "/api/progress" => match last(query, 1, hub::KEEP_PROGRESS) {
                Ok(n) => json_response(&hub.progress_entries(n), 200),
                Err(message) => error(400, &message),
            },
            _ => error(
                404,
                "not found; try /, /events, /api/state, /api/epochs, /api/progress, /metrics, \
                 /healthz or /readyz",
            ),
        }
    }
}

/// The `last` parameter: a whole number from 1 to `max` (`default` when absent); any other
/// parameter is refused.
fn last(query: &str, default: usize, max: usize) -> Result<usize, String> {
    let mut n = default;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "last" {
            return Err(format!(
                "unknown query parameter {key:?}; only last=N is accepted"
            ));
        }
        n = match value.parse::<usize>() {
            Ok(v) if (1..=max).contains(&v) => v,
            _ => {
                return Err(format!(
                    "last must be a whole number from 1 to {max}, got {value:?}"
                ));
            }
        };
    }
    Ok(n)
}

/// A response of `body` as `content_type` with `status`.
fn text(body: impl Into<Bytes>, content_type: &'static str, status: u16) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    response
        .headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

fn json_response(value: &Value, status: u16) -> Response<Body> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON serialises");
    text.push('\n');
    self::text(text, JSON, status)
}

/// The body of an error: `{"error": message}`.
fn error_body(message: &str) -> Bytes {
    let mut text = serde_json::to_string_pretty(&json!({ "error": message })).expect("JSON");
    text.push('\n');
    Bytes::from(text)
}

/// The body of an error with one more field: `{"error": message, key: value}`.
fn error_body_with(message: &str, key: &str, value: Value) -> Bytes {
    let body = json!({ "error": message, key: value });
    let mut text = serde_json::to_string_pretty(&body).expect("JSON");
    text.push('\n');
    Bytes::from(text)
}

/// An error as `{"error": message}`.
fn error(status: u16, message: &str) -> Response<Body> {
    text(error_body(message), JSON, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_accepts_whole_numbers_in_range_only() {
        assert_eq!(last("", 60, 1000), Ok(60));
        assert_eq!(last("last=5", 60, 1000), Ok(5));
        assert!(last("last=0", 60, 1000).is_err());
        assert!(last("last=abc", 60, 1000).unwrap_err().contains("\"abc\""));
        assert!(last("last=1001", 60, 1000).is_err());
        assert!(last("first=3", 60, 1000).unwrap_err().contains("first"));
    }
}
