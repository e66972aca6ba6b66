//! The source's thread beside the workers: it keeps the topic's partition count up to date, so
//! that a live job reads the partitions added to its topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use tracing::{info, warn};

use retail_common::kafka::{ClientSettings, count_partitions};

use super::SourceConfig;

/// How often the topic's partition count is read while the job runs.
const WATCH_PARTITIONS_EVERY: Duration = Duration::from_secs(2);

/// How long one look at the topic's metadata may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts a thread that keeps `source.watch` at the partition count of its topic until
/// `done`. A bounded run reads the partitions it saw at start; partitions added during it are
/// reported, and read by the next run of the job.
pub fn watch_partitions(source: &SourceConfig, done: &Arc<AtomicBool>) {
    let (settings, topic) = (source.settings.clone(), source.topic.clone());
    let (count, bounded) = (Arc::clone(&source.watch), source.until_end);
    let done = Arc::clone(done);
    std::thread::spawn(move || follow(&settings, &topic, &count, &done, bounded));
}

/// The watching thread of [`watch_partitions`].
fn follow(
    settings: &ClientSettings,
    topic: &str,
    watch: &AtomicI32,
    done: &AtomicBool,
    bounded: bool,
) {
    let client = match settings.metadata_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot watch the topic for new partitions");
            return;
        }
    };
    every(WATCH_PARTITIONS_EVERY, done, || {
        // A failed look (a broker restarting) is simply tried again.
        let Ok(Some(now)) = count_partitions(&client, topic, METADATA_TIMEOUT) else {
            return;
        };
        let before = watch.load(Ordering::Relaxed);
        if now > before {
            if bounded {
                warn!(
                    topic,
                    before,
                    now,
                    "partitions were added to the topic during this bounded run; it reads the \
                     partitions it saw at start, the next run of the job reads the new ones"
                );
            } else {
                info!(
                    topic,
                    before, now, "the topic grew: reading its new partitions"
                );
            }
            watch.store(now, Ordering::Relaxed);
        }
    });
}

/// Calls `f` every `period` until `done`, looking at `done` every 100 ms so that the thread
/// ends soon after the job.
pub fn every(period: Duration, done: &AtomicBool, mut f: impl FnMut()) {
    let tick = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(tick);
        waited += tick;
        if waited >= period {
            waited = Duration::ZERO;
            f();
        }
    }
}
