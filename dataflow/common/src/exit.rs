//! Exit statuses, the same for ingest, dataflow and cluster wherever they mean the same.

/// Done.
pub const OK: u8 = 0;
/// Failed: broker unreachable or refusing the credentials, topic missing, output not
/// writable, a record batch that cannot be decoded.
pub const ERROR: u8 = 1;
/// Bad usage: a flag, a combination of flags, or (dataflow) a checkpoint of another job.
pub const USAGE: u8 = 2;
/// Some Kafka output was not delivered.
pub const UNDELIVERED: u8 = 3;
/// Start again to go on (EX_TEMPFAIL): a Kafka transaction failed, or the topic grew a
/// partition the running job cannot take; the restart resumes from the checkpoint.
pub const RESTART: u8 = 75;
/// Interrupted (Ctrl-C, SIGTERM).
pub const INTERRUPTED: u8 = 130;
