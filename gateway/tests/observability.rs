//! Black-box observability: the built binary's `/metrics` counts exactly what it
//! accepted and passes `promtool check metrics`; SIGTERM under load loses no
//! acknowledged event and exits 0; an OTLP receiver on loopback gets the span of
//! an ingest request, carrying its request id, and JSON logs carry it too; large
//! requests reuse freed memory rather than page-faulting it in every time, and
//! what a burst grew goes back to the kernel once it is over.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::event;
use common::process::{metric_sum, GatewayProcess};
use rdkafka::consumer::StreamConsumer;
use rdkafka::Message;
use shared::testkit::{promtool_check, services};
use uuid::Uuid;

const TYPES: [&str; 5] = ["pageview", "click", "scroll", "performance", "custom"];

fn batch(n: usize, session: Uuid) -> (Vec<String>, serde_json::Value) {
    let events: Vec<serde_json::Value> = (0..n).map(|i| event(TYPES[i % 5], i, session)).collect();
    let ids = events
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect();
    (ids, serde_json::json!({ "events": events }))
}

async fn scrape(url: &str) -> String {
    let r = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(ct.starts_with("text/plain"), "{ct}");
    r.text().await.expect("body")
}

async fn post(gw: &GatewayProcess, body: &serde_json::Value) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}/ingest", gw.url))
        .bearer_auth(gw.key())
        .json(body)
        .send()
        .await
}

/// The process's threads by name (`/proc/<pid>/task/*/comm`), counted.
fn threads_of(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut named = std::collections::BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task dir");
    for t in tasks.flatten() {
        if let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) {
            let name = comm.trim().trim_end_matches(|c: char| c.is_ascii_digit());
            *named.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    named
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_the_threads_its_config_names() {
    // What an operator sees in `top -H`: `network_threads` serve connections,
    // `cpu_workers` decode and validate, and no more of either appear under
    // load (tokio's blocking pool used to start threads as it pleased).
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = GatewayProcess::start_tuned(
        &cfg,
        "network_threads = 1\ncpu_workers = 3\n",
        "[telemetry]\nsnapshot_interval_secs = 0\n",
    )
    .await;
    let session = Uuid::new_v4();
    // Large batches go to the workers, small ones stay on the network thread;
    // sent concurrently so that every worker is asked for.
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (_, body) = batch(if i % 2 == 0 { 400 } else { 1 }, session);
        let (url, key) = (format!("{}/ingest", gw.url), gw.key());
        posts.spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&body)
                .send();
            r.await.expect("post").status()
        });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    let threads = threads_of(gw.child.id());
    assert_eq!(threads.get("overwatch-cpu-"), Some(&3), "{threads:?}");
    let health: serde_json::Value = reqwest::get(format!("{}/health", gw.ops_url))
        .await
        .expect("health")
        .json()
        .await
        .expect("health json");
    assert_eq!(health["threads"]["network"], 1, "{health}");
    assert_eq!(health["threads"]["cpu_workers"], 3, "{health}");
}

/// Minor page faults of the process so far (`/proc/<pid>/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    after_name
        .split(' ')
        .nth(7)
        .and_then(|f| f.parse().ok())
        .expect("minflt")
}

/// `clients` clients, each sending `requests` copies of `body` one after
/// another; every one must be answered 200.
async fn send_concurrently(
    gw: &GatewayProcess,
    body: &bytes::Bytes,
    clients: usize,
    requests: usize,
) {
    let url = format!("{}/ingest", gw.url);
    let client = reqwest::Client::new();
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (url, key, body, client) = (url.clone(), gw.key(), body.clone(), client.clone());
        all.spawn(async move {
            for _ in 0..requests {
                let r = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("post");
                assert_eq!(r.status(), 200);
            }
        });
    }
    all.join_all().await;
}

/// A body of 1000 events.
fn large_body() -> bytes::Bytes {
    let (_, body) = batch(1000, Uuid::new_v4());
    bytes::Bytes::from(serde_json::to_vec(&body).expect("json"))
}

/// Page faults per 1000-event request once the gateway is warm, with
/// `CLIENTS` clients each sending one request after another (as the load
/// generator's 8 do).
async fn faults_per_large_request(gw: &GatewayProcess) -> f64 {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 12;
    let body = large_body();
    // Warm: every arena has grown to what such requests need.
    send_concurrently(gw, &body, CLIENTS, 4).await;
    let before = minor_faults(gw.child.id());
    send_concurrently(gw, &body, CLIENTS, REQUESTS).await;
    (minor_faults(gw.child.id()) - before) as f64 / (CLIENTS * REQUESTS) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_reuse_freed_memory_instead_of_faulting_it_in() {
    // With glibc's own moving thresholds the release gateway under the load
    // generator page-faulted 35-140 times per 1000-event request (~1.3 µs
    // each), its buffers returned to the kernel and mapped again;
    // `[gateway.allocator]` keeps up to a few MiB per arena for reuse. The
    // default must cover such a request: thresholds below its buffers
    // (64 KiB blocks mapped each time, 128 KiB kept) bring the faults back,
    // which shows this load is one the setting decides.
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    // No periodic release here: one inside the measured requests would fault
    // everything it released in again.
    let quiet = "[telemetry]\nsnapshot_interval_secs = 0\n";
    let kept = format!("{quiet}[gateway.allocator]\nrelease_interval_ms = 0\n");
    let gw = GatewayProcess::start_tuned(&cfg, "cpu_workers = 2\n", &kept).await;
    let kept = faults_per_large_request(&gw).await;
    drop(gw);
    let small = format!(
        "{quiet}[gateway.allocator]\nmmap_threshold_bytes = 65536\ntrim_threshold_bytes = 131072\n\
         release_interval_ms = 0\n"
    );
    let gw = GatewayProcess::start_tuned(&cfg, "cpu_workers = 2\n", &small).await;
    let returned = faults_per_large_request(&gw).await;
    assert!(
        kept < 10.0,
        "{kept:.1} page faults per 1000-event request with the default [gateway.allocator] \
         ({returned:.1} with thresholds below the request's buffers)"
    );
    assert!(
        returned > 50.0,
        "thresholds below the request's buffers gave {returned:.1} faults per 1000-event \
         request: this load no longer shows what [gateway.allocator] decides"
    );
}

/// The process's resident set now and at its highest so far, in MiB
/// (`VmRSS` and `VmHWM` of `/proc/<pid>/status`).
fn resident_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| -> f64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in /proc status"));
        let kib: f64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("kB");
        kib / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Waits (scraping `/metrics`) until the gateway has checked its free memory
/// `n` more times; the checks are what is waited for, not a time.
async fn checks_pass(gw: &GatewayProcess, n: f64) {
    let count = |text: &str| metric_sum(text, "overwatch_allocator_checks_total", &[]);
    let start = count(&scrape(&gw.ops_url).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if count(&scrape(&gw.ops_url).await) >= start + n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway checked its free memory fewer than {n} times in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_burst_grew_goes_back_to_the_kernel_after_it() {
    // During a one-hour soak RSS rose in steps that lasted for minutes: glibc
    // returns only an arena's free top, so memory a burst grew stayed
    // resident wherever a block still in use sat above it. A check that finds
    // more free memory resident than `release_above_bytes` hands the free
    // pages inside every arena back; without it RSS after the burst stays
    // where the burst left it. The bound here is 4 MiB: free memory up to the
    // bound may stay resident, and with 16 MiB that alone came within a
    // mebibyte of the quarter of the burst's growth this test allows (a CI
    // failure: 6.7 MiB above steady against 6.6 allowed).
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = GatewayProcess::start_tuned(
        &cfg,
        "cpu_workers = 2\n",
        "[telemetry]\nsnapshot_interval_secs = 0\n[gateway.allocator]\nrelease_interval_ms = 300\n\
         release_above_bytes = 4194304\n",
    )
    .await;
    let pid = gw.child.id();
    let body = large_body();
    // Steady load of one client, then what stays resident after it.
    send_concurrently(&gw, &body, 1, 4).await;
    checks_pass(&gw, 2.0).await;
    let (steady, _) = resident_mib(pid);
    let released = |text: &str| metric_sum(text, "overwatch_allocator_releases_total", &[]);
    let before = released(&scrape(&gw.ops_url).await);
    // A burst: many 1000-event requests at once. Checks run during it
    // too, so its own peak is what it grew to.
    send_concurrently(&gw, &body, 48, 2).await;
    checks_pass(&gw, 2.0).await;
    let (after, burst) = resident_mib(pid);
    assert!(
        burst - steady > 16.0,
        "the burst grew RSS only from {steady:.1} to {burst:.1} MiB: this load no longer \
         shows what the release decides"
    );
    assert!(
        after - steady < (burst - steady) / 4.0,
        "RSS {steady:.1} MiB before the burst, {burst:.1} MiB after it and still {after:.1} MiB \
         after two checks of the free memory kept"
    );
    // What the checks report is valid exposition, and says what they did.
    let text = scrape(&gw.ops_url).await;
    promtool_check(&text);
    assert!(released(&text) > before, "{text}");
    assert!(
        metric_sum(&text, "overwatch_allocator_released_bytes_total", &[]) > 0.0,
        "{text}"
    );
    assert!(
        metric_sum(&text, "overwatch_allocator_in_use_bytes", &[]) > 0.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_not_released_while_what_is_kept_stays_within_the_bound() {
    // Releasing at every interval took 10-15 MB from steady load each time,
    // which its next requests faulted in again: RSS went up and down by a
    // tenth every ten seconds. With the defaults a release runs only when
    // the free memory kept resident exceeds the memory bound's term for it.
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 1).await;
    let gw = GatewayProcess::start_tuned(
        &cfg,
        "cpu_workers = 2\nnetwork_threads = 2\n",
        "[telemetry]\nsnapshot_interval_secs = 0\n",
    )
    .await;
    let body = large_body();
    send_concurrently(&gw, &body, 2, 6).await;
    checks_pass(&gw, 2.0).await;
    let text = scrape(&gw.ops_url).await;
    let kept = metric_sum(&text, "overwatch_allocator_kept_bytes", &[]);
    let in_use = metric_sum(&text, "overwatch_allocator_in_use_bytes", &[]);
    // (2 CPU workers + 2 network threads + librdkafka's broker thread) × 8 MiB.
    let limit = 5.0 * 8.0 * 1048576.0;
    assert!(
        kept > 0.0 && in_use > 0.0 && kept < limit,
        "kept {kept} bytes (limit {limit}), in use {in_use}: {text}"
    );
    assert_eq!(
        metric_sum(&text, "overwatch_allocator_releases_total", &[]),
        0.0,
        "a release ran with {kept} bytes kept, below the limit of {limit}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_counter_rises_by_exactly_what_was_accepted() {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 2).await;
    let gw = GatewayProcess::start(&cfg, "[telemetry]\nsnapshot_interval_secs = 0\n").await;
    let before = scrape(&gw.ops_url).await;
    let accepted = |text: &str| metric_sum(text, "overwatch_events_accepted_total", &[]);
    let session = Uuid::new_v4();
    let mut sent = 0;
    for n in [50usize, 50, 37] {
        let (_, body) = batch(n, session);
        let r = post(&gw, &body).await.expect("post");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        sent += n;
    }
    // A refused batch (5 events, one invalid) counts as rejected, not accepted.
    let (_, mut bad) = batch(5, session);
    bad["events"][2]["timestamp"] = "yesterday".into();
    assert_eq!(post(&gw, &bad).await.expect("post").status(), 422);
    let unauthorized = reqwest::Client::new()
        .post(format!("{}/ingest", gw.url))
        .bearer_auth(format!("{}:wrong", gw.tenant))
        .json(&bad)
        .send()
        .await
        .expect("post");
    assert_eq!(unauthorized.status(), 401);

    let after = scrape(&gw.ops_url).await;
    assert_eq!(accepted(&after) - accepted(&before), sent as f64);
    assert_eq!(
        metric_sum(
            &after,
            "overwatch_events_accepted_total",
            &[("tier", "paid")]
        ),
        sent as f64
    );
    assert_eq!(
        metric_sum(
            &after,
            "overwatch_events_rejected_total",
            &[("reason", "validation_failed"), ("tier", "paid")]
        ),
        5.0
    );
    assert_eq!(
        metric_sum(
            &after,
            "overwatch_ingest_rejections_total",
            &[("reason", "unauthorized"), ("tier", "unknown")]
        ),
        1.0
    );
    assert_eq!(
        metric_sum(
            &after,
            "overwatch_http_requests_total",
            &[("route", "/ingest"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        metric_sum(
            &after,
            "overwatch_http_request_duration_seconds_count",
            &[("route", "/ingest")]
        ),
        5.0
    );
    // The roadmap's eleven latency buckets, 1 ms … 10 s, plus +Inf.
    let buckets: Vec<String> = shared::runtime::metrics::parse_exposition(&after)
        .into_iter()
        .filter(|s| s.name == "overwatch_http_request_duration_seconds_bucket")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "route" && v == "/ingest"))
        .filter_map(|s| {
            s.labels
                .into_iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v)
        })
        .collect();
    assert_eq!(buckets.len(), 12, "{buckets:?}");
    assert_eq!(buckets.first().map(String::as_str), Some("0.001"));
    assert!(metric_sum(&after, "overwatch_ingest_received_bytes_total", &[]) > 0.0);
    assert!(
        metric_sum(
            &after,
            "overwatch_producer_delivery_duration_seconds_count",
            &[]
        ) >= 3.0
    );
    assert_eq!(metric_sum(&after, "overwatch_broker_up", &[]), 1.0);
    assert_eq!(metric_sum(&after, "overwatch_ready", &[]), 1.0);
    // One user agent per batch: three shared-cache lookups at most, memo hits for the rest.
    assert!(
        metric_sum(
            &after,
            "overwatch_enrich_cache_lookups_total",
            &[("cache", "ua_request"), ("result", "hit")]
        ) >= (sent - 3) as f64
    );
    promtool_check(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_statistics_reach_metrics() {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 2).await;
    let gw = GatewayProcess::start(
        &cfg,
        "[telemetry]\nsnapshot_interval_secs = 0\nkafka_statistics_interval_ms = 100\n",
    )
    .await;
    let (_, body) = batch(10, Uuid::new_v4());
    assert_eq!(post(&gw, &body).await.expect("post").status(), 200);
    let text =
        shared::testkit::eventually("librdkafka statistics", Duration::from_secs(10), || async {
            let t = scrape(&gw.ops_url).await;
            (t.contains("overwatch_producer_queue_messages")
                && t.contains("overwatch_producer_broker_rtt_seconds"))
            .then_some(t)
        })
        .await;
    promtool_check(&text);
}

/// A consumer of every event topic of `cfg`, from the start, in a fresh group.
fn from_the_start(cfg: &shared::Config) -> StreamConsumer {
    let topics = cfg.kafka.topics();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    common::consumer_from_start(cfg, &topics)
}

/// Consumes every event topic of `cfg` from the start until all of `want` were
/// seen (or 60 s pass); returns the ids seen.
async fn ids_on_topics(cfg: &shared::Config, want: &HashSet<String>) -> HashSet<String> {
    let consumer = from_the_start(cfg);
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&seen) && tokio::time::Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            // One event per line: a request's events of one topic and key share a message.
            for row in m.payload().expect("payload").split(|b| *b == b'\n') {
                let v: serde_json::Value = serde_json::from_slice(row).expect("json row");
                seen.insert(v["id"].as_str().expect("id").to_string());
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_acknowledged_event_and_exits_zero() {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 2).await;
    let mut gw = GatewayProcess::start(&cfg, "[telemetry]\nsnapshot_interval_secs = 0\n").await;
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<Vec<u16>>> = Arc::default();
    let mut loaders = Vec::new();
    for _ in 0..4 {
        let (acked, stop, statuses) =
            (Arc::clone(&acked), Arc::clone(&stop), Arc::clone(&statuses));
        let (url, key) = (gw.url.clone(), gw.key());
        loaders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let session = Uuid::new_v4();
            while !stop.load(Ordering::Relaxed) {
                let (ids, body) = batch(20, session);
                match client
                    .post(format!("{url}/ingest"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        statuses.lock().expect("statuses").push(status);
                        if status == 200 {
                            acked.lock().expect("acked").extend(ids);
                        }
                    }
                    // The listener closed: the gateway is going away.
                    Err(_) => break,
                }
            }
        }));
    }
    // SIGTERM in the middle of the load: once 400 events were acknowledged.
    shared::testkit::eventually("400 acknowledged events", Duration::from_secs(60), || {
        let n = acked.lock().expect("acked").len();
        async move { (n >= 400).then_some(()) }
    })
    .await;
    gw.terminate();
    let status = gw.wait(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.await.expect("loader");
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        gw.stderr_text()
    );
    let stderr = gw.stderr_text();
    assert!(stderr.contains("producer flushed"), "{stderr}");
    let acked = acked.lock().expect("acked").clone();
    let seen = ids_on_topics(&cfg, &acked).await;
    let lost: Vec<&String> = acked.difference(&seen).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events are not on the broker",
        lost.len(),
        acked.len()
    );
    // Every answer was a success or a clear 503 (never a 5xx of another kind).
    let statuses = statuses.lock().expect("statuses").clone();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}

/// A loopback OTLP/HTTP receiver: keeps every `POST /v1/traces` body.
async fn otlp_receiver() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let store = Arc::clone(&bodies);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = Arc::clone(&store);
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            if path == "/v1/traces" {
                                store.lock().expect("bodies").push(body.to_vec());
                            }
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_receiver_gets_the_ingest_span_with_its_request_id() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 2).await;
    let (endpoint, bodies) = otlp_receiver().await;
    let mut gw = GatewayProcess::start(
        &cfg,
        &format!(
            "[telemetry]\nsnapshot_interval_secs = 0\notlp_endpoint = \"{endpoint}\"\nsampling_ratio = 1.0\n\n\
             [log]\nformat = \"json\"\nlevel = \"info,gateway=debug\"\n"
        ),
    )
    .await;
    let rid = format!("otlp-{}", Uuid::new_v4());
    let (_, body) = batch(3, Uuid::new_v4());
    let r = reqwest::Client::new()
        .post(format!("{}/ingest", gw.url))
        .bearer_auth(gw.key())
        .header("x-request-id", &rid)
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    // Shutdown flushes the span exporter.
    gw.terminate();
    assert_eq!(gw.wait(Duration::from_secs(30)).await.code(), Some(0));

    let bodies = bodies.lock().expect("bodies").clone();
    assert!(!bodies.is_empty(), "the receiver got no export");
    let mut found = None;
    for b in &bodies {
        let req = ExportTraceServiceRequest::decode(&b[..]).expect("OTLP protobuf");
        for rs in &req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.clone());
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    let has_rid = span.attributes.iter().any(|a| {
                        a.key == "request_id"
                            && a.value.as_ref().and_then(|v| v.value.clone())
                                == Some(Value::StringValue(rid.clone()))
                    });
                    if span.name == "request" && has_rid {
                        found = Some(service.clone());
                    }
                }
            }
        }
    }
    assert_eq!(
        found,
        Some(Some(Value::StringValue("gateway".into()))),
        "no `request` span with request_id {rid} from service gateway"
    );
    // JSON log lines inside the request carry its id.
    let stderr = gw.stderr_text();
    let line = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "events accepted")
        .unwrap_or_else(|| panic!("no JSON `events accepted` line in:\n{stderr}"));
    assert_eq!(line["span"]["request_id"], rid.as_str(), "{line}");
}

/// The caller's trace continues into the broker: every message of a traced
/// request carries a W3C `traceparent` of the caller's trace id, so a slow
/// event can be followed from the SDK through the gateway to the consumer.
#[tokio::test]
async fn messages_carry_the_requests_trace_context() {
    let svc = services();
    let cfg = shared::testkit::config(&svc);
    shared::testkit::create_topics(&cfg, 2).await;
    let (endpoint, _bodies) = otlp_receiver().await;
    let gw = GatewayProcess::start(
        &cfg,
        &format!(
            "[telemetry]\nsnapshot_interval_secs = 0\notlp_endpoint = \"{endpoint}\"\nsampling_ratio = 1.0\n\n"
        ),
    )
    .await;
    let trace_id = Uuid::new_v4().simple().to_string();
    let (ids, body) = batch(5, Uuid::new_v4());
    let r = reqwest::Client::new()
        .post(format!("{}/ingest", gw.url))
        .bearer_auth(gw.key())
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);

    let consumer = from_the_start(&cfg);
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        let (m, rows) = common::next_rows(&consumer).await;
        let id = rows
            .iter()
            .map(|v| v["id"].as_str().expect("id"))
            .collect::<Vec<_>>()
            .join(",");
        use rdkafka::message::Headers;
        let traceparent = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("message {id} has no traceparent header"));
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "message {id}: traceparent {traceparent} is not of the caller's trace {trace_id}"
        );
        seen.extend(
            rows.iter()
                .map(|v| v["id"].as_str().expect("id").to_string()),
        );
    }
}
