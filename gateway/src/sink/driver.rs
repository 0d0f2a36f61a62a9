//! A librdkafka producer whose delivery reports are served on the tokio runtime.
//!
//! librdkafka's broker threads put delivery reports on the producer's main
//! queue. rdkafka's `ThreadedProducer` (under `FutureProducer`) keeps a thread
//! blocked on that queue, which wakes for each batch of reports and then wakes
//! every waiting request from outside the runtime: two thread hand-offs per
//! report, the largest share of a one-event request's kernel time. Here the
//! queue calls back when it turns non-empty (`rd_kafka_queue_cb_event_enable`,
//! run on the broker thread under the queue's lock): the callback only
//! notifies a tokio task, which serves the queue without blocking and
//! completes the requests on the runtime itself. Each request waits on one
//! [`Waiter`] for all of its messages.
//!
//! When the last handle to a [`Producer`] goes, the callback is switched off
//! first, then librdkafka's producer is purged, its last reports served and
//! the producer destroyed on a blocking thread (that takes up to a second).

use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::statistics::Statistics;
use tokio::sync::{oneshot, Notify};

/// Reports served per turn of the driver before it yields to other tasks.
const EVENTS_PER_TURN: usize = 64;
/// The driver also looks at the queue this often without a notification (a
/// safety net; the callback is what normally wakes it).
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The outcome a request waits for: all of its messages acknowledged, or the
/// first failure.
pub type Outcome = Result<(), KafkaError>;

/// One request's messages in flight: completes once when the last is
/// acknowledged or the first fails.
pub struct Waiter {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
}

impl Waiter {
    /// A waiter for `messages` (at least one) deliveries.
    pub fn new(messages: usize) -> (Arc<Waiter>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            remaining: AtomicUsize::new(messages),
            done: Mutex::new(Some(tx)),
        };
        (Arc::new(w), rx)
    }

    fn finish(&self, outcome: Outcome) {
        let tx = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            // The request may have given up already (timeout): nothing to tell.
            let _ = tx.send(outcome);
        }
    }

    fn report(&self, delivered: Result<(), KafkaError>) {
        match delivered {
            Err(e) => self.finish(Err(e)),
            Ok(()) => {
                if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.finish(Ok(()));
                }
            }
        }
    }
}

/// Routes delivery reports to their request's [`Waiter`] and librdkafka's
/// periodic statistics into the producer metrics.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {
    fn stats(&self, statistics: Statistics) {
        crate::telemetry::producer_statistics(&statistics);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Arc<Waiter>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Arc<Waiter>) {
        waiter.report(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
    }
}

/// The producer and its handle on librdkafka's main (report) queue.
pub struct Producer {
    inner: ManuallyDrop<BaseProducer<DeliveryContext>>,
    main: NonNull<rdsys::rd_kafka_queue_t>,
    /// What the callback's opaque pointer points to: held as long as the
    /// callback is on, whether or not the driver task still runs.
    _ready: Arc<Notify>,
}

// SAFETY: librdkafka's queue handles are thread-safe; `main` is only used for
// its length and to switch the callback off (both take the queue's lock).
unsafe impl Send for Producer {}
unsafe impl Sync for Producer {}

/// Runs on a librdkafka thread, under the main queue's lock, when the queue
/// turns non-empty. It must not call back into librdkafka.
unsafe extern "C" fn on_report(_rk: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `Notify` of a live `Producer`: the callback is
    // switched off (under the same lock) before that `Notify` can go.
    let ready = unsafe { &*(opaque as *const Notify) };
    ready.notify_one();
}

impl Producer {
    /// Creates the producer and its driver task on the current tokio runtime.
    pub fn new(config: &ClientConfig) -> KafkaResult<Arc<Producer>> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            KafkaError::ClientCreation("the producer must be created on a tokio runtime".into())
        })?;
        let inner: BaseProducer<DeliveryContext> = config.create_with_context(DeliveryContext)?;
        // SAFETY: a valid client; the handle is destroyed in `Drop`.
        let main = unsafe { rdsys::rd_kafka_queue_get_main(inner.client().native_ptr()) };
        let main = NonNull::new(main)
            .ok_or_else(|| KafkaError::ClientCreation("librdkafka has no main queue".into()))?;
        let ready = Arc::new(Notify::new());
        // SAFETY: `ready` outlives the callback (see `on_report` and `Drop`).
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(
                main.as_ptr(),
                Some(on_report),
                Arc::as_ptr(&ready) as *mut c_void,
            )
        };
        let producer = Arc::new(Producer {
            inner: ManuallyDrop::new(inner),
            main,
            _ready: Arc::clone(&ready),
        });
        runtime.spawn(drive(Arc::downgrade(&producer), ready));
        Ok(producer)
    }

    pub fn base(&self) -> &BaseProducer<DeliveryContext> {
        &self.inner
    }

    fn queued(&self) -> usize {
        // SAFETY: `main` is a live queue handle until `Drop`.
        unsafe { rdsys::rd_kafka_queue_length(self.main.as_ptr()) }
    }

    /// Serves up to `max` queued events without waiting; whether the queue
    /// was left empty.
    fn serve(&self, max: usize) -> bool {
        for _ in 0..max {
            if self.queued() == 0 {
                return true;
            }
            self.inner.poll(Duration::ZERO);
        }
        self.queued() == 0
    }
}

/// Serves the producer's reports whenever the queue has some, until the
/// producer is gone.
async fn drive(producer: Weak<Producer>, ready: Arc<Notify>) {
    loop {
        let Some(p) = producer.upgrade() else { return };
        let idle = p.serve(EVENTS_PER_TURN);
        drop(p);
        if idle {
            // A notification that came while serving is kept as a permit.
            let _ = tokio::time::timeout(IDLE_CHECK, ready.notified()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // SAFETY: switching the callback off takes the queue's lock, so no
        // callback runs past this point; then the handle is released.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.main.as_ptr(), None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.main.as_ptr());
        }
        // SAFETY: `inner` is taken once, here.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        // BaseProducer's drop purges, serves the purged reports (their requests
        // fail at once) and destroys the client, which can block for a while:
        // never on a runtime worker.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(inner))),
            Err(_) => drop(inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> KafkaError {
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
    }

    #[tokio::test]
    async fn a_waiter_completes_after_its_last_delivery() {
        let (w, mut rx) = Waiter::new(3);
        w.report(Ok(()));
        w.report(Ok(()));
        assert!(
            rx.try_recv().is_err(),
            "two of three delivered: still waiting"
        );
        w.report(Ok(()));
        assert!(matches!(rx.await, Ok(Ok(()))));
    }

    #[tokio::test]
    async fn a_waiter_fails_at_the_first_failed_delivery() {
        let (w, rx) = Waiter::new(3);
        w.report(Ok(()));
        w.report(Err(failure()));
        w.report(Ok(()));
        assert!(matches!(
            rx.await,
            Ok(Err(KafkaError::MessageProduction(_)))
        ));
    }

    #[test]
    fn creating_a_producer_off_a_runtime_is_an_error() {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1");
        assert!(matches!(
            Producer::new(&c),
            Err(KafkaError::ClientCreation(_))
        ));
    }
}
