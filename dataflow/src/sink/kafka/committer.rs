//! The commit thread: runs the writer's commits in order on a thread of its own, coalescing
//! those handed over while a transaction runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::changes::{Change, StateChanges};
use super::{KafkaOut, KafkaOutError};
use crate::checkpoint::{self, Checkpoint};
use crate::sink::Batch;

/// Sends one state entry: its key, and its payload (`None` deletes it).
pub(super) type SendEntry<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), KafkaOutError> + 'a;

/// One commit for the output thread.
pub struct Commit {
    pub batches: Vec<Batch>,
    pub saved: StateChanges,
    /// The writer's alerts that changed: key and new value (`None`: gone).
    pub alerts: BTreeMap<String, Option<Value>>,
    /// Entries of older runs of the job, to delete.
    pub stale: Vec<String>,
    pub checkpoint: Checkpoint,
    /// Run once the commit is confirmed (`--http` shows it then).
    pub after: Vec<Box<dyn FnOnce() + Send>>,
}

impl Commit {
    /// Hands `send` the state topic records of the commit, key and payload (`None` deletes),
    /// one at a time, each made in the same two buffers. Their keys are distinct: one change
    /// per entry, and stale keys belong to older runs.
    fn for_each_entry(&self, send: &mut SendEntry<'_>) -> Result<(), KafkaOutError> {
        let run = self.checkpoint.run;
        for key in &self.stale {
            send(key.as_bytes(), None)?;
        }
        let (mut key, mut payload) = (Vec::new(), Vec::new());
        let prefix = checkpoint::entry_key(run, "");
        let start_key = |key: &mut Vec<u8>| {
            key.clear();
            key.extend_from_slice(prefix.as_bytes());
        };
        self.saved.for_each_newest(|_, _, Change { entry, kept }| {
            start_key(&mut key);
            entry.key().write_identity(&mut key);
            payload.clear();
            if *kept {
                payload = checkpoint::encode_entry_into(entry, std::mem::take(&mut payload));
            }
            send(&key, kept.then_some(payload.as_slice()))
        })?;
        for (alert, value) in &self.alerts {
            start_key(&mut key);
            key.extend_from_slice(checkpoint::alert_identity(alert).as_bytes());
            let payload = value
                .as_ref()
                .map(|v| serde_json::to_vec(v).expect("alerts serialise"));
            send(&key, payload.as_deref())?;
        }
        Ok(())
    }

    /// Adds a later commit to this one (while the previous transaction is still running).
    fn absorb(&mut self, later: Commit) {
        self.batches.extend(later.batches);
        self.saved.absorb(later.saved);
        self.alerts.extend(later.alerts);
        self.stale.extend(later.stale);
        self.checkpoint = later.checkpoint;
        self.after.extend(later.after);
    }
}

/// What the writer and the commit thread share.
#[derive(Default)]
struct Shared {
    /// Everything handed over since the thread last took it.
    pending: Option<Commit>,
    closed: bool,
    failed: Option<KafkaOutError>,
    /// Transactions committed so far.
    confirmed: u64,
}

/// Runs Kafka commits in order on a thread of their own, so that the worker rendering epochs
/// never waits for the broker. While a transaction runs, the commits handed over meanwhile
/// coalesce into the next one: one commit per closed epoch when the job keeps up, fewer and
/// larger ones (each state entry written once) when it catches up.
pub struct Committer {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread. A failed commit sets `stop`: a live job that closes no further epoch
    /// would otherwise never hand over the commit that reports the failure, and read on.
    pub fn spawn(out: KafkaOut, stop: Arc<AtomicBool>) -> Committer {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kafka-commit".into())
            .spawn(move || {
                let (lock, wake) = &*theirs;
                let result = loop {
                    let mut guard = crate::locked(lock);
                    while guard.pending.is_none() && !guard.closed {
                        guard = wake.wait(guard).expect("commit state");
                    }
                    let Some(commit) = guard.pending.take() else {
                        break out.finish();
                    };
                    drop(guard);
                    if let Err(e) = out.commit(
                        &commit.batches,
                        |send| commit.for_each_entry(send),
                        &commit.checkpoint,
                    ) {
                        break Err(e);
                    }
                    crate::locked(lock).confirmed += 1;
                    wake.notify_all();
                    for confirmed in commit.after {
                        confirmed();
                    }
                };
                if let Err(e) = result {
                    crate::locked(lock).failed = Some(e);
                    wake.notify_all();
                    stop.store(true, Ordering::Relaxed);
                }
            })
            .expect("the commit thread starts");
        Committer {
            shared,
            thread: Some(thread),
        }
    }

    /// Hands a commit over; fails with the thread's error once a commit has failed.
    pub fn send(&mut self, commit: Commit) -> Result<(), KafkaOutError> {
        let (lock, wake) = &*self.shared;
        let mut guard = crate::locked(lock);
        if let Some(e) = guard.failed.take() {
            return Err(e);
        }
        match &mut guard.pending {
            Some(pending) => pending.absorb(commit),
            None => guard.pending = Some(commit),
        }
        wake.notify_all();
        Ok(())
    }

    /// Waits until the first `commits` handed over are committed; fails with the thread's
    /// error once a commit has failed.
    pub fn wait_confirmed(&self, commits: u64) -> Result<(), KafkaOutError> {
        let (lock, wake) = &*self.shared;
        let mut guard = crate::locked(lock);
        loop {
            if let Some(e) = guard.failed.take() {
                return Err(e);
            }
            if guard.confirmed >= commits {
                return Ok(());
            }
            // A thread that panicked tells no one.
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(KafkaOutError::CommitThread("stopped"));
            }
            guard = (wake.wait_timeout(guard, Duration::from_millis(100)))
                .expect("commit state")
                .0;
        }
    }

    /// Waits for every commit handed over; returns the first failure.
    pub fn finish(&mut self) -> Result<(), KafkaOutError> {
        let (lock, wake) = &*self.shared;
        crate::locked(lock).closed = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(KafkaOutError::CommitThread("panicked"));
        }
        match crate::locked(lock).failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Revenue;
    use crate::aggregate::Saved;

    fn invoice(number: &str, lines: i64) -> Saved {
        Saved::Invoice(
            number.into(),
            Revenue {
                lines,
                revenue_milli: lines * 1_000,
            },
        )
    }

    fn commit(changes: Vec<(Saved, isize)>) -> Commit {
        let saved = StateChanges::of_epoch(changes);
        Commit {
            batches: Vec::new(),
            saved,
            alerts: BTreeMap::new(),
            stale: vec!["3/invoice:\"9\"".to_owned()],
            checkpoint: Checkpoint {
                run: 7,
                ..Checkpoint::default()
            },
            after: Vec::new(),
        }
    }

    #[test]
    fn coalesced_commits_write_the_newest_change_of_each_entry_once() {
        // Epoch 1 opens invoices 1 and 2; epoch 2 adds a line to 1, takes 2 out, opens 3.
        let mut pending = commit(vec![(invoice("1", 1), 1), (invoice("2", 1), 1)]);
        let mut later = commit(vec![
            (invoice("1", 1), -1),
            (invoice("2", 1), -1),
            (invoice("1", 2), 1),
            (invoice("3", 1), 1),
        ]);
        // Only a job's first commit deletes the entries of older runs.
        later.stale.clear();
        pending.absorb(later);
        let mut written: Vec<(String, Option<Vec<u8>>)> = Vec::new();
        pending
            .for_each_entry(&mut |key, payload| {
                let key = String::from_utf8(key.to_vec()).expect("keys are UTF-8");
                written.push((key, payload.map(<[u8]>::to_vec)));
                Ok(())
            })
            .unwrap();
        let encoded = |s: &Saved| Some(checkpoint::encode_entry(s));
        let expected = BTreeMap::from([
            ("3/invoice:\"9\"".to_owned(), None),
            ("7/invoice:\"1\"".to_owned(), encoded(&invoice("1", 2))),
            ("7/invoice:\"2\"".to_owned(), None),
            ("7/invoice:\"3\"".to_owned(), encoded(&invoice("3", 1))),
        ]);
        assert_eq!(written.len(), expected.len(), "each key once: {written:?}");
        let keyed: BTreeMap<_, _> = written.into_iter().collect();
        assert_eq!(keyed, expected);
    }
}
