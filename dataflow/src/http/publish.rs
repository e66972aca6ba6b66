//! The hand-over from the writer to the [`Hub`]: a channel and a thread of its own, so that
//! the worker that writes (or the Kafka commit thread) only queues a confirmed commit and never
//! waits for a page or a scrape reading the hub.

use std::sync::Arc;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use super::{Hub, Update};

/// How long the end of a run waits for what it queued to be shown.
const DRAIN: Duration = Duration::from_secs(10);

enum Message {
    Commit(Update),
    /// The run is over; answered once everything before it is shown.
    Finish(Sender<()>),
}

/// Queues confirmed commits for the hub.
#[derive(Clone)]
pub struct Publisher {
    queue: Sender<Message>,
    hub: Arc<Hub>,
}

impl Publisher {
    /// Starts the thread that shows what is queued on `hub`.
    pub fn spawn(hub: Arc<Hub>) -> std::io::Result<Publisher> {
        let (queue, queued) = mpsc::channel::<Message>();
        let theirs = Arc::clone(&hub);
        std::thread::Builder::new()
            .name("http-publish".into())
            .spawn(move || {
                for message in queued {
                    match message {
                        Message::Commit(update) => theirs.publish(update),
                        Message::Finish(done) => {
                            theirs.finish();
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        Ok(Publisher { queue, hub })
    }

    /// Queues a confirmed commit.
    pub fn publish(&self, update: Update) {
        // The thread lives as long as the process.
        let _ = self.queue.send(Message::Commit(update));
    }

    /// Marks the run finished once everything queued is shown, and waits for that (briefly:
    /// the run is over), so that the final state is served when the job reports.
    pub fn finish(&self) {
        let (done, shown) = mpsc::channel();
        if self.queue.send(Message::Finish(done)).is_ok() {
            let _ = shown.recv_timeout(DRAIN);
        }
    }

    /// Records the run number for the progress entries.
    pub fn set_run(&self, run: u64) {
        self.hub.set_run(run);
    }
}
