//! Integration-test helpers for the real local stack (feature `testkit`).
//!
//! `make test` starts a tansu broker and the local ClickHouse front and exports
//! their addresses; tests read them with [`services`] and fail with a clear
//! message when they are missing (a test that needs a service never skips).
//! [`TestSchema`] gives each test its own database, topics and consumer group, and
//! removes them on `Drop`. [`Broker`] runs a private broker a test may kill and
//! restart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ColdStorageConfig, Config, LocalColdStorage, S3ColdStorage};
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
        migrate(&client, &SchemaContext::from_config(&config))
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
        // Drop runs inside the test's runtime; clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                let client = crate::store::client(&config.clickhouse);
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

/// A private tansu broker on a free port, with durable (SQLite) storage in a
/// temporary directory so that it can be stopped and restarted without losing data.
pub struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    pub fn start(svc: &Services) -> Broker {
        let dir = std::env::temp_dir().join(unique("ow-broker-"));
        std::fs::create_dir_all(&dir).expect("broker data dir");
        let mut b = Broker {
            bin: svc.tansu_bin.clone(),
            dir,
            port: free_port(),
            child: None,
        };
        b.restart();
        b
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.join("broker.log")).expect("broker log");
        let child = Command::new(&self.bin)
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("sqlite://tansu.db")
            .current_dir(&self.dir)
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("broker log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        let child = self.child.insert(child);
        wait_port(
            self.port,
            Duration::from_secs(30),
            &self.dir.join("broker.log"),
            child,
        );
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "testkit: broker data and log kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A private S3-compatible server (s3s-fs over a temporary directory) with one
/// bucket and its own credentials.
pub struct S3Server {
    pub dir: PathBuf,
    pub port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    child: Child,
}

impl S3Server {
    pub fn start(svc: &Services) -> S3Server {
        let dir = std::env::temp_dir().join(unique("ow-s3-"));
        let bucket = "cold".to_string();
        std::fs::create_dir_all(dir.join(&bucket)).expect("s3 bucket dir");
        let port = free_port();
        let (access_key, secret_key) = (unique("AK"), unique("SK"));
        let log = std::fs::File::create(dir.join("s3s.log")).expect("s3s log");
        let mut child = Command::new(&svc.s3s_bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("s3s log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", svc.s3s_bin.display()));
        wait_port(
            port,
            Duration::from_secs(30),
            &dir.join("s3s.log"),
            &mut child,
        );
        S3Server {
            dir,
            port,
            bucket,
            access_key,
            secret_key,
            child,
        }
    }

    /// Points `cfg`'s cold storage at this server's bucket under `prefix`.
    pub fn configure(&self, cfg: &mut Config, prefix: &str) {
        cfg.cold_storage = ColdStorageConfig::S3(S3ColdStorage {
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.as_str().into(),
            allow_http: true,
        });
    }

    /// Where the server keeps `key` of the bucket on disk.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.join(&self.bucket).join(key)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A private local ClickHouse (chserver.py over chdb) on a free port, whose data
/// directory outlives restarts of the process.
pub struct ClickHouse {
    python: PathBuf,
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl ClickHouse {
    pub fn start(svc: &Services) -> ClickHouse {
        Self::start_at(svc, free_port())
    }

    /// Starts on `port` (e.g. one a process under test already points at).
    pub fn start_at(svc: &Services, port: u16) -> ClickHouse {
        let dir = std::env::temp_dir().join(unique("ow-clickhouse-"));
        std::fs::create_dir_all(&dir).expect("clickhouse data dir");
        let mut c = ClickHouse {
            python: svc.ch_python.clone(),
            dir,
            port,
            child: None,
        };
        c.restart();
        c
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "clickhouse already running");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/chserver.py");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("chserver.log"))
            .expect("chserver log");
        let child = Command::new(&self.python)
            .arg(script)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--path")
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("chserver log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting chserver with {}: {e}", self.python.display()));
        let child = self.child.insert(child);
        wait_port(
            self.port,
            Duration::from_secs(60),
            &self.dir.join("chserver.log"),
            child,
        );
    }

    /// Kills the process (SIGKILL: ClickHouse gone at once, as in a crash) and
    /// reaps it. A clean stop can take minutes while chdb's Kafka consumers close.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "testkit: clickhouse data and log kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn wait_port(port: u16, timeout: Duration, log: &Path, child: &mut Child) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let why = match exited {
                Some(status) => format!("exited ({status})"),
                None => format!("did not listen within {timeout:?}"),
            };
            panic!("process for port {port} {why}; log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Writes a MaxMind-format City database mapping each `/24` network of `nets`
/// (`(network address, country ISO code, country name, region, city)`) to its
/// place, for geo enrichment tests.
pub fn write_geo_mmdb(path: &Path, nets: &[(&str, &str, &str, &str, &str)]) {
    use maxminddb_writer::{metadata::IpVersion, paths::IpAddrWithMask, Database};
    use std::collections::BTreeMap;
    #[derive(serde::Serialize)]
    struct Named {
        #[serde(skip_serializing_if = "Option::is_none")]
        iso_code: Option<String>,
        names: BTreeMap<String, String>,
    }
    #[derive(serde::Serialize)]
    struct City {
        country: Named,
        subdivisions: Vec<Named>,
        city: Named,
    }
    let named = |iso: Option<&str>, en: &str| Named {
        iso_code: iso.map(str::to_string),
        names: BTreeMap::from([("en".to_string(), en.to_string())]),
    };
    let mut db = Database::default();
    db.metadata.ip_version = IpVersion::V6;
    db.metadata.database_type = "Overwatch-Test-City".into();
    db.metadata.languages = vec!["en".into()];
    db.metadata.binary_format_major_version = 2;
    for (net, iso, country, region, city) in nets {
        let data = db
            .insert_value(City {
                country: named(Some(iso), country),
                subdivisions: vec![named(None, region)],
                city: named(None, city),
            })
            .expect("insert value");
        let ip: std::net::IpAddr = net.parse().expect("network address");
        // IPv4 lives under ::/96 in an IPv6 tree.
        let v6 = match ip {
            std::net::IpAddr::V4(v4) => std::net::IpAddr::V6(v4.to_ipv6_compatible()),
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(v6),
        };
        db.insert_node(IpAddrWithMask::new(v6, 96 + 24), data);
    }
    let file = std::fs::File::create(path).expect("create mmdb");
    db.write_to(std::io::BufWriter::new(file))
        .expect("write mmdb");
}

/// Asserts that `promtool check metrics` accepts `exposition` (promtool is
/// installed by `make provision`; the test fails when it is missing).
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required: `make provision` installs it (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
