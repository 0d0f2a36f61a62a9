//! Black-box: the built `gateway` binary as a child process, configured through a
//! TOML file written from a test [`Config`] (as an operator would).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::config::Config;
use uuid::Uuid;

use super::SECRET;

pub struct GatewayProcess {
    pub child: Child,
    pub url: String,
    /// The operations listener (`/metrics`, detailed `/health`).
    pub ops_url: String,
    pub tenant: Uuid,
    /// Every line the process wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    config_file: std::path::PathBuf,
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

impl GatewayProcess {
    /// Starts the gateway for `cfg`'s broker, topics and ClickHouse with one
    /// static key for a fresh tenant, `extra` appended to its config file, and
    /// waits until it is ready.
    pub async fn start(cfg: &Config, extra: &str) -> GatewayProcess {
        Self::start_with_auth(cfg, None, extra).await
    }

    /// As [`GatewayProcess::start`], with `auth` (an `[auth]` TOML section) in
    /// place of the one fresh tenant's key.
    pub async fn start_with_auth(cfg: &Config, auth: Option<&str>, extra: &str) -> GatewayProcess {
        Self::start_full(cfg, auth, "", extra).await
    }

    /// As [`GatewayProcess::start`], with `gateway` (lines of the `[gateway]`
    /// section) added to the test's own.
    pub async fn start_tuned(cfg: &Config, gateway: &str, extra: &str) -> GatewayProcess {
        Self::start_full(cfg, None, gateway, extra).await
    }

    pub async fn start_full(
        cfg: &Config,
        auth: Option<&str>,
        gateway: &str,
        extra: &str,
    ) -> GatewayProcess {
        let tenant = Uuid::new_v4();
        let port = shared::testkit::free_port();
        let ops_port = shared::testkit::free_port();
        let auth = auth.map(str::to_string).unwrap_or_else(|| {
            format!(
                "[auth]\nclickhouse_keys = false\nkeys = [{{ tenant_id = \"{tenant}\", secret_sha256 = \"{}\", tier = \"paid\" }}]\n\n",
                shared::credential::hash_secret(SECRET)
            )
        });
        let mut text = String::new();
        let _ = write!(
            text,
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\noperations_listen = \"127.0.0.1:{ops_port}\"\nbroker_check_interval_ms = 200\n\
             shutdown_timeout_ms = 10000\n{gateway}\n\
             [kafka]\nbrokers = {}\ntopic_prefix = {}\npartitions = {}\n\n\
             [clickhouse]\nurl = {}\ndatabase = {}\n\n{auth}",
            toml_str(&cfg.kafka.brokers),
            toml_str(&cfg.kafka.topic_prefix),
            cfg.kafka.partitions,
            toml_str(&cfg.clickhouse.url),
            toml_str(&cfg.clickhouse.database),
        );
        for tier in ["free", "paid", "enterprise"] {
            let _ = write!(
                text,
                "[tiers.{tier}]\nevents_per_second = 1000000.0\nburst = 1000000\n\n"
            );
        }
        text.push_str(extra);
        let config_file = std::env::temp_dir().join(format!("ow-gw-{}.toml", Uuid::new_v4()));
        std::fs::write(&config_file, text).expect("write gateway config");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let child = spawn(&config_file, &stderr);
        let mut gw = GatewayProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            ops_url: format!("http://127.0.0.1:{ops_port}"),
            tenant,
            stderr,
            config_file,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let ready = format!("{}/health/ready", self.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(&ready).await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the gateway exited with {status} before it was ready:\n{}",
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the gateway was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILLs the process, then starts it again on the same port and
    /// configuration and waits until it is ready.
    pub async fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.config_file, &self.stderr);
        self.wait_ready().await;
    }

    pub fn key(&self) -> String {
        format!("{}:{}", self.tenant, SECRET)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr").join("\n")
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_file);
    }
}

fn spawn(config_file: &std::path::Path, stderr: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(config_file)
        .env_remove("OVERWATCH_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway binary");
    let pipe = child.stderr.take().expect("stderr pipe");
    let lines = Arc::clone(stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            lines.lock().expect("stderr lines").push(line);
        }
    });
    child
}

/// Sum of every sample of `name` in a Prometheus exposition whose labels
/// include all of `labels`.
pub fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    shared::runtime::metrics::parse_exposition(exposition)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .sum()
}
