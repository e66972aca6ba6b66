//! The Kafka sink: aggregate changes to `<job-id>.aggregates` (keyed `<stream>/<key>`), dead
//! letters to `<job-id>.dlq` with their original key and bytes and the reason in headers, and,
//! when the job checkpoints, the checkpoint record, all in one transaction per commit.
//!
//! With checkpoints the producer is transactional (`transactional.id` derived from the job id,
//! so a restarted job fences its predecessor and aborts its open transaction): readers with
//! `isolation.level=read_committed` see each commit whole or not at all. The same transaction
//! sends the read offsets to the consumer group, so `kafka-consumer-groups.sh --describe` shows
//! the job's lag.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use foldhash::HashMap;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{error, warn};

use retail_common::kafka::{ClientSettings, partitions_in};

use serde_json::Value;

use super::Batch;
use crate::aggregate::{Saved, SavedKey};
use crate::checkpoint::{self, Checkpoint};

/// How long a transaction step may keep retrying while Kafka is unreachable.
const RETRY_FOR: Duration = Duration::from_secs(300);

/// Some records could not be delivered (after librdkafka's own retries).
#[derive(Debug, thiserror::Error)]
pub enum KafkaOutError {
    #[error("{0} Kafka output records were not delivered")]
    Undelivered(u64),
    /// The transaction was aborted; restarting resumes from the last checkpoint.
    #[error("Kafka transaction aborted ({0}); restart to resume from the last checkpoint")]
    Aborted(String),
    /// Fenced by a newer instance of the job, or another fatal producer error.
    #[error("fatal Kafka producer error: {0}")]
    Fatal(String),
    #[error("cannot create a Kafka client: {0}")]
    Setup(#[from] KafkaError),
}

/// Counts failed deliveries; the job reports them and exits non-zero.
#[derive(Default)]
pub struct DeliveryCounter {
    pub failed: Arc<AtomicU64>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && self.failed.fetch_add(1, Ordering::Relaxed) == 0
        {
            error!(error = %e, "Kafka output delivery failed");
        }
    }
}

/// Where the aggregate changes and dead letters go.
pub struct OutputTopics {
    pub aggregates: String,
    pub dlq: String,
    pub source: String,
    /// Partitions of the DLQ topic: a dead letter keeps its source partition when it exists.
    pub dlq_partitions: i32,
}

/// Where checkpoints and state entries go, and the group that shows the job's progress.
pub struct CheckpointTarget {
    pub topic: String,
    pub state_topic: String,
    pub job_id: String,
    /// The source topic, whose offsets are committed for `group_id`.
    pub source: String,
    pub group_id: String,
}

/// A [`CheckpointTarget`] with its group's metadata.
struct CheckpointTopic {
    target: CheckpointTarget,
    group: ConsumerGroupMetadata,
    /// The state topic has a single partition (as the job creates it): its records then go to
    /// partition 0 without hashing each key to choose.
    state_single_partition: bool,
}

pub struct KafkaOut {
    producer: BaseProducer<DeliveryCounter>,
    outputs: Option<OutputTopics>,
    checkpoint: Option<CheckpointTopic>,
    failed: Arc<AtomicU64>,
}

impl KafkaOut {
    /// A producer for the outputs and/or the checkpoints, connected; transactional when
    /// checkpointing, but its transactions are not initialised yet ([`KafkaOut::init`]).
    pub fn connect(
        settings: &ClientSettings,
        outputs: Option<OutputTopics>,
        checkpoint: Option<CheckpointTarget>,
    ) -> Result<KafkaOut, KafkaOutError> {
        let context = DeliveryCounter::default();
        let failed = Arc::clone(&context.failed);
        let mut defaults = vec![
            ("enable.idempotence", "true".to_owned()),
            ("acks", "all".to_owned()),
            ("linger.ms", "5".to_owned()),
            // Only failures are counted: a report for every record delivered would be work
            // for nothing (a transaction's commit waits for its records either way).
            ("delivery.report.only.error", "true".to_owned()),
            // The job creates its topics itself, the state topic compacted: a request naming
            // a topic not created yet must not create it with the broker's defaults.
            ("allow.auto.create.topics", "false".to_owned()),
        ];
        let mut target = None;
        if let Some(checkpoint) = checkpoint {
            defaults.push((
                "transactional.id",
                format!("retail-stream-{}", checkpoint.job_id),
            ));
            defaults.push(("transaction.timeout.ms", "60000".to_owned()));
            // A consumer handle only to name the group the offsets are committed for.
            let group: BaseConsumer = settings
                .config(&[("group.id", &checkpoint.group_id)])
                .create()?;
            let group = group.group_metadata().ok_or_else(|| {
                KafkaOutError::Fatal(format!(
                    "no metadata for consumer group {}",
                    checkpoint.group_id
                ))
            })?;
            target = Some(CheckpointTopic {
                target: checkpoint,
                group,
                state_single_partition: false,
            });
        }
        let defaults: Vec<(&str, &str)> = defaults.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let producer: BaseProducer<DeliveryCounter> =
            settings.config(&defaults).create_with_context(context)?;
        if let Some(t) = &target {
            // Connected first: initialising transactions while no broker is up waits for
            // librdkafka's next look for the coordinator, half a second later. The first
            // request goes through the bootstrap address and names the cluster's brokers; the
            // second waits until a connection to one of them is up. They name the source
            // topic: the state topic may still be being created.
            for _ in 0..2 {
                let _ = (producer.client())
                    .fetch_metadata(Some(&t.target.source), Duration::from_secs(30));
            }
        }
        Ok(KafkaOut {
            producer,
            outputs,
            checkpoint: target,
            failed,
        })
    }

    /// Initialises transactions when checkpointing: fences (and aborts the open transaction
    /// of) an earlier producer of the same job id, so only once the job knows its checkpoint
    /// is its own.
    pub fn init(&mut self) -> Result<(), KafkaOutError> {
        if let Some(t) = &mut self.checkpoint {
            // The state topic exists by now.
            let metadata = (self.producer.client())
                .fetch_metadata(Some(&t.target.state_topic), Duration::from_secs(30));
            t.state_single_partition =
                metadata.is_ok_and(|m| partitions_in(&m, &t.target.state_topic) == Some(1));
            retry("initialising transactions", || {
                self.producer.init_transactions(Duration::from_secs(30))
            })?;
        }
        Ok(())
    }

    /// Sends a record, polling for delivery reports while the local queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), KafkaOutError> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    self.producer.poll(Duration::from_millis(50));
                    record = back;
                }
                Err((e, _)) => return Err(classify(e)),
            }
        }
    }

    fn send_batch(&self, batch: &Batch) -> Result<(), KafkaOutError> {
        let Some(t) = &self.outputs else {
            return Ok(());
        };
        for change in &batch.changes {
            let key = format!("{}/{}", change.stream, change.key);
            self.send(
                BaseRecord::to(&t.aggregates)
                    .key(key.as_bytes())
                    .payload(change.line.as_bytes()),
            )?;
        }
        for (d, _) in &batch.dead {
            let partition = d.partition.to_string();
            let offset = d.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "source.topic",
                    value: Some(t.source.as_str()),
                })
                .insert(Header {
                    key: "source.partition",
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: "source.offset",
                    value: Some(offset.as_str()),
                })
                .insert(Header {
                    key: "reason",
                    value: Some(d.reason.as_str()),
                })
                .insert(Header {
                    key: "detail",
                    value: Some(d.detail.as_str()),
                });
            let mut record = BaseRecord::to(&t.dlq)
                .payload(d.payload.as_slice())
                .headers(headers);
            if let Some(key) = &d.key {
                record = record.key(key.as_slice());
            }
            if d.partition < t.dlq_partitions {
                record = record.partition(d.partition);
            }
            self.send(record)?;
        }
        Ok(())
    }

    /// Writes the batches, and with them in one transaction when checkpointing, the changed
    /// state entries (key, new payload or `None` to delete) and the checkpoint.
    fn commit(
        &self,
        batches: &[Batch],
        entries: impl FnOnce(&mut SendEntry<'_>) -> Result<(), KafkaOutError>,
        checkpoint: &Checkpoint,
    ) -> Result<(), KafkaOutError> {
        let Some(CheckpointTopic {
            target,
            group,
            state_single_partition,
        }) = &self.checkpoint
        else {
            for batch in batches {
                self.send_batch(batch)?;
            }
            self.producer.poll(Duration::ZERO);
            return Ok(());
        };
        retry("beginning a transaction", || {
            self.producer.begin_transaction()
        })?;
        let result = (|| {
            for batch in batches {
                self.send_batch(batch)?;
            }
            entries(&mut |key, payload| {
                let mut record = BaseRecord::to(&target.state_topic).key(key);
                if let Some(p) = payload {
                    record = record.payload(p);
                }
                if *state_single_partition {
                    record = record.partition(0);
                }
                self.send(record)
            })?;
            let payload = serde_json::to_vec(checkpoint).expect("checkpoint serialises");
            self.send(
                BaseRecord::to(&target.topic)
                    .key(target.job_id.as_bytes())
                    .payload(&payload),
            )?;
            if !checkpoint.partitions.is_empty() {
                let mut offsets = TopicPartitionList::new();
                for (p, o) in checkpoint.offsets() {
                    offsets
                        .add_partition_offset(&target.source, p, Offset::Offset(o))
                        .map_err(classify)?;
                }
                retry("sending offsets to the transaction", || {
                    self.producer.send_offsets_to_transaction(
                        &offsets,
                        group,
                        Duration::from_secs(30),
                    )
                })?;
            }
            retry("committing a transaction", || {
                self.producer.commit_transaction(Duration::from_secs(60))
            })
        })();
        if let Err(KafkaOutError::Aborted(reason)) = &result {
            warn!(%reason, "aborting the transaction");
            let _ = self.producer.abort_transaction(Duration::from_secs(30));
        }
        result
    }

    /// Waits for every outstanding record (non-transactional mode) and reports failures.
    pub fn finish(&self) -> Result<(), KafkaOutError> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(classify)?;
        match self.failed.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(KafkaOutError::Undelivered(n)),
        }
    }
}

/// Sorts a producer error into retry-later, abort-and-resume, or fatal.
fn classify(e: KafkaError) -> KafkaOutError {
    match &e {
        KafkaError::Transaction(t) if t.is_fatal() => KafkaOutError::Fatal(e.to_string()),
        KafkaError::Transaction(t) if t.txn_requires_abort() => {
            KafkaOutError::Aborted(e.to_string())
        }
        _ => KafkaOutError::Aborted(e.to_string()),
    }
}

/// Runs a transaction step, retrying retriable errors (a broker restarting, a lost connection)
/// with a log line, for up to [`RETRY_FOR`].
fn retry(
    what: &str,
    mut step: impl FnMut() -> Result<(), KafkaError>,
) -> Result<(), KafkaOutError> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Transaction(t))
                if t.is_retriable() && started.elapsed() < RETRY_FOR =>
            {
                warn!(error = %t, "Kafka unavailable while {what}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(classify(e)),
        }
    }
}

/// The state entries a commit writes: the changes of its epochs in the order they happened,
/// of which only the newest of each entry is written. Epochs and commits that coalesce while a
/// transaction runs are appended as they come, and merged into one part (each entry once)
/// only when the changes held have doubled since the last merge: however many epochs a commit
/// spans, each change is looked up a bounded number of times, and the changes held stay within
/// about twice the entries they change.
#[derive(Debug, Default)]
pub struct StateChanges {
    parts: Vec<Part>,
    /// Changes held, and how many the last merge left.
    held: usize,
    merged: usize,
}

/// One epoch's changes: its retractions first (`gone` of them), then new values. Each entry
/// changes at most once an epoch, so the new values' keys are distinct.
#[derive(Debug)]
struct Part {
    changes: Vec<Change>,
    gone: usize,
}

/// An entry's change: its new value, or its deletion (`kept` false).
#[derive(Debug)]
struct Change {
    entry: Saved,
    kept: bool,
}

/// Below this many changes held, parts are not merged before the commit is written.
const MERGE_FROM: usize = 4096;

impl StateChanges {
    /// The changes of one epoch, in which each entry changes at most once: its old value
    /// (`r` < 0) and its new one (`r` > 0). An entry is written, or deleted if it only lost
    /// its value.
    pub fn of_epoch(changes: impl IntoIterator<Item = (Saved, isize)>) -> StateChanges {
        let (mut changes, new): (Vec<_>, Vec<_>) = changes
            .into_iter()
            .map(|(entry, r)| Change { entry, kept: r > 0 })
            .partition(|c| !c.kept);
        let gone = changes.len();
        changes.extend(new);
        StateChanges {
            held: changes.len(),
            merged: 0,
            parts: vec![Part { changes, gone }],
        }
    }

    /// Adds later changes: an entry changed by both keeps only its later change.
    pub fn absorb(&mut self, later: StateChanges) {
        self.parts.extend(later.parts);
        self.held += later.held;
        if self.parts.len() > 1 && self.held >= MERGE_FROM.max(2 * self.merged) {
            self.merge();
        }
    }

    /// Replaces the parts by one that holds the newest change of each entry.
    fn merge(&mut self) {
        let mut keep: Vec<Vec<bool>> = (self.parts.iter())
            .map(|p| vec![false; p.changes.len()])
            .collect();
        let Ok(()) = self.for_each_newest(|i, j, _| {
            keep[i][j] = true;
            Ok::<_, Infallible>(())
        });
        let changes: Vec<Change> = (std::mem::take(&mut self.parts).into_iter().zip(keep))
            .flat_map(|(p, keep)| p.changes.into_iter().zip(keep))
            .filter_map(|(c, keep)| keep.then_some(c))
            .collect();
        self.held = changes.len();
        self.merged = changes.len();
        self.parts = vec![Part { changes, gone: 0 }];
    }

    /// Hands `f` the newest change of each entry with where it is (part, index), each entry
    /// once, in no particular order. The new values of the largest part are not indexed, only
    /// looked up among the other changes: on a commit of one epoch, that index holds its
    /// retractions, and one part without any holds distinct keys (a merged one, say).
    fn for_each_newest<E>(
        &self,
        mut f: impl FnMut(usize, usize, &Change) -> Result<(), E>,
    ) -> Result<(), E> {
        let parts = &self.parts;
        let Some(big) = (0..parts.len()).max_by_key(|&i| parts[i].changes.len() - parts[i].gone)
        else {
            return Ok(());
        };
        let others = parts.iter().enumerate().flat_map(|(i, part)| {
            let n = if i == big {
                part.gone
            } else {
                part.changes.len()
            };
            (part.changes[..n].iter().enumerate()).map(move |(j, c)| ((i, j), c))
        });
        // Every other change's key: where the last change of that key is.
        let mut last: HashMap<SavedKey<'_>, (usize, usize)> = HashMap::default();
        for (at, c) in others.clone() {
            last.insert(c.entry.key(), at);
        }
        let part = &parts[big];
        for (j, c) in part.changes.iter().enumerate().skip(part.gone) {
            if last.is_empty() {
                f(big, j, c)?;
                continue;
            }
            match last.get(&c.entry.key()) {
                // Changed again later: that change is the newest.
                Some(&at) if at > (big, j) => {}
                // Changed before only: this one is the newest.
                Some(_) => {
                    last.remove(&c.entry.key());
                    f(big, j, c)?;
                }
                None => f(big, j, c)?,
            }
        }
        for ((i, j), c) in others {
            if last.get(&c.entry.key()) == Some(&(i, j)) {
                f(i, j, c)?;
            }
        }
        Ok(())
    }
}

/// Sends one state entry: its key, and its payload (`None` deletes it).
type SendEntry<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<(), KafkaOutError> + 'a;

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
    pub fn spawn(out: KafkaOut) -> Committer {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kafka-commit".into())
            .spawn(move || {
                let (lock, wake) = &*theirs;
                let result = loop {
                    let mut guard = lock.lock().expect("commit state");
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
                    lock.lock().expect("commit state").confirmed += 1;
                    wake.notify_all();
                    for confirmed in commit.after {
                        confirmed();
                    }
                };
                if let Err(e) = result {
                    lock.lock().expect("commit state").failed = Some(e);
                    wake.notify_all();
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
        let mut guard = lock.lock().expect("commit state");
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
        let mut guard = lock.lock().expect("commit state");
        loop {
            if let Some(e) = guard.failed.take() {
                return Err(e);
            }
            if guard.confirmed >= commits {
                return Ok(());
            }
            // A thread that panicked tells no one.
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(KafkaOutError::Fatal("the commit thread stopped".into()));
            }
            guard = (wake.wait_timeout(guard, Duration::from_millis(100)))
                .expect("commit state")
                .0;
        }
    }

    /// Waits for every commit handed over; returns the first failure.
    pub fn finish(&mut self) -> Result<(), KafkaOutError> {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("commit state").closed = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(KafkaOutError::Fatal("the commit thread panicked".into()));
        }
        match lock.lock().expect("commit state").failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Revenue;

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
    fn the_newest_change_wins_whichever_epoch_is_largest() {
        // The largest epoch (2) changes entries changed before it (1), after it (3), both,
        // neither, and deletes one that epoch 3 opens again.
        let mut changes = StateChanges::of_epoch([(invoice("a", 1), 1), (invoice("b", 1), 1)]);
        changes.absorb(StateChanges::of_epoch([
            (invoice("b", 1), -1),
            (invoice("a", 1), -1),
            (invoice("a", 2), 1),
            (invoice("b", 2), 1),
            (invoice("c", 1), 1),
            (invoice("d", 1), 1),
            (invoice("e", 1), 1),
        ]));
        changes.absorb(StateChanges::of_epoch([
            (invoice("c", 1), -1),
            (invoice("b", 3), 1),
            (invoice("c", 2), 1),
            (invoice("b", 2), -1),
            (invoice("e", 1), -1),
            (invoice("f", 1), 1),
        ]));
        let expected: BTreeMap<String, Option<i64>> = [
            ("a", Some(2)),
            ("b", Some(3)),
            ("c", Some(2)),
            ("d", Some(1)),
            ("e", None),
            ("f", Some(1)),
        ]
        .map(|(i, l)| (i.to_owned(), l))
        .into();
        let each_once = |changes: &StateChanges| {
            let mut newest: Vec<(String, Option<i64>)> = Vec::new();
            let Ok(()) = changes.for_each_newest(|_, _, c| {
                let Saved::Invoice(i, r) = &c.entry else {
                    panic!("{c:?}")
                };
                newest.push((i.to_string(), c.kept.then_some(r.lines)));
                Ok::<_, Infallible>(())
            });
            assert_eq!(newest.len(), expected.len(), "each entry once: {newest:?}");
            assert_eq!(newest.into_iter().collect::<BTreeMap<_, _>>(), expected);
        };
        each_once(&changes);
        // Merged into one part, the same.
        changes.merge();
        assert_eq!(changes.parts.len(), 1);
        each_once(&changes);
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
