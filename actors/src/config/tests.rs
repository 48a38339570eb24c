use super::*;

#[test]
fn kafka_sasl_settings_are_checked_and_reach_the_client() {
    let plain = KafkaConfig::default();
    plain.validate().unwrap();
    let c = crate::kafka::client_config(&plain);
    assert_eq!(c.get("security.protocol"), Some("plaintext"));
    assert_eq!(c.get("sasl.username"), None);
    let mut k = KafkaConfig {
        security_protocol: "sasl_plaintext".into(),
        sasl_username: "marketlane".into(),
        ..Default::default()
    };
    let e = k.validate().unwrap_err();
    assert_eq!(e.key, "kafka.sasl_password");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    k.sasl_password_file = Some(file);
    k.validate().unwrap();
    let c = crate::kafka::client_config(&k);
    assert_eq!(c.get("security.protocol"), Some("sasl_plaintext"));
    assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(c.get("sasl.username"), Some("marketlane"));
    assert_eq!(c.get("sasl.password"), Some("s3cret"));
    k.sasl_mechanism = "GSSAPI".into();
    assert_eq!(k.validate().unwrap_err().key, "kafka.sasl_mechanism");
    k.security_protocol = "SASL".into();
    assert_eq!(k.validate().unwrap_err().key, "kafka.security_protocol");
    let missing_ca = KafkaConfig {
        ssl_ca_location: Some("/nonexistent/ca.pem".into()),
        ..Default::default()
    };
    assert_eq!(
        missing_ca.validate().unwrap_err().key,
        "kafka.ssl_ca_location"
    );
}

#[test]
fn each_ordinal_gets_its_own_ib_user() {
    let mut ib = IbConfig {
        usernames: vec!["liveuser".into(), "paperuser".into()],
        ..Default::default()
    };
    ib.resolve_username("marketlane-1").unwrap();
    assert_eq!(ib.username.as_deref(), Some("paperuser"));
    ib.resolve_username("marketlane-0").unwrap();
    assert_eq!(ib.username.as_deref(), Some("liveuser"));
    let e = ib.resolve_username("marketlane-2").unwrap_err();
    assert_eq!(e.key, "ib.usernames");
    assert!(e.message.contains("ordinal 2"), "{e}");
    assert!(ib.resolve_username("marketlane").is_err());
    let mut none = IbConfig::default();
    none.resolve_username("whatever").unwrap();
    assert_eq!(none.username, None);
}

#[test]
fn defaults_validate() {
    IbConfig::default().validate().unwrap();
    KafkaConfig::default().validate().unwrap();
    ClickHouseConfig::default().validate().unwrap();
    WriterConfig::default().validate().unwrap();
}

#[test]
fn bad_values_name_their_key() {
    let mut ib = IbConfig {
        resubscribe_interval: Duration::from_secs(600),
        ..Default::default()
    };
    assert_eq!(ib.validate().unwrap_err().key, "ib.resubscribe_interval");
    ib = IbConfig {
        reauth_attempts: 0,
        ..Default::default()
    };
    assert_eq!(ib.validate().unwrap_err().key, "ib.reauth_attempts");
    ib = IbConfig {
        ca_file: Some("/nonexistent/gateway.pem".into()),
        ..Default::default()
    };
    assert_eq!(ib.validate().unwrap_err().key, "ib.ca_file");
    ib = IbConfig::default();
    assert!(
        !ib.compete,
        "competing with a person's login must be opt-in"
    );
    ib.symbols = vec![SymbolConfig {
        symbol: "CL".into(),
        sec_type: SecType::Future,
        exchange: None,
        depth: false,
    }];
    assert_eq!(ib.validate().unwrap_err().key, "ib.symbols[0].exchange");
    let k = KafkaConfig {
        compression: "brotli".into(),
        ..Default::default()
    };
    assert_eq!(k.validate().unwrap_err().key, "kafka.compression");
    let w = WriterConfig {
        batch_bytes: 1000,
        ..Default::default()
    };
    assert_eq!(w.validate().unwrap_err().key, "writer.batch_bytes");
    let w = WriterConfig {
        buffer_bytes: 65535,
        ..Default::default()
    };
    assert_eq!(w.validate().unwrap_err().key, "writer.buffer_bytes");
    let w = WriterConfig {
        stall_after: Duration::from_millis(500),
        ..Default::default()
    };
    assert_eq!(w.validate().unwrap_err().key, "writer.stall_after");
    let c = ClickHouseConfig {
        database: "x; DROP".into(),
        ..Default::default()
    };
    assert_eq!(c.validate().unwrap_err().key, "clickhouse.database");
    for days in [0, 3651, 999_999] {
        let c = ClickHouseConfig {
            retention_days: days,
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.key, "clickhouse.retention_days");
        assert!(e.message.contains(&days.to_string()), "{e}");
    }
    for days in [1, 3650] {
        let c = ClickHouseConfig {
            retention_days: days,
            ..Default::default()
        };
        c.validate().unwrap();
    }
    let c = ClickHouseConfig {
        url: "ftp://user:hunter2@ch".into(),
        ..Default::default()
    };
    let e = c.validate().unwrap_err();
    assert!(
        e.key == "clickhouse.url" && !e.message.contains("hunter2"),
        "{e}"
    );
}

#[test]
fn urls() {
    let mut ib = IbConfig::default();
    assert_eq!(ib.websocket_url(), "wss://localhost:5000/v1/api/ws");
    ib.gateway_url = "http://127.0.0.1:5001/".into();
    assert_eq!(ib.websocket_url(), "ws://127.0.0.1:5001/v1/api/ws");
    assert_eq!(ib.api_url("/tickle"), "http://127.0.0.1:5001/v1/api/tickle");
}

#[test]
fn clickhouse_compression_is_off_on_loopback_unless_asked() {
    let at = |url: &str, compression| ClickHouseConfig {
        url: url.into(),
        compression,
        ..Default::default()
    };
    use ClickHouseCompression::*;
    for url in [
        "http://127.0.0.1:8123",
        "http://localhost:8123/",
        "https://u:p@[::1]:8443",
        "http://127.0.0.2",
    ] {
        assert!(!at(url, Auto).lz4(), "{url}");
        assert!(at(url, Lz4).lz4(), "{url}");
    }
    for url in [
        "http://clickhouse:8123",
        "https://10.0.0.5:8443",
        "http://127.0.0.1.example",
    ] {
        assert!(at(url, Auto).lz4(), "{url}");
        assert!(!at(url, None).lz4(), "{url}");
    }
    let c: ClickHouseConfig = toml::from_str("compression = 'lz4'").unwrap();
    assert_eq!(c.compression, Lz4);
    assert!(toml::from_str::<ClickHouseConfig>("compression = 'zstd'").is_err());
}

#[test]
fn unknown_keys_are_rejected() {
    let err = toml::from_str::<KafkaConfig>("bootstrap = 'x'").unwrap_err();
    assert!(err.to_string().contains("bootstrap"), "{err}");
}
