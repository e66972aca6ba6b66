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
//! Every other process serves `/metrics` only. Requests are answered by one `tiny_http` thread
//! that renders from the [`Hub`] under a short lock; each event stream has a thread of its own.
//! The writer only queues confirmed commits for the hub ([`Publisher`]), so no worker ever waits
//! for a reader.

pub mod hub;
pub mod metrics;
pub mod publish;
pub mod shapes;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tracing::debug;

pub use hub::{CommitMetrics, Hub};

use crate::checkpoint::Resume;
use crate::epoch::EpochClock;
use crate::metrics::Metrics;
use crate::sink::publish::Publisher;
use retail_common::metrics::{CONTENT_TYPE, ServeError, bind, encode, local_addr, text_response};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// How often an idle event stream sends a comment, so that a closed page is noticed.
const KEEPALIVE: Duration = Duration::from_secs(10);

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
        );
        Arc::new(hub)
    });
    let registry = metrics::registry(Arc::clone(source), hub.as_ref().map(|h| h.metrics()));
    let index: Arc<str> = INDEX_HTML.replace("{{currency}}", &config.currency).into();
    let addr = &config.addr;
    let local = start(addr, hub.clone(), registry, ready, index)?;
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

/// Starts the server on `addr`, serving `index` as the page; returns the address it listens
/// on.
pub fn start(
    addr: &str,
    hub: Option<Arc<Hub>>,
    registry: Registry,
    ready: Arc<AtomicBool>,
    index: Arc<str>,
) -> Result<String, ServeError> {
    let server = bind(addr)?;
    let local = local_addr(&server);
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                handle(request, hub.as_ref(), &registry, &ready, &index);
            }
        })
        .map_err(|e| ServeError {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(local)
}

fn handle(
    request: tiny_http::Request,
    hub: Option<&Arc<Hub>>,
    registry: &Registry,
    ready: &AtomicBool,
    index: &str,
) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    debug!(path, "http request");
    if *request.method() != tiny_http::Method::Get && *request.method() != tiny_http::Method::Head {
        let _ = request.respond(error(405, "only GET is served"));
        return;
    }
    // Every process: metrics, and the probes of an orchestrator. Alive is answering at all
    // (a frozen process does not); ready is running the dataflow with every peer connected.
    let plain = "text/plain; charset=utf-8";
    match path {
        "/metrics" => {
            let _ = request.respond(text_response(encode(registry), CONTENT_TYPE, 200));
            return;
        }
        "/healthz" => {
            let _ = request.respond(text_response("ok\n".into(), plain, 200));
            return;
        }
        "/readyz" => {
            let _ = request.respond(if ready.load(Ordering::Relaxed) {
                text_response("ready\n".into(), plain, 200)
            } else {
                error(503, "starting: the processes are not connected yet")
            });
            return;
        }
        _ => {}
    }
    let Some(hub) = hub else {
        let _ = request.respond(error(
            404,
            "this process serves /metrics only; the page and the API are on process 0",
        ));
        return;
    };
    let response = match path {
        "/" | "/index.html" => text_response(index.into(), "text/html; charset=utf-8", 200),
        "/app.js" => text_response(APP_JS.into(), "text/javascript; charset=utf-8", 200),
        "/style.css" => text_response(STYLE_CSS.into(), "text/css; charset=utf-8", 200),
        "/events" => {
            let hub = Arc::clone(hub);
            // A stream lasts as long as the page: its own thread.
            let _ = std::thread::Builder::new()
                .name("http-events".into())
                .spawn(move || stream_events(request, &hub));
            return;
        }
        "/api/state" => match hub.state() {
            Some(state) => json_response(&state, 200),
            None => error(503, "no epoch has been committed yet"),
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
    };
    let _ = request.respond(response);
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

fn json_response(value: &Value, status: u16) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut text = serde_json::to_string_pretty(value).expect("JSON serialises");
    text.push('\n');
    text_response(text, JSON, status)
}

/// An error as `{"error": message}`.
fn error(status: u16, message: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    json_response(&json!({ "error": message }), status)
}

/// Serves one event stream: the current view at once, then every event as it comes, until the
/// page goes away. The connection is taken over from the server (each event is flushed as it
/// is written, which a buffered response body would not do).
fn stream_events(request: tiny_http::Request, hub: &Hub) {
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                Connection: close\r\n\r\n";
    let (mut seq, current) = hub.current();
    if out
        .write_all(head.as_bytes())
        .and_then(|()| out.write_all(b"retry: 1000\n\n"))
        .and_then(|()| out.write_all(current.as_bytes()))
        .and_then(|()| out.flush())
        .is_err()
    {
        return;
    }
    loop {
        let written = match hub.events_after(seq, KEEPALIVE) {
            Some((now, events)) => {
                seq = now;
                events
                    .iter()
                    .try_for_each(|e| out.write_all(e.as_bytes()))
                    .and_then(|()| out.flush())
            }
            None => out
                .write_all(b": keep-alive\n\n")
                .and_then(|()| out.flush()),
        };
        if written.is_err() {
            return;
        }
    }
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
