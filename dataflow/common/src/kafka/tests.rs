//! Tests of the shared Kafka pieces: properties files and `-X` pairs, secrets kept out of
//! printouts, undecodable batches and end of partition told apart, this build's TLS and
//! codecs, and topic set-up keeping the first refusal.

use super::*;

#[test]
fn properties_files_read_like_kcat() {
    let text = "# a comment\n\n  security.protocol=SASL_SSL  \n! also a comment\n\
                sasl.jaas.config=a b=c;\nweird\\=key=x\\:y\n";
    assert_eq!(
        parse_properties(text).unwrap(),
        [
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ("sasl.jaas.config".to_owned(), "a b=c;".to_owned()),
            ("weird=key".to_owned(), "x:y".to_owned()),
        ]
    );
    assert_eq!(parse_properties("a=1\nno value here\n"), Err(2));
    assert_eq!(parse_properties("=1"), Err(1));
}

#[test]
fn files_then_x_and_b_wins() {
    let dir = std::env::temp_dir().join(format!("kafka-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (one, two) = (dir.join("one.properties"), dir.join("two.properties"));
    std::fs::write(
        &one,
        "bootstrap.servers=a:1\nlinger.ms=5\nsasl.password=s3cret\n",
    )
    .unwrap();
    std::fs::write(&two, "linger.ms=7\n").unwrap();
    let flags = |b: Option<&str>, x: &[(&str, &str)]| KafkaFlags {
        bootstrap: b.map(str::to_owned),
        files: vec![one.clone(), two.clone()],
        settings: x
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let s = flags(None, &[("linger.ms", "9")]).into_settings().unwrap();
    assert_eq!(s.bootstrap, "a:1");
    let linger: Vec<_> = s.extra.iter().filter(|(k, _)| k == "linger.ms").collect();
    // Applied in order, so the last one (-X) wins in librdkafka.
    assert_eq!(linger.last().unwrap().1, "9");
    assert_eq!(s.config(&[("linger.ms", "1")]).get("linger.ms"), Some("9"));
    assert_eq!(
        flags(Some("b:2"), &[]).into_settings().unwrap().bootstrap,
        "b:2"
    );
    // Secrets never show in a printout.
    let printed = format!("{s:?}");
    assert!(
        !printed.contains("s3cret") && printed.contains(REDACTED),
        "{printed}"
    );
    let missing = KafkaFlags {
        bootstrap: None,
        files: vec![dir.join("missing")],
        settings: Vec::new(),
    };
    assert!(
        missing
            .into_settings()
            .unwrap_err()
            .to_string()
            .contains("missing")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn secrets_are_named_by_their_keys() {
    for key in [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "SASL.JAAS.CONFIG",
        "ssl.key.pem",
    ] {
        assert!(is_secret(key), "{key}");
        assert_eq!(redact(key, "x"), REDACTED);
    }
    for key in ["sasl.username", "security.protocol", "ssl.ca.location"] {
        assert!(!is_secret(key), "{key}");
    }
}

#[test]
fn undecodable_batches_are_told_apart() {
    assert!(is_undecodable(&KafkaError::MessageConsumption(
        RDKafkaErrorCode::NotImplemented
    )));
    assert!(is_undecodable(&KafkaError::MessageConsumption(
        RDKafkaErrorCode::BadCompression
    )));
    assert!(!is_undecodable(&KafkaError::MessageConsumption(
        RDKafkaErrorCode::BrokerTransportFailure
    )));
    assert!(!is_undecodable(&KafkaError::PartitionEOF(3)));
}

#[test]
fn an_escaped_backslash_does_not_escape_the_equals_sign() {
    let pairs = parse_properties("dir\\\\=C\\:\\\\x\n").unwrap();
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].1, "C:\\\\x");
}

#[test]
fn metadata_broker_list_is_a_bootstrap_address_too() {
    let flags = KafkaFlags {
        bootstrap: None,
        files: Vec::new(),
        settings: vec![
            ("metadata.broker.list".into(), "m:1".into()),
            ("client.id".into(), "x".into()),
        ],
    };
    let s = flags.into_settings().unwrap();
    assert_eq!(s.bootstrap, "m:1");
    assert_eq!(s.extra, [("client.id".to_owned(), "x".to_owned())]);
    let none = KafkaFlags {
        bootstrap: None,
        files: Vec::new(),
        settings: Vec::new(),
    };
    assert_eq!(none.into_settings().unwrap().bootstrap, DEFAULT_BOOTSTRAP);
}

#[test]
fn end_of_partition_in_either_form() {
    assert!(is_end_of_partition(&KafkaError::PartitionEOF(0)));
    assert!(is_end_of_partition(&KafkaError::Global(
        RDKafkaErrorCode::PartitionEOF
    )));
    assert!(!is_end_of_partition(&KafkaError::Global(
        RDKafkaErrorCode::BrokerTransportFailure
    )));
    assert!(!is_end_of_partition(&KafkaError::MessageConsumption(
        RDKafkaErrorCode::BadMessage
    )));
}

#[test]
fn this_build_has_tls_and_every_codec() {
    let features = builtin_features();
    let features: Vec<&str> = features.split(',').collect();
    for feature in ["gzip", "snappy", "ssl", "sasl_scram", "zstd", "lz4"] {
        assert!(features.contains(&feature), "{feature} in {features:?}");
    }
}

#[test]
fn set_up_keeps_the_first_refusal_only() {
    use rdkafka::ClientContext;
    let context = SetupContext::default();
    assert_eq!(context.refused(), None);
    // Retried by librdkafka: not a refusal.
    context.error(
        KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
        "connection lost",
    );
    assert_eq!(context.refused(), None);
    context.error(
        KafkaError::Global(RDKafkaErrorCode::Authentication),
        "SASL authentication error",
    );
    context.error(
        KafkaError::Global(RDKafkaErrorCode::SSL),
        "handshake failed",
    );
    assert_eq!(
        context.refused().as_deref(),
        Some("SASL authentication error")
    );
    // A refusal reported through another kind of error counts too.
    let context = SetupContext::default();
    context.error(
        KafkaError::MetadataFetch(RDKafkaErrorCode::SaslAuthenticationFailed),
        "bad password",
    );
    assert_eq!(context.refused().as_deref(), Some("bad password"));
}

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
