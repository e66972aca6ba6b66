//! What a starting process resumes from: the checkpoint record and the state entries of its
//! run, read and checked against the job this run is built as.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::record::ALERT;
use super::{
    Checkpoint, CheckpointConfig, CheckpointError, FORMAT, JobIdentity, decode_entry, entry_key,
};
use crate::aggregate::{Saved, Sums};

/// What a resumed job starts from.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub checkpoint: Checkpoint,
    /// The aggregate state, fed into the dataflow at the committed epoch.
    pub saved: Vec<Saved>,
}

/// What a process starts from.
#[derive(Debug, Default)]
pub struct Resumed {
    /// The checkpoint to resume and its state; `None`: the job starts from the beginning.
    pub restored: Option<Restored>,
    /// Keys of the entries of other runs, deleted by the first commit.
    pub stale: Vec<String>,
}

/// Reads and checks the checkpoint of `config`'s job before anything is created, committed
/// or written, so that a start refused by the identity check leaves the broker and the output
/// as they were. `now` is what this run is built from.
///
/// Every process reads where its partitions resume; process 0 also reads the state (or, on
/// `--reset`, the entries of the old run to delete), and with invoice retention every process
/// reads it for its partitions' open invoices. A topic that does not exist yet reads as empty.
pub fn resume(
    config: &CheckpointConfig,
    now: &JobIdentity,
    timeout: Duration,
) -> Result<Resumed, CheckpointError> {
    let writes = config.process == 0;
    // Other processes of a reset job have nothing to read: they start over.
    if !config.checkpoint || (!writes && config.reset) {
        return Ok(Resumed::default());
    }
    let read_entries = writes || config.retention.is_some();
    let stored = super::read(
        &config.settings,
        &config.checkpoint_topic,
        &config.job_id,
        || Ok(read_entries),
        timeout,
    )?;
    let resumed = stored.restore(config.reset)?;
    if let Some(r) = &resumed.restored {
        let differences = r.checkpoint.mismatch(now);
        if !differences.is_empty() {
            return Err(CheckpointError::Mismatch {
                job_id: config.job_id.clone(),
                differences,
            });
        }
        // Counted sales leave entries (their totals at least) wherever entries are read.
        if read_entries && r.saved.is_empty() && r.checkpoint.state.totals != Sums::default() {
            return Err(CheckpointError::StateLost {
                job_id: config.job_id.clone(),
                epoch: r.checkpoint.epoch_start.clone(),
                topic: super::state_topic(&config.checkpoint_topic, &config.job_id),
            });
        }
    }
    Ok(resumed)
}

impl Resumed {
    /// Logs where the job starts: after its last checkpoint, over from the beginning
    /// (`--reset`), or from the beginning for want of a checkpoint.
    pub fn log(&self, config: &CheckpointConfig) {
        match &self.restored {
            Some(r) => tracing::info!(
                job = %config.job_id,
                epoch = %r.checkpoint.epoch_start,
                commits = r.checkpoint.commits,
                entries = r.saved.len(),
                "resuming after the last checkpoint"
            ),
            None if config.reset => {
                tracing::info!(job = %config.job_id, "--reset: starting over from the beginning")
            }
            None => {
                tracing::info!(job = %config.job_id, "no checkpoint: starting from the beginning")
            }
        }
    }
}

/// What the checkpoint topic holds for a job.
#[derive(Debug, Default)]
pub struct Stored {
    /// The latest checkpoint record, as stored.
    pub checkpoint: Option<Vec<u8>>,
    /// The job's entries (of every run): key and payload.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl Stored {
    /// Splits the entries into the state of the checkpoint's run and the keys of other runs
    /// (to delete). With `reset`, or without a checkpoint, every entry is stale.
    pub fn restore(self, reset: bool) -> Result<Resumed, CheckpointError> {
        // Read only when resuming: a reset job starts over even from an unreadable checkpoint.
        let checkpoint = match self.checkpoint {
            Some(bytes) if !reset => Some(serde_json::from_slice::<Checkpoint>(&bytes).map_err(
                |source| CheckpointError::Corrupt {
                    what: "the job's checkpoint record".into(),
                    source: source.into(),
                },
            )?),
            _ => None,
        };
        // Entries of a checkpoint in another format are not decoded: the job refuses to resume
        // it and says why (`mismatch`).
        let prefix = checkpoint
            .as_ref()
            .filter(|c| c.identity.as_ref().is_some_and(|i| i.format == FORMAT))
            .map(|c| entry_key(c.run, ""));
        let mut stale = Vec::new();
        let mut saved = Vec::new();
        let mut alerts = BTreeMap::new();
        let mut names = BTreeMap::new();
        for (key, payload) in self.entries {
            let Some(identity) = prefix.as_deref().and_then(|p| key.strip_prefix(p)) else {
                stale.push(key);
                continue;
            };
            let corrupt =
                |source: Box<dyn std::error::Error + Send + Sync>| CheckpointError::Corrupt {
                    what: format!("checkpoint entry {key}"),
                    source,
                };
            if let Some(alert) = identity.strip_prefix(ALERT) {
                let value: Value =
                    serde_json::from_slice(&payload).map_err(|e| corrupt(e.into()))?;
                alerts.insert(alert.to_owned(), value);
            } else {
                let entry = decode_entry(&payload).map_err(|e| corrupt(e.into()))?;
                // The writer shows names as of the committed epoch; the dataflow goes on from
                // them.
                if let Saved::Name(code, name) = &entry {
                    names.insert(code.clone(), name.description.clone());
                }
                saved.push(entry);
            }
        }
        let restored = checkpoint.map(|mut checkpoint| {
            checkpoint.state.alerts = alerts;
            checkpoint.state.names = names;
            Restored { checkpoint, saved }
        });
        Ok(Resumed { restored, stale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{DistinctKey, Text};
    use crate::checkpoint::alert_identity;
    use crate::checkpoint::encode_entry;

    #[test]
    fn entries_of_the_checkpointed_run_restore_and_others_are_stale() {
        let checkpoint = Checkpoint {
            job_id: "j".into(),
            run: 7,
            epoch: Some(3),
            identity: Some(JobIdentity {
                format: FORMAT,
                ..JobIdentity::default()
            }),
            ..Checkpoint::default()
        };
        let seen = Saved::Seen(DistinctKey::Customer(Text::from("12346")));
        let entries = [
            (entry_key(7, &seen.identity()), encode_entry(&seen)),
            (
                entry_key(7, &alert_identity("large_invoice/1")),
                br#"{"rule":"large_invoice"}"#.to_vec(),
            ),
            (entry_key(6, "seen:x"), b"{}".to_vec()),
        ];
        let stored = || Stored {
            checkpoint: Some(serde_json::to_vec(&checkpoint).unwrap()),
            entries: entries.iter().cloned().collect(),
        };
        let Resumed { restored, stale } = stored().restore(false).unwrap();
        let restored = restored.unwrap();
        assert_eq!(restored.saved, [seen]);
        assert_eq!(
            restored.checkpoint.state.alerts["large_invoice/1"]["rule"],
            "large_invoice"
        );
        assert_eq!(stale, [entry_key(6, "seen:x")]);
        let Resumed { restored, stale } = stored().restore(true).unwrap();
        assert!(restored.is_none());
        assert_eq!(stale.len(), 3);
        // An unreadable checkpoint is an error, unless the job starts over.
        let old = Stored {
            checkpoint: Some(br#"{"job_id":"j","offsets":{}}"#.to_vec()),
            entries: BTreeMap::new(),
        };
        assert!(matches!(
            old.restore(false),
            Err(CheckpointError::Corrupt { .. })
        ));
        let old = Stored {
            checkpoint: Some(b"{}".to_vec()),
            entries: BTreeMap::new(),
        };
        assert!(old.restore(true).unwrap().restored.is_none());
        let mut bad = stored();
        bad.entries.insert(entry_key(7, "seen:y"), vec![0x7f]);
        assert!(matches!(
            bad.restore(false),
            Err(CheckpointError::Corrupt { .. })
        ));
        // Entries of a checkpoint in an older format are left undecoded: the job then refuses
        // the checkpoint for its format, not for an unreadable entry.
        let mut older = checkpoint.clone();
        older.identity = Some(JobIdentity {
            format: FORMAT - 1,
            ..JobIdentity::default()
        });
        let mut old = stored();
        old.checkpoint = Some(serde_json::to_vec(&older).unwrap());
        old.entries.insert(
            entry_key(7, "seen:y"),
            br#"{"Seen":{"Customer":"1"}}"#.to_vec(),
        );
        let restored = old.restore(false).unwrap().restored.unwrap();
        assert!(restored.saved.is_empty());
        let now = JobIdentity {
            format: FORMAT,
            ..JobIdentity::default()
        };
        assert!(restored.checkpoint.mismatch(&now)[0].starts_with("checkpoint format"));
    }
}
