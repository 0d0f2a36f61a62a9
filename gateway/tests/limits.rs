//! Body limits against the real gateway binary: gzip bodies, the compressed and
//! decompressed caps, and a 100 MB gzip bomb refused with the gateway's memory
//! staying bounded.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shared::testkit::{eventually, free_port, services};
use uuid::Uuid;

/// Peak resident memory of the gateway we allow while it refuses a bomb (its
/// baseline, mostly the user-agent and bot automata, is ~50 MiB in a debug build).
const RSS_BOUND_KIB: u64 = 128 * 1024;
/// How much the bomb may add to the peak: the 10 MiB decompression cap, the 1 MiB
/// body and working room, far below the bomb's 100 MiB.
const BOMB_GROWTH_KIB: u64 = 24 * 1024;

struct Gateway {
    child: Child,
    port: u16,
    key: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    async fn start() -> Gateway {
        let svc = services();
        let cfg = shared::testkit::config(&svc);
        shared::testkit::create_topics(&cfg, 1).await;
        let port = free_port();
        let tenant = Uuid::new_v4();
        let secret = "limits-secret";
        let keys = format!(
            "[{{tenant_id = \"{tenant}\", secret_sha256 = \"{}\"}}]",
            shared::credential::hash_secret(secret)
        );
        let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .env_remove("OVERWATCH_CONFIG")
            .env("OVERWATCH__GATEWAY__LISTEN", format!("127.0.0.1:{port}"))
            .env("OVERWATCH__KAFKA__BROKERS", &cfg.kafka.brokers)
            .env("OVERWATCH__KAFKA__TOPIC_PREFIX", &cfg.kafka.topic_prefix)
            .env("OVERWATCH__AUTH__KEYS", keys)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let gw = Gateway {
            child,
            port,
            key: format!("{tenant}:{secret}"),
        };
        let url = gw.url("/health/live");
        eventually("the gateway to listen", Duration::from_secs(20), || {
            let url = url.clone();
            async move { reqwest::get(&url).await.ok().map(|_| ()) }
        })
        .await;
        gw
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    async fn post_gzip(&self, body: Vec<u8>) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(self.url("/ingest"))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

fn gzip_stream(total: usize, byte: u8) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![byte; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        e.write_all(&chunk[..n]).expect("compress");
        left -= n;
    }
    e.finish().expect("finish")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_and_bombs() {
    let gw = Gateway::start().await;

    // A gzip body is accepted.
    let event = serde_json::json!({"events": [{
        "id": Uuid::new_v4().to_string(), "session_id": Uuid::new_v4().to_string(),
        "timestamp": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("now"),
        "type": "pageview", "path": "/gz"}]});
    let (status, body) = gw.post_gzip(gzip_stream(0, 0)).await;
    assert_eq!(status, 400, "an empty document is malformed: {body}");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(event.to_string().as_bytes()).expect("gz");
    let (status, body) = gw.post_gzip(e.finish().expect("gz")).await;
    assert_eq!(status, 200, "{body}");

    // Corrupt gzip.
    let (status, body) = gw.post_gzip(b"definitely not gzip".to_vec()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_body"))
    );

    // 100 MB of whitespace compresses to ~100 KB: under the 1 MiB wire cap, far over
    // the 10 MiB decompressed cap.
    let before = gw.peak_rss_kib();
    let bomb = gzip_stream(100 * 1024 * 1024, b' ');
    assert!(bomb.len() < 1024 * 1024, "bomb is {} bytes", bomb.len());
    let (status, body) = gw.post_gzip(bomb).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "decompressed_too_large");
    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS: {before} KiB before the bomb, {peak} KiB after");
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB exceeds {RSS_BOUND_KIB} KiB"
    );
    assert!(
        peak - before < BOMB_GROWTH_KIB,
        "the bomb grew the peak by {} KiB",
        peak - before
    );

    // Still serving.
    assert_eq!(
        reqwest::get(gw.url("/health/live"))
            .await
            .expect("live")
            .status(),
        200
    );
}
