//! One viewer's `/events` stream: server-sent events from the [`Hub`], without a thread.
//!
//! The stream opens with `retry: 1000` and the current view, then waits on the hub's
//! sequence number (a `watch` channel, which the publishing thread bumps without waiting for
//! anyone) and sends every event after the last one it sent; after [`KEEPALIVE`] without one
//! it sends a comment, so that a closed page is noticed. The events are shared bytes: a
//! thousand viewers of one event hold one copy of it. A viewer that falls more than the hub
//! keeps behind skips the oldest events, as before.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::Hub;

/// How often an idle event stream sends a comment, so that a closed page is noticed.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

type Next = Pin<Box<dyn Future<Output = Option<(Reader, Vec<Bytes>)>> + Send>>;

/// An event stream's body: what is ready to send, and the wait for what comes next.
pub struct Events {
    ready: VecDeque<Bytes>,
    next: Option<Next>,
}

/// Where a viewer is: the hub, its sequence number as last sent, and the wait for a new one.
struct Reader {
    hub: Arc<Hub>,
    changed: watch::Receiver<u64>,
    seq: u64,
}

impl Events {
    /// A stream that starts with the hub's current view.
    pub fn new(hub: Arc<Hub>) -> Events {
        // Subscribe first: an event published between the two calls is then sent, not lost.
        let changed = hub.subscribe();
        let (seq, current) = hub.current();
        let mut ready = VecDeque::from([Bytes::from_static(b"retry: 1000\n\n"), current]);
        ready.extend(hub.provisional_event());
        let reader = Reader { hub, changed, seq };
        Events {
            ready,
            next: Some(Box::pin(reader.next())),
        }
    }

    /// The next piece of the stream; `None` once the hub is gone.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if let Some(bytes) = self.ready.pop_front() {
            return Poll::Ready(Some(bytes));
        }
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.next = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some((reader, events))) => {
                self.next = Some(Box::pin(reader.next()));
                self.ready.extend(events);
                Poll::Ready(self.ready.pop_front())
            }
        }
    }
}

impl Reader {
    /// The events after the last sent (or a keep-alive comment after [`KEEPALIVE`] without
    /// any); `None` once the hub is gone.
    async fn next(mut self) -> Option<(Reader, Vec<Bytes>)> {
        loop {
            match tokio::time::timeout(KEEPALIVE, self.changed.changed()).await {
                Err(_) => {
                    let comment = Bytes::from_static(b": keep-alive\n\n");
                    return Some((self, vec![comment]));
                }
                Ok(Err(_)) => return None,
                Ok(Ok(())) => {
                    let (seq, events) = self.hub.events_since(self.seq);
                    self.seq = seq;
                    if !events.is_empty() {
                        return Some((self, events));
                    }
                }
            }
        }
    }
}
