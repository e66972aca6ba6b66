//! The command line: clap mirrors the flags, [`Args::into_config`] validates them once.
//!
//! Timely's own flags (`-w`, `-n`, `-p`, `-h`, `-r`, `-z`) are declared here so that `--help`
//! explains them beside ours, and are then handed to `timely::Config::from_args`, so timely's
//! argument handling decides what they mean. Clap's `-h` is therefore the hostfile, as in every
//! timely program; help is `--help`.

// The flags' doc comments are the `--help` text: `<job-id>` and the like are not HTML.
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use retail_common::kafka::{ClientSettings, KafkaFlags, PropertiesError};
use retail_common::money::Milli;

use crate::aggregate::AlertRules;
use humantime::parse_duration;

use crate::checkpoint::{CheckpointConfig, Restored};
use crate::epoch::{EpochClock, EpochError};
use crate::flow::Buffered;
use crate::http::HttpConfig;
use crate::sink::SinkConfig;
use crate::sink::postgres::{PgConfigError, PgFlags, PgTarget};
use crate::source::{SourceConfig, SourceResume, StartFrom};
use std::sync::Arc;
use std::sync::atomic::AtomicI32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// A table per micro-batch on stdout.
    Console,
    /// JSON-lines files and summary.json in --output-dir.
    Jsonl,
    /// The aggregates topic and the dead-letter topic.
    Kafka,
    /// Tables in PostgreSQL (--pg-url, --pg-schema), exactly once.
    Postgres,
}

const AFTER_HELP: &str = "\
Exit status: 0 success; 1 error (broker unreachable or refusing the credentials, topic
missing, output not writable, a record batch that cannot be decoded); 2 bad usage, or a
checkpoint written by a different job (see --job-id); 3 some Kafka output was not delivered;
75 restart to go on (a Kafka transaction failed, or the topic grew a partition for a worker
that had none): the job resumes from its last checkpoint; 130 interrupted (Ctrl-C).

Secured clusters: -F FILE reads client properties (security.protocol, sasl.mechanism,
sasl.username, sasl.password, ssl.ca.location, ...); secrets are never printed.

Exactly once: each commit is one Kafka transaction with the closed epochs' changes, their dead
letters, a checkpoint (--checkpoint-topic, keyed by --job-id) and the changed aggregate state
(compacted topic <checkpoint-topic>.<job-id>). A restarted job restores the state, seeks every
partition to its checkpoint, cuts the JSON-lines files back to the committed length and writes
only what comes after; Kafka readers use isolation.level=read_committed. The console is not
exactly-once. Ctrl-C commits nothing after the last closed epoch.

Several processes: start the same command once per process with the same -n and -w and
its own -p (0..n-1); with -h FILE, line i of FILE is process i's host:port (default
localhost:2101+i). Partitions are spread over all n x w workers: worker i reads the
partitions p with p mod (n x w) == i. Process 0 writes every output.

Examples:
  dataflow --until-end -w 2                       # bounded run over the whole topic
  dataflow --epoch 1s --from latest               # live micro-batches every second
  dataflow -n 2 -p 0 -w 2 & dataflow -n 2 -p 1 -w 2  # two processes on one machine";

/// Real-time retail analytics: reads sales from Kafka, validates them, and emits incremental
/// aggregates per event-time epoch to the console, JSON-lines files and Kafka.
#[derive(Debug, Parser)]
#[command(name = "dataflow", version, disable_help_flag = true, after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub kafka: KafkaFlags,

    /// Topic of sales records to read.
    #[arg(short = 't', long, env = "DATAFLOW_TOPIC", default_value = retail_common::DEFAULT_TOPIC)]
    pub topic: String,

    /// Where a job without a checkpoint starts reading; ignored when it resumes one (each
    /// partition it read goes on from its checkpointed position; a new one starts here)
    #[arg(long, value_enum, default_value = "earliest")]
    pub from: StartFrom,

    /// Bounded run: read up to the end offsets seen at start, close every epoch, write
    /// summary.json and exit.
    #[arg(long)]
    pub until_end: bool,

    /// Epoch length: records are grouped by the epoch of their InvoiceDate (e.g. 1s, 15m, 1h, 1d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub epoch: Duration,

    /// How far behind its partition's latest epoch a record may be and still land in its own
    /// epoch; older records are folded into the partition's earliest open epoch and counted late.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub lateness: Duration,

    /// A partition that is caught up and silent this long stops holding epochs open ("off" to
    /// wait for ever). The only wall-clock input: it never changes the result of a bounded run.
    #[arg(long, default_value = "30s", value_parser = parse_idle)]
    pub idle_timeout: OrOff,

    /// Invoice retention in event time ("off" to keep every invoice for ever): an invoice whose
    /// partition's watermark has moved this far past its latest line is closed. It leaves the
    /// per-invoice state (memory and the state topic) and still counts among the distinct
    /// invoices; a line arriving for it later is a dead letter with reason invoice_closed.
    /// Rounded up to whole epochs.
    #[arg(long, default_value = "30d", value_parser = parse_retention, value_name = "DURATION")]
    pub invoice_retention: OrOff,

    /// Messages larger than this go to the dead-letter sink.
    #[arg(long, default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Flow control: when the records this process has read for epochs that are still open
    /// exceed this size (message bytes, e.g. 16MiB or 1GB), partitions ahead of the oldest
    /// epoch still being read (beyond --lateness) wait for the others to catch up; the
    /// partitions at that epoch are always read. Bounds memory when partitions are read
    /// unevenly, e.g. a replayed backlog, without slowing a job that is not. 0 holds back every
    /// partition ahead of that epoch.
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_buffered: u64,

    /// Directory for the JSON-lines files and summary.json.
    #[arg(short = 'o', long, env = "DATAFLOW_OUTPUT_DIR", default_value = "out")]
    pub output_dir: PathBuf,

    /// Sinks to write (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "console,jsonl,kafka"
    )]
    pub sinks: Vec<SinkKind>,

    #[command(flatten)]
    pub postgres: PgFlags,

    /// Topic for aggregate changes (created when missing) [default: <job-id>.aggregates, so
    /// that two jobs' changes never mix in one topic]
    #[arg(long)]
    pub aggregates_topic: Option<String>,

    /// Dead-letter topic (created when missing) [default: <job-id>.dlq]
    #[arg(long)]
    pub dlq_topic: Option<String>,

    /// Name of the job (letters, digits, ., _, -): its checkpoints, its state topic and its
    /// transactional producer are keyed by it. A job id names one job: a run whose topic,
    /// epoch, lateness, output or alert flags differ from its checkpoint refuses to start
    /// [default: the --topic name, so jobs over different topics never share a checkpoint]
    #[arg(long, env = "DATAFLOW_JOB_ID")]
    pub job_id: Option<String>,

    /// Ignore the job's checkpoint and start over (the JSON-lines files are emptied).
    #[arg(long)]
    pub reset: bool,

    /// Compacted topic for checkpoints (created when missing); the job's aggregate state goes to
    /// the compacted topic <checkpoint-topic>.<job-id>.
    #[arg(long, default_value = "retail-aggregates.checkpoints")]
    pub checkpoint_topic: String,

    /// No checkpoints and no transactions: outputs are at-least-once across crashes, and Ctrl-C
    /// closes the open epochs with what was read.
    #[arg(long)]
    pub no_checkpoint: bool,

    /// Consumer group the job commits its offsets to, for lag tools (partitions are assigned
    /// explicitly, never rebalanced) [default: retail-stream-dataflow.<job-id>]
    #[arg(long)]
    pub group_id: Option<String>,

    /// Alert when an invoice's net value exceeds this amount.
    #[arg(long, default_value = "5000", value_parser = parse_money)]
    pub alert_invoice_value: Milli,

    /// Alert on a line whose absolute quantity is at least this.
    #[arg(long, default_value_t = 10_000)]
    pub alert_quantity: i64,

    /// Alert when a customer cancels more than this many lines in one epoch.
    #[arg(long, default_value_t = 5)]
    pub alert_cancellations: i64,

    /// How often a progress line goes to stderr (e.g. 2s, 500ms; 0s turns it off).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub progress_interval: Duration,

    /// Serve the live page, the query API and Prometheus /metrics on ADDR (IP:PORT, for example
    /// 127.0.0.1:8080; port 0 picks a free one). Process 0 serves / (the page), /events,
    /// /api/state, /api/epochs?last=N, /api/progress?last=N and /metrics; every other process
    /// serves its own /metrics. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,

    /// With --http: when a bounded run (--until-end) ends, keep serving its final state until
    /// Ctrl-C or SIGTERM instead of exiting.
    #[arg(long, requires_all = ["http", "until_end"])]
    pub http_linger: bool,

    /// With --http: open connections at most (event streams, pages, API and metrics requests
    /// together); one more is answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = crate::http::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,

    /// With --http: the currency of the amounts, as the live page shows them (an ISO 4217
    /// code such as GBP, EUR or USD; the browser's locale places the symbol and separators).
    /// Amounts stay integer thousandths in every output.
    #[arg(long, default_value = "GBP", value_parser = parse_currency, value_name = "CODE")]
    pub currency: String,

    /// Timely: worker threads per process.
    #[arg(
        short = 'w',
        long = "workers",
        visible_alias = "threads",
        default_value_t = 1,
        help_heading = "Timely"
    )]
    pub workers: usize,

    /// Timely: number of processes in the job.
    #[arg(short = 'n', long, default_value_t = 1, help_heading = "Timely")]
    pub processes: usize,

    /// Timely: index of this process, 0..processes-1.
    #[arg(short = 'p', long, default_value_t = 0, help_heading = "Timely")]
    pub process: usize,

    /// Timely: file whose line i is process i's host:port.
    #[arg(short = 'h', long, help_heading = "Timely")]
    pub hostfile: Option<PathBuf>,

    /// Several processes: a peer process that sends no heartbeat for this long (dead, frozen
    /// or unreachable), or that restarted, stops this one with status 75, so that the job
    /// restarts from its checkpoint.
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "Timely")]
    pub peer_timeout: Duration,

    /// Several processes: how long the processes wait for each other to start before giving
    /// up, naming the missing one (status 75).
    #[arg(long, default_value = "60s", value_parser = parse_duration, help_heading = "Timely")]
    pub peer_wait: Duration,

    /// Timely: report connection progress between processes.
    #[arg(short = 'r', long, help_heading = "Timely")]
    pub report: bool,

    /// Timely: zero-copy channels within a process.
    #[arg(short = 'z', long, help_heading = "Timely")]
    pub zerocopy: bool,

    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// `--idle-timeout`, `--invoice-retention`: a duration or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrOff(pub Option<Duration>);

fn parse_currency(text: &str) -> Result<String, String> {
    if text.len() == 3 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(text.to_ascii_uppercase())
    } else {
        Err(format!(
            "expected an ISO 4217 currency code of three letters, such as GBP, EUR or USD; got {text:?}"
        ))
    }
}

fn parse_idle(text: &str) -> Result<OrOff, String> {
    if text == "off" {
        return Ok(OrOff(None));
    }
    parse_duration(text)
        .map(|d| OrOff(Some(d)))
        .map_err(|e| e.to_string())
}

fn parse_retention(text: &str) -> Result<OrOff, String> {
    match parse_idle(text)? {
        OrOff(Some(d)) if d.is_zero() => {
            Err("must be positive; \"off\" keeps every invoice".to_owned())
        }
        other => Ok(other),
    }
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?} is not a size such as 64MiB, 500MB or 1GiB: {e}"))
}

fn parse_money(text: &str) -> Result<Milli, String> {
    Milli::parse(text).map_err(|e| format!("{text:?}: {e}"))
}

/// A combination of flags the job cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("-w/--workers and -n/--processes must be at least 1")]
    NoWorkers,
    #[error(
        "-p/--process {process} is out of range for -n/--processes {processes} (use 0..{})",
        processes - 1
    )]
    Process { process: usize, processes: usize },
    #[error("{0}")]
    Peers(std::io::Error),
    #[error("hostfile {} does not exist", .0.display())]
    Hostfile(PathBuf),
    #[error(
        "--job-id may only use letters, digits, '.', '_' and '-', must not be empty, and \
         <checkpoint-topic>.<job-id> must fit in 249 characters; got {0:?}"
    )]
    JobId(String),
    #[error("--http {0:?} is not an IP address and port (for example 127.0.0.1:8080)")]
    HttpAddr(String),
    #[error("--max-message-bytes must be positive")]
    MaxMessageBytes,
    #[error(transparent)]
    Epoch(#[from] EpochError),
    #[error(transparent)]
    ClientConfig(#[from] PropertiesError),
    #[error(transparent)]
    Postgres(#[from] PgConfigError),
}

/// The validated configuration of one process of the job.
#[derive(Clone, Debug)]
pub struct Config {
    pub settings: ClientSettings,
    pub topic: String,
    pub from: StartFrom,
    pub until_end: bool,
    pub clock: EpochClock,
    pub idle_timeout: Option<Duration>,
    pub max_message_bytes: usize,
    /// See `--max-buffered` (bytes).
    pub max_buffered: u64,
    /// `--invoice-retention` in whole epochs (`None`: off).
    pub retention: Option<u64>,
    pub group_id: String,
    pub job_id: String,
    pub reset: bool,
    pub checkpoint_topic: String,
    /// Commit outputs with checkpoints in transactions (exactly-once).
    pub checkpoint: bool,
    pub output_dir: PathBuf,
    pub console: bool,
    pub jsonl: bool,
    pub kafka: bool,
    /// `--sinks postgres` (or `--pg-init`): the database; `pg_init`: create tables and exit.
    pub postgres: Option<PgTarget>,
    pub pg_init: bool,
    pub aggregates_topic: String,
    pub dlq_topic: String,
    pub rules: AlertRules,
    pub progress_interval: Option<Duration>,
    /// `--http`: where to serve the page, the API and /metrics.
    pub http: Option<String>,
    /// `--http-linger`: keep serving after a bounded run.
    pub http_linger: bool,
    /// `--http-max-connections`: open connections at most.
    pub http_max_connections: usize,
    /// `--currency`: how the page shows amounts.
    pub currency: String,
    /// This process's index and the process count.
    pub process: usize,
    pub processes: usize,
    /// The arguments handed to timely.
    pub timely_args: Vec<String>,
    /// Several processes: how they watch each other (`None` for one process).
    pub peers: Option<crate::peers::PeerConfig>,
}

impl Args {
    /// Checks combinations and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.workers == 0 || self.processes == 0 {
            return Err(ConfigError::NoWorkers);
        }
        if self.process >= self.processes {
            return Err(ConfigError::Process {
                process: self.process,
                processes: self.processes,
            });
        }
        if let Some(h) = &self.hostfile
            && !h.is_file()
        {
            return Err(ConfigError::Hostfile(h.clone()));
        }
        let job_id = self.job_id.unwrap_or_else(|| self.topic.clone());
        if job_id.trim().is_empty() {
            return Err(ConfigError::JobId(job_id));
        }
        // It names the job's state topic, `<checkpoint-topic>.<job-id>`, which Kafka limits
        // to 249 such characters.
        if !job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || job_id.len() + self.checkpoint_topic.len() + 1 > 249
        {
            return Err(ConfigError::JobId(job_id));
        }
        let settings = self.kafka.into_settings()?;
        let pg_init = self.postgres.pg_init;
        let postgres = (self.postgres).into_target(self.sinks.contains(&SinkKind::Postgres))?;
        if let Some(addr) = &self.http
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::HttpAddr(addr.clone()));
        }
        if self.max_message_bytes == 0 {
            return Err(ConfigError::MaxMessageBytes);
        }
        let clock = EpochClock::new(self.epoch, self.lateness)?;
        let mut timely_args = vec![
            "-w".to_owned(),
            self.workers.to_string(),
            "-n".to_owned(),
            self.processes.to_string(),
            "-p".to_owned(),
            self.process.to_string(),
        ];
        if let Some(h) = &self.hostfile {
            timely_args.extend(["-h".to_owned(), h.display().to_string()]);
        }
        let peers = if self.processes > 1 {
            let addresses = crate::peers::addresses(self.hostfile.as_deref(), self.processes)
                .map_err(ConfigError::Peers)?;
            Some(crate::peers::PeerConfig {
                index: self.process,
                addresses,
                timeout: self.peer_timeout,
                wait: self.peer_wait,
                job_id: job_id.clone(),
            })
        } else {
            None
        };
        if self.report {
            timely_args.push("-r".to_owned());
        }
        if self.zerocopy {
            timely_args.push("-z".to_owned());
        }
        // A job's outputs and offsets are named after it unless given: two jobs never mix.
        let dlq_topic = self.dlq_topic.unwrap_or_else(|| format!("{job_id}.dlq"));
        let aggregates_topic = self
            .aggregates_topic
            .unwrap_or_else(|| format!("{job_id}.aggregates"));
        let group_id = self
            .group_id
            .unwrap_or_else(|| format!("retail-stream-dataflow.{job_id}"));
        Ok(Config {
            settings,
            from: self.from,
            until_end: self.until_end,
            clock,
            idle_timeout: self.idle_timeout.0,
            max_message_bytes: self.max_message_bytes,
            max_buffered: self.max_buffered,
            retention: self
                .invoice_retention
                .0
                .map(|d| d.as_secs().max(1).div_ceil(clock.epoch_secs)),
            group_id,
            job_id,
            reset: self.reset,
            checkpoint_topic: self.checkpoint_topic,
            checkpoint: !self.no_checkpoint,
            output_dir: self.output_dir,
            console: self.sinks.contains(&SinkKind::Console),
            jsonl: self.sinks.contains(&SinkKind::Jsonl),
            kafka: self.sinks.contains(&SinkKind::Kafka),
            postgres,
            pg_init,
            aggregates_topic,
            dlq_topic,
            topic: self.topic,
            rules: AlertRules {
                invoice_value_milli: self.alert_invoice_value.0,
                quantity: self.alert_quantity,
                cancellations_per_epoch: self.alert_cancellations,
            },
            progress_interval: (!self.progress_interval.is_zero())
                .then_some(self.progress_interval),
            http: self.http,
            http_linger: self.http_linger,
            http_max_connections: self.http_max_connections as usize,
            currency: self.currency,
            process: self.process,
            processes: self.processes,
            timely_args,
            peers,
        })
    }
}

impl Config {
    /// What the checkpoint reads of the configuration.
    pub(crate) fn checkpoint_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            settings: self.settings.clone(),
            checkpoint_topic: self.checkpoint_topic.clone(),
            job_id: self.job_id.clone(),
            process: self.process,
            checkpoint: self.checkpoint,
            reset: self.reset,
            retention: self.retention,
        }
    }

    /// What the sources need, on a topic of `partitions` partitions (their current count
    /// follows it from `partitions`: see `watch_partitions`), resuming `restored` when given.
    pub(crate) fn source_config(
        &self,
        partitions: i32,
        restored: Option<&Restored>,
    ) -> SourceConfig {
        SourceConfig {
            settings: self.settings.clone(),
            topic: self.topic.clone(),
            partitions,
            watch: Arc::new(AtomicI32::new(partitions)),
            from: self.from,
            until_end: self.until_end,
            clock: self.clock,
            idle_timeout: self.idle_timeout,
            max_message_bytes: self.max_message_bytes,
            buffered: Arc::new(Buffered::new(self.max_buffered)),
            group_id: self.group_id.clone(),
            retention: self.retention,
            rules: self.rules,
            save: self.checkpoint,
            resume: restored.and_then(SourceResume::of),
        }
    }

    /// What the writer and its sinks read of the configuration.
    pub(crate) fn sink_config(&self) -> SinkConfig {
        SinkConfig {
            settings: self.settings.clone(),
            topic: self.topic.clone(),
            clock: self.clock,
            retention: self.retention,
            rules: self.rules,
            job_id: self.job_id.clone(),
            group_id: self.group_id.clone(),
            reset: self.reset,
            checkpoint_topic: self.checkpoint_topic.clone(),
            checkpoint: self.checkpoint,
            output_dir: self.output_dir.clone(),
            console: self.console,
            jsonl: self.jsonl,
            kafka: self.kafka,
            postgres: self.postgres.clone(),
            aggregates_topic: self.aggregates_topic.clone(),
            dlq_topic: self.dlq_topic.clone(),
        }
    }

    /// What `--http` reads of the configuration; `None` without `--http`.
    pub(crate) fn http_config(&self) -> Option<HttpConfig> {
        Some(HttpConfig {
            addr: self.http.clone()?,
            process: self.process,
            clock: self.clock,
            topic: self.topic.clone(),
            job_id: self.job_id.clone(),
            currency: self.currency.clone(),
            max_connections: self.http_max_connections,
        })
    }
}

#[cfg(test)]
mod tests;
