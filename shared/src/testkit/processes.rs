//! Private servers a test may start, stop and restart: a tansu broker, an
//! S3-compatible server (s3s-fs) and a ClickHouse front.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, unique, Services};
use crate::config::{ColdStorageConfig, Config, S3ColdStorage};

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

    /// Freezes the process (SIGSTOP), as a network partition looks to its
    /// clients: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused process go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("broker running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .unwrap_or_else(|e| panic!("kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} {} failed", child.id());
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
