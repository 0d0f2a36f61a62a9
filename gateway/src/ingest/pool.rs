//! The CPU workers: `gateway.cpu_workers` threads that decode, parse,
//! validate and enrich the bodies too large for a network thread.
//!
//! A fixed set of threads rather than tokio's blocking pool: that pool hands
//! each task to whichever idle thread wakes, so a request's work rotated over
//! every thread it ever started (five under steady load on two cores), each
//! with cold caches, its own allocator arena and its own reused buffers. Here
//! the same few threads take every job in turn.
//!
//! The pool also owns the `cpu_workers` slots: a job holds its slot until it
//! has run, even when the request that queued it is gone (a client that
//! hung up), so the queue never holds more jobs than there are threads, and a
//! network thread's inline work takes a slot too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

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
    queue: SyncSender<Work>,
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl CpuPool {
    /// Starts `threads` workers (at least one); they end when the pool is dropped.
    pub fn new(threads: usize) -> std::io::Result<CpuPool> {
        let threads = threads.max(1);
        let (queue, jobs) = mpsc::sync_channel::<Work>(threads);
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads {
            let jobs = Arc::clone(&jobs);
            std::thread::Builder::new()
                .name(format!("overwatch-cpu-{i}"))
                .spawn(move || work(&jobs))?;
        }
        Ok(CpuPool {
            queue,
            slots: Arc::new(Semaphore::new(threads)),
            capacity: threads,
        })
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
            // The slot is freed once the job has run, awaited or not. A panic
            // is the job's alone: the worker lives on, the caller sees its
            // channel closed.
            let _slot = slot;
            if let Ok(v) = catch_unwind(AssertUnwindSafe(f)) {
                let _ = tx.send(v);
            }
        });
        self.queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Full(self.capacity),
            TrySendError::Disconnected(_) => PoolError::Stopped,
        })?;
        rx.await.map_err(|_| PoolError::Panicked)
    }
}

fn work(jobs: &Mutex<Receiver<Work>>) {
    loop {
        // One worker waits in `recv` holding the lock, the others on the lock.
        let next = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(job) => job(),
            Err(_) => return, // the pool was dropped
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
