//! The reference-model test: acknowledged means durable, end to end.
//!
//! A seeded generator makes sessions for three tenants over the last six days,
//! sends them through the real gateway in shuffled batches with client
//! retries (the same events again, with a new `sent_at`), late duplicates and
//! events as old as the window allows, while tiers change mid-stream and jobs
//! run at random `--now` values: compression as real `workerd` processes (two
//! at once, and one killed mid-run), the other jobs in-process. Afterwards
//! every acknowledged event id appears exactly once across `events` and the
//! cold archives, and `rollups_hourly`, `rollups_daily` and `sessions` equal
//! what the independent model below computes (plain Rust, not the product's
//! SQL).
//!
//! Seeds: `OVERWATCH_MODEL_SEEDS` (comma-separated, default `1,2`);
//! `OVERWATCH_MODEL_ROUNDS` (default 4). `make verify-data` runs more.
//!
//! Killing a run mid-way uses the local ClickHouse front's test hold (see
//! `deploy/local/chserver.py`) to stop it at a known statement.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{event, rfc3339, SECRET};
use shared::config::StaticKey;
use shared::domain::Tier;
use shared::testkit::{eventually, select_json, services, TestSchema};
use time::OffsetDateTime;
use uuid::Uuid;
use workerd::jobs::{self, JobContext, JobName, Window};

const BOT_UA: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const HUMAN_UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const TYPES: [&str; 5] = ["pageview", "click", "scroll", "performance", "custom"];

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One generated event, as the model sees it.
#[derive(Debug, Clone)]
struct Ev {
    id: Uuid,
    tenant: Uuid,
    session: Uuid,
    kind: &'static str,
    ts_ms: i64,
    bot: bool,
}

impl Ev {
    fn json(&self, sent_at: OffsetDateTime) -> serde_json::Value {
        let mut e = event(self.kind, 0, self.session);
        e["id"] = self.id.to_string().into();
        e["timestamp"] = rfc3339(at(self.ts_ms)).into();
        e["sent_at"] = rfc3339(sent_at).into();
        e["user_agent"] = if self.bot { BOT_UA } else { HUMAN_UA }.into();
        if self.kind == "custom" {
            e["name"] = "signup".into();
        }
        e
    }
}

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).expect("time")
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Sessions of 2–8 events. Gaps are 1 s–20 min, or 45–90 min (a new session
/// under the 30 min rule): never near the 30 min edge, whose rounding is the
/// product's business, not this test's.
fn generate(rng: &mut Rng, tenants: &[Uuid], now: OffsetDateTime, max_age_h: i64) -> Vec<Ev> {
    let mut out = Vec::new();
    let oldest = ms(now) - max_age_h * 3_600_000 + 3 * 3_600_000;
    let newest = ms(now) - 3 * 3_600_000;
    for &tenant in tenants {
        for _ in 0..10 {
            let session = Uuid::new_v4();
            let bot = rng.chance(15);
            let mut ts = oldest + rng.below((newest - oldest) as u64) as i64;
            for _ in 0..2 + rng.below(7) {
                out.push(Ev {
                    id: Uuid::new_v4(),
                    tenant,
                    session,
                    kind: TYPES[rng.below(5) as usize],
                    ts_ms: ts,
                    bot,
                });
                ts += if rng.chance(15) {
                    2_700_000 + rng.below(2_700_000) as i64
                } else {
                    1_000 + rng.below(1_199_000) as i64
                };
            }
        }
    }
    out
}

/// The model's aggregates, keyed as the tables are.
#[derive(Debug, Default, PartialEq)]
struct Model {
    /// (tenant, type, bucket start ms) → (events, distinct sessions, bots)
    hourly: BTreeMap<(String, String, i64), (u64, u64, u64)>,
    daily: BTreeMap<(String, String, i64), (u64, u64, u64)>,
    /// (tenant, session, start ms) → (end ms, events, pageviews)
    sessions: BTreeMap<(String, String, i64), (i64, u64, u64)>,
}

/// Events, their distinct sessions and bot events of one rollup bucket.
type Bucket = (u64, BTreeSet<Uuid>, u64);

fn model(events: &[Ev], gap_ms: i64) -> Model {
    let mut m = Model::default();
    let mut buckets: BTreeMap<(String, String, i64, bool), Bucket> = BTreeMap::new();
    for e in events {
        for (daily, size) in [(false, 3_600_000), (true, 86_400_000)] {
            let b = buckets
                .entry((
                    e.tenant.to_string(),
                    e.kind.to_string(),
                    e.ts_ms.div_euclid(size) * size,
                    daily,
                ))
                .or_default();
            b.0 += 1;
            b.1.insert(e.session);
            b.2 += e.bot as u64;
        }
    }
    for ((t, k, b, daily), (n, s, bots)) in buckets {
        let target = if daily { &mut m.daily } else { &mut m.hourly };
        target.insert((t, k, b), (n, s.len() as u64, bots));
    }
    let mut by_session: BTreeMap<(Uuid, Uuid), Vec<&Ev>> = BTreeMap::new();
    for e in events {
        by_session.entry((e.tenant, e.session)).or_default().push(e);
    }
    for ((tenant, session), mut evs) in by_session {
        evs.sort_by_key(|e| (e.ts_ms, e.id));
        let mut segments: Vec<Vec<&Ev>> = Vec::new();
        for e in evs {
            match segments.last_mut() {
                Some(seg) if e.ts_ms - seg[seg.len() - 1].ts_ms <= gap_ms => seg.push(e),
                _ => segments.push(vec![e]),
            }
        }
        for seg in segments {
            let pageviews = seg.iter().filter(|e| e.kind == "pageview").count() as u64;
            m.sessions.insert(
                (tenant.to_string(), session.to_string(), seg[0].ts_ms),
                (seg[seg.len() - 1].ts_ms, seg.len() as u64, pageviews),
            );
        }
    }
    m
}

/// `toUUID('…'),…` for an `IN (…)` list.
fn uuid_list(tenants: &[Uuid]) -> String {
    tenants
        .iter()
        .map(|t| format!("toUUID('{t}')"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a JSON number ClickHouse may have quoted (64-bit integers).
fn num(r: &serde_json::Value, f: &str) -> i64 {
    r[f].as_i64()
        .or_else(|| r[f].as_str()?.parse().ok())
        .expect(f)
}

/// What the product holds for the test's tenants.
async fn stored(schema: &TestSchema, tenants: &[Uuid]) -> Model {
    let db = format!("`{}`", schema.database());
    let list = uuid_list(tenants);
    let mut m = Model::default();
    for (table, col, daily) in [
        ("rollups_hourly", "hour", false),
        ("rollups_daily", "day", true),
    ] {
        let rows = select_json(
            &schema.client,
            &format!(
                "SELECT toString(tenant_id) AS t, toString(type) AS k, \
                 toInt64(toUnixTimestamp({col})) * 1000 AS b, events, sessions, bots \
                 FROM {db}.{table} FINAL WHERE tenant_id IN ({list})"
            ),
            &[],
        )
        .await;
        for r in rows {
            let n = |f: &str| num(&r, f) as u64;
            let b = num(&r, "b");
            let key = (
                r["t"].as_str().expect("t").into(),
                r["k"].as_str().expect("k").into(),
                b,
            );
            let target = if daily { &mut m.daily } else { &mut m.hourly };
            target.insert(key, (n("events"), n("sessions"), n("bots")));
        }
    }
    let rows = select_json(
        &schema.client,
        &format!(
            "SELECT toString(tenant_id) AS t, toString(session_id) AS s, \
             toUnixTimestamp64Milli(session_start) AS a, toUnixTimestamp64Milli(session_end) AS e, \
             events, pageviews FROM {db}.sessions FINAL WHERE tenant_id IN ({list})"
        ),
        &[],
    )
    .await;
    for r in rows {
        let i = |f: &str| num(&r, f);
        m.sessions.insert(
            (
                r["t"].as_str().expect("t").into(),
                r["s"].as_str().expect("s").into(),
                i("a"),
            ),
            (i("e"), i("events") as u64, i("pageviews") as u64),
        );
    }
    m
}

/// How often each id is held, raw (deduplicated) and in every archive file.
async fn locations(schema: &TestSchema, tenants: &[Uuid]) -> BTreeMap<String, (u64, u64)> {
    let db = format!("`{}`", schema.database());
    let list = uuid_list(tenants);
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in select_json(
        &schema.client,
        &format!("SELECT toString(id) AS id FROM {db}.events FINAL WHERE tenant_id IN ({list})"),
        &[],
    )
    .await
    {
        out.entry(r["id"].as_str().expect("id").into())
            .or_default()
            .0 += 1;
    }
    let cold = shared::testkit::cold_dir(&schema.config);
    let any = std::fs::read_dir(&cold)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if any {
        for r in select_json(
            &schema.client,
            &format!(
                "SELECT toString(id) AS id FROM file('{}/tenant=*/date=*/events.parquet', 'Parquet')",
                cold.display()
            ),
            &[],
        )
        .await
        {
            out.entry(r["id"].as_str().expect("id").into()).or_default().1 += 1;
        }
    }
    out
}

fn workerd_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name("workerd");
    assert!(bin.exists(), "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`; make test does)", bin.display());
    bin
}

/// Runs `cmd` to the end; it must exit 0 (its stderr is the failure message).
fn succeed(mut cmd: Command) -> std::process::Output {
    let out = cmd.output().expect("run workerd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn workerd(schema: &TestSchema, job: &str, now: OffsetDateTime) -> Command {
    let c = &schema.config;
    // The tenants' keys (and so their configured tiers) as a config file.
    let file = PathBuf::from(format!(
        "{}.keys.toml",
        shared::testkit::cold_dir(c).display()
    ));
    let mut toml = String::new();
    for k in &c.auth.keys {
        toml.push_str(&format!(
            "[[auth.keys]]\ntenant_id = \"{}\"\nsecret_sha256 = \"{}\"\ntier = \"{}\"\n",
            k.tenant_id,
            k.secret_sha256,
            k.tier.as_str()
        ));
    }
    std::fs::write(&file, toml).expect("write the keys file");
    let mut cmd = shared::testkit::workerd_command(&workerd_bin(), c);
    cmd.arg("--config")
        .arg(&file)
        .args(["job", "run", job, "--now", &rfc3339(now)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn control(schema: &TestSchema, path: &str, body: &str) -> String {
    reqwest::Client::new()
        .post(format!(
            "{}/_overwatch/{path}",
            schema.config.clickhouse.url
        ))
        .body(body.to_string())
        .send()
        .await
        .expect("control")
        .text()
        .await
        .expect("control answer")
        .trim()
        .to_string()
}

async fn set_tier(schema: &TestSchema, tenant: Uuid, tier: Tier) {
    schema
        .client
        .query(&format!(
            "INSERT INTO `{}`.tenants (tenant_id, name, tier, anonymize_ip, created_at, updated_at) \
             VALUES (toUUID(?), 'model', ?, false, now64(3), now64(3))",
            schema.database()
        ))
        .bind(tenant.to_string())
        .bind(tier.as_str())
        .execute()
        .await
        .expect("tier change");
}

#[derive(Default, Debug)]
struct Tally {
    copies: u64,
    retries: u64,
    jobs: u64,
    concurrent: u64,
    killed: u64,
    busy: u64,
}

async fn run_seed(seed: u64, rounds: usize) -> Tally {
    let svc = services();
    let mut schema = TestSchema::create(&svc).await;
    // Long enough for a debug build's slowest day between two renewals.
    schema.config.jobs.lease_ttl_secs = 20;
    let tenants: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (t, tier) in tenants.iter().zip([Tier::Free, Tier::Free, Tier::Paid]) {
        schema.config.auth.keys.push(StaticKey {
            tenant_id: *t,
            secret_sha256: shared::credential::hash_secret(SECRET),
            tier,
            anonymize_ip: false,
        });
    }
    let gw = common::TestGateway::start(schema.config.clone()).await;
    let http = reqwest::Client::new();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let now = OffsetDateTime::now_utc();
    let max_age = schema.config.limits.max_event_age_hours as i64;
    let mut all = generate(&mut rng, &tenants, now, max_age);
    // Shuffle: out of order, old days arriving after they were compressed.
    for i in (1..all.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        all.swap(i, j);
    }
    let gap_ms = schema.config.jobs.session_gap_minutes as i64 * 60_000;
    let per_round = all.len().div_ceil(rounds);
    let mut sent: Vec<Ev> = Vec::new();
    let mut tally = Tally::default();
    let ctx = JobContext::new(schema.config.clone());
    let export_stmt = format!(
        r"FROM `?{}`?\.`?archive_stage`? WHERE tenant_id = .*LIMIT 1 BY",
        schema.database()
    );

    for (round, chunk) in all.chunks(per_round).enumerate() {
        // Tier changes mid-stream (a row in `tenants` wins over the config).
        if round == rounds / 2 {
            set_tier(&schema, tenants[1], Tier::Paid).await;
            set_tier(&schema, tenants[2], Tier::Free).await;
        }
        // Batches of 1–20 events, one request per tenant in each.
        let mut batches: Vec<Vec<Ev>> = Vec::new();
        let mut i = 0;
        while i < chunk.len() {
            let n = 1 + rng.below(20) as usize;
            for t in &tenants {
                let b: Vec<Ev> = chunk[i..(i + n).min(chunk.len())]
                    .iter()
                    .filter(|e| e.tenant == *t)
                    .cloned()
                    .collect();
                if !b.is_empty() {
                    batches.push(b);
                }
            }
            i += n;
        }
        for mut batch in batches {
            let tenant = batch[0].tenant;
            // A late duplicate of something this tenant sent in an earlier round.
            if rng.chance(25) {
                if let Some(old) = sent
                    .iter()
                    .filter(|e| e.tenant == tenant)
                    .nth(rng.below(8) as usize)
                {
                    batch.push(old.clone());
                }
            }
            // A client retry resends the same events (new `sent_at`).
            let tries = if rng.chance(30) { 2 } else { 1 };
            for t in 0..tries {
                let body = serde_json::json!({
                    "events": batch.iter().map(|e| e.json(OffsetDateTime::now_utc())).collect::<Vec<_>>()
                });
                let r = http
                    .post(gw.url("/ingest"))
                    .bearer_auth(format!("{tenant}:{SECRET}"))
                    .json(&body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status();
                assert_eq!(
                    status,
                    200,
                    "seed {seed}: {}",
                    r.text().await.unwrap_or_default()
                );
                tally.copies += batch.len() as u64;
                tally.retries += t as u64;
            }
            for e in batch {
                if !sent.iter().any(|s| s.id == e.id) {
                    sent.push(e);
                }
            }
        }
        // Every acknowledged event is in ClickHouse (raw or archived) before jobs run.
        let want: BTreeSet<String> = sent.iter().map(|e| e.id.to_string()).collect();
        eventually(
            "every acknowledged event stored",
            Duration::from_secs(150),
            || async {
                let have: BTreeSet<String> =
                    locations(&schema, &tenants).await.into_keys().collect();
                want.is_subset(&have).then_some(())
            },
        )
        .await;

        // Jobs at random clocks: now up to two days ahead.
        let job_now = now + time::Duration::minutes(rng.below(48 * 60) as i64);
        match rng.below(3) {
            0 => {
                // Two compression processes at once.
                let a = workerd(&schema, "compression", job_now)
                    .spawn()
                    .expect("spawn");
                let b = workerd(&schema, "compression", job_now)
                    .spawn()
                    .expect("spawn");
                for p in [a, b] {
                    let out = p.wait_with_output().expect("workerd");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    tally.busy +=
                        String::from_utf8_lossy(&out.stdout).contains("\"busy\":[\"") as u64;
                }
                tally.concurrent += 1;
                tally.jobs += 2;
            }
            1 => {
                // One killed while exporting (if it gets that far), then another.
                let hold = control(&schema, "hold", &export_stmt).await;
                let mut victim = workerd(&schema, "compression", job_now)
                    .spawn()
                    .expect("spawn");
                let reached = tokio::time::timeout(Duration::from_secs(20), async {
                    loop {
                        if control(&schema, &format!("held?id={hold}"), "").await != "0" {
                            break;
                        }
                        if matches!(victim.try_wait(), Ok(Some(_))) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                let _ = victim.kill();
                let _ = victim.wait();
                control(&schema, &format!("release?id={hold}"), "").await;
                assert!(
                    reached.is_ok(),
                    "seed {seed}: the victim neither held nor exited"
                );
                let out = succeed(workerd(&schema, "compression", job_now));
                tally.busy += String::from_utf8_lossy(&out.stdout).contains("\"busy\":[\"") as u64;
                tally.killed += 1;
                tally.jobs += 2;
            }
            _ => {
                let job = [
                    JobName::Sessions,
                    JobName::Rollups,
                    JobName::Retention,
                    JobName::Compression,
                ][rng.below(4) as usize];
                jobs::run(&ctx, job, job_now, None, None)
                    .await
                    .expect("job");
                tally.jobs += 1;
            }
        }
    }

    // Settle: leases of killed runs expire, a last compression, then the
    // aggregates over the whole span (what an operator's backfill does).
    shared::testkit::leases_free(&schema.client, schema.database(), Duration::from_secs(60)).await;
    succeed(workerd(
        &schema,
        "compression",
        now + time::Duration::hours(48),
    ));
    let w = Window {
        from: now - time::Duration::hours(max_age + 48),
        to: now + time::Duration::hours(48),
    };
    for job in [JobName::Sessions, JobName::Rollups] {
        let r = jobs::run(&ctx, job, now, None, Some(w))
            .await
            .expect("settle");
        assert_eq!(r.detail["busy"], serde_json::json!([]), "{:?}", r.detail);
    }
    tally.jobs += 3;

    // 1. Every acknowledged id exactly once across raw and archives.
    let places = locations(&schema, &tenants).await;
    let mut lost = 0;
    let mut duplicated = 0;
    for e in &sent {
        match places.get(&e.id.to_string()) {
            None => lost += 1,
            Some((raw, cold)) if raw + cold != 1 => duplicated += 1,
            Some(_) => {}
        }
    }
    let acknowledged: BTreeSet<String> = sent.iter().map(|e| e.id.to_string()).collect();
    let unknown = places
        .keys()
        .filter(|id| !acknowledged.contains(*id))
        .count();
    let archived = places.values().filter(|(_, c)| *c > 0).count();
    // 2. Aggregates equal the model.
    let want = model(&sent, gap_ms);
    let got = stored(&schema, &tenants).await;
    let verdict = format!(
        "reference model seed {seed}: {} events ({} copies sent, {} retried), {} archived, {} jobs \
         ({} concurrent compressions, {} killed, {} busy), lost {lost}, duplicated {duplicated}, \
         unknown {unknown}; rollups_hourly {} rows {}, rollups_daily {} rows {}, sessions {} rows {}",
        sent.len(),
        tally.copies,
        tally.retries,
        archived,
        tally.jobs,
        tally.concurrent,
        tally.killed,
        tally.busy,
        want.hourly.len(),
        if want.hourly == got.hourly { "equal" } else { "DIFFER" },
        want.daily.len(),
        if want.daily == got.daily { "equal" } else { "DIFFER" },
        want.sessions.len(),
        if want.sessions == got.sessions { "equal" } else { "DIFFER" },
    );
    eprintln!("{verdict}");
    assert_eq!((lost, duplicated, unknown), (0, 0, 0), "{verdict}");
    assert!(archived > 0, "compression archived something: {verdict}");
    assert_eq!(got.daily, want.daily, "{verdict}");
    assert_eq!(got.hourly, want.hourly, "{verdict}");
    assert_eq!(got.sessions, want.sessions, "{verdict}");
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(shared::testkit::cold_dir(&schema.config));
    let _ = std::fs::remove_file(format!(
        "{}.keys.toml",
        shared::testkit::cold_dir(&schema.config).display()
    ));
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_late_data_tier_changes_and_concurrent_jobs() {
    let seeds: Vec<u64> = std::env::var("OVERWATCH_MODEL_SEEDS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = std::env::var("OVERWATCH_MODEL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    assert!(!seeds.is_empty(), "OVERWATCH_MODEL_SEEDS names no seed");
    for seed in seeds {
        run_seed(seed, rounds).await;
    }
}
