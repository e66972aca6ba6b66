//! The context of the set-up clients (metadata, topic creation): it keeps the first cause of a
//! failed connection that no retry cures, so that set-up fails at once naming it.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Context of the set-up clients: keeps the first error that retrying cannot cure (refused
/// credentials, a failed TLS handshake), so that set-up fails at once with it.
#[derive(Default)]
pub struct SetupContext {
    refused: std::sync::Mutex<Option<String>>,
}

impl SetupContext {
    /// librdkafka's words for why the broker refused the connection, if it did.
    pub(super) fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl rdkafka::ClientContext for SetupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let code = match &error {
            KafkaError::Global(code) => Some(*code),
            _ => error.rdkafka_error_code(),
        };
        if matches!(
            code,
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        ) {
            let mut slot = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| reason.to_owned());
        }
        // Anything else (a broker still starting, a lost connection) librdkafka retries; if it
        // lasts, the set-up call times out with its own error.
    }

    /// Logs as rdkafka's default does, and keeps the cause when a connection failed for a
    /// reason no retry cures: a client at the wrong listener of the broker (see
    /// [`wrong_listener`]). librdkafka says so only in its log, not as an error event.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        if let Some(detail) = wrong_listener(log_message) {
            let mut slot = self.refused.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(detail);
        }
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            Level::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            Level::Notice | Level::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            Level::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
        }
    }
}

/// What a failed connection says about a client at the wrong listener, if it does: TLS
/// (`SSL`, `SASL_SSL`) spoken to a PLAINTEXT listener fails its handshake at once; plain text
/// spoken to a TLS listener is closed by the broker before it answers the client's first
/// request (`APIVERSION_QUERY`), which a listener that speaks plain text always answers.
pub fn wrong_listener(message: &str) -> Option<String> {
    let after = |what: &str| {
        let at = message.find(what)?;
        Some(message[at..].to_owned())
    };
    if let Some(cause) = after("SSL handshake failed") {
        return Some(format!(
            "{cause}: security.protocol is SSL or SASL_SSL, but the address is a PLAINTEXT \
             listener"
        ));
    }
    if message.contains("in state APIVERSION_QUERY") && message.contains("closed by peer") {
        let cause = after("Disconnected").unwrap_or_else(|| message.to_owned());
        return Some(format!(
            "{cause}: the broker closed the connection before answering the first request, as \
             a TLS (SSL or SASL_SSL) listener does when addressed as PLAINTEXT"
        ));
    }
    None
}

impl rdkafka::consumer::ConsumerContext for SetupContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_at_the_wrong_listener_is_told_apart() {
        let tls_at_plain = "sasl_ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: \
            Disconnected: SSL connection closed by peer: connecting to a PLAINTEXT broker \
            listener? (after 0ms in state SSL_HANDSHAKE)";
        let said = wrong_listener(tls_at_plain).unwrap();
        assert!(said.starts_with("SSL handshake failed") && said.contains("PLAINTEXT listener"));
        let plain_at_tls = "127.0.0.1:9094/bootstrap: Disconnected: connection closed by peer: \
            receive 0 after POLLIN (after 2ms in state APIVERSION_QUERY)";
        assert!(
            wrong_listener(plain_at_tls)
                .unwrap()
                .contains("TLS (SSL or SASL_SSL) listener")
        );
        // A broker that is down or restarting is no wrong listener: that is retried.
        let down = "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: \
            Connection refused (after 0ms in state CONNECT)";
        assert_eq!(wrong_listener(down), None);
    }
}
