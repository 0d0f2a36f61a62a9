//! `loadtest` — see `loadtest --help` and docs/benchmarks.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::run::{Mode, Options, Target};
use loadtest::traffic::{keys_toml, BatchSizes, Format, Tenant, Traffic};

#[derive(Parser)]
#[command(about = "Overwatch load generator and chaos checker")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print `[auth]` keys for N benchmark tenants (TOML for the gateway's config).
    Keys {
        #[arg(long, default_value_t = 50)]
        tenants: usize,
    },
    /// Create the event topics of both layouts on a broker (or the ones named).
    Topics {
        #[arg(long)]
        brokers: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Create these topics (comma-separated) instead of the event topics,
        /// e.g. a peer's for a side-by-side run.
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
    },
    /// Serve the trivial-handler baseline (read the body, answer `200 {}`).
    Trivial {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Hold every answer until a thread releases all held answers, every
        /// this many milliseconds (as a producer's linger and acknowledgements
        /// do); 0 answers at once.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
    },
    /// Send traffic and report.
    Run {
        /// Gateway base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Body format: `native` (Overwatch `/ingest`), `posthog` (PostHog's
        /// capture `/batch`, key in the body) or `ndjson` (one event per line,
        /// Vector's `http_server`).
        #[arg(long, default_value = "native")]
        format: String,
        /// Path to post to (default: the format's: /ingest, /batch, /).
        #[arg(long)]
        path: Option<String>,
        /// `GET` this path instead of posting events (e.g. /health/live).
        #[arg(long, conflicts_with_all = ["format", "path"])]
        get: Option<String>,
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        /// Events per request: a number, or `realistic` (1–1000, small batches most common).
        #[arg(long, default_value = "1000")]
        batch: String,
        /// Share of requests sent gzip-compressed (0.0–1.0).
        #[arg(long, default_value_t = 0.0)]
        gzip: f64,
        /// Open loop: phases `EVENTS_PER_SEC:SECONDS[,…]` (e.g. `20000:10,200000:5,20000:10`).
        #[arg(long, conflicts_with = "concurrency")]
        rate: Option<String>,
        /// Closed loop: this many clients as fast as answers come.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Closed loop: seconds.
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// Pre-generated requests re-sent in turn; 0 = fresh ids for every request.
        #[arg(long, default_value_t = 64)]
        pool: usize,
        /// Write acknowledged event ids here (needs --pool 0).
        #[arg(long)]
        ids_out: Option<PathBuf>,
        /// The gateway's pid: CPU per event and RSS from /proc.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value_t = 2000)]
        max_outstanding: usize,
        /// Retries per request after 429, 5xx, a timeout or a refused or reset
        /// connection (the same events, after Retry-After or a backoff), as SDKs do.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Compare acknowledged ids with ClickHouse's `events`.
    Check {
        #[arg(long)]
        ids: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:8123")]
        clickhouse: String,
        #[arg(long, default_value = "overwatch")]
        database: String,
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        /// Also look for the ids missing in ClickHouse on this broker's topics.
        #[arg(long)]
        brokers: Option<String>,
        #[arg(long, default_value = "")]
        prefix: String,
    },
}

fn phases(spec: &str) -> Result<Vec<(f64, Duration)>, String> {
    spec.split(',')
        .map(|p| {
            let (r, s) = p
                .split_once(':')
                .ok_or_else(|| format!("`{p}`: expected EVENTS_PER_SEC:SECONDS"))?;
            let r: f64 = r.trim().parse().map_err(|e| format!("`{r}`: {e}"))?;
            let s: f64 = s.trim().parse().map_err(|e| format!("`{s}`: {e}"))?;
            Ok((r, Duration::from_secs_f64(s)))
        })
        .collect()
}

#[tokio::main]
async fn main() -> ExitCode {
    match real_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e}");
            ExitCode::from(2)
        }
    }
}

async fn real_main() -> Result<(), String> {
    match Args::parse().cmd {
        Cmd::Keys { tenants } => {
            print!("{}", keys_toml(tenants));
            Ok(())
        }
        Cmd::Topics {
            brokers,
            prefix,
            partitions,
            names,
        } => {
            let topics: Vec<String> = if names.is_empty() {
                shared::event::all_topics(&prefix)
            } else {
                names
            };
            shared::kafka::ensure_topics(&brokers, &topics, partitions, 1, Duration::from_secs(10))
                .await
                .map_err(|e| format!("creating topics on {brokers}: {e}"))
        }
        Cmd::Trivial { listen, wait_ms } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("binding {listen}: {e}"))?;
            let wait = (wait_ms > 0).then(|| Duration::from_millis(wait_ms));
            loadtest::trivial::serve(listener, wait)
                .await
                .map_err(|e| e.to_string())
        }
        Cmd::Run {
            url,
            format,
            path,
            get,
            tenants,
            batch,
            gzip,
            rate,
            concurrency,
            duration,
            pool,
            ids_out,
            pid,
            max_outstanding,
            retries,
            seed,
            json,
        } => {
            let sizes = if batch == "realistic" {
                BatchSizes::Realistic
            } else {
                BatchSizes::Fixed(batch.parse().map_err(|e| format!("--batch {batch}: {e}"))?)
            };
            if ids_out.is_some() && pool > 0 {
                return Err("--ids-out needs --pool 0 (fresh ids for every request)".into());
            }
            let mode = match (rate, concurrency) {
                (Some(r), _) => Mode::Open(phases(&r)?),
                (None, Some(c)) => Mode::Closed {
                    concurrency: c,
                    duration: Duration::from_secs(duration),
                },
                (None, None) => {
                    return Err("give --rate (open loop) or --concurrency (closed loop)".into())
                }
            };
            let format = Format::parse(&format)?;
            let target = match get {
                Some(p) => Target::Get(p),
                None => Target::Events { format, path },
            };
            let report = loadtest::run::run(Options {
                url,
                target,
                traffic: Traffic::new(seed, tenants, sizes, gzip).with_format(format),
                mode,
                pool,
                ids_out,
                pid,
                max_outstanding,
                stop: None,
                retries,
            })
            .await?;
            for (i, p) in report.phases.iter().enumerate() {
                println!(
                    "phase {i}: target {} ev/s | {:.0} ev/s accepted, {:.1} req/s | latency ms p50 {:.1} p95 {:.1} p99 {:.1} max {:.1} | cpu {} µs/event, {} µs/request | statuses {:?} | retries {} | client skipped {} | client {} cores",
                    p.target_events_per_sec.map_or("max".into(), |r| format!("{r:.0}")),
                    p.events_per_sec,
                    p.requests_per_sec,
                    p.latency_ms.p50,
                    p.latency_ms.p95,
                    p.latency_ms.p99,
                    p.latency_ms.max,
                    p.cpu_us_per_event.map_or("?".into(), |c| format!("{c:.2}")),
                    p.cpu_us_per_request.map_or("?".into(), |c| format!("{c:.2}")),
                    p.statuses,
                    p.retries,
                    p.client_skipped,
                    p.client_cores.map_or("?".into(), |c| format!("{c:.2}")),
                );
            }
            if let Some(peak) = report.gateway_peak_rss_mib {
                println!("gateway peak RSS {peak:.1} MiB");
            }
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(())
        }
        Cmd::Check {
            ids,
            clickhouse,
            database,
            tenants,
            brokers,
            prefix,
        } => {
            let acked = loadtest::check::read_ids(&ids)?;
            let client = clickhouse::Client::default().with_url(clickhouse);
            let tenants: Vec<uuid::Uuid> = (0..tenants).map(|i| Tenant::nth(i).id).collect();
            let v = loadtest::check::check(&client, &database, &tenants, &acked)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&v).map_err(|e| e.to_string())?);
            if let (Some(brokers), true) = (brokers, v.lost > 0) {
                let present = loadtest::check::present_ids(&client, &database, &tenants)
                    .await
                    .map_err(|e| e.to_string())?;
                let missing: std::collections::HashSet<uuid::Uuid> =
                    acked.difference(&present).copied().collect();
                let topics = shared::event::all_topics(&prefix);
                let on_broker = loadtest::check::on_broker(
                    &brokers,
                    &topics,
                    &missing,
                    Duration::from_secs(10),
                )
                .await?;
                println!(
                    "{{\"missing_in_clickhouse\": {}, \"of_which_on_the_broker\": {}}}",
                    missing.len(),
                    on_broker.len()
                );
            }
            if v.lost > 0 || v.duplicates_after_dedup > 0 {
                return Err(format!(
                    "{} acknowledged events lost, {} duplicates after deduplication",
                    v.lost, v.duplicates_after_dedup
                ));
            }
            Ok(())
        }
    }
}
