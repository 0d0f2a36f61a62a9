//! Ordered shutdown, the same in both binaries:
//!
//! 1. a signal (SIGTERM, Ctrl-C) or a test triggers the [`Shutdown`];
//! 2. readiness turns 503 (`"shutting down"`) and no new work starts (the
//!    gateway's public listener closes; workerd's scheduler stops);
//! 3. work in progress finishes, bounded by the binary's shutdown timeout
//!    (requests in flight; running jobs);
//! 4. background tasks ([`Background`]) stop, newest first;
//! 5. the binary's last step (the gateway flushes its producer);
//! 6. the operations listener drains and closes — last, so probes and scrapes
//!    see every step before — and telemetry exports what it still holds.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// A shutdown many tasks wait for; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// A shutdown triggered when `f` resolves (a signal, a test's oneshot).
    pub fn on(f: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let s = Shutdown::new();
        let t = s.clone();
        tokio::spawn(async move {
            f.await;
            t.trigger();
        });
        s
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the shutdown is triggered (at once if it was).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// Background tasks of a binary (refreshers, probes, snapshots), stopped
/// together, newest first, at step 4.
#[derive(Default)]
pub struct Background {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    pub fn push(&mut self, name: &'static str, task: JoinHandle<()>) {
        self.tasks.push((name, task));
    }

    pub fn stop(mut self) {
        while let Some((name, task)) = self.tasks.pop() {
            task.abort();
            tracing::debug!(task = name, "background task stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_waiter_sees_the_trigger_even_a_late_one() {
        let s = Shutdown::new();
        let early = tokio::spawn(s.wait());
        assert!(!s.is_triggered());
        s.trigger();
        early.await.expect("early waiter");
        s.wait().await;
        assert!(s.is_triggered());
    }

    #[tokio::test]
    async fn a_future_triggers_it() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = Shutdown::on(async move {
            let _ = rx.await;
        });
        assert!(!s.is_triggered());
        let _ = tx.send(());
        s.wait().await;
    }
}
