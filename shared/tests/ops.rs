//! The operations layer both binaries serve (`shared::runtime::ops`), over real
//! sockets: the four endpoints, 404/405, readiness with reasons and
//! Retry-After, the header timeout a slow client meets, the connection limit,
//! and a drain at shutdown that does not wait for idle keep-alive connections.
//! The `Operations` below is a test double of a binary (no real peer needed:
//! the server under test is the real one).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::runtime::ops::{self, Operations, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Probe {
    broken: AtomicBool,
}

impl Operations for Probe {
    async fn not_ready(&self) -> Vec<String> {
        if self.broken.load(Ordering::Relaxed) {
            vec!["the probe is broken".to_string()]
        } else {
            Vec::new()
        }
    }

    async fn health(&self) -> (Vec<String>, serde_json::Value) {
        (
            self.not_ready().await,
            json!({"components": {"probe": {"status": "up"}}}),
        )
    }
}

async fn start(
    settings: Settings,
) -> (
    std::net::SocketAddr,
    Arc<Probe>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let probe = Arc::new(Probe::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ops::serve(listener, Arc::clone(&probe), settings, async {
        let _ = rx.await;
    }));
    (addr, probe, tx, server)
}

/// Reads until the peer closes, or `limit` passes; the bytes read and whether it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

#[tokio::test]
async fn the_endpoints_answer_as_documented() {
    let (addr, probe, stop, server) = start(Settings {
        retry_after_secs: 7,
        ..Settings::default()
    })
    .await;
    let url = |p: &str| format!("http://{addr}{p}");
    let live = reqwest::get(url("/health/live")).await.expect("live");
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(url("/health/ready")).await.expect("ready");
    assert_eq!(ready.status(), 200);
    let h: serde_json::Value = reqwest::get(url("/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("json");
    assert_eq!(h["status"], "ok");
    assert_eq!(h["components"]["probe"]["status"], "up", "{h}");
    assert!(h["uptime_seconds"].is_u64(), "{h}");
    let m = reqwest::get(url("/metrics")).await.expect("metrics");
    assert_eq!(m.status(), 200);
    assert!(m.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    assert!(m
        .text()
        .await
        .expect("text")
        .contains("overwatch_build_info"));

    probe.broken.store(true, Ordering::Relaxed);
    let r = reqwest::get(url("/health/ready")).await.expect("ready");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["reasons"][0], "the probe is broken");
    let h = reqwest::get(url("/health")).await.expect("health");
    assert_eq!(h.status(), 503);

    assert_eq!(
        reqwest::get(url("/ingest")).await.expect("404").status(),
        404
    );
    let post = reqwest::Client::new()
        .post(url("/health"))
        .send()
        .await
        .expect("405");
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");
    let _ = stop.send(());
    server.await.expect("server");
}

#[tokio::test]
async fn a_slow_head_is_cut_off_and_others_are_still_served() {
    let (addr, _probe, stop, server) = start(Settings {
        header_timeout: Duration::from_millis(300),
        max_connections: 2,
        ..Settings::default()
    })
    .await;
    // Half a request line, then nothing: closed after the header timeout.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "a slow head is never cut off");
    assert!(started.elapsed() < Duration::from_secs(3));
    // At the connection limit a newcomer is closed at once. Two keep-alive
    // connections that were each answered hold both slots (one refused while
    // the slow connection's slot was still being released is opened again).
    let mut held: Vec<TcpStream> = Vec::new();
    while held.len() < 2 {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 1024];
        if let Ok(n @ 1..) = c.read(&mut buf).await {
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            held.push(c);
        }
    }
    let mut extra = TcpStream::connect(addr).await.expect("3");
    let _ = extra
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let (got, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(
        closed && got.is_empty(),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(held);
    let ok = shared::testkit::eventually("a slot again", Duration::from_secs(5), || async {
        let r = reqwest::get(format!("http://{addr}/health/live"))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    });
    ok.await;
    let _ = stop.send(());
    server.await.expect("server");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_without_waiting_for_the_drain_bound() {
    let (addr, _probe, stop, server) = start(Settings {
        drain_timeout: Duration::from_secs(20),
        ..Settings::default()
    })
    .await;
    // A keep-alive connection that answered once and now sits idle.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the drain does not wait for idle connections")
        .expect("server");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
