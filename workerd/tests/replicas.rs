//! Several `workerd run` processes (real binaries) on one ClickHouse database,
//! all scheduling the same job every second: the job's lease lets exactly one
//! run it at a time, a replica killed with SIGKILL is replaced at a later tick,
//! and a lease left by a dead holder blocks every replica until it expires,
//! then one takes over. A tick runs the job once in the cluster. `job_runs` (written by the runner itself) is the record
//! the test reads; times are compared within ClickHouse's clock.

mod common;

use std::process::Child;
use std::time::Duration;

use shared::testkit::{eventually, free_port, select_json, services, TestSchema};

const LEASE_TTL_SECS: u64 = 2;

struct Replica {
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replica(schema: &TestSchema) -> Replica {
    let cfg = &schema.config;
    let child = common::run_sessions_every_second(
        &cfg.clickhouse.url,
        &cfg.clickhouse.database,
        free_port(),
    )
    .env(
        "OVERWATCH__JOBS__LEASE_TTL_SECS",
        LEASE_TTL_SECS.to_string(),
    )
    .env("OVERWATCH__TELEMETRY__SNAPSHOT_INTERVAL_SECS", "0")
    .env("OVERWATCH__LOG__LEVEL", "warn")
    .spawn()
    .expect("spawn workerd");
    Replica { child }
}

/// The sessions runs recorded so far, oldest first.
async fn runs(schema: &TestSchema) -> Vec<serde_json::Value> {
    select_json(
        &schema.client,
        &format!(
            "SELECT instance, toUnixTimestamp64Milli(started_at) AS start, \
             toUnixTimestamp64Milli(finished_at) AS end, outcome, error \
             FROM `{}`.job_runs WHERE job = 'sessions' ORDER BY started_at",
            schema.database()
        ),
        &[],
    )
    .await
}

fn ms(v: &serde_json::Value, field: &str) -> i64 {
    v[field]
        .as_i64()
        .or_else(|| v[field].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// No run starts before the previous one ended, and every run succeeded.
fn assert_never_at_once(runs: &[serde_json::Value]) {
    for pair in runs.windows(2) {
        assert!(
            ms(&pair[1], "start") >= ms(&pair[0], "end"),
            "two replicas ran the job at once:\n{}\n{}",
            pair[0],
            pair[1]
        );
    }
    for r in runs {
        assert_eq!(r["outcome"], "success", "{r}");
    }
}

async fn clickhouse_now_ms(schema: &TestSchema) -> i64 {
    schema
        .client
        .query("SELECT toUnixTimestamp64Milli(now64(3))")
        .fetch_one()
        .await
        .expect("now")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_schedule_without_running_a_job_twice_and_take_over() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut replicas: Vec<Replica> = (0..3).map(|_| replica(&schema)).collect();

    // Ten ticks of three replicas: without the job lease all three run every
    // tick, at the same second.
    let seen = eventually(
        "ten recorded runs of the sessions job",
        Duration::from_secs(60),
        || async {
            let r = runs(&schema).await;
            (r.len() >= 10).then_some(r)
        },
    )
    .await;
    assert_never_at_once(&seen);
    // And once per tick in the cluster: a replica that lost the contention
    // does not run the job again once the winner is done.
    let span_secs = (ms(&seen[seen.len() - 1], "start") - ms(&seen[0], "start")) / 1000;
    assert!(
        seen.len() as i64 <= span_secs + 2,
        "{} runs in {span_secs} s of one-second ticks: a tick ran the job more than once",
        seen.len()
    );
    let instances: std::collections::BTreeSet<String> = seen
        .iter()
        .map(|r| r["instance"].as_str().expect("instance").to_string())
        .collect();
    eprintln!(
        "{} runs over {} s by {} of 3 replicas",
        seen.len(),
        (ms(&seen[seen.len() - 1], "end") - ms(&seen[0], "start")) / 1000,
        instances.len()
    );

    // Kill (SIGKILL, no release) the replica that ran last: the others go on.
    let last = seen[seen.len() - 1]["instance"]
        .as_str()
        .expect("instance")
        .to_string();
    let pid: u32 = last
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("instance is host:pid");
    let victim = replicas
        .iter()
        .position(|r| r.child.id() == pid)
        .expect("the last runner is one of ours");
    let killed_at = clickhouse_now_ms(&schema).await;
    drop(replicas.remove(victim));
    let after = eventually(
        "a run by a surviving replica after the kill",
        Duration::from_secs(LEASE_TTL_SECS * 3 + 10),
        || async {
            let r = runs(&schema).await;
            r.iter()
                .find(|x| ms(x, "start") > killed_at && x["instance"] != last.as_str())
                .cloned()
        },
    )
    .await;
    eprintln!(
        "taken over {} ms after the kill (lease TTL {LEASE_TTL_SECS} s)",
        ms(&after, "start") - killed_at
    );

    // A holder that died mid-run: its ticket (never released) blocks every
    // replica until it expires; then one takes over.
    let written_at = clickhouse_now_ms(&schema).await;
    let expires_at = written_at + 4000;
    schema
        .client
        .query(&format!(
            "INSERT INTO `{}`.leases (name, holder, expires_at, updated_at) \
             SELECT 'job:sessions', generateUUIDv4(), fromUnixTimestamp64Milli(toInt64(?), 'UTC'), now64(6)",
            schema.database()
        ))
        .bind(expires_at)
        .execute()
        .await
        .expect("a dead holder's ticket");
    let resumed = eventually(
        "a run after the dead holder's lease expired",
        Duration::from_secs(20),
        || async {
            let r = runs(&schema).await;
            // A run that took its lease before the ticket was written can still
            // record a start just after it: allow 500 ms for that.
            r.into_iter()
                .filter(|x| ms(x, "start") > written_at + 500)
                .min_by_key(|x| ms(x, "start"))
        },
    )
    .await;
    assert!(
        ms(&resumed, "start") >= expires_at,
        "a replica ran the job while another's lease was live: {resumed} (lease until {expires_at})"
    );
    eprintln!(
        "resumed {} ms after the dead holder's lease expired",
        ms(&resumed, "start") - expires_at
    );
    assert_never_at_once(&runs(&schema).await);
}
