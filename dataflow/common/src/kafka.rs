//! Kafka client settings shared by the binaries: the bootstrap address, `-X key=value`
//! pass-through to librdkafka (for secured clusters and tuning), and topic creation.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

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
    #[error("cannot create topic {topic}: {detail}")]
    CreateTopic { topic: String, detail: String },
    #[error("topic {topic} does not exist on {bootstrap}")]
    NoTopic { topic: String, bootstrap: String },
    #[error("timed out {what} on {bootstrap}")]
    Timeout { what: String, bootstrap: String },
}

/// Where the cluster is and any extra librdkafka settings.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub bootstrap: String,
    /// `-X key=value` pairs, applied after the project's own defaults so they win.
    pub extra: Vec<(String, String)>,
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

    /// A client of any kind with just the bootstrap address and the user's `-X` settings.
    fn client<C: rdkafka::config::FromClientConfig>(&self) -> Result<C, KafkaSetupError> {
        self.config(&[])
            .create()
            .map_err(|source| KafkaSetupError::Client {
                bootstrap: self.bootstrap.clone(),
                source,
            })
    }

    /// Number of partitions of `topic`, or `None` if it does not exist.
    pub fn partition_count(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Option<i32>, KafkaSetupError> {
        let consumer: BaseConsumer = self.client()?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|source| KafkaSetupError::Metadata {
                bootstrap: self.bootstrap.clone(),
                source,
            })?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32))
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
        if let Some(n) = self.partition_count(topic, timeout)? {
            return Ok(n);
        }
        let admin: AdminClient<DefaultClientContext> = self.client()?;
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
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
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
            if let Some(n) = self.partition_count(topic, timeout)? {
                return Ok(n);
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
mod tests {
    use super::*;

    #[test]
    fn key_value_pairs() {
        assert_eq!(
            parse_key_value("security.protocol=SASL_SSL"),
            Ok(("security.protocol".into(), "SASL_SSL".into()))
        );
        assert_eq!(
            parse_key_value("sasl.jaas=a=b"),
            Ok(("sasl.jaas".into(), "a=b".into()))
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
