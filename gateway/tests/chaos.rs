//! Randomized fault schedules under load from clients that retry as SDKs do
//! (the same events again after 429, 5xx, a timeout or a broken connection).
//! A schedule is a few faults drawn from: the broker (SQLite storage) SIGKILLed
//! and restarted, the broker frozen with SIGSTOP (a partition: connections open,
//! nothing answers), the gateway SIGKILLed and restarted, ClickHouse SIGKILLed
//! and restarted. Afterwards every event id that got a 200 is in ClickHouse,
//! exactly once after deduplication.
//!
//! `OVERWATCH_CHAOS_SEED` (default 1) picks the schedules, which are reproducible
//! from it; `OVERWATCH_CHAOS_SCHEDULES` (default 2) says how many run. `make test`
//! runs the default; `make chaos` the long run (50 schedules, a new seed each
//! time unless `CHAOS_SEED` is given). Faults start after progress (events
//! acknowledged), not at a time; only how long a fault lasts is a duration.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{metric_sum, GatewayProcess};
use loadtest::run::{Mode, Options, Target};
use loadtest::traffic::{keys_toml, BatchSizes, Format, Rng, Tenant, Traffic};
use shared::testkit::{eventually, services, Broker, ClickHouse};

const TENANTS: usize = 5;
/// Retries per request: with the load driver's backoff (100 ms doubling to
/// 3.2 s, or the gateway's Retry-After) a client keeps trying for over a minute.
const RETRIES: u32 = 25;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL, down for this long, restart.
    BrokerKill(Duration),
    /// SIGSTOP for this long, SIGCONT.
    BrokerPause(Duration),
    /// SIGKILL and restart at once.
    GatewayKill,
    /// SIGKILL; restart after this many more events were acknowledged.
    ClickHouseKill(f64),
}

/// One step: wait for this many more acknowledged events, then the fault.
type Step = (f64, Fault);

/// The `n` schedules of `seed`: 2–4 steps each.
fn schedules(seed: u64, n: usize) -> Vec<Vec<Step>> {
    let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC4A0_5EED);
    (0..n)
        .map(|_| {
            let steps = 2 + rng.below(3);
            (0..steps)
                .map(|_| {
                    let after = 200.0 + rng.below(1300) as f64;
                    let fault = match rng.below(4) {
                        0 => Fault::BrokerKill(Duration::from_millis(200 + rng.below(4800))),
                        1 => Fault::BrokerPause(Duration::from_millis(500 + rng.below(7500))),
                        2 => Fault::GatewayKill,
                        _ => Fault::ClickHouseKill(100.0 + rng.below(1400) as f64),
                    };
                    (after, fault)
                })
                .collect()
        })
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

async fn accepted(gw: &GatewayProcess) -> f64 {
    match reqwest::get(format!("{}/metrics", gw.ops_url)).await {
        Ok(r) => metric_sum(
            &r.text().await.unwrap_or_default(),
            "overwatch_events_accepted_total",
            &[],
        ),
        Err(_) => 0.0,
    }
}

/// Waits until the running gateway process acknowledged `n` more events.
async fn progress(gw: &GatewayProcess, n: f64) {
    let start = accepted(gw).await;
    eventually(
        &format!("{n} more acknowledged events"),
        Duration::from_secs(120),
        || async move { (accepted(gw).await >= start + n).then_some(()) },
    )
    .await;
}

async fn ready(gw: &GatewayProcess) -> bool {
    reqwest::get(format!("{}/health/ready", gw.url))
        .await
        .is_ok_and(|r| r.status().is_success())
}

struct Rig {
    broker: Broker,
    ch: ClickHouse,
    gw: GatewayProcess,
}

impl Rig {
    async fn inflict(&mut self, fault: Fault) {
        match fault {
            Fault::BrokerKill(down) => {
                self.broker.kill();
                tokio::time::sleep(down).await;
                self.broker.restart();
            }
            Fault::BrokerPause(down) => {
                self.broker.pause();
                tokio::time::sleep(down).await;
                self.broker.resume();
            }
            Fault::GatewayKill => self.gw.kill_and_restart().await,
            Fault::ClickHouseKill(events) => {
                self.ch.kill();
                progress(&self.gw, events).await;
                self.ch.restart();
            }
        }
        let gw = &self.gw;
        eventually(
            "readiness 200 after the fault",
            Duration::from_secs(90),
            || async { ready(gw).await.then_some(()) },
        )
        .await;
    }
}

#[test]
fn schedules_are_reproducible_and_draw_every_fault() {
    assert_eq!(schedules(7, 10), schedules(7, 10));
    assert_ne!(schedules(7, 10), schedules(8, 10));
    let all = schedules(1, 50);
    assert!(all.iter().all(|s| (2..=4).contains(&s.len())));
    let kinds: HashSet<_> = all
        .iter()
        .flatten()
        .map(|(_, f)| std::mem::discriminant(f))
        .collect();
    assert_eq!(kinds.len(), 4, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_random_fault_schedules() {
    let seed = env_u64("OVERWATCH_CHAOS_SEED", 1);
    let count = env_u64("OVERWATCH_CHAOS_SCHEDULES", 2) as usize;
    let plan = schedules(seed, count);
    eprintln!("chaos: seed {seed}, {count} schedule(s)");

    let svc = services();
    let broker = Broker::start(&svc);
    let ch = ClickHouse::start(&svc);
    let mut cfg = shared::testkit::config(&svc);
    cfg.kafka.brokers = broker.address();
    cfg.clickhouse.kafka_brokers = broker.address();
    cfg.clickhouse.url = ch.url();
    workerd::migrate::run(&cfg.kafka, &cfg.clickhouse)
        .await
        .expect("migrate");
    let gw = GatewayProcess::start_with_auth(
        &cfg,
        Some(&keys_toml(TENANTS)),
        "[telemetry]\nsnapshot_interval_secs = 0\n",
    )
    .await;
    let mut rig = Rig { broker, ch, gw };

    let mut runs = Vec::new();
    for (i, steps) in plan.iter().enumerate() {
        let ids = std::env::temp_dir().join(format!("ow-chaos-{}-{i}.ids", uuid::Uuid::new_v4()));
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(loadtest::run::run(Options {
            url: rig.gw.url.clone(),
            target: Target::Events {
                format: Format::Native,
                path: None,
            },
            traffic: Traffic::new(seed ^ (i as u64 + 1), TENANTS, BatchSizes::Fixed(50), 0.3),
            mode: Mode::Open(vec![(1000.0, Duration::from_secs(3600))]),
            pool: 0,
            ids_out: Some(ids.clone()),
            pid: None,
            max_outstanding: 64,
            stop: Some(Arc::clone(&stop)),
            retries: RETRIES,
        }));
        for (after, fault) in steps {
            progress(&rig.gw, *after).await;
            eprintln!("chaos: schedule {i}: {fault:?}");
            rig.inflict(*fault).await;
        }
        // The system works again before the schedule ends.
        progress(&rig.gw, 300.0).await;
        stop.store(true, Ordering::Relaxed);
        let report = load.await.expect("load task").expect("load run");
        let phase = &report.phases[0];
        eprintln!(
            "chaos: schedule {i} done: {} requests, statuses {:?}, {} retries",
            phase.requests, phase.statuses, phase.retries
        );
        let acked = loadtest::check::read_ids(&ids).expect("acknowledged ids");
        let _ = std::fs::remove_file(&ids);
        runs.push(acked);
    }

    let all: HashSet<uuid::Uuid> = runs.iter().flatten().copied().collect();
    assert!(all.len() >= 300 * count, "only {} acknowledged", all.len());
    let tenants: Vec<uuid::Uuid> = (0..TENANTS).map(|i| Tenant::nth(i).id).collect();
    let client = shared::store::client(&cfg.clickhouse);
    let db = &cfg.clickhouse.database;
    let consumed = eventually(
        "every acknowledged event in ClickHouse",
        Duration::from_secs(300),
        || {
            let (client, tenants, all) = (&client, &tenants, &all);
            async move {
                let v = loadtest::check::check(client, db, tenants, all)
                    .await
                    .ok()?;
                (v.lost == 0).then_some(v)
            }
        },
    )
    .await;
    for (i, acked) in runs.iter().enumerate() {
        let v = loadtest::check::check(&client, db, &tenants, acked)
            .await
            .expect("check");
        eprintln!(
            "chaos: seed {seed} schedule {i} {:?}: {} acknowledged, {} lost",
            plan[i].iter().map(|(_, f)| f).collect::<Vec<_>>(),
            v.acknowledged,
            v.lost
        );
    }
    eprintln!(
        "chaos verdict: seed {seed}, {count} schedules: {} acknowledged, {} found, {} lost, \
         {} duplicates after dedup ({} before)",
        consumed.acknowledged,
        consumed.found,
        consumed.lost,
        consumed.duplicates_after_dedup,
        consumed.duplicates_before_dedup
    );
    assert_eq!(consumed.duplicates_after_dedup, 0, "{consumed:?}");
}
