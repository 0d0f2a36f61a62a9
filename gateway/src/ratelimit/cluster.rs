//! Cluster-wide rate limits: gateway replicas share each tenant's rate through
//! ClickHouse (`rate_usage`), with no server beyond the ones already deployed.
//!
//! Every `rate_limits.cluster_sync_interval_ms` each replica writes, per tenant,
//! the events it was offered since the last sync (admitted or refused) with the
//! tenant's configured rate, plus a heartbeat row, and reads every replica's
//! rows of the last [`WINDOW_INTERVALS`] intervals. From the same rows every
//! replica computes the same max-min fair split of each tenant's rate over the
//! live replicas ([`allocate`]): a replica offered less than an equal share gets
//! what it was offered, the rest is divided among the others, and what nobody
//! asked for is spread evenly as headroom. A replica's buckets then refill at
//! its part of the rate, so the parts add up to the tenant's rate whatever the
//! number of replicas and however the load balancer spreads the traffic.
//!
//! While replicas change: a new replica takes the whole rate until its first
//! sync (about one interval); a stopped one keeps its part until its rows leave
//! the window, so the others under-admit for at most the window. Without
//! ClickHouse the last split stays in force for [`STALE_INTERVALS`] intervals,
//! then each replica keeps 1/N of every rate (N: the replicas last seen).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

/// Rows older than this many sync intervals are not read.
pub const WINDOW_INTERVALS: u32 = 3;
/// After this many intervals without a successful sync the split is forgotten.
pub const STALE_INTERVALS: u32 = 10;

/// Max-min fair split of `rate` over replicas offered `demand` events per
/// second each; the parts add up to `rate` (when there is at least one replica).
pub fn allocate(rate: f64, demand: &[f64]) -> Vec<f64> {
    let n = demand.len();
    let mut out = vec![0.0; n];
    if n == 0 {
        return out;
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| demand[a].total_cmp(&demand[b]));
    let mut left = rate.max(0.0);
    for (k, &i) in order.iter().enumerate() {
        let fair = left / (n - k) as f64;
        let d = demand[i].max(0.0);
        if d <= fair {
            out[i] = d;
            left -= d;
        } else {
            for &j in &order[k..] {
                out[j] = fair;
            }
            left = 0.0;
            break;
        }
    }
    // What nobody asked for: headroom, evenly.
    let spare = left / n as f64;
    for x in &mut out {
        *x += spare;
    }
    out
}

#[derive(Debug, Default)]
struct Split {
    /// This replica's fraction of each tenant's rate seen in the cluster.
    shares: HashMap<Uuid, f64>,
    /// Live replicas last seen (this one included).
    replicas: usize,
    synced: Option<Instant>,
}

/// This replica's fractions of the tenants' rates. What each tenant was
/// offered is counted in its rate-limit bucket (the sharded map of
/// [`super::RateLimiter`]), which hands the counts to [`Shares::sync`].
pub struct Shares {
    instance: String,
    interval: Duration,
    /// `rate_limits.max_tenants`: most tenants read per replica (the busiest,
    /// when there are more); the buckets that count them are bounded alike.
    max_tenants: usize,
    split: Mutex<Split>,
    /// Bumped by every sync: a bucket's [`Cached`] share from an older
    /// generation is read again (one atomic load per request otherwise).
    generation: AtomicU64,
}

/// A share as a bucket keeps it: valid while the generation is the current
/// one and until the split would go stale.
#[derive(Debug, Clone, Copy)]
pub struct Cached {
    pub value: f64,
    generation: u64,
    until: Option<Instant>,
}

impl Cached {
    /// The whole rate, for a limiter that shares with nobody.
    pub const WHOLE: Cached = Cached {
        value: 1.0,
        generation: u64::MAX,
        until: None,
    };
}

/// The events offered to each tenant since the last sync, and its configured rate.
pub type Offered = Vec<(Uuid, u64, f64)>;

#[derive(clickhouse::Row, Serialize)]
struct UsageRow<'a> {
    instance: &'a str,
    #[serde(with = "clickhouse::serde::uuid")]
    tenant_id: Uuid,
    offered: u64,
    rate: f64,
}

#[derive(clickhouse::Row, Deserialize)]
struct UsageSum {
    instance: String,
    #[serde(with = "clickhouse::serde::uuid")]
    tenant_id: Uuid,
    offered: u64,
    rate: f64,
}

impl Shares {
    pub fn new(instance: String, interval: Duration, max_tenants: usize) -> Shares {
        Shares {
            instance,
            interval,
            max_tenants,
            split: Mutex::new(Split {
                replicas: 1,
                ..Split::default()
            }),
            generation: AtomicU64::new(0),
        }
    }

    /// This replica's fraction of `tenant`'s rate, in (0, 1].
    pub fn share(&self, tenant: Uuid) -> f64 {
        self.read(tenant, Instant::now()).value
    }

    /// The share of `tenant` now, with how long it holds.
    pub fn read(&self, tenant: Uuid, now: Instant) -> Cached {
        // The generation first: a sync in between makes this one look old.
        let generation = self.generation.load(Ordering::Acquire);
        let s = self.split.lock().unwrap_or_else(|e| e.into_inner());
        let stale_at = s.synced.map(|t| t + self.interval * STALE_INTERVALS);
        let fresh = stale_at.is_some_and(|at| now < at);
        let even = 1.0 / s.replicas.max(1) as f64;
        let share = if fresh {
            s.shares.get(&tenant).copied().unwrap_or(even)
        } else {
            even
        };
        Cached {
            // Never zero: a replica always admits a trickle, so its demand is seen.
            value: share.clamp(0.01, 1.0),
            generation,
            until: stale_at.filter(|_| fresh),
        }
    }

    /// Re-reads `cached` when a sync changed the split or it went stale.
    pub fn refresh(&self, tenant: Uuid, cached: &mut Cached, now: Instant) {
        let current = cached.generation == self.generation.load(Ordering::Acquire)
            && cached.until.is_none_or(|at| now < at);
        if !current {
            *cached = self.read(tenant, now);
        }
    }

    /// The live replicas last seen.
    pub fn replicas(&self) -> usize {
        self.split
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replicas
    }

    /// Computes this replica's shares from every replica's sums over the window.
    fn apply(&self, rows: &[UsageSum], window: Duration) {
        let secs = window.as_secs_f64().max(1e-3);
        let mut live: HashSet<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
        live.insert(&self.instance);
        let mut live: Vec<&str> = live.into_iter().collect();
        live.sort_unstable();
        let me = live
            .iter()
            .position(|i| *i == self.instance)
            .unwrap_or_default();
        let mut tenants: BTreeMap<Uuid, (Vec<f64>, f64)> = BTreeMap::new();
        for r in rows.iter().filter(|r| !r.tenant_id.is_nil()) {
            let Ok(at) = live.binary_search(&r.instance.as_str()) else {
                continue;
            };
            let t = tenants
                .entry(r.tenant_id)
                .or_insert_with(|| (vec![0.0; live.len()], 0.0));
            t.0[at] += r.offered as f64 / secs;
            t.1 = t.1.max(r.rate);
        }
        let shares = tenants
            .into_iter()
            .filter(|(_, (_, rate))| *rate > 0.0)
            .map(|(tenant, (demand, rate))| (tenant, allocate(rate, &demand)[me] / rate))
            .collect();
        let mut s = self.split.lock().unwrap_or_else(|e| e.into_inner());
        s.shares = shares;
        s.replicas = live.len();
        s.synced = Some(Instant::now());
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// One sync: write what this replica was `offered`, read everyone's.
    pub async fn sync(
        &self,
        client: &clickhouse::Client,
        table: &str,
        mut offered: Offered,
    ) -> Result<(), clickhouse::error::Error> {
        // The busiest `max_tenants`, as the read keeps.
        if offered.len() > self.max_tenants {
            offered.sort_unstable_by_key(|o| std::cmp::Reverse(o.1));
            offered.truncate(self.max_tenants);
        }
        let mut insert = client.insert::<UsageRow<'_>>(table).await?;
        // The heartbeat (nil tenant) says this replica is live even when idle.
        insert
            .write(&UsageRow {
                instance: &self.instance,
                tenant_id: Uuid::nil(),
                offered: 0,
                rate: 0.0,
            })
            .await?;
        for (tenant_id, offered, rate) in &offered {
            insert
                .write(&UsageRow {
                    instance: &self.instance,
                    tenant_id: *tenant_id,
                    offered: *offered,
                    rate: *rate,
                })
                .await?;
        }
        insert.end().await?;
        let window = self.interval * WINDOW_INTERVALS;
        let rows = client
            .query(&format!(
                "SELECT instance, tenant_id, sum(offered) AS offered, max(rate) AS rate FROM {table} \
                 WHERE at > now64(3) - toIntervalMillisecond(?) GROUP BY instance, tenant_id \
                 ORDER BY offered DESC LIMIT ? BY instance"
            ))
            .bind(window.as_millis() as u64)
            .bind(self.max_tenants as u64)
            .fetch_all::<UsageSum>()
            .await?;
        self.apply(&rows, window);
        Ok(())
    }

    /// Syncs every interval until aborted, with the counts `offered` hands
    /// over; failures are counted and logged when they start and when they end.
    pub fn spawn_sync(
        self: &Arc<Self>,
        client: clickhouse::Client,
        table: String,
        offered: impl Fn() -> Offered + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let shares = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(shares.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let result = shares.sync(&client, &table, offered()).await;
                RateShareSync {
                    result: &result,
                    was_failing: failing,
                    replicas: shares.replicas(),
                }
                .emit();
                failing = result.is_err();
            }
        })
    }
}

// The metrics emitted here (described to the recorder by
// [`describe_metrics`], which the gateway's telemetry calls).
pub const RATE_SHARE_SYNCS: &str = "overwatch_rate_share_syncs_total";
pub const GATEWAY_REPLICAS: &str = "overwatch_gateway_replicas";

/// One sync of the replicas' rate shares through ClickHouse.
pub struct RateShareSync<'a> {
    pub result: &'a Result<(), clickhouse::error::Error>,
    /// Whether the previous sync failed (failures are logged when they start
    /// and when they end, not every interval).
    pub was_failing: bool,
    /// Live gateway replicas seen.
    pub replicas: usize,
}

impl RateShareSync<'_> {
    pub fn emit(&self) {
        let outcome = if self.result.is_ok() { "ok" } else { "error" };
        counter!(RATE_SHARE_SYNCS, "outcome" => outcome).increment(1);
        gauge!(GATEWAY_REPLICAS).set(self.replicas as f64);
        match (self.result, self.was_failing) {
            (Err(e), false) => tracing::warn!(
                error = %e,
                "cannot share rate limits with the other replicas through ClickHouse; keeping the last split"
            ),
            (Ok(()), true) => tracing::info!(
                replicas = self.replicas,
                "sharing rate limits with the other replicas again"
            ),
            _ => {}
        }
    }
}

/// Describes the metrics above to the recorder.
pub fn describe_metrics() {
    describe_counter!(
        RATE_SHARE_SYNCS,
        Unit::Count,
        "Syncs of this replica's rate-limit shares through ClickHouse, by outcome (ok, error)"
    );
    describe_gauge!(
        GATEWAY_REPLICAS,
        "Live gateway replicas sharing the tenants' rate limits, as last seen (this one included)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn parts_add_up_to_the_rate_and_the_small_get_what_they_ask() {
        let a = allocate(300.0, &[10.0, 500.0, 1000.0]);
        assert!(close(a.iter().sum::<f64>(), 300.0), "{a:?}");
        assert!(
            close(a[0], 10.0) && close(a[1], 145.0) && close(a[2], 145.0),
            "{a:?}"
        );
        // Nobody over an equal share: each gets its demand plus the spare evenly.
        let a = allocate(300.0, &[10.0, 20.0, 30.0]);
        assert!(
            close(a[0], 90.0) && close(a[1], 100.0) && close(a[2], 110.0),
            "{a:?}"
        );
        // Idle replicas: an even split.
        assert_eq!(allocate(90.0, &[0.0, 0.0, 0.0]), vec![30.0; 3]);
        assert_eq!(allocate(90.0, &[5000.0]), vec![90.0]);
        assert!(allocate(90.0, &[]).is_empty());
    }

    #[test]
    fn every_replica_computes_the_same_split_from_the_same_rows() {
        let t = Uuid::new_v4();
        let rows = |offers: &[(&str, u64)]| -> Vec<UsageSum> {
            offers
                .iter()
                .map(|(i, n)| UsageSum {
                    instance: i.to_string(),
                    tenant_id: t,
                    offered: *n,
                    rate: 100.0,
                })
                .collect()
        };
        let r = rows(&[("a", 600), ("b", 300), ("c", 30)]); // per 3 s: 200, 100, 10 /s
        let total: f64 = ["a", "b", "c"]
            .iter()
            .map(|i| {
                let s = Shares::new(i.to_string(), Duration::from_secs(1), 100);
                s.apply(&r, Duration::from_secs(3));
                s.share(t)
            })
            .sum();
        assert!(close(total, 1.0), "{total}");
        let c = Shares::new("c".into(), Duration::from_secs(1), 100);
        c.apply(&r, Duration::from_secs(3));
        assert!(close(c.share(t), 0.10), "{}", c.share(t));
        // A tenant nobody reported: an even split over the live replicas.
        assert!(close(c.share(Uuid::new_v4()), 1.0 / 3.0));
        // Alone (no rows yet, or ClickHouse never answered): the whole rate.
        let alone = Shares::new("z".into(), Duration::from_secs(1), 100);
        assert!(close(alone.share(t), 1.0));
    }

    #[test]
    fn a_cached_share_follows_every_sync_and_goes_stale_with_the_split() {
        let t = Uuid::new_v4();
        let s = Shares::new("b".into(), Duration::from_secs(1), 100);
        let now = Instant::now();
        let mut cached = s.read(t, now);
        assert!(close(cached.value, 1.0), "alone");
        let row = |instance: &str, offered| UsageSum {
            instance: instance.into(),
            tenant_id: t,
            offered,
            rate: 100.0,
        };
        // Demand 100/s each over the window: half each.
        s.apply(&[row("a", 300), row("b", 300)], Duration::from_secs(3));
        s.refresh(t, &mut cached, Instant::now());
        assert!(close(cached.value, 0.5), "{}", cached.value);
        // Without a sync the split holds STALE_INTERVALS, then an even split
        // over the replicas last seen.
        let later = Instant::now() + Duration::from_secs(STALE_INTERVALS as u64 + 1);
        s.apply(&[row("a", 30), row("b", 870)], Duration::from_secs(3));
        s.refresh(t, &mut cached, Instant::now());
        assert!(close(cached.value, 0.9), "{}", cached.value);
        s.refresh(t, &mut cached, later);
        assert!(close(cached.value, 0.5), "stale: {}", cached.value);
    }
}
