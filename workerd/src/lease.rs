//! Leases in ClickHouse: at most one holder of a named lease at a time, across
//! processes and machines, with no server beyond ClickHouse.
//!
//! ClickHouse has no compare-and-set, so a lease is taken in two steps: insert
//! a ticket `(name, holder, expires_at)`, then read every ticket of the name.
//! The holder has the lease if no *other* unexpired ticket exists; otherwise it
//! withdraws its ticket and reports busy. Two contenders can never both win: the
//! one whose ticket was written second reads after both tickets exist and sees
//! the other. (Both may withdraw; the next run tries again.) Expiry is judged by
//! ClickHouse's clock alone (`now64()`), so workerd clocks may disagree.
//!
//! A ticket lasts `jobs.lease_ttl_secs`. Jobs call [`Lease::confirm`] right
//! before every destructive step (overwriting an archive, deleting raw
//! events): it fails unless at least half the TTL was still left, then renews.
//! A newcomer only wins when it sees every other ticket expired, and ours
//! cannot expire within half a TTL of a confirm, so a confirmed holder is
//! alone until its next step (the usual lease argument: steps between two
//! confirms must take less than half the TTL). A holder that was killed or
//! stalled is replaced once its ticket expires, and a stalled one that wakes up
//! fails its next confirm. On a cluster (`clickhouse.cluster`) the tickets
//! table is replicated, so tickets are written with `insert_quorum = 'auto'`
//! and read with `select_sequential_consistency = 1`: a read on any replica
//! sees every ticket a quorum acknowledged.

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

use crate::jobs::context::JobContext;
use crate::jobs::error::JobError;

/// A lease this process holds; dropped leases expire on their own, so call
/// [`Lease::release`] to free it at once.
pub struct Lease {
    pub name: String,
    holder: Uuid,
    client: clickhouse::Client,
    table: String,
    ttl_ms: i64,
}

async fn write_ticket(
    client: &clickhouse::Client,
    table: &str,
    name: &str,
    holder: Uuid,
    ttl_ms: i64,
) -> Result<(), JobError> {
    client
        .query(&format!(
            "INSERT INTO {table} (name, holder, expires_at, updated_at) \
             SELECT ?, toUUID(?), now64(3) + toIntervalMillisecond(?), now64(6)"
        ))
        .bind(name)
        .bind(holder.to_string())
        .bind(ttl_ms)
        .execute()
        .await?;
    Ok(())
}

/// Holders other than `holder` whose ticket on `name` has not expired.
async fn rivals(
    client: &clickhouse::Client,
    table: &str,
    name: &str,
    holder: Uuid,
) -> Result<Vec<String>, JobError> {
    Ok(client
        .query(&format!(
            "SELECT toString(holder) FROM {table} WHERE name = ? \
             GROUP BY holder HAVING argMax(expires_at, updated_at) > now64(3) \
             AND holder != toUUID(?)"
        ))
        .bind(name)
        .bind(holder.to_string())
        .fetch_all()
        .await?)
}

impl Lease {
    /// Takes the lease `name`, or `None` when someone else holds it.
    pub async fn try_acquire(ctx: &JobContext, name: &str) -> Result<Option<Lease>, JobError> {
        let client = match ctx.db.cluster() {
            Some(_) => ctx
                .client
                .clone()
                .with_setting("insert_quorum", "auto")
                .with_setting("select_sequential_consistency", "1"),
            None => ctx.client.clone(),
        };
        let lease = Lease {
            name: name.to_string(),
            holder: Uuid::new_v4(),
            client,
            table: ctx.table("leases"),
            ttl_ms: ctx.config.jobs.lease_ttl_secs as i64 * 1000,
        };
        write_ticket(
            &lease.client,
            &lease.table,
            name,
            lease.holder,
            lease.ttl_ms,
        )
        .await?;
        let others = rivals(&lease.client, &lease.table, name, lease.holder).await?;
        if others.is_empty() {
            tracing::debug!(lease = name, holder = %lease.holder, "lease taken");
            return Ok(Some(lease));
        }
        tracing::debug!(lease = name, held_by = ?others, "lease busy");
        lease.release().await?;
        Ok(None)
    }

    /// [`Lease::try_acquire`] up to `attempts` times, each after a random
    /// pause of up to `jitter`: contenders that started together spread out,
    /// and one of them wins. `None`: someone else holds it.
    pub async fn contend(
        ctx: &JobContext,
        name: &str,
        attempts: u32,
        jitter: Duration,
    ) -> Result<Option<Lease>, JobError> {
        for _ in 0..attempts.max(1) {
            let pause = (Uuid::new_v4().as_u128() % (jitter.as_micros().max(1))) as u64;
            tokio::time::sleep(Duration::from_micros(pause)).await;
            if let Some(lease) = Lease::try_acquire(ctx, name).await? {
                return Ok(Some(lease));
            }
        }
        tracing::debug!(lease = name, "lease held elsewhere");
        Ok(None)
    }

    /// Checks that at least half the TTL was left (so no one can have taken
    /// over), then renews; call right before a destructive step and stop if it
    /// fails.
    pub async fn confirm(&self) -> Result<(), JobError> {
        let left_ms: i64 = self
            .client
            .query(&format!(
                "SELECT toInt64(dateDiff('millisecond', now64(3), argMax(expires_at, updated_at))) \
                 FROM {} WHERE name = ? AND holder = toUUID(?)",
                self.table
            ))
            .bind(&self.name)
            .bind(self.holder.to_string())
            .fetch_one()
            .await?;
        if left_ms < self.ttl_ms / 2 {
            return Err(JobError::LeaseLost {
                name: self.name.clone(),
                left_ms,
            });
        }
        write_ticket(
            &self.client,
            &self.table,
            &self.name,
            self.holder,
            self.ttl_ms,
        )
        .await
    }

    /// This holder's id (recorded with the runs it made).
    pub fn holder(&self) -> Uuid {
        self.holder
    }

    /// Runs `work` while holding the lease: it is confirmed (and so renewed)
    /// every quarter of the TTL, and `work` is dropped, mid-step if need be,
    /// as soon as a confirmation fails, so no one who took the lease over meets
    /// us still running. However `work` ends the lease is released, but not
    /// before `linger_until`: contenders of the same tick still trying then
    /// find it held rather than free, and do not run the job a second time.
    pub async fn hold_while<T, F>(
        self,
        work: F,
        linger_until: tokio::time::Instant,
    ) -> Result<T, JobError>
    where
        F: Future<Output = Result<T, JobError>>,
    {
        let period = Duration::from_millis((self.ttl_ms / 4).max(1) as u64);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(work);
        let out = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = renew.tick() => {
                    if let Err(e) = self.confirm().await {
                        tracing::error!(lease = %self.name, error = %e, "cannot renew the lease: stopping the work it guards");
                        break Err(e);
                    }
                }
            }
        };
        let linger = linger_until.saturating_duration_since(tokio::time::Instant::now());
        let released = write_ticket(
            &self.client,
            &self.table,
            &self.name,
            self.holder,
            (linger.as_millis() as i64).max(-1),
        )
        .await;
        if let Err(e) = released {
            tracing::warn!(lease = %self.name, error = %e, "cannot release the lease; it expires on its own");
        }
        out
    }

    /// Gives the lease up (writes an expired ticket).
    pub async fn release(self) -> Result<(), JobError> {
        write_ticket(&self.client, &self.table, &self.name, self.holder, -1).await
    }
}
