//! The reader of what the writer publishes ([`crate::sink::publish`]): a thread of its own
//! that shows each queued commit on the [`Hub`], so that the writer never waits for a page or
//! a scrape reading the hub.

use std::sync::Arc;

use super::Hub;
use crate::sink::publish::{Published, Publisher};

/// Starts the thread that shows what is published on `hub`; the returned publisher goes to
/// the writer.
pub fn spawn(hub: Arc<Hub>) -> std::io::Result<Publisher> {
    let (publisher, published) = Publisher::channel();
    std::thread::Builder::new()
        .name("http-publish".into())
        .spawn(move || {
            for message in published {
                match message {
                    Published::Run(run) => hub.set_run(run),
                    Published::Commit(update) => hub.publish(update),
                    Published::Finish(done) => {
                        hub.finish();
                        let _ = done.send(());
                    }
                }
            }
        })?;
    Ok(publisher)
}
