//! Integration-test helpers for the real local stack (feature `testkit`).
//!
//! `make test` starts a tansu broker and the local ClickHouse front and exports
//! their addresses; tests read them with [`services`] and fail with a clear
//! message when they are missing (a test that needs a service never skips).
//! [`TestSchema`] gives each test its own database, topics and consumer group, and
//! removes them on `Drop`; a test that fails first prints how consumption stood
//! (its Kafka consumers, its tables' rows, the group's offsets: `diagnose`).
//! [`Broker`] runs a private broker a test may kill and
//! restart; [`S3Server`] and [`ClickHouse`] are private servers of the same
//! kind ([`processes`]); [`write_geo_mmdb`] and [`promtool_check`] are tools
//! ([`tools`]). Only dev-dependencies enable the feature: production builds
//! never link this module.

mod diagnose;
mod processes;
mod tools;

pub use processes::{Broker, ClickHouse, S3Server};
pub use tools::{promtool_check, write_geo_mmdb};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ColdStorageConfig, Config, LocalColdStorage};
use crate::store::schema::{migrate, SchemaContext};

/// Addresses of the shared services started by `make test`.
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka: String,
    pub clickhouse: String,
    pub tansu_bin: PathBuf,
    /// The venv Python that can run `deploy/local/chserver.py`.
    pub ch_python: PathBuf,
    /// The s3s-fs binary: an S3-compatible server over a directory.
    pub s3s_bin: PathBuf,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: integration tests need the local broker and ClickHouse. \
             Run them with `make test` (which provisions and starts both), or start the \
             stack with `python3 deploy/local/stack.py run -- cargo test`"
        )
    })
}

/// The running services; panics (failing the test) when `make test` did not start them.
pub fn services() -> Services {
    Services {
        kafka: required_env("OVERWATCH_TEST_KAFKA"),
        clickhouse: required_env("OVERWATCH_TEST_CLICKHOUSE"),
        tansu_bin: PathBuf::from(required_env("OVERWATCH_TANSU_BIN")),
        ch_python: PathBuf::from(required_env("OVERWATCH_CH_PYTHON")),
        s3s_bin: PathBuf::from(required_env("OVERWATCH_S3S_BIN")),
    }
}

/// How long a test waits for ClickHouse's Kafka engine to consume what it
/// produced. Consumption normally starts within seconds (the local ClickHouse
/// front makes replaced consumers leave their group; see docs/benchmarks.md);
/// the margin is for a loaded CI machine. A passing test waits only as long as
/// consumption takes.
pub const CONSUMED_WITHIN: Duration = Duration::from_secs(150);

/// Polls `f` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The local cold-storage directory of a test configuration.
pub fn cold_dir(cfg: &Config) -> PathBuf {
    match &cfg.cold_storage {
        ColdStorageConfig::Local(l) => PathBuf::from(&l.dir),
        ColdStorageConfig::S3(_) => panic!("this test's cold storage is a bucket, not a directory"),
    }
}

/// `workerd` (the binary at `bin`) pointed at `cfg`'s ClickHouse database, cold
/// directory and lease TTL through environment overrides, quiet but for warnings.
pub fn workerd_command(bin: &Path, cfg: &Config) -> Command {
    let mut cmd = Command::new(bin);
    cmd.env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__CLICKHOUSE__URL", &cfg.clickhouse.url)
        .env("OVERWATCH__CLICKHOUSE__DATABASE", &cfg.clickhouse.database)
        .env("OVERWATCH__COLD_STORAGE__KIND", "local")
        .env("OVERWATCH__COLD_STORAGE__DIR", cold_dir(cfg))
        .env(
            "OVERWATCH__JOBS__LEASE_TTL_SECS",
            cfg.jobs.lease_ttl_secs.to_string(),
        )
        .env("OVERWATCH__LOG__LEVEL", "warn")
        .stdin(Stdio::null());
    cmd
}

/// Waits until no lease in `database` is held (a killed holder's lease expires
/// by ClickHouse's clock after `jobs.lease_ttl_secs`).
pub async fn leases_free(client: &clickhouse::Client, database: &str, timeout: Duration) {
    eventually("every lease free", timeout, || async {
        let n: u64 = client
            .query(&format!(
                "SELECT count() FROM (SELECT holder FROM `{database}`.leases GROUP BY name, holder \
                 HAVING argMax(expires_at, updated_at) > now64(3))"
            ))
            .fetch_one()
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// Configuration pointing at the shared services, with a private database, topic
/// prefix and consumer group.
pub fn config(svc: &Services) -> Config {
    let id = unique("");
    let short = &id[..12];
    let mut cfg = Config::load_from(None, Vec::new()).expect("default config is valid");
    cfg.kafka.brokers = svc.kafka.clone();
    cfg.kafka.topic_prefix = format!("t{short}_");
    cfg.kafka.partitions = 2;
    cfg.clickhouse.url = svc.clickhouse.clone();
    cfg.clickhouse.database = format!("ow_t{short}");
    cfg.clickhouse.kafka_brokers = svc.kafka.clone();
    cfg.clickhouse.kafka_group = format!("ow-ch-{short}");
    cfg.cold_storage = ColdStorageConfig::Local(LocalColdStorage {
        dir: std::env::temp_dir()
            .join(format!("ow-cold-{short}"))
            .display()
            .to_string(),
    });
    // Keys come from the test's configuration unless it has a migrated schema.
    cfg.auth.clickhouse_keys = false;
    cfg.auth.refresh_interval_ms = 200;
    // Tests that are not about rate limits must not hit them.
    for tier in [
        &mut cfg.tiers.free,
        &mut cfg.tiers.paid,
        &mut cfg.tiers.enterprise,
    ] {
        tier.events_per_second = 1_000_000.0;
        tier.burst = 1_000_000;
    }
    cfg
}

/// Creates `cfg`'s event topics (with `partitions` each) on its broker.
pub async fn create_topics(cfg: &Config, partitions: i32) {
    crate::kafka::ensure_topics(
        &cfg.kafka.brokers,
        &cfg.kafka.topics(),
        partitions,
        1,
        Duration::from_secs(10),
    )
    .await
    .expect("create test topics");
}

/// Runs `sql` (with `?` bound to each of `binds`) and returns its rows as JSON objects.
pub async fn select_json(
    client: &clickhouse::Client,
    sql: &str,
    binds: &[String],
) -> Vec<serde_json::Value> {
    let mut q = client.query(sql);
    for b in binds {
        q = q.bind(b);
    }
    let mut cursor = q.fetch_bytes("JSONEachRow").expect("select");
    let mut text = Vec::new();
    while let Some(chunk) = cursor.next().await.expect("read rows") {
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text)
        .expect("utf-8 rows")
        .lines()
        .map(|l| serde_json::from_str(l).expect("row json"))
        .collect()
}

/// A migrated, private database and topic set; dropped with the value.
pub struct TestSchema {
    pub config: Config,
    pub client: clickhouse::Client,
}

impl TestSchema {
    /// A fresh [`config`] whose database and topics will be removed on drop,
    /// with nothing created yet (for tests of the migrations themselves).
    pub fn empty(svc: &Services) -> TestSchema {
        let config = config(svc);
        let client = crate::store::client(&config.clickhouse);
        TestSchema { config, client }
    }

    /// Creates the topics and runs every migration for a fresh [`config`].
    pub async fn create(svc: &Services) -> TestSchema {
        let mut config = config(svc);
        config.auth.clickhouse_keys = true;
        crate::kafka::ensure_topics(
            &config.kafka.brokers,
            &config.kafka.topics(),
            config.kafka.partitions,
            1,
            Duration::from_secs(10),
        )
        .await
        .expect("create test topics");
        let client = crate::store::client(&config.clickhouse);
        migrate(
            &client,
            &SchemaContext::new(&config.clickhouse, &config.kafka),
        )
        .await
        .expect("migrate test database");
        TestSchema { config, client }
    }

    pub fn database(&self) -> &str {
        &self.config.clickhouse.database
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let config = self.config.clone();
        // A failed test says how consumption stood before its database goes.
        let failed = std::thread::panicking();
        // Drop runs inside the test's runtime; clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            let client = crate::store::client(&config.clickhouse);
            if failed {
                let consumers = rt.block_on(diagnose::clickhouse_consumers(&client, &config));
                let rows = rt.block_on(diagnose::table_rows(&client, &config));
                eprintln!(
                    "testkit: {}'s Kafka consumers at failure:\n{consumers}\ntestkit: rows: \
                     {rows}\ntestkit: offsets:\n{}",
                    config.clickhouse.database,
                    diagnose::broker_offsets(&config)
                );
            }
            rt.block_on(async {
                let db = crate::store::ident(&config.clickhouse.database);
                if let Err(e) = client
                    .query(&format!("DROP DATABASE IF EXISTS {db} SYNC"))
                    .execute()
                    .await
                {
                    eprintln!("testkit: dropping {db} failed: {e}");
                }
                if let Err(e) = crate::kafka::delete_topics(
                    &config.kafka.brokers,
                    &config.kafka.topics(),
                    Duration::from_secs(10),
                )
                .await
                {
                    eprintln!("testkit: deleting test topics failed: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}
