//! The load driver: open loop (a target event rate per phase, latency measured
//! from the intended send time, so a slow server cannot hide its queueing) or
//! closed loop (N clients as fast as the server answers). Reports throughput,
//! latency percentiles, statuses, and the gateway's CPU and memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::procstat;
use crate::traffic::{Format, Request, Tenant, Traffic};

#[derive(Debug, Clone)]
pub enum Mode {
    /// Target events/s for each (rate, duration) phase.
    Open(Vec<(f64, Duration)>),
    /// `concurrency` clients, each sending as soon as its last answer arrived.
    Closed {
        concurrency: usize,
        duration: Duration,
    },
}

/// What the requests ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `POST` batches of events in `format` to `path` (the format's own path by default).
    Events {
        format: Format,
        path: Option<String>,
    },
    /// `GET` this path, no body (a probe, to measure the HTTP path alone).
    Get(String),
}

#[derive(Clone)]
pub struct Options {
    pub url: String,
    pub target: Target,
    pub traffic: Traffic,
    pub mode: Mode,
    /// Requests generated up front and re-sent in turn (0: a fresh request, with
    /// fresh event ids, for every send; needed to check for lost events).
    pub pool: usize,
    /// Write the id of every acknowledged event here (one per line).
    pub ids_out: Option<std::path::PathBuf>,
    /// The gateway's process id, for CPU and memory.
    pub pid: Option<u32>,
    /// Open loop: most requests in flight; beyond it the client skips (counted).
    pub max_outstanding: usize,
    /// Ends the run early when set (the report covers what was sent).
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Retries per request after a retryable answer (429, 5xx, timeout, refused
    /// or reset connection), as SDKs do: the same body (so the same event ids)
    /// after `Retry-After` or an exponential backoff. 0: every answer is final.
    pub retries: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct PhaseReport {
    pub target_events_per_sec: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub events_sent: u64,
    pub events_accepted: u64,
    pub events_per_sec: f64,
    pub requests_per_sec: f64,
    pub latency_ms: Latency,
    pub statuses: BTreeMap<String, u64>,
    pub client_skipped: u64,
    /// Requests sent again after a retryable answer (each retry counted).
    pub retries: u64,
    pub gateway_cpu_seconds: Option<f64>,
    /// Gateway CPU µs per accepted event.
    pub cpu_us_per_event: Option<f64>,
    /// Gateway CPU µs per answered request (any status).
    pub cpu_us_per_request: Option<f64>,
    /// The load generator's own CPU seconds in the phase, and the cores that
    /// is (CPU seconds / wall seconds): near the core count, it was saturated.
    pub client_cpu_seconds: Option<f64>,
    pub client_cores: Option<f64>,
    pub gateway_rss_end_mib: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub phases: Vec<PhaseReport>,
    pub gateway_peak_rss_mib: Option<f64>,
    /// (seconds since start, RSS MiB) every second.
    pub rss_samples_mib: Vec<(f64, f64)>,
}

struct Tally {
    latency: Mutex<Histogram<u64>>,
    statuses: Mutex<BTreeMap<String, u64>>,
    requests: AtomicU64,
    sent: AtomicU64,
    accepted: AtomicU64,
    skipped: AtomicU64,
    retries: AtomicU64,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 120_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            ),
            statuses: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }
}

struct Sender {
    client: reqwest::Client,
    url: String,
    target: Target,
    keys: Vec<String>,
    retries: u32,
    ids: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
}

impl Sender {
    async fn attempt(&self, r: &Request) -> (String, Option<Duration>) {
        let req = match &self.target {
            Target::Get(_) => self.client.get(&self.url),
            Target::Events { format, .. } => {
                let mut req = self
                    .client
                    .post(&self.url)
                    .header("content-type", format.content_type())
                    .header("x-forwarded-for", &r.client_ip)
                    .body(r.body.clone());
                // PostHog's SDKs put the key in the body; NDJSON peers take none.
                if *format == Format::Native {
                    req = req.bearer_auth(&self.keys[r.tenant]);
                }
                if r.gzip {
                    req = req.header("content-encoding", "gzip");
                }
                req
            }
        };
        match req.send().await {
            Ok(resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let s = resp.status().as_u16();
                let _ = resp.bytes().await;
                (s.to_string(), retry_after)
            }
            Err(e) if e.is_timeout() => ("timeout".to_string(), None),
            Err(_) => ("connection_error".to_string(), None),
        }
    }

    async fn send(&self, r: &Request, intended: Instant, tally: &Tally) {
        let mut attempt = 0u32;
        let status = loop {
            let (status, retry_after) = self.attempt(r).await;
            if attempt >= self.retries || !retryable(&status) {
                break status;
            }
            tally.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff(attempt, retry_after)).await;
            attempt += 1;
        };
        let us = intended.elapsed().as_micros().max(1) as u64;
        if let Ok(mut h) = tally.latency.lock() {
            let _ = h.record(us.min(120_000_000));
        }
        tally.requests.fetch_add(1, Ordering::Relaxed);
        tally.sent.fetch_add(r.events as u64, Ordering::Relaxed);
        if status == "200" {
            tally.accepted.fetch_add(r.events as u64, Ordering::Relaxed);
            if let Some(out) = &self.ids {
                if let Ok(mut w) = out.lock() {
                    for id in &r.ids {
                        let _ = writeln!(w, "{id}");
                    }
                }
            }
        }
        if let Ok(mut s) = tally.statuses.lock() {
            *s.entry(status).or_insert(0) += 1;
        }
    }
}

/// Whether an SDK would send the same request again after this answer.
fn retryable(status: &str) -> bool {
    matches!(status, "timeout" | "connection_error" | "429") || status.starts_with('5')
}

/// The pause before retry `attempt` (0-based): the server's `Retry-After` when it
/// gave one (at most 10 s), else 100 ms doubling up to 3.2 s.
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    retry_after
        .map(|d| d.min(Duration::from_secs(10)))
        .unwrap_or_else(|| Duration::from_millis(100 << attempt.min(5)))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Feeds requests: from a pool generated before the clock starts (so generation
/// never shows up as latency), or freshly generated on a thread.
/// Also returns the mean events per request of the pool (the open loop paces by
/// it), or of the distribution when requests are generated fresh.
async fn feeder(opts: &Options) -> Result<(mpsc::Receiver<Request>, f64), String> {
    let (tx, rx) = mpsc::channel::<Request>(256);
    let mut traffic = opts.traffic.clone();
    let pool = opts.pool;
    let reqs: Vec<Request> = if pool > 0 {
        let mut t = traffic.clone();
        tokio::task::spawn_blocking(move || (0..pool).map(|_| t.request(now_ms())).collect())
            .await
            .map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let mean = if reqs.is_empty() {
        opts.traffic.sizes.mean()
    } else {
        reqs.iter().map(|r| r.events).sum::<usize>() as f64 / reqs.len() as f64
    };
    std::thread::spawn(move || {
        if pool > 0 {
            for r in reqs.iter().cycle() {
                if tx.blocking_send(r.clone()).is_err() {
                    return;
                }
            }
        } else {
            loop {
                if tx.blocking_send(traffic.request(now_ms())).is_err() {
                    return;
                }
            }
        }
    });
    Ok((rx, mean))
}

pub async fn run(opts: Options) -> Result<Report, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        // As SDKs do: drop an idle connection before the server's idle timeout
        // (`gateway.idle_timeout_ms`, 30 s) can close it under a new request.
        .pool_idle_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let ids = match &opts.ids_out {
        Some(p) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )))),
        None => None,
    };
    let path = match &opts.target {
        Target::Get(p) => p.as_str(),
        Target::Events { format, path } => path.as_deref().unwrap_or(format.default_path()),
    };
    let sender = Arc::new(Sender {
        client,
        url: format!("{}{path}", opts.url.trim_end_matches('/')),
        target: opts.target.clone(),
        keys: (0..opts.traffic.tenants)
            .map(|i| Tenant::nth(i).key())
            .collect(),
        ids: ids.clone(),
        retries: opts.retries,
    });
    let (feed, mean) = feeder(&opts).await?;
    let feed = Arc::new(tokio::sync::Mutex::new(feed));
    let rss = opts
        .pid
        .map(|pid| procstat::sample_rss(pid, Duration::from_secs(1)));
    let mut report = Report::default();
    let phases: Vec<(Option<f64>, Duration, usize)> = match &opts.mode {
        Mode::Open(p) => p.iter().map(|(r, d)| (Some(*r), *d, 0)).collect(),
        Mode::Closed {
            concurrency,
            duration,
        } => vec![(None, *duration, *concurrency)],
    };
    for (rate, duration, concurrency) in phases {
        let tally = Tally::new();
        let cpu0 = opts.pid.and_then(procstat::cpu_seconds);
        let client0 = procstat::cpu_seconds(std::process::id());
        let started = Instant::now();
        let deadline = started + duration;
        match rate {
            Some(rate) => {
                let outstanding = Arc::new(AtomicUsize::new(0));
                let period = Duration::from_secs_f64(mean / rate.max(0.001));
                let mut next = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                let stopped = || {
                    opts.stop
                        .as_ref()
                        .is_some_and(|s| s.load(Ordering::Relaxed))
                };
                while next < deadline && !stopped() {
                    tokio::time::sleep_until(next.into()).await;
                    let Some(r) = feed.lock().await.recv().await else {
                        break;
                    };
                    if outstanding.load(Ordering::Relaxed) >= opts.max_outstanding {
                        tally.skipped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        outstanding.fetch_add(1, Ordering::Relaxed);
                        let (s, t, o, intended) = (
                            Arc::clone(&sender),
                            Arc::clone(&tally),
                            Arc::clone(&outstanding),
                            next,
                        );
                        tasks.spawn(async move {
                            s.send(&r, intended, &t).await;
                            o.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    while tasks.try_join_next().is_some() {}
                    next += period;
                }
                while tasks.join_next().await.is_some() {}
            }
            None => {
                let mut workers = tokio::task::JoinSet::new();
                for _ in 0..concurrency {
                    let (s, t, feed) = (Arc::clone(&sender), Arc::clone(&tally), Arc::clone(&feed));
                    let stop = opts.stop.clone();
                    workers.spawn(async move {
                        while Instant::now() < deadline {
                            if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                                break;
                            }
                            let r = feed.lock().await.recv().await;
                            let Some(r) = r else { break };
                            s.send(&r, Instant::now(), &t).await;
                        }
                    });
                }
                while workers.join_next().await.is_some() {}
            }
        }
        let secs = started.elapsed().as_secs_f64();
        let cpu = match (cpu0, opts.pid.and_then(procstat::cpu_seconds)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let client_cpu = match (client0, procstat::cpu_seconds(std::process::id())) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let accepted = tally.accepted.load(Ordering::Relaxed);
        let requests = tally.requests.load(Ordering::Relaxed);
        let h = tally.latency.lock().map_err(|e| e.to_string())?;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        report.phases.push(PhaseReport {
            target_events_per_sec: rate,
            seconds: secs,
            requests,
            events_sent: tally.sent.load(Ordering::Relaxed),
            events_accepted: accepted,
            events_per_sec: accepted as f64 / secs,
            requests_per_sec: requests as f64 / secs,
            latency_ms: Latency {
                p50: ms(0.50),
                p95: ms(0.95),
                p99: ms(0.99),
                max: h.max() as f64 / 1000.0,
            },
            statuses: tally.statuses.lock().map_err(|e| e.to_string())?.clone(),
            client_skipped: tally.skipped.load(Ordering::Relaxed),
            retries: tally.retries.load(Ordering::Relaxed),
            gateway_cpu_seconds: cpu,
            cpu_us_per_event: cpu
                .filter(|_| accepted > 0)
                .map(|c| c * 1e6 / accepted as f64),
            cpu_us_per_request: cpu
                .filter(|_| requests > 0)
                .map(|c| c * 1e6 / requests as f64),
            client_cpu_seconds: client_cpu,
            client_cores: client_cpu.map(|c| c / secs),
            gateway_rss_end_mib: opts
                .pid
                .and_then(procstat::memory)
                .map(|(rss, _)| rss as f64 / 1048576.0),
        });
    }
    if let Some(ids) = ids {
        if let Ok(mut w) = ids.lock() {
            w.flush().map_err(|e| e.to_string())?;
        }
    }
    if let Some((h, samples)) = rss {
        h.abort();
        report.rss_samples_mib = samples
            .lock()
            .map(|s| s.iter().map(|(t, b)| (*t, *b as f64 / 1048576.0)).collect())
            .unwrap_or_default();
    }
    report.gateway_peak_rss_mib = opts
        .pid
        .and_then(procstat::memory)
        .map(|(_, hwm)| hwm as f64 / 1048576.0);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;

    use super::{Mode, Options, Target};
    use crate::traffic::{BatchSizes, Format, Traffic};

    /// Answers 503 (`Retry-After: 0`) the first time it sees a body, 200 after.
    async fn flaky(seen: Arc<Mutex<HashSet<Bytes>>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let first = body
                                .map(|b| seen.lock().map(|mut s| s.insert(b)).unwrap_or(false))
                                .unwrap_or(true);
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                            if first {
                                *resp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                resp.headers_mut()
                                    .insert("retry-after", hyper::header::HeaderValue::from(0));
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn options(url: String, retries: u32, ids: std::path::PathBuf) -> Options {
        Options {
            url,
            target: Target::Events {
                format: Format::Native,
                path: None,
            },
            traffic: Traffic::new(3, 2, BatchSizes::Fixed(5), 0.0),
            mode: Mode::Closed {
                concurrency: 2,
                duration: Duration::from_millis(300),
            },
            pool: 0,
            ids_out: Some(ids),
            pid: None,
            max_outstanding: 16,
            stop: None,
            retries,
        }
    }

    #[tokio::test]
    async fn retrying_clients_resend_the_same_events_until_accepted() {
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let url = flaky(Arc::clone(&seen)).await;
        let ids = std::env::temp_dir().join(format!("ow-retry-{}.ids", uuid::Uuid::new_v4()));
        let report = super::run(options(url.clone(), 3, ids.clone()))
            .await
            .expect("run");
        let p = &report.phases[0];
        assert!(p.requests > 0, "{p:?}");
        // Every request was refused once, then accepted with the same body.
        assert_eq!(p.statuses.get("200"), Some(&p.requests), "{p:?}");
        assert_eq!(p.retries, p.requests, "{p:?}");
        let acked = crate::check::read_ids(&ids).expect("ids");
        assert_eq!(acked.len() as u64, p.events_accepted);
        assert_eq!(seen.lock().map(|s| s.len()).unwrap_or(0) as u64, p.requests);

        // Without retries the first answer is final.
        let report = super::run(options(url, 0, ids.clone())).await.expect("run");
        let p = &report.phases[0];
        assert_eq!(p.statuses.get("503"), Some(&p.requests), "{p:?}");
        assert_eq!(p.retries, 0);
        let _ = std::fs::remove_file(&ids);
    }
}
