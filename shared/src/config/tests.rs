//! The layering, the errors that name their key, and each section's checks.

use super::*;
use crate::event::EventType;
use std::io::Write;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile_like::TempFile {
    tempfile_like::TempFile::with(text)
}

mod tempfile_like {
    use super::*;
    pub struct TempFile(pub std::path::PathBuf);
    impl TempFile {
        pub fn with(text: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "ow-config-{}-{}.toml",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            let mut f = std::fs::File::create(&p).expect("create temp config");
            f.write_all(text.as_bytes()).expect("write temp config");
            TempFile(p)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn defaults_load_and_validate() {
    let c = Config::load_from(None, env(&[])).expect("defaults are valid");
    assert_eq!(c.gateway.listen.port(), 8080);
    assert_eq!(c.kafka.compression, Compression::Lz4);
    assert_eq!(c.kafka.topic_layout, TopicLayout::Single);
    assert_eq!(c.kafka.topic_for(EventType::Scroll), "events");
}

#[test]
fn both_layouts_topics_are_created_and_read_whichever_is_produced_to() {
    let c = Config::load_from(
        None,
        env(&[
            ("OVERWATCH__KAFKA__TOPIC_PREFIX", "p_"),
            ("OVERWATCH__KAFKA__TOPIC_LAYOUT", "per_type"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.kafka.topic_for(EventType::Click), "p_events_click");
    let all = c.kafka.topics();
    assert_eq!(all.len(), 1 + EventType::ALL.len());
    for kind in EventType::ALL {
        assert!(all.contains(&c.kafka.topic_for(kind)), "{kind:?}");
    }
    assert!(all.contains(&"p_events".to_string()));
    let e = Config::load_from(None, env(&[("OVERWATCH__KAFKA__TOPIC_LAYOUT", "one")]))
        .expect_err("an unknown layout");
    assert_eq!(e.key, "kafka.topic_layout");
}

#[test]
fn file_then_env_override_in_order() {
    let f = file("[gateway]\nlisten = \"127.0.0.1:1234\"\ndelivery_timeout_ms = 77\n");
    let c = Config::load_from(
        Some(&f.0),
        env(&[
            ("OVERWATCH__GATEWAY__DELIVERY_TIMEOUT_MS", "99"),
            ("OVERWATCH__KAFKA__TOPIC_PREFIX", "t1_"),
            ("OTHER", "ignored"),
        ]),
    )
    .expect("valid");
    assert_eq!(c.gateway.listen.port(), 1234);
    assert_eq!(c.gateway.delivery_timeout_ms, 99);
    assert_eq!(c.kafka.topics()[0], "t1_events");
    assert_eq!(c.kafka.topics()[2], "t1_events_click");
}

#[test]
fn unknown_key_in_file_is_named() {
    let f = file("[gateway]\nlisten_port = 1\n");
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "gateway.listen_port");
}

#[test]
fn unknown_section_is_named() {
    let f = file("[gatway]\nlisten = \"x\"\n");
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "gatway");
}

#[test]
fn unknown_env_key_is_named() {
    let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__NOPE", "1")])).unwrap_err();
    assert_eq!(e.key, "gateway.nope");
}

#[test]
fn allocator_thresholds_are_checked_against_glibc_limits() {
    let load = |mmap: &str, trim: &str| {
        Config::load_from(
            None,
            env(&[
                ("OVERWATCH__GATEWAY__ALLOCATOR__MMAP_THRESHOLD_BYTES", mmap),
                ("OVERWATCH__GATEWAY__ALLOCATOR__TRIM_THRESHOLD_BYTES", trim),
            ]),
        )
    };
    let c = load("0", "0").expect("glibc's own thresholds");
    assert!(!c.gateway.allocator.is_set());
    let c = load("1048576", "1048576").expect("equal thresholds");
    assert!(c.gateway.allocator.is_set());
    // glibc refuses an mmap threshold above 32 MiB on 64-bit targets.
    let e = load("33554433", "67108864").unwrap_err();
    assert_eq!(e.key, "gateway.allocator.mmap_threshold_bytes");
    // Only one of the two set: the other would fall back to a fixed 128 KiB.
    let e = load("0", "8388608").unwrap_err();
    assert_eq!(e.key, "gateway.allocator.mmap_threshold_bytes");
    let e = load("4194304", "0").unwrap_err();
    assert_eq!(e.key, "gateway.allocator.trim_threshold_bytes");
    let e = load("4194304", "1048576").unwrap_err();
    assert_eq!(e.key, "gateway.allocator.trim_threshold_bytes");
    let e = load("4194304", "2147483648").unwrap_err();
    assert_eq!(e.key, "gateway.allocator.trim_threshold_bytes");
}

#[test]
fn allocator_release_interval_is_never_or_bounded() {
    let load = |ms: &str| {
        Config::load_from(
            None,
            env(&[("OVERWATCH__GATEWAY__ALLOCATOR__RELEASE_INTERVAL_MS", ms)]),
        )
    };
    assert_eq!(
        load("0")
            .expect("never")
            .gateway
            .allocator
            .release_interval_ms,
        0
    );
    assert_eq!(
        load("10000")
            .expect("ten seconds")
            .gateway
            .allocator
            .release_interval_ms,
        10_000
    );
    // Releasing every few milliseconds would fault the buffers of nearly
    // every request in again.
    for bad in ["1", "99", "3600001"] {
        let e = load(bad).unwrap_err();
        assert_eq!(e.key, "gateway.allocator.release_interval_ms", "{bad}");
    }
}

#[test]
fn bad_env_type_is_named() {
    let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__MAX_BODY_BYTES", "lots")]))
        .unwrap_err();
    assert_eq!(e.key, "gateway.max_body_bytes");
    assert!(e.message.contains("integer"), "{}", e.message);
}

#[test]
fn invalid_value_is_named() {
    let e =
        Config::load_from(None, env(&[("OVERWATCH__GATEWAY__LISTEN", "not-an-addr")])).unwrap_err();
    assert_eq!(e.key, "gateway.listen");
    let e =
        Config::load_from(None, env(&[("OVERWATCH__KAFKA__COMPRESSION", "brotli")])).unwrap_err();
    assert_eq!(e.key, "kafka.compression");
    let e = Config::load_from(
        None,
        env(&[("OVERWATCH__GATEWAY__DELIVERY_TIMEOUT_MS", "0")]),
    )
    .unwrap_err();
    assert_eq!(e.key, "gateway.delivery_timeout_ms");
    let e =
        Config::load_from(None, env(&[("OVERWATCH__CLICKHOUSE__DATABASE", "a-b")])).unwrap_err();
    assert_eq!(e.key, "clickhouse.database");
}

#[test]
fn malformed_file_names_line_key() {
    let f = file("[gateway]\nlisten = \n");
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "listen");
}

#[test]
fn missing_file_is_an_error() {
    let e = Config::load_from(Some(Path::new("/nonexistent/ow.toml")), env(&[])).unwrap_err();
    assert_eq!(e.key, "--config");
}

#[test]
fn static_keys_are_checked() {
    let f = file(
        "[[auth.keys]]\ntenant_id = \"00000000-0000-0000-0000-000000000000\"\nsecret_sha256 = \"abc\"\n",
    );
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "auth.keys[0].secret_sha256");
    // One tenant, one tier.
    let key = |tier: &str| {
        format!(
            "[[auth.keys]]\ntenant_id = \"00000000-0000-0000-0000-000000000000\"\nsecret_sha256 = \"{}\"\ntier = \"{tier}\"\n",
            "ab".repeat(32)
        )
    };
    let f = file(&format!("{}{}", key("paid"), key("free")));
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "auth.keys[1].tier");
}

#[test]
fn the_time_window_is_bounded_by_what_clickhouse_enforces() {
    let e = Config::load_from(
        None,
        env(&[("OVERWATCH__LIMITS__MAX_EVENT_AGE_HOURS", "9601")]),
    )
    .unwrap_err();
    assert_eq!(e.key, "limits.max_event_age_hours");
    let e = Config::load_from(
        None,
        env(&[("OVERWATCH__LIMITS__MAX_FUTURE_MINUTES", "1441")]),
    )
    .unwrap_err();
    assert_eq!(e.key, "limits.max_future_minutes");
    assert!(Config::load_from(
        None,
        env(&[("OVERWATCH__LIMITS__MAX_EVENT_AGE_HOURS", "9600")])
    )
    .is_ok());
}

#[test]
fn another_kind_replaces_the_section_in_a_file_and_in_the_environment() {
    let f = file("[cold_storage]\nkind = \"s3\"\nbucket = \"archive\"\nregion = \"eu-west-1\"\n");
    let c = Config::load_from(Some(&f.0), env(&[])).expect("s3 from a file");
    let ColdStorageConfig::S3(s3) = &c.cold_storage else {
        panic!("expected s3, got {:?}", c.cold_storage)
    };
    assert_eq!(
        (s3.bucket.as_str(), s3.region.as_str()),
        ("archive", "eu-west-1")
    );
    // The variables sort after KIND would otherwise be cleared by it.
    let c = Config::load_from(
        None,
        env(&[
            ("OVERWATCH__COLD_STORAGE__BUCKET", "b"),
            ("OVERWATCH__COLD_STORAGE__REGION", "us-east-1"),
            ("OVERWATCH__COLD_STORAGE__SECRET_ACCESS_KEY", "s3cr3t"),
            ("OVERWATCH__COLD_STORAGE__KIND", "s3"),
        ]),
    )
    .expect("s3 from the environment");
    let ColdStorageConfig::S3(s3) = &c.cold_storage else {
        panic!("expected s3")
    };
    assert_eq!(s3.secret_access_key.expose(), "s3cr3t");
    // A field of another kind is an unknown key of this one.
    let e = Config::load_from(None, env(&[("OVERWATCH__COLD_STORAGE__BUCKET", "b")])).unwrap_err();
    assert!(e.key.starts_with("cold_storage"), "{e}");
    assert!(e.message.contains("bucket"), "{e}");
}

#[test]
fn channels_carry_only_their_kind_s_fields_and_hide_secrets() {
    let f = file(
        "[[notifications.channels]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"https://hooks.example/T0KEN\"\nsecret = \"sign-me\"\n\
         [[notifications.channels]]\nname = \"mail\"\nkind = \"email\"\nsmtp_host = \"smtp.example\"\nsmtp_port = 587\nsmtp_password = \"pw\"\nfrom = \"a@example\"\nto = [\"b@example\"]\n",
    );
    let c = Config::load_from(Some(&f.0), env(&[])).expect("valid channels");
    assert!(matches!(
        c.notifications.channels[0],
        ChannelConfig::Webhook(_)
    ));
    assert!(matches!(
        c.notifications.channels[1],
        ChannelConfig::Email(_)
    ));
    let shown = format!("{c:?}");
    for secret in ["T0KEN", "sign-me", "\"pw\""] {
        assert!(!shown.contains(secret), "{secret} shown in {shown}");
    }
    // An email field on a Slack channel is refused by name.
    let f = file("[[notifications.channels]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://hooks.slack.example/x\"\nsmtp_host = \"h\"\n");
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert!(e.message.contains("smtp_host"), "{e}");
    // Two channels of one name would share a cooldown.
    let f = file("[[notifications.channels]]\nname = \"x\"\nkind = \"log\"\n[[notifications.channels]]\nname = \"x\"\nkind = \"log\"\n");
    let e = Config::load_from(Some(&f.0), env(&[])).unwrap_err();
    assert_eq!(e.key, "notifications.channels[1].name");
}

#[test]
fn a_bad_schedule_fails_at_load_naming_its_key() {
    let e = Config::load_from(
        None,
        env(&[("OVERWATCH__JOBS__SESSIONS_CRON", "*/5 * * * *")]),
    )
    .unwrap_err();
    assert_eq!(e.key, "jobs.sessions_cron");
    assert!(e.message.contains("seconds"), "{e}");
    let c = Config::load_from(None, env(&[("OVERWATCH__JOBS__RETENTION_CRON", "")]))
        .expect("empty means off");
    assert_eq!(c.jobs.retention_cron.cron(), None);
}

#[test]
fn path_prefixes_are_whole_path_segments() {
    let ok = Config::load_from(
        None,
        env(&[("OVERWATCH__GATEWAY__PATH_PREFIXES", r#"["/k9x", "/a/b-c"]"#)]),
    )
    .expect("valid prefixes");
    assert_eq!(ok.gateway.path_prefixes, ["/k9x", "/a/b-c"]);
    for bad in [r#"["k9x"]"#, r#"["/k9x/"]"#, r#"["/"]"#, r#"["/a b"]"#] {
        let e = Config::load_from(None, env(&[("OVERWATCH__GATEWAY__PATH_PREFIXES", bad)]))
            .expect_err(bad);
        assert_eq!(e.key, "gateway.path_prefixes[0]", "{bad}");
    }
}

#[test]
fn a_cluster_needs_tenant_or_session_partitions() {
    let e = Config::load_from(
        None,
        env(&[
            ("OVERWATCH__CLICKHOUSE__CLUSTER", "main"),
            ("OVERWATCH__KAFKA__PARTITION_KEY", "round_robin"),
        ]),
    )
    .expect_err("round robin on a cluster");
    assert_eq!(e.key, "kafka.partition_key");
    Config::load_from(None, env(&[("OVERWATCH__CLICKHOUSE__CLUSTER", "main")]))
        .expect("session keys");
}
