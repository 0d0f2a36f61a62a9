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
//!
//! Payloads are not copied into librdkafka: each message points into the
//! request's buffers, which its [`Waiter`] owns, and every message in flight
//! holds a reference to that waiter until librdkafka has reported it. So the
//! buffers outlive every message that points into them, even when the request
//! stopped waiting (a timeout) or failed to enqueue its later messages. A
//! report that never comes (a producer destroyed before its last reports were
//! served) leaves the buffers allocated, never freed early.

use std::ffi::{c_void, CStr};
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
use rdkafka::util::IntoOpaque;
use tokio::sync::{oneshot, Notify};

use super::pack::Message;

/// Reports served per turn of the driver before it yields to other tasks.
const EVENTS_PER_TURN: usize = 64;
/// The driver also looks at the queue this often without a notification (a
/// safety net; the callback is what normally wakes it).
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The outcome a request waits for: all of its messages acknowledged, or the
/// first failure.
pub type Outcome = Result<(), KafkaError>;

/// One request's messages in flight: completes once when the last is
/// acknowledged or the first fails, and owns the bytes they point to.
pub struct Waiter {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Outcome>>>,
    /// Never changed once the waiter exists: librdkafka reads the messages'
    /// payloads from here.
    held: Held,
}

/// What a request's messages point into ([`super::pack::Rows::into_held`])
/// and the messages.
pub struct Held {
    pub rows: Vec<u8>,
    pub messages: Vec<Message>,
}

impl Waiter {
    /// A waiter for the delivery of each of `held`'s messages (at least one).
    pub fn new(held: Held) -> (Arc<Waiter>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            remaining: AtomicUsize::new(held.messages.len()),
            done: Mutex::new(Some(tx)),
            held,
        };
        (Arc::new(w), rx)
    }

    pub fn messages(&self) -> &[Message] {
        &self.held.messages
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

    /// Enqueues message `index` of `waiter` to `topic` without copying its
    /// payload (librdkafka copies the key; `headers`, names and values, go
    /// with every message). The message holds a reference to `waiter`, and so
    /// to its payload, until it is reported.
    pub fn send_held(
        &self,
        topic: &CStr,
        waiter: &Arc<Waiter>,
        index: usize,
        headers: &[(String, String)],
    ) -> Result<(), KafkaError> {
        let message = waiter.held.messages.get(index).ok_or_else(|| {
            KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::InvalidArgument)
        })?;
        let payload = message.bytes_in(&waiter.held.rows);
        let (key_ptr, key_len) = match &message.key {
            Some(k) => (k.as_ptr() as *mut c_void, k.len()),
            None => (std::ptr::null_mut(), 0),
        };
        let headers_ptr = native_headers(headers);
        // The reference the message holds, given back in its delivery report
        // (`DeliveryContext::delivery`, through rdkafka's `IntoOpaque`).
        let opaque = Arc::clone(waiter).into_ptr();
        // SAFETY: a live client; `topic` and the key are read during the call
        // (librdkafka copies them), the headers are owned by librdkafka on
        // success; the payload (flags 0: neither copied nor freed) lies in
        // `waiter`, which the message's opaque reference keeps alive until
        // its delivery report has been served.
        let err = unsafe {
            rdsys::rd_kafka_producev(
                self.inner.client().native_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TOPIC,
                topic.as_ptr(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_PARTITION,
                -1i32, // unassigned: the partitioner picks
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
                0i32, // neither RD_KAFKA_MSG_F_COPY nor _F_FREE
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE,
                payload.as_ptr() as *mut c_void,
                payload.len(),
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY,
                key_ptr,
                key_len,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE,
                opaque,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_HEADERS,
                headers_ptr,
                rdsys::rd_kafka_vtype_t::RD_KAFKA_VTYPE_END,
            )
        };
        if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            // librdkafka owns the headers now.
            Ok(())
        } else {
            // SAFETY: not enqueued, so librdkafka never took the reference
            // nor the headers.
            drop(unsafe { Arc::<Waiter>::from_ptr(opaque) });
            if !headers_ptr.is_null() {
                unsafe { rdsys::rd_kafka_headers_destroy(headers_ptr) };
            }
            Err(KafkaError::MessageProduction(err.into()))
        }
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

/// A message's headers as librdkafka takes them (null for none).
fn native_headers(headers: &[(String, String)]) -> *mut rdsys::rd_kafka_headers_t {
    if headers.is_empty() {
        return std::ptr::null_mut();
    }
    // SAFETY: a fresh list; each name and value is copied by
    // `rd_kafka_header_add` during the call.
    unsafe {
        let list = rdsys::rd_kafka_headers_new(headers.len());
        for (k, v) in headers {
            rdsys::rd_kafka_header_add(
                list,
                k.as_ptr() as *const std::os::raw::c_char,
                k.len() as isize,
                v.as_ptr() as *const c_void,
                v.len() as isize,
            );
        }
        list
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

    /// A waiter for `n` messages (their bytes do not matter here).
    fn waiter(n: usize) -> (Arc<Waiter>, oneshot::Receiver<Outcome>) {
        let messages = (0..n)
            .map(|_| Message {
                topic: 0,
                key: None,
                payload: super::super::pack::Payload::Gathered(Vec::new()),
                rows: 0,
            })
            .collect();
        Waiter::new(Held {
            rows: Vec::new(),
            messages,
        })
    }

    fn failure() -> KafkaError {
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
    }

    #[tokio::test]
    async fn a_waiter_completes_after_its_last_delivery() {
        let (w, mut rx) = waiter(3);
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
        let (w, rx) = waiter(3);
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
