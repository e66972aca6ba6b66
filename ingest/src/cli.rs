//! The command line, in two stages: [`Args`] mirrors the flags (clap derive, each with an
//! environment fallback so docker compose can configure it), and [`Args::into_config`] turns
//! them once into a validated [`Config`] that the rest of the crate trusts.

use std::path::PathBuf;

use chrono::NaiveDateTime;
use clap::Parser;
use retail_common::DEFAULT_TOPIC;
#[cfg(test)]
use retail_common::kafka::DEFAULT_BOOTSTRAP;
use retail_common::kafka::{ClientSettings, KafkaFlags, PropertiesError};

/// The simulated clock's default start: the first day of the UCI data set.
pub const DEFAULT_START: &str = "2010-12-01T08:00:00";

const LONG_ABOUT: &str = "\
Publishes retail sales to Apache Kafka as one JSON object per invoice line, keyed by InvoiceNo.

The input is either a CSV file of the UCI Online Retail data set (plain or gzip-compressed, \
detected from the content; either the 'Online Retail' or the 'Online Retail II' header, columns \
in any order), or synthetic sales made by a seeded generator. Every CSV row is typed and \
validated; a row that fails goes to the rejects file (line, reason, detail, raw) and is counted, \
and the run goes on. A row with bytes that are not UTF-8 is decoded with U+FFFD replacement \
characters and kept; the summary counts such rows as lossy_utf8_rows.

Messages go to the topic (created with --partitions partitions if missing) through an idempotent \
producer (acks=all) with the Java client's murmur2 partitioner, so all lines of an invoice share \
a partition and keep their order. The run ends when every message is acknowledged. A one-line \
JSON summary is printed at the end: on stdout, or on stderr when the JSON lines themselves go to \
stdout (--dry-run).

Ctrl-C stops reading, waits for the messages already sent, prints the summary with \
\"interrupted\":true and exits with 130; a second Ctrl-C exits at once.";

const AFTER_HELP: &str = "\
Exit codes:
  0    success (rejected rows alone do not fail a run; a closed stdout pipe is success too)
  1    error: input missing or unreadable, a required column missing, broker unreachable, ...
  2    bad usage: unknown flag, bad value, conflicting flags
  3    at least one message was not delivered (the first error is printed); the run stops
       reading at the first failed delivery
  130  interrupted by Ctrl-C (after flushing what was sent)

Examples:
  ingest --file online_retail.csv.gz
  ingest --generate 1000000 --seed 7 --topic retail-test -b kafka:9092
  ingest --generate 100000 --live --rate 500
  ingest --file sales.csv --dry-run | head

Logging goes to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.";

/// The flags as typed. Use [`Args::into_config`] to get a [`Config`].
#[derive(Debug, Parser)]
#[command(
    name = "ingest",
    version,
    override_usage = "ingest (--file <PATH> | --generate <N>) [OPTIONS]",
    about = "Publishes retail sales (CSV, gzip CSV or synthetic) to Kafka as JSON",
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    after_long_help = AFTER_HELP
)]
pub struct Args {
    /// CSV file to read, plain or gzip-compressed (detected from its first bytes, not its
    /// name); `-` reads stdin.
    #[arg(
        long,
        value_name = "PATH",
        env = "INGEST_FILE",
        required_unless_present = "generate",
        conflicts_with = "generate",
        help_heading = "Input"
    )]
    pub file: Option<PathBuf>,

    /// Generate N synthetic sales instead of reading a file: invoices of several lines,
    /// Zipf-popular products, a UK-heavy country mix, ~2% cancellations, ~25% guests, a few
    /// anomalies. The same --seed and N give byte-identical records.
    #[arg(
        long,
        value_name = "N",
        env = "INGEST_GENERATE",
        help_heading = "Input"
    )]
    pub generate: Option<u64>,

    /// Seed of the generator.
    #[arg(
        long,
        value_name = "S",
        default_value_t = 42,
        env = "INGEST_SEED",
        conflicts_with = "file",
        help_heading = "Input"
    )]
    pub seed: u64,

    /// Start of the generator's simulated clock (ISO-8601, e.g. 2011-06-01T09:00:00); it
    /// advances by a few seconds per invoice. [default: 2010-12-01T08:00:00]
    #[arg(
        long,
        value_name = "ISO",
        env = "INGEST_START",
        value_parser = parse_start,
        conflicts_with_all = ["file", "live"],
        help_heading = "Input"
    )]
    pub start: Option<NaiveDateTime>,

    /// Stamp generated invoices with the current UTC time instead of the simulated clock
    /// (for a live demo, usually with --rate).
    #[arg(
        long,
        env = "INGEST_LIVE",
        conflicts_with = "file",
        help_heading = "Input"
    )]
    pub live: bool,

    /// Rows that fail validation are written here as CSV (line, reason, detail, raw). The
    /// file is written, with its header, even when there are none. Only with --file; with
    /// --dry-run only when given (rejected rows are counted either way)
    /// [default: rejects.csv]
    #[arg(
        long,
        value_name = "PATH",
        env = "INGEST_REJECTS",
        help_heading = "Input"
    )]
    pub rejects: Option<PathBuf>,

    /// Publish at most R records per second, evenly spaced (above 100/s, in small bursts
    /// 10 ms apart, sleeping in between) (default: as fast as possible).
    #[arg(long, value_name = "R", env = "INGEST_RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Serve Prometheus /metrics on ADDR (IP:PORT, for example 127.0.0.1:9100; port 0 picks a
    /// free one) while the run lasts: records published, rows rejected, delivery failures,
    /// records in flight, process memory and CPU. Off unless given.
    #[arg(long, value_name = "ADDR", env = "INGEST_HTTP")]
    pub http: Option<String>,

    /// Kafka topic to publish to.
    #[arg(
        long,
        value_name = "TOPIC",
        default_value = DEFAULT_TOPIC,
        env = "INGEST_TOPIC",
        help_heading = "Kafka"
    )]
    pub topic: String,

    /// Partitions of the topic when ingest creates it; an existing topic is used as it is.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 8,
        env = "INGEST_PARTITIONS",
        value_parser = clap::value_parser!(i32).range(1..),
        help_heading = "Kafka"
    )]
    pub partitions: i32,

    /// Compression of the batches ingest produces (the broker stores them as sent). lz4 is
    /// the default: on the real data set it stores 5x fewer bytes than none, at the highest
    /// rate and at no cost to the job reading them; zstd stores half that again, for about
    /// 12% of ingest's speed and 20% of the job's (`scripts/bench --codecs`).
    #[arg(
        long,
        value_enum,
        value_name = "CODEC",
        default_value = "lz4",
        env = "INGEST_COMPRESSION",
        help_heading = "Kafka"
    )]
    pub compression: Compression,

    #[command(flatten)]
    pub kafka: KafkaFlags,

    /// Write the JSON lines to stdout instead of Kafka (no broker needed); the summary then
    /// goes to stderr.
    #[arg(long, env = "INGEST_DRY_RUN", help_heading = "Output")]
    pub dry_run: bool,

    /// Write the JSON lines to PATH instead of Kafka; `-` is stdout (the same as --dry-run).
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    pub output: Option<PathBuf>,
}

fn parse_start(text: &str) -> Result<NaiveDateTime, String> {
    retail_common::time::parse_iso(text.trim())
        .ok_or_else(|| format!("expected an ISO-8601 time such as {DEFAULT_START}, got {text:?}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a positive number of records per second, got {text:?}"
        )),
    }
}

/// Kafka's batch compression codecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// librdkafka's name of the codec.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A validated run: what to read, where to write, how fast.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: Source,
    pub sink: SinkConfig,
    /// Rejected CSV rows go here (only written when reading a file); `None`: a dry run not
    /// asked for them, which leaves no file behind in the working directory.
    pub rejects: Option<PathBuf>,
    /// Records per second, or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// `--http`: where to serve `/metrics`.
    pub http: Option<String>,
}

/// Where records come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    File(Input),
    Generate { count: u64, seed: u64, clock: Clock },
}

/// A file path or stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    Stdin,
    Path(PathBuf),
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stdin => f.write_str("<stdin>"),
            Input::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The time generated invoices carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// A simulated clock from this instant, a few seconds per invoice: reproducible.
    Simulated(NaiveDateTime),
    /// The current UTC time when each invoice is made.
    Live,
}

/// Where the JSON records go.
#[derive(Clone, Debug)]
pub enum SinkConfig {
    Kafka {
        client: ClientSettings,
        /// `compression.type` of the producer (a `-X compression.type` wins).
        compression: Compression,
        topic: String,
        /// Partitions when the topic has to be created.
        partitions: i32,
    },
    /// JSON lines on stdout.
    Stdout,
    /// JSON lines in a file.
    File(PathBuf),
}

impl SinkConfig {
    /// True when the JSON lines go to stdout, so the summary must not.
    pub fn uses_stdout(&self) -> bool {
        matches!(self, SinkConfig::Stdout)
    }
}

/// A combination of flags that clap alone cannot rule out.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("one of --file or --generate is required")]
    NoInput,
    #[error("--topic must not be empty")]
    EmptyTopic,
    #[error("--bootstrap-servers must not be empty")]
    EmptyBootstrap,
    #[error(transparent)]
    Properties(#[from] PropertiesError),
}

impl Args {
    /// Checks the combination and builds the [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let source = match (self.file, self.generate) {
            (Some(path), _) if path.as_os_str() == "-" => Source::File(Input::Stdin),
            (Some(path), _) => Source::File(Input::Path(path)),
            (None, Some(count)) => Source::Generate {
                count,
                seed: self.seed,
                clock: if self.live {
                    Clock::Live
                } else {
                    Clock::Simulated(self.start.unwrap_or_else(default_start))
                },
            },
            // clap rules this out, but Args can be built without clap.
            (None, None) => return Err(ConfigError::NoInput),
        };
        let sink = match self.output {
            Some(path) if path.as_os_str() == "-" => SinkConfig::Stdout,
            Some(path) => SinkConfig::File(path),
            None if self.dry_run => SinkConfig::Stdout,
            None => {
                if self.topic.trim().is_empty() {
                    return Err(ConfigError::EmptyTopic);
                }
                let client = self.kafka.into_settings()?;
                if client.bootstrap.trim().is_empty() {
                    return Err(ConfigError::EmptyBootstrap);
                }
                SinkConfig::Kafka {
                    client,
                    compression: self.compression,
                    topic: self.topic,
                    partitions: self.partitions,
                }
            }
        };
        Ok(Config {
            source,
            sink,
            rejects: self
                .rejects
                .or_else(|| (!self.dry_run).then(|| PathBuf::from("rejects.csv"))),
            rate: self.rate,
            http: self.http,
        })
    }
}

/// [`DEFAULT_START`] as a timestamp.
pub fn default_start() -> NaiveDateTime {
    retail_common::time::parse_iso(DEFAULT_START).expect("DEFAULT_START is valid ISO-8601")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ingest").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn file_and_generate_are_exclusive_and_one_is_required() {
        assert!(parse(&["--file", "a.csv", "--generate", "5"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--seed", "3", "--file", "a.csv"]).is_err());
        assert!(parse(&["--live", "--file", "a.csv"]).is_err());
        assert!(parse(&["--start", DEFAULT_START, "--file", "a.csv"]).is_err());
        assert!(parse(&["--generate", "5", "--live", "--start", DEFAULT_START]).is_err());
    }

    #[test]
    fn builds_a_generate_config() {
        let config = parse(&["--generate", "5", "--start", "2011-06-01 09:00"])
            .unwrap()
            .into_config()
            .unwrap();
        let start = retail_common::time::parse_iso("2011-06-01T09:00:00").unwrap();
        assert_eq!(
            config.source,
            Source::Generate {
                count: 5,
                seed: 42,
                clock: Clock::Simulated(start)
            }
        );
        match config.sink {
            SinkConfig::Kafka {
                client,
                compression,
                topic,
                partitions,
            } => {
                assert_eq!(compression, Compression::Lz4);
                // The flag falls back to the environment, as the help says.
                let expected = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
                    .unwrap_or_else(|_| DEFAULT_BOOTSTRAP.to_owned());
                assert_eq!(client.bootstrap, expected);
                assert_eq!(topic, DEFAULT_TOPIC);
                assert_eq!(partitions, 8);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_and_dry_run_choose_the_sink() {
        let sink = |args: &[&str]| parse(args).unwrap().into_config().unwrap().sink;
        assert!(matches!(
            sink(&["--file", "-", "--dry-run"]),
            SinkConfig::Stdout
        ));
        assert!(matches!(
            sink(&["--file", "x", "--output", "-"]),
            SinkConfig::Stdout
        ));
        assert!(matches!(
            sink(&["--file", "x", "--output", "o.jsonl"]),
            SinkConfig::File(_)
        ));
        let config = parse(&["--file", "-", "--dry-run"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(config.source, Source::File(Input::Stdin));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["--generate", "5", "--rate", "0"][..],
            &["--generate", "5", "--rate", "fast"],
            &["--generate", "5", "--partitions", "0"],
            &["--generate", "5", "--start", "yesterday"],
            &["--generate", "5", "-X", "novalue"],
            &["--generate", "-1"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        let args = parse(&["--generate", "5", "-X", "linger.ms=50", "-X", "acks=1"]).unwrap();
        assert_eq!(args.kafka.settings.len(), 2);
        assert!(parse(&["--generate", "5", "--compression", "brotli"]).is_err());
        assert!(matches!(
            parse(&["--generate", "5", "--topic", " "])
                .unwrap()
                .into_config(),
            Err(ConfigError::EmptyTopic)
        ));
    }
}
