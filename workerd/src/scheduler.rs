//! `workerd run`'s job scheduler (tokio-cron-scheduler).
//!
//! Every tick goes through [`Runner::tick`], which guarantees that a job never
//! overlaps itself (a tick that finds the previous run still going is skipped
//! and counted), that a failed run is logged and counted and never takes the
//! daemon down, and that after failures the job backs off exponentially
//! (`jobs.backoff_base_ms` doubling up to `jobs.backoff_max_ms`): a circuit
//! breaker that stops hammering ClickHouse while it is down and closes on the
//! first success.
//!
//! Across replicas, every scheduled run first takes the job's lease in
//! ClickHouse (`job:<name>`, see [`crate::lease`]): one replica runs it, the
//! others skip that tick (`skipped_elsewhere`), and a replica that died holding
//! it is replaced once its lease expires. Each run is recorded in `job_runs`
//! (job, instance, holder, start, end, outcome).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::jobs::{self, JobContext, JobError, JobName, JobReport};
use crate::lease::Lease;
use crate::notify::{Alert, Notifier};
use crate::telemetry::JobFinished;

/// What one tick did: the run's report (with the alerts it raised) or its error.
#[derive(Debug, Clone, PartialEq)]
pub enum Tick {
    Ran(Result<JobReport, String>),
    SkippedOverlap,
    SkippedBackoff,
    /// Another replica holds the job's lease and runs it.
    SkippedElsewhere,
}

#[derive(Default)]
pub struct JobState {
    running: AtomicBool,
    runs: AtomicU64,
    failures: AtomicU64,
    skipped: AtomicU64,
    consecutive_failures: AtomicU32,
    blocked_until: Mutex<Option<Instant>>,
    last: Mutex<Option<serde_json::Value>>,
}

pub struct Runner {
    pub ctx: Arc<JobContext>,
    /// Where the alerts of runs go (none: they are only logged by the jobs).
    notifier: Option<Notifier>,
    states: BTreeMap<&'static str, Arc<JobState>>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// `host:pid`, recorded with every run in `job_runs`.
    instance: String,
}

/// Clears the running flag however the run ends.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Runner {
    pub fn new(ctx: Arc<JobContext>, notifier: Option<Notifier>) -> Runner {
        let backoff_base = Duration::from_millis(ctx.config.jobs.backoff_base_ms);
        let backoff_max = Duration::from_millis(ctx.config.jobs.backoff_max_ms);
        Runner {
            ctx,
            notifier,
            states: JobName::ALL
                .iter()
                .map(|j| (j.as_str(), Arc::new(JobState::default())))
                .collect(),
            backoff_base,
            backoff_max,
            instance: shared::runtime::metrics::instance(),
        }
    }

    fn state(&self, name: &str) -> Arc<JobState> {
        self.states
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(JobState::default()))
    }

    /// Runs `job` now (real clock), guarded, under the job's lease, records
    /// the run and hands its alerts (or its failure) to the notifier.
    pub async fn tick(&self, job: JobName) -> Tick {
        let ctx = Arc::clone(&self.ctx);
        let instance = self.instance.as_str();
        let tick = self
            .guarded(job.as_str(), || async move {
                let name = job_lease(job);
                let contending_until =
                    tokio::time::Instant::now() + CONTEND_JITTER * (CONTEND_ATTEMPTS + 2);
                let Some(lease) =
                    Lease::contend(&ctx, &name, CONTEND_ATTEMPTS, CONTEND_JITTER).await?
                else {
                    return Err(JobError::HeldElsewhere { name });
                };
                let holder = lease.holder();
                let started = time::OffsetDateTime::now_utc();
                let result = lease
                    .hold_while(jobs::run(&ctx, job, started, None, None), contending_until)
                    .await;
                record_run(&ctx, job, instance, holder, started, &result).await;
                result
            })
            .await;
        if let Some(n) = &self.notifier {
            for alert in tick.alerts(job) {
                n.notify(&alert).await;
            }
        }
        tick
    }

    /// Runs `work` under `name`'s guard: no overlap, failures counted, backoff.
    pub async fn guarded<F, Fut>(&self, name: &str, work: F) -> Tick
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<JobReport, JobError>>,
    {
        let st = self.state(name);
        if st
            .blocked_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
        {
            st.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(job = name, "skipped: backing off after failures");
            self.skipped(name, &st, "skipped_backoff");
            return Tick::SkippedBackoff;
        }
        if st.running.swap(true, Ordering::AcqRel) {
            st.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = name, "skipped: the previous run is still going");
            self.skipped(name, &st, "skipped_overlap");
            return Tick::SkippedOverlap;
        }
        let _running = Running(&st.running);
        let started = Instant::now();
        let result = work().await;
        if let Err(JobError::HeldElsewhere { name: lease }) = &result {
            tracing::debug!(job = name, lease = %lease, "skipped: another replica runs it");
            self.skipped(name, &st, "skipped_elsewhere");
            return Tick::SkippedElsewhere;
        }
        st.runs.fetch_add(1, Ordering::Relaxed);
        let finished = time::OffsetDateTime::now_utc();
        match result {
            Ok(report) => {
                st.consecutive_failures.store(0, Ordering::Relaxed);
                *st.blocked_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
                *st.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(json!({
                    "status": "ok", "rows_affected": report.rows_affected,
                    "finished_at_ms": jobs::ms(finished), "elapsed_ms": started.elapsed().as_millis() as u64,
                }));
                JobFinished {
                    job: name,
                    outcome: "success",
                    elapsed: Some(started.elapsed()),
                    rows: report.rows_affected,
                    consecutive_failures: 0,
                }
                .emit();
                Tick::Ran(Ok(report))
            }
            Err(e) => {
                st.failures.fetch_add(1, Ordering::Relaxed);
                let n = st.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let wait = self
                    .backoff_base
                    .saturating_mul(1u32 << (n - 1).min(20))
                    .min(self.backoff_max);
                *st.blocked_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + wait);
                let msg = e.to_string();
                tracing::error!(job = name, error = %msg, consecutive_failures = n, retry_in_ms = wait.as_millis() as u64, "job failed");
                *st.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(json!({
                    "status": "failed", "error": msg,
                    "finished_at_ms": jobs::ms(finished), "retry_in_ms": wait.as_millis() as u64,
                }));
                JobFinished {
                    job: name,
                    outcome: "failure",
                    elapsed: Some(started.elapsed()),
                    rows: 0,
                    consecutive_failures: n,
                }
                .emit();
                Tick::Ran(Err(msg))
            }
        }
    }

    fn skipped(&self, name: &str, st: &JobState, outcome: &'static str) {
        JobFinished {
            job: name,
            outcome,
            elapsed: None,
            rows: 0,
            consecutive_failures: st.consecutive_failures.load(Ordering::Relaxed),
        }
        .emit();
    }

    /// Per-job counters and the last run, for `/health`.
    pub fn report(&self) -> serde_json::Value {
        let jobs: serde_json::Map<String, serde_json::Value> = self
            .states
            .iter()
            .map(|(name, st)| {
                (
                    name.to_string(),
                    json!({
                        "runs": st.runs.load(Ordering::Relaxed),
                        "failures": st.failures.load(Ordering::Relaxed),
                        "skipped": st.skipped.load(Ordering::Relaxed),
                        "consecutive_failures": st.consecutive_failures.load(Ordering::Relaxed),
                        "running": st.running.load(Ordering::Relaxed),
                        "last": st.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(jobs)
    }
}

impl Tick {
    /// The alerts of a tick of `job`: those its run raised, or its failure.
    pub fn alerts(&self, job: JobName) -> Vec<Alert> {
        match self {
            Tick::Ran(Ok(report)) => report.alerts.clone(),
            Tick::Ran(Err(error)) => vec![Alert::JobFailed {
                job: job.as_str(),
                error: error.clone(),
            }],
            Tick::SkippedOverlap | Tick::SkippedBackoff | Tick::SkippedElsewhere => Vec::new(),
        }
    }
}

/// Replicas whose ticks fire together try for a job's lease this many times,
/// each after a random pause of up to [`CONTEND_JITTER`]; the winner keeps the
/// lease at least until the others have given up (`CONTEND_JITTER` times
/// attempts + 2 from the tick), so a tick runs a job once in the cluster.
const CONTEND_ATTEMPTS: u32 = 4;
const CONTEND_JITTER: Duration = Duration::from_millis(250);

/// The lease every replica's run of `job` takes.
pub fn job_lease(job: JobName) -> String {
    format!("job:{}", job.as_str())
}

/// Appends the run to `job_runs`; a failure to record is logged, never fatal.
async fn record_run(
    ctx: &JobContext,
    job: JobName,
    instance: &str,
    holder: uuid::Uuid,
    started: time::OffsetDateTime,
    result: &Result<JobReport, JobError>,
) {
    let (outcome, rows, error) = match result {
        Ok(r) => ("success", r.rows_affected, String::new()),
        Err(e) => ("failure", 0, e.to_string()),
    };
    let finished = time::OffsetDateTime::now_utc();
    let sql = format!(
        "INSERT INTO {} (job, instance, holder, started_at, finished_at, outcome, rows_affected, error) \
         SELECT ?, ?, toUUID(?), {at}, {at}, ?, ?, ?",
        ctx.table("job_runs"),
        at = shared::store::sql::AT_MS,
    );
    let written = ctx
        .client
        .query(&sql)
        .bind(job.as_str())
        .bind(instance)
        .bind(holder.to_string())
        .bind(jobs::ms(started))
        .bind(jobs::ms(finished))
        .bind(outcome)
        .bind(rows)
        .bind(error)
        .execute()
        .await;
    if let Err(e) = written {
        tracing::warn!(job = job.as_str(), error = %e, "cannot record the run in job_runs");
    }
}

/// The scheduler could not be set up (the schedules themselves were checked
/// when the configuration loaded).
#[derive(Debug, thiserror::Error)]
#[error("the job scheduler: {0}")]
pub struct ScheduleError(#[from] JobSchedulerError);

/// Schedules every job with a non-empty cron expression and starts the scheduler.
pub async fn start(runner: Arc<Runner>) -> Result<JobScheduler, ScheduleError> {
    let sched = JobScheduler::new().await?;
    for job in JobName::ALL {
        let Some(cron) = job.schedule(&runner.ctx.config.jobs).cron() else {
            tracing::info!(job = job.as_str(), "not scheduled (empty cron)");
            continue;
        };
        let r = Arc::clone(&runner);
        let j = Job::new_async(cron, move |_id, _sched| {
            let r = Arc::clone(&r);
            Box::pin(async move {
                r.tick(job).await;
            })
        })?;
        sched.add(j).await?;
        tracing::info!(job = job.as_str(), cron, "scheduled");
    }
    sched.start().await?;
    Ok(sched)
}

impl Runner {
    /// Whether any job is running now.
    pub fn busy(&self) -> bool {
        self.states
            .values()
            .any(|st| st.running.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner() -> Runner {
        let mut config = shared::Config::load_from(None, Vec::new()).expect("defaults");
        config.jobs.backoff_base_ms = 50;
        config.jobs.backoff_max_ms = 200;
        Runner::new(Arc::new(JobContext::new(config)), None)
    }

    fn ok() -> Result<JobReport, JobError> {
        Ok(JobReport::default())
    }

    #[tokio::test]
    async fn a_job_never_overlaps_itself() {
        let r = Arc::new(runner());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let slow = {
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                r.guarded("sessions", || async move {
                    let _ = rx.await;
                    ok()
                })
                .await
            })
        };
        // Wait until the slow run holds the guard.
        while !r.state("sessions").running.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            r.guarded("sessions", || async { ok() }).await,
            Tick::SkippedOverlap
        );
        // Other jobs are independent.
        assert_eq!(
            r.guarded("rollups", || async { ok() }).await,
            Tick::Ran(Ok(JobReport::default()))
        );
        let _ = tx.send(());
        assert_eq!(
            slow.await.expect("join"),
            Tick::Ran(Ok(JobReport::default()))
        );
        assert_eq!(
            r.guarded("sessions", || async { ok() }).await,
            Tick::Ran(Ok(JobReport::default()))
        );
        assert_eq!(r.report()["sessions"]["skipped"], 1);
    }

    #[tokio::test]
    async fn failures_back_off_exponentially_and_reset_on_success() {
        let r = runner(); // backoff 50 ms, doubling, at most 200 ms
        let fail = || async { Err(JobError::EmptyWindow) };
        assert!(matches!(
            r.guarded("retention", fail).await,
            Tick::Ran(Err(_))
        ));
        // Right after a failure: skipped, not run.
        assert_eq!(r.guarded("retention", fail).await, Tick::SkippedBackoff);
        // Past the first backoff (50 ms) it runs again; the second failure waits 100 ms.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(
            r.guarded("retention", fail).await,
            Tick::Ran(Err(_))
        ));
        let until = r
            .state("retention")
            .blocked_until
            .lock()
            .expect("lock")
            .expect("blocked");
        let wait = until.saturating_duration_since(Instant::now());
        assert!(
            wait > Duration::from_millis(60) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(r.guarded("retention", fail).await, Tick::SkippedBackoff);
        tokio::time::sleep(Duration::from_millis(110)).await;
        assert_eq!(
            r.guarded("retention", || async { ok() }).await,
            Tick::Ran(Ok(JobReport::default()))
        );
        let rep = r.report();
        assert_eq!(rep["retention"]["failures"], 2);
        assert_eq!(rep["retention"]["consecutive_failures"], 0);
        assert_eq!(rep["retention"]["last"]["status"], "ok");
    }
}
