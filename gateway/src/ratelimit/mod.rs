//! Per-tenant and global rate limits: token buckets counted in events.
//!
//! Each tenant has a bucket of `burst` tokens refilled at `events_per_second`
//! (from its tier, or a per-tenant override); a request of N events takes N tokens
//! from its tenant's bucket and from the global bucket, or none at all. Buckets
//! live in a sharded map bounded by `rate_limits.max_tenants`; idle buckets are
//! full, equivalent to new ones, and are dropped first.
//!
//! The gateway asks in three steps: [`RateLimiter::peek`] before reading a body
//! (a drained tenant costs no work), [`RateLimiter::check`] for the batch's
//! events once they are counted and before they are parsed and validated, and
//! [`RateLimiter::debit`] of one token for a request that failed after costing
//! work but before it was counted.
//!
//! With several replicas, each one's tenant buckets refill at its part of the
//! tenant's rate ([`cluster`]), so the replicas together admit the configured
//! rate; `X-RateLimit-Limit` still says the tenant's whole rate. The global
//! bucket stays per replica.

pub mod cluster;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shared::config::{RateLimitsConfig, TiersConfig};
use shared::domain::Tier;
use uuid::Uuid;

const SHARDS: usize = 16;

/// What a client is told in `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained events per second.
    pub limit: f64,
    /// Whole events left in the bucket after this request.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

/// A refused request: when it could pass, and the quota it hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    pub retry_after_secs: u64,
    pub quota: Quota,
    pub global: bool,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
    /// The tenant's whole rate (what `X-RateLimit-Limit` says).
    limit: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    rate: Rate,
    /// Events offered since the last share sync (admitted or not), counted
    /// here under the shard's lock rather than in a map of their own.
    offered: u64,
    /// This replica's part of the tenant's rate, as last read.
    share: cluster::Cached,
}

impl Bucket {
    fn full(rate: Rate, now: Instant, share: cluster::Cached) -> Bucket {
        Bucket {
            tokens: rate.burst,
            updated: now,
            rate,
            offered: 0,
            share,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.updated = now;
    }

    fn quota(&self, rate: Rate) -> Quota {
        Quota {
            limit: rate.limit,
            remaining: self.tokens.max(0.0).floor() as u64,
            reset_secs: ((rate.burst - self.tokens).max(0.0) / rate.per_second).ceil() as u64,
        }
    }

    /// Takes `n` tokens, or says how long until they are there.
    fn take(&mut self, n: f64, rate: Rate, now: Instant) -> Result<Quota, Refusal> {
        self.refill(rate, now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(self.quota(rate))
        } else {
            Err(self.refusal(n, rate, false))
        }
    }

    /// Why `n` tokens cannot be taken now, and when they could.
    fn refusal(&self, n: f64, rate: Rate, global: bool) -> Refusal {
        let wait = (n - self.tokens) / rate.per_second;
        Refusal {
            retry_after_secs: wait.ceil().max(1.0) as u64,
            quota: self.quota(rate),
            global,
        }
    }
}

pub struct RateLimiter {
    tiers: [Rate; 3],
    overrides: HashMap<Uuid, Rate>,
    global: Option<(Rate, Mutex<Bucket>)>,
    shards: Vec<Mutex<HashMap<Uuid, Bucket>>>,
    per_shard: usize,
    /// This replica's parts of the tenants' rates (none: it enforces them alone).
    shares: Option<Arc<cluster::Shares>>,
    /// A replica's bucket always holds one whole batch.
    min_burst: f64,
}

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Free => 0,
        Tier::Paid => 1,
        Tier::Enterprise => 2,
    }
}

impl RateLimiter {
    /// Each tier's bucket from `[tiers]`; the global bucket, overrides and the
    /// bound on tenants from `[rate_limits]`; `shares` when the rates are
    /// shared with other replicas; `max_batch`: `gateway.max_events_per_batch`.
    pub fn new(
        tiers_cfg: &TiersConfig,
        r: &RateLimitsConfig,
        shares: Option<Arc<cluster::Shares>>,
        max_batch: usize,
    ) -> RateLimiter {
        let rate = |per_second: f64, burst: u64| Rate {
            per_second,
            burst: burst as f64,
            limit: per_second,
        };
        let tiers = Tier::ALL.map(|t| {
            let c = tiers_cfg.get(t);
            rate(c.events_per_second, c.burst)
        });
        let global = (r.global_events_per_second > 0.0).then(|| {
            let g = rate(r.global_events_per_second, r.global_burst);
            (
                g,
                Mutex::new(Bucket::full(g, Instant::now(), cluster::Cached::WHOLE)),
            )
        });
        RateLimiter {
            tiers,
            overrides: r
                .overrides
                .iter()
                .map(|o| (o.tenant_id, rate(o.events_per_second, o.burst)))
                .collect(),
            global,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: r.max_tenants.div_ceil(SHARDS).max(1),
            shares,
            min_burst: max_batch as f64,
        }
    }

    /// The shares this limiter uses, for the task that syncs them.
    pub fn shares(&self) -> Option<&Arc<cluster::Shares>> {
        self.shares.as_ref()
    }

    /// `tenant`'s configured rate (its override, else its tier's).
    fn whole_rate(&self, tenant: Uuid, tier: Tier) -> Rate {
        self.overrides
            .get(&tenant)
            .copied()
            .unwrap_or(self.tiers[tier_index(tier)])
    }

    /// This replica's part of `whole`, its share being `share`.
    fn part(&self, whole: Rate, share: f64) -> Rate {
        if self.shares.is_none() {
            return whole;
        }
        Rate {
            per_second: whole.per_second * share,
            burst: (whole.burst * share).max(self.min_burst.min(whole.burst)),
            limit: whole.limit,
        }
    }

    /// The share for a bucket about to be created.
    fn fresh_share(&self, tenant: Uuid, now: Instant) -> cluster::Cached {
        match &self.shares {
            None => cluster::Cached::WHOLE,
            Some(s) => s.read(tenant, now),
        }
    }

    /// `tenant`'s bucket and its rate on this replica now (a new bucket is full).
    fn bucket<'m>(
        &self,
        map: &'m mut HashMap<Uuid, Bucket>,
        tenant: Uuid,
        whole: Rate,
        now: Instant,
    ) -> (&'m mut Bucket, Rate) {
        if !map.contains_key(&tenant) && map.len() >= self.per_shard {
            evict(map, now);
        }
        let bucket = map.entry(tenant).or_insert_with(|| {
            let share = self.fresh_share(tenant, now);
            Bucket::full(self.part(whole, share.value), now, share)
        });
        let rate = self.local_rate(tenant, bucket, whole, now);
        (bucket, rate)
    }

    /// `bucket`'s rate on this replica now: its share re-read only when a
    /// sync changed it or it went stale.
    fn local_rate(&self, tenant: Uuid, bucket: &mut Bucket, whole: Rate, now: Instant) -> Rate {
        if let Some(s) = &self.shares {
            s.refresh(tenant, &mut bucket.share, now);
        }
        self.part(whole, bucket.share.value)
    }

    /// The events each tenant was offered since the last call, and its
    /// configured rate (for the share sync; the counts start again from 0).
    pub fn take_offered(&self) -> cluster::Offered {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (tenant, b) in map.iter_mut().filter(|(_, b)| b.offered > 0) {
                out.push((*tenant, std::mem::take(&mut b.offered), b.rate.limit));
            }
        }
        out
    }

    /// Takes `events` tokens for `tenant`, or refuses without taking any.
    pub fn check(&self, tenant: Uuid, tier: Tier, events: usize) -> Result<Quota, Refusal> {
        self.check_at(tenant, tier, events, Instant::now())
    }

    /// Refuses, taking nothing, when `tenant` has not one token left: a drained
    /// tenant's requests are turned away before any work on their body.
    pub fn peek(&self, tenant: Uuid, tier: Tier) -> Result<(), Refusal> {
        self.peek_at(tenant, tier, Instant::now())
    }

    fn peek_at(&self, tenant: Uuid, tier: Tier, now: Instant) -> Result<(), Refusal> {
        let whole = self.whole_rate(tenant, tier);
        let shard = &self.shards[(tenant.as_u128() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = map.get_mut(&tenant) {
            let rate = self.local_rate(tenant, bucket, whole, now);
            bucket.refill(rate, now);
            if bucket.tokens < 1.0 {
                bucket.offered += 1;
                return Err(bucket.refusal(1.0, rate, false));
            }
        }
        drop(map);
        if let Some((g, global)) = &self.global {
            let mut gb = global.lock().unwrap_or_else(|e| e.into_inner());
            gb.refill(*g, now);
            if gb.tokens < 1.0 {
                return Err(gb.refusal(1.0, *g, true));
            }
        }
        Ok(())
    }

    /// Takes `events` tokens whatever is left (never below zero): what a request
    /// that failed after costing work pays.
    pub fn debit(&self, tenant: Uuid, tier: Tier, events: usize) {
        self.debit_at(tenant, tier, events as f64, Instant::now());
    }

    fn debit_at(&self, tenant: Uuid, tier: Tier, n: f64, now: Instant) {
        let whole = self.whole_rate(tenant, tier);
        let shard = &self.shards[(tenant.as_u128() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (bucket, rate) = self.bucket(&mut map, tenant, whole, now);
        bucket.refill(rate, now);
        bucket.tokens = (bucket.tokens - n).clamp(0.0, rate.burst);
    }

    fn check_at(
        &self,
        tenant: Uuid,
        tier: Tier,
        events: usize,
        now: Instant,
    ) -> Result<Quota, Refusal> {
        let whole = self.whole_rate(tenant, tier);
        let n = events as f64;
        let shard = &self.shards[(tenant.as_u128() as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let (bucket, rate) = self.bucket(&mut map, tenant, whole, now);
        bucket.offered += events as u64;
        // A tier change or a new override applies from the next request on.
        bucket.rate = rate;
        let quota = bucket.take(n, rate, now)?;
        if let Some((g, global)) = &self.global {
            let mut gb = global.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(mut refusal) = gb.take(n, *g, now) {
                bucket.tokens += n; // give the tenant its tokens back
                refusal.global = true;
                return Err(refusal);
            }
        }
        Ok(quota)
    }
}

/// Makes room for one bucket: drops full (idle) buckets, or else the stalest
/// one. (A dropped bucket's offered count since the last sync goes with it:
/// the share sync under-counts that tenant for one interval.)
fn evict(map: &mut HashMap<Uuid, Bucket>, now: Instant) {
    let before = map.len();
    map.retain(|_, b| {
        let mut b = *b;
        b.refill(b.rate, now);
        b.tokens < b.rate.burst
    });
    if map.len() == before {
        if let Some(oldest) = map.iter().min_by_key(|(_, b)| b.updated).map(|(id, _)| *id) {
            map.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::config::Config;
    use std::time::Duration;

    fn limiter(edit: impl FnOnce(&mut Config)) -> RateLimiter {
        let mut cfg = Config::load_from(None, Vec::new()).expect("defaults");
        cfg.gateway.max_events_per_batch = 10;
        cfg.tiers.free.events_per_second = 10.0;
        cfg.tiers.free.burst = 20;
        edit(&mut cfg);
        RateLimiter::new(
            &cfg.tiers,
            &cfg.rate_limits,
            None,
            cfg.gateway.max_events_per_batch,
        )
    }

    #[test]
    fn burst_then_refill() {
        let rl = limiter(|_| {});
        let t = Uuid::new_v4();
        let now = Instant::now();
        let q = rl.check_at(t, Tier::Free, 15, now).expect("within burst");
        assert_eq!((q.remaining, q.reset_secs), (5, 2));
        let r = rl.check_at(t, Tier::Free, 10, now).unwrap_err();
        assert_eq!(r.retry_after_secs, 1, "5 tokens missing at 10/s");
        assert_eq!(r.quota.remaining, 5);
        // Refused requests take nothing; after 0.5 s there are 10.
        let later = now + Duration::from_millis(500);
        assert_eq!(
            rl.check_at(t, Tier::Free, 10, later)
                .expect("refilled")
                .remaining,
            0
        );
    }

    #[test]
    fn tiers_and_overrides_apply() {
        let vip = Uuid::new_v4();
        let rl = limiter(|c| {
            c.tiers.paid.events_per_second = 100.0;
            c.tiers.paid.burst = 100;
            c.rate_limits.overrides.push(shared::config::RateOverride {
                tenant_id: vip,
                events_per_second: 1000.0,
                burst: 500,
            });
        });
        let now = Instant::now();
        assert!(rl.check_at(Uuid::new_v4(), Tier::Free, 21, now).is_err());
        assert!(rl.check_at(Uuid::new_v4(), Tier::Paid, 100, now).is_ok());
        assert_eq!(
            rl.check_at(vip, Tier::Free, 500, now)
                .expect("override")
                .limit,
            1000.0
        );
    }

    #[test]
    fn global_limit_refunds_the_tenant() {
        let rl = limiter(|c| {
            c.rate_limits.global_events_per_second = 10.0;
            c.rate_limits.global_burst = 25;
        });
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        rl.check_at(a, Tier::Free, 20, now).expect("a fits");
        let r = rl.check_at(b, Tier::Free, 10, now).unwrap_err();
        assert!(r.global);
        // b's own bucket was not charged: it is still full.
        let q = rl
            .check_at(b, Tier::Free, 5, now)
            .expect("global has 5 left");
        assert_eq!(q.remaining, 15);
    }

    #[test]
    fn memory_is_bounded_by_max_tenants() {
        let rl = limiter(|c| c.rate_limits.max_tenants = 32);
        let now = Instant::now();
        for _ in 0..1000 {
            rl.check_at(Uuid::new_v4(), Tier::Free, 1, now)
                .expect("fresh tenant");
        }
        let total: usize = rl
            .shards
            .iter()
            .map(|s| s.lock().expect("lock").len())
            .sum();
        assert!(total <= 32, "{total} buckets kept");
    }

    #[test]
    fn peek_takes_nothing_and_debit_never_goes_below_zero() {
        let rl = limiter(|_| {});
        let t = Uuid::new_v4();
        let now = Instant::now();
        assert!(
            rl.peek_at(t, Tier::Free, now).is_ok(),
            "a new tenant has a full bucket"
        );
        rl.check_at(t, Tier::Free, 20, now)
            .expect("the whole burst");
        let r = rl.peek_at(t, Tier::Free, now).unwrap_err();
        assert_eq!(r.quota.remaining, 0);
        // Debits of a drained bucket leave it at zero: refills still arrive.
        rl.debit_at(t, Tier::Free, 5.0, now);
        let later = now + Duration::from_millis(150);
        assert!(
            rl.peek_at(t, Tier::Free, later).is_ok(),
            "1.5 tokens refilled"
        );
        rl.debit_at(t, Tier::Free, 1.0, later);
        assert!(
            rl.check_at(t, Tier::Free, 1, later).is_err(),
            "the debit took a token"
        );
    }

    #[test]
    fn offered_events_are_counted_in_the_buckets_and_handed_over_once() {
        let mut cfg = Config::load_from(None, Vec::new()).expect("defaults");
        cfg.tiers.free.events_per_second = 10.0;
        cfg.tiers.free.burst = 20;
        let shares = Arc::new(cluster::Shares::new(
            "me".into(),
            Duration::from_secs(1),
            100,
        ));
        let rl = RateLimiter::new(&cfg.tiers, &cfg.rate_limits, Some(shares), 10);
        let (t, idle) = (Uuid::new_v4(), Uuid::new_v4());
        let now = Instant::now();
        rl.check_at(t, Tier::Free, 15, now).expect("within burst");
        assert!(rl.check_at(t, Tier::Free, 10, now).is_err());
        rl.check_at(t, Tier::Free, 5, now).expect("the rest");
        assert!(rl.peek_at(t, Tier::Free, now).is_err(), "drained");
        rl.peek_at(idle, Tier::Free, now)
            .expect("unknown tenants pass a peek");
        // Admitted and refused alike: 15 + 10 + 5 + the refused peek.
        assert_eq!(rl.take_offered(), vec![(t, 31, 10.0)]);
        assert!(rl.take_offered().is_empty(), "counted once");
    }
}
