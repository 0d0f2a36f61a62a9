//! The CPU workers: `gateway.cpu_workers` threads that decode, parse,
//! validate and enrich the bodies too large for a network thread.
//!
//! A fixed set of threads rather than tokio's blocking pool: that pool hands
//! each task to whichever idle thread wakes, so a request's work rotated over
//! every thread it ever started (five under steady load on two cores), each
//! with cold caches, its own allocator arena and its own reused buffers. Here
//! a job goes to the worker that went idle last: below the maximum one worker
//! takes job after job while the others sleep, and each worker joins in only
//! when the ones before it are busy.
//!
//! The pool also owns the `cpu_workers` slots: a job holds its slot until it
//! has run, even when the request that queued it is gone (a client that
//! hung up), so the queue never holds more jobs than there are threads, and a
//! network thread's inline work takes a slot too.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{Semaphore, SemaphorePermit};

type Work = Box<dyn FnOnce() + Send + 'static>;

/// Why a job did not run.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("the CPU workers' queue is full ({0} jobs)")]
    Full(usize),
    #[error("the CPU workers have stopped")]
    Stopped,
    #[error("the job panicked")]
    Panicked,
}

pub struct CpuPool {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    capacity: usize,
}

/// The workers' common state. A job goes to the worker that went idle last
/// (its caches, allocator arena and buffers are the warmest), so below the
/// maximum the same worker takes job after job and the others sleep; a
/// worker-agnostic queue handed jobs to the workers in turn.
struct Shared {
    state: Mutex<State>,
    /// One per worker: only the worker a job was handed to is woken.
    wake: Vec<Condvar>,
}

struct State {
    /// Idle workers, the last to go idle on top.
    idle: Vec<usize>,
    /// A job handed to an idle worker, by worker.
    handed: Vec<Option<Work>>,
    /// Jobs that found no idle worker (a worker about to finish holds no
    /// slot any more but is not idle yet); at most one per worker.
    queue: VecDeque<Work>,
    stopped: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock, so a panic cannot poison it; recover anyway.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CpuPool {
    /// Starts `threads` workers (at least one); they end when the pool is
    /// dropped, after the jobs already queued.
    pub fn new(threads: usize) -> std::io::Result<CpuPool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                idle: Vec::with_capacity(threads),
                handed: (0..threads).map(|_| None).collect(),
                queue: VecDeque::with_capacity(threads),
                stopped: false,
            }),
            wake: (0..threads).map(|_| Condvar::new()).collect(),
        });
        let pool = CpuPool {
            shared,
            slots: Arc::new(Semaphore::new(threads)),
            capacity: threads,
        };
        for i in 0..threads {
            let shared = Arc::clone(&pool.shared);
            std::thread::Builder::new()
                .name(format!("overwatch-cpu-{i}"))
                .spawn(move || work(&shared, i))?;
        }
        Ok(pool)
    }

    /// How many worker threads run.
    pub fn threads(&self) -> usize {
        self.capacity
    }

    /// A free slot for work on the calling thread, if there is one now.
    pub fn try_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.slots.try_acquire().ok()
    }

    /// Waits for a free slot, then runs `f` on a worker and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| PoolError::Stopped)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Work = Box::new(move || {
            // The slot is freed once the job has run, awaited or not, and
            // before its result is sent (so the caller finds it free). A
            // panic is the job's alone: the worker lives on, the caller sees
            // its channel closed.
            let out = catch_unwind(AssertUnwindSafe(f));
            drop(slot);
            if let Ok(v) = out {
                let _ = tx.send(v);
            }
        });
        self.submit(job)?;
        rx.await.map_err(|_| PoolError::Panicked)
    }

    fn submit(&self, job: Work) -> Result<(), PoolError> {
        let mut state = self.shared.lock();
        if state.stopped {
            return Err(PoolError::Stopped);
        }
        if let Some(worker) = state.idle.pop() {
            state.handed[worker] = Some(job);
            drop(state);
            self.shared.wake[worker].notify_one();
        } else if state.queue.len() < self.capacity {
            // Every worker is busy or finishing: the first to finish takes it.
            state.queue.push_back(job);
        } else {
            return Err(PoolError::Full(self.capacity));
        }
        Ok(())
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        for cv in &self.shared.wake {
            cv.notify_one();
        }
    }
}

fn work(shared: &Shared, me: usize) {
    let mut state = shared.lock();
    loop {
        let next = state.handed[me].take().or_else(|| state.queue.pop_front());
        if let Some(job) = next {
            drop(state);
            job();
            state = shared.lock();
            continue;
        }
        if state.stopped {
            return;
        }
        state.idle.push(me);
        while state.handed[me].is_none() && !state.stopped {
            state = shared.wake[me]
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if state.handed[me].is_none() {
            // Stopped while idle: leave the idle list.
            state.idle.retain(|&w| w != me);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_its_own_threads_and_survives_a_panic() {
        let pool = CpuPool::new(2).expect("pool");
        let name = pool
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .expect("ran");
        assert!(name.is_some_and(|n| n.starts_with("overwatch-cpu-")));
        let failed = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(matches!(failed, Err(PoolError::Panicked)), "{failed:?}");
        // The workers still take jobs after the panic.
        let mut sum = 0;
        for i in 0..8u64 {
            sum += pool.run(move || i * 2).await.expect("ran");
        }
        assert_eq!(sum, 56);
    }

    #[tokio::test]
    async fn jobs_one_after_another_stay_on_the_warm_worker() {
        // Below the maximum the worker that just finished takes the next job
        // (a queue shared by all workers handed them out in turn).
        let pool = CpuPool::new(3).expect("pool");
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..20 {
            // Every worker idle (the one before back too) when the job arrives.
            while pool.shared.lock().idle.len() < 3 {
                std::thread::yield_now();
            }
            let name = pool
                .run(|| std::thread::current().name().map(str::to_string))
                .await
                .expect("ran");
            names.insert(name);
        }
        assert_eq!(names.len(), 1, "jobs ran on {names:?}");
    }

    #[tokio::test]
    async fn a_second_job_runs_beside_a_busy_worker() {
        let pool = CpuPool::new(2).expect("pool");
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate_rx));
        let g = Arc::clone(&gate);
        let blocked = pool.run(move || {
            let _ = g.lock().map(|r| r.recv());
            std::thread::current().name().map(str::to_string)
        });
        let other = pool.run(|| std::thread::current().name().map(str::to_string));
        let (a, b) = tokio::join!(blocked, async {
            let b = other.await;
            gate_tx.send(()).expect("open the gate");
            b
        });
        let (a, b) = (a.expect("ran"), b.expect("ran"));
        assert_ne!(a, b, "the second job ran beside the blocked one");
    }

    #[tokio::test]
    async fn a_job_keeps_its_slot_after_its_request_is_gone() {
        // Clients that hang up must not let more jobs in than there are
        // threads: each job holds its slot until it has run.
        let pool = Arc::new(CpuPool::new(1).expect("pool"));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let p = Arc::clone(&pool);
        let a = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = gate_rx.recv();
            })
            .await
        });
        tokio::task::yield_now().await; // A takes the slot and queues its job
        started_rx.recv().expect("job A runs");
        a.abort(); // A's client hung up; its job still runs
        let p = Arc::clone(&pool);
        let b = tokio::spawn(async move { p.run(|| 1).await });
        tokio::task::yield_now().await; // B waits (for a slot, or queued)
        b.abort(); // and its client hung up too
        let p = Arc::clone(&pool);
        let c = tokio::spawn(async move { p.run(|| 3).await });
        tokio::task::yield_now().await;
        gate_tx.send(()).expect("open the gate");
        let got = c.await.expect("task C");
        assert!(matches!(got, Ok(3)), "{got:?}");
        assert!(pool.try_slot().is_some(), "every slot is free again");
    }
}
