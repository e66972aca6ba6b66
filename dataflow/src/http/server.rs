//! The connections of `--http`: an HTTP/1.1 server (hyper) on a single-threaded tokio runtime
//! that runs inside the `http` thread, so that a thousand open event streams are a thousand
//! small tasks on that thread, not a thousand threads.
//!
//! The listener owns nothing but connections; what is answered is
//! [`super::Routes`]'s business. Its limits keep a crowd of clients, slow or hostile, from
//! costing the job more than a bounded amount of memory and no threads at all:
//! - at most [`Limits::max_connections`] connections at once; one more is answered `503` with
//!   a JSON error, without reading its request, and closed;
//! - a request's head (request line and headers) of at most [`MAX_HEADER_BYTES`], else `431`
//!   and the connection is closed; it must arrive within [`HEADER_TIMEOUT`] (an idle
//!   keep-alive connection is closed after as long);
//! - a write that cannot go out within [`WRITE_TIMEOUT`] (a viewer that stopped reading its
//!   event stream while the socket's buffer is full) closes the connection. hyper pulls the
//!   next event from a stream only when its buffer has room, and events are shared bytes, so a
//!   slow viewer holds at most one buffer until then.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tracing::debug;

use super::Routes;
use super::events::Events;

/// Default of `--http-max-connections`: room for 1,000 event streams and some requests.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1100;
/// Largest request head accepted (request line and headers); larger ones get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A request head must arrive within this time (also the idle time of a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot proceed for this long drops the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper's read and write buffer per connection (its minimum is 8 KiB); at least the head limit.
const BUFFER_BYTES: usize = 32 * 1024;
/// Refused connections being answered at once; past this, further ones are closed unanswered.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is given to take its 503 and have its request drained.
const REFUSE_TIME: Duration = Duration::from_secs(1);

/// How often the open epoch's running figures are sampled for the page.
const PROVISIONAL_EVERY: Duration = Duration::from_secs(1);

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most (`--http-max-connections`).
    pub max_connections: usize,
}

/// What a response carries: a whole body, or an event stream.
pub enum Body {
    Full(Option<Bytes>),
    Events(Box<Events>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Body::Full(Some(bytes.into()))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Events(events) => events.poll_next(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Events(_) => SizeHint::default(),
        }
    }
}

/// Binds `addr`, for [`run`] to serve; the error says why not.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `listener` with `routes` on the calling thread until the process ends.
pub fn run(listener: std::net::TcpListener, limits: Limits, routes: Arc<Routes>) -> io::Result<()> {
    // One thread: the runtime's own. Nothing here blocks (no file or DNS work, no
    // spawn_blocking), so tokio starts no pool threads either.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(accept(listener, limits, routes))
}

async fn accept(
    listener: std::net::TcpListener,
    limits: Limits,
    routes: Arc<Routes>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    if let Some(hub) = &routes.hub {
        tokio::spawn(Arc::clone(hub).sample_every(PROVISIONAL_EVERY));
    }
    let open = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut http = hyper::server::conn::http1::Builder::new();
    // Headers written as `Content-Type`, as the server before this one wrote them.
    http.timer(TokioTimer::new())
        .title_case_headers(true)
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(BUFFER_BYTES);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin, and go on.
                debug!(error = %e, "http: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            if refusing.load(Ordering::Relaxed) < MAX_REFUSING {
                let guard = Counted::new(&refusing);
                tokio::spawn(async move {
                    let _guard = guard;
                    let _ = tokio::time::timeout(REFUSE_TIME, refuse(stream)).await;
                });
            }
            continue;
        }
        let guard = Counted::new(&open);
        let routes = Arc::clone(&routes);
        let connection = http.serve_connection(
            TokioIo::new(Timed::new(stream, WRITE_TIMEOUT)),
            service_fn(move |request| {
                let response = routes.answer(&request);
                std::future::ready(Ok::<_, Infallible>(response))
            }),
        );
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = connection.await {
                debug!(error = %e, "http: connection ended");
            }
        });
    }
}

/// Answers a connection over the cap with 503 before reading anything, then reads what it
/// sent (so that closing it does not reset the connection before the answer is read).
async fn refuse(mut stream: TcpStream) {
    let body = super::error_body("too many connections; try again later");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(&body).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left = MAX_HEADER_BYTES;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Counts one open connection for as long as it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(count: &Arc<AtomicUsize>) -> Counted {
        count.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::clone(count))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection whose writes fail once they have made no progress for `limit`.
struct Timed {
    stream: TcpStream,
    limit: Duration,
    /// Running while a write waits for room in the socket.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    fn new(stream: TcpStream, limit: Duration) -> Timed {
        Timed {
            stream,
            limit,
            stalled: None,
        }
    }

    /// `poll` of a write: done resets the deadline, waiting starts it, waiting past it fails.
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stalled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client has not read for too long",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.deadline(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.deadline(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.deadline(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
