//! Kafka client settings shared by the binaries: the bootstrap address, client properties
//! files (`-F`, as kcat and the Java tools read them) and `-X key=value` pass-through to
//! librdkafka (for secured clusters and tuning), secrets kept out of every printout, the
//! errors that mean a batch cannot be decoded, and topic creation; in `clients`, the pieces
//! of consumers and producers that several of them share.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

mod clients;
mod setup;

pub use clients::{DeliveryCounter, ReadToEnd, send_waiting, warn_client_error};
pub use setup::{SetupContext, wrong_listener};

/// Default bootstrap address: the broker `scripts/kafka up` and `docker compose` start.
pub const DEFAULT_BOOTSTRAP: &str = "localhost:9092";

/// Errors talking to Kafka outside the data path.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("cannot create a Kafka client for {bootstrap}")]
    Client {
        bootstrap: String,
        source: KafkaError,
    },
    #[error("cannot reach Kafka at {bootstrap} (is the broker up? `scripts/kafka up`)")]
    Metadata {
        bootstrap: String,
        source: KafkaError,
    },
    #[error(
        "Kafka at {bootstrap} refused the connection: {detail} (check security.protocol, \
         sasl.mechanism, sasl.username, sasl.password and ssl.ca.location)"
    )]
    Refused { bootstrap: String, detail: String },
    #[error("cannot create topic {topic}: {detail}")]
    CreateTopic { topic: String, detail: String },
    #[error("topic {topic} does not exist on {bootstrap}")]
    NoTopic { topic: String, bootstrap: String },
    #[error(
        "cannot decode a record batch of {topic} (corrupt, or a codec or format this build \
         cannot read); librdkafka would fetch it again for ever"
    )]
    Undecodable { topic: String, source: KafkaError },
    #[error("timed out {what} on {bootstrap}")]
    Timeout { what: String, bootstrap: String },
}

/// Where the cluster is and any extra librdkafka settings.
#[derive(Clone)]
pub struct ClientSettings {
    pub bootstrap: String,
    /// Settings from `-F` files, then `-X key=value` pairs, applied after the project's own
    /// defaults so they win.
    pub extra: Vec<(String, String)>,
}

/// Prints the settings with every secret value replaced by [`REDACTED`].
impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: Vec<(&str, &str)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), redact(k, v)))
            .collect();
        f.debug_struct("ClientSettings")
            .field("bootstrap", &self.bootstrap)
            .field("extra", &extra)
            .finish()
    }
}

/// What a secret value is shown as.
pub const REDACTED: &str = "[redacted]";

/// Whether the value of the client setting `key` is a secret: passwords, secrets, private
/// keys inline, and the Java JAAS line (which carries the password).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("jaas")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
}

/// `value`, or [`REDACTED`] when `key` names a secret.
pub fn redact<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) { REDACTED } else { value }
}

/// Why a client properties file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("cannot read client properties file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected key=value (a line of a client properties file)")]
    Syntax { path: PathBuf, line: usize },
}

/// Reads a client properties file as kcat's `-F` and the Kafka tools do: one `key=value` per
/// line (split at the first `=`, the value kept as written), blank lines and lines starting
/// with `#` or `!` skipped, `\=` and `\:` unescaped. Values are never echoed in errors.
pub fn read_properties(path: &Path) -> Result<Vec<(String, String)>, PropertiesError> {
    let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_properties(&text).map_err(|line| PropertiesError::Syntax {
        path: path.to_owned(),
        line,
    })
}

/// The pairs of a properties text, or the 1-based number of the first bad line.
fn parse_properties(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut pairs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) = split_unescaped(line).ok_or(i + 1)?;
        let key = key.trim();
        if key.is_empty() {
            return Err(i + 1);
        }
        pairs.push((unescape(key), unescape(value.trim())));
    }
    Ok(pairs)
}

/// Splits at the first `=` that no backslash escapes.
fn split_unescaped(line: &str) -> Option<(&str, &str)> {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '=' if !escaped => return Some((&line[..i], &line[i + 1..])),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(text: &str) -> String {
    text.replace("\\=", "=").replace("\\:", ":")
}

/// The client flags every binary takes, as the Kafka tools spell them.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaFlags {
    /// Kafka bootstrap servers (host:port[,host:port...]) [default: bootstrap.servers from a
    /// -F file, else localhost:9092]
    #[arg(
        short = 'b',
        long = "bootstrap-servers",
        value_name = "HOSTS",
        env = "KAFKA_BOOTSTRAP_SERVERS"
    )]
    pub bootstrap: Option<String>,

    /// Client properties file (key=value per line, # comments), as kcat -F and the Java tools'
    /// --command-config read it: security.protocol, sasl.*, ssl.* and any librdkafka setting.
    /// Repeatable; later files win, -X wins over files, -b over bootstrap.servers
    #[arg(short = 'F', long = "client-config", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// A librdkafka setting for every client, e.g. -X security.protocol=SASL_SSL (repeatable;
    /// wins over -F files and the project's own defaults). Prefer -F for passwords: a command
    /// line is visible to every user of the machine
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub settings: Vec<(String, String)>,
}

impl KafkaFlags {
    /// The client settings: files in order, then `-X`; the bootstrap address from `-b` (or its
    /// environment variable), else the last `bootstrap.servers` given, else the default.
    pub fn into_settings(self) -> Result<ClientSettings, PropertiesError> {
        let mut extra = Vec::new();
        for path in &self.files {
            extra.extend(read_properties(path)?);
        }
        extra.extend(self.settings);
        let mut given = None;
        extra.retain(|(k, v)| {
            let bootstrap = k == "bootstrap.servers" || k == "metadata.broker.list";
            if bootstrap {
                given = Some(v.clone());
            }
            !bootstrap
        });
        let bootstrap = self
            .bootstrap
            .or(given)
            .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_owned());
        Ok(ClientSettings { bootstrap, extra })
    }
}

/// Whether a consumer error means the fetched batch itself cannot be decoded (a codec this
/// build lacks, a corrupt or unsupported batch). librdkafka does not move past such a batch,
/// so retrying would loop for ever.
pub fn is_undecodable(error: &KafkaError) -> bool {
    match error {
        KafkaError::MessageConsumption(code) | KafkaError::MessageConsumptionFatal(code) => {
            matches!(
                code,
                RDKafkaErrorCode::NotImplemented
                    | RDKafkaErrorCode::BadCompression
                    | RDKafkaErrorCode::BadMessage
                    | RDKafkaErrorCode::UnsupportedCompressionType
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::UnsupportedVersion
            )
        }
        _ => false,
    }
}

/// End of partition, as a message error or as librdkafka's global error event.
pub fn is_end_of_partition(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
    )
}

/// What librdkafka was built with (codecs, TLS, SASL mechanisms), for the start-up log.
pub fn builtin_features() -> String {
    ClientConfig::new()
        .create_native_config()
        .ok()
        .and_then(|c| c.get("builtin.features").ok())
        .unwrap_or_default()
}

/// A client kept for repeated metadata requests.
pub struct MetadataClient {
    consumer: BaseConsumer<SetupContext>,
    bootstrap: String,
}

/// Number of partitions of `topic`, or `None` if it does not exist; see
/// [`ClientSettings::partition_count`].
pub fn count_partitions(
    client: &MetadataClient,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaSetupError> {
    let deadline = std::time::Instant::now() + timeout;
    let metadata = loop {
        let step = Duration::from_millis(500);
        match client.consumer.fetch_metadata(Some(topic), step) {
            Ok(metadata) => break metadata,
            Err(source) => {
                // Client errors reach the context when the client is polled; a poll with a
                // timeout serves every queued event (log lines too) until it runs out.
                let _ = client.consumer.poll(Duration::from_millis(100));
                if let Some(detail) = client.consumer.context().refused() {
                    return Err(KafkaSetupError::Refused {
                        bootstrap: client.bootstrap.clone(),
                        detail,
                    });
                }
                if std::time::Instant::now() + step > deadline {
                    return Err(KafkaSetupError::Metadata {
                        bootstrap: client.bootstrap.clone(),
                        source,
                    });
                }
            }
        }
    };
    Ok(partitions_in(&metadata, topic))
}

/// Number of partitions of `topic` in `metadata`, or `None` if it is not there (or not usable).
pub fn partitions_in(metadata: &Metadata, topic: &str) -> Option<i32> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as i32)
}

/// Parses one `key=value` pair (the value may contain `=`).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

impl ClientSettings {
    pub fn new(bootstrap: impl Into<String>) -> ClientSettings {
        ClientSettings {
            bootstrap: bootstrap.into(),
            extra: Vec::new(),
        }
    }

    /// A client config with the bootstrap address, the given defaults, then the user's `-X`.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.extra {
            config.set(k, v);
        }
        config
    }

    /// A client of any kind with just the bootstrap address and the user's settings.
    fn client<C: rdkafka::config::FromClientConfigAndContext<SetupContext>>(
        &self,
    ) -> Result<C, KafkaSetupError> {
        self.config(&[])
            // librdkafka says that a client is at the wrong listener at INFO only: it must
            // reach the context whatever the log filter (which still decides what is shown).
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Info)
            .create_with_context(SetupContext::default())
            .map_err(|source| KafkaSetupError::Client {
                bootstrap: self.bootstrap.clone(),
                source,
            })
    }

    /// A client for metadata requests, to use with [`count_partitions`].
    pub fn metadata_client(&self) -> Result<MetadataClient, KafkaSetupError> {
        Ok(MetadataClient {
            consumer: self.client()?,
            bootstrap: self.bootstrap.clone(),
        })
    }

    /// Number of partitions of `topic`, or `None` if it does not exist. Fails at once, rather
    /// than at `timeout`, when the broker refuses the credentials or the TLS handshake.
    pub fn partition_count(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, KafkaSetupError> {
        count_partitions(&self.metadata_client()?, topic, timeout)
    }

    /// Creates `topic` with `partitions` partitions unless it exists; returns its partition
    /// count either way. `config` holds topic settings such as `cleanup.policy`.
    pub fn ensure_topic(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<i32, KafkaSetupError> {
        Ok(self
            .ensure_topic_created(topic, partitions, config, timeout)?
            .0)
    }

    /// [`ClientSettings::ensure_topic`], also saying whether this call created the topic (it
    /// is then empty).
    pub fn ensure_topic_created(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(i32, bool), KafkaSetupError> {
        let metadata = self.metadata_client()?;
        if let Some(n) = count_partitions(&metadata, topic, timeout)? {
            return Ok((n, false));
        }
        let admin: AdminClient<SetupContext> = self.client()?;
        let new_topic = NewTopic {
            name: topic,
            num_partitions: partitions,
            replication: TopicReplication::Fixed(1),
            config: config.to_vec(),
        };
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let results = futures_executor::block_on(admin.create_topics([&new_topic], &options))
            .map_err(|e| KafkaSetupError::CreateTopic {
                topic: topic.to_owned(),
                detail: e.to_string(),
            })?;
        let mut created = false;
        for result in results {
            match result {
                Ok(_) => created = true,
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(KafkaSetupError::CreateTopic {
                        topic: topic.to_owned(),
                        detail: code.to_string(),
                    });
                }
            }
        }
        // Metadata can lag creation by a moment; wait until the partitions are visible.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(n) = count_partitions(&metadata, topic, timeout)? {
                return Ok((n, created));
            }
            if std::time::Instant::now() > deadline {
                return Err(KafkaSetupError::NoTopic {
                    topic: topic.to_owned(),
                    bootstrap: self.bootstrap.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests;
