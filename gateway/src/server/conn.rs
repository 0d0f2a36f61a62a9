//! One client connection's life: the connection limit, the header and idle
//! timeouts, and the byte activity those timers watch.
//!
//! hyper's own header timer also runs while a keep-alive connection waits for
//! its next request, so it cannot tell a slow request head from an idle
//! connection; this module keeps both clocks itself. The transport wrapper
//! ([`Tracked`]) notes when bytes arrive; a request counts as started from its
//! first byte until hyper hands its head to the service ([`Activity::begin`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Clocks of one connection, in milliseconds since it was accepted.
pub struct Activity {
    start: Instant,
    last_read_ms: AtomicU64,
    /// When the first byte of a request head arrived; 0 when none is pending.
    head_since_ms: AtomicU64,
    /// Requests handed to the service and not answered yet.
    active: AtomicUsize,
    /// Wakes the watchdog when a request head starts (its deadline is sooner).
    head_started: tokio::sync::Notify,
}

/// What the watchdog decides about a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this instant.
    Wait(Instant),
    /// The request head took longer than the header timeout.
    HeadTimeout,
    /// No request for the idle timeout.
    Idle,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            head_started: tokio::sync::Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        // 1 ms minimum, so 0 can mean "none".
        (self.start.elapsed().as_millis() as u64).max(1)
    }

    fn read_bytes(&self) {
        let now = self.now_ms();
        self.last_read_ms.store(now, Ordering::Relaxed);
        if self.active.load(Ordering::Acquire) == 0
            && self
                .head_since_ms
                .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.head_started.notify_one();
        }
    }

    /// Resolves when a request head starts arriving.
    pub async fn head_started(&self) {
        self.head_started.notified().await
    }

    /// hyper parsed a request head: the header clock stops until the answer.
    pub fn begin(self: &Arc<Self>) -> InRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(0, Ordering::Release);
        InRequest(Arc::clone(self))
    }

    pub fn judge(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        let now = self.now_ms();
        let at = |ms: u64| self.start + Duration::from_millis(ms);
        let head = self.head_since_ms.load(Ordering::Acquire);
        if head != 0 {
            let deadline = head + header_timeout.as_millis() as u64;
            return if now >= deadline {
                Verdict::HeadTimeout
            } else {
                Verdict::Wait(at(deadline))
            };
        }
        if self.active.load(Ordering::Acquire) > 0 {
            // The handler bounds its own time (body timeout, delivery timeout).
            return Verdict::Wait(at(now + idle_timeout.as_millis() as u64));
        }
        let last = self.last_read_ms.load(Ordering::Relaxed);
        let deadline = last + idle_timeout.as_millis() as u64;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::Wait(at(deadline))
        }
    }
}

/// A request being handled; the connection is not idle while it lives.
pub struct InRequest(Arc<Activity>);

impl Drop for InRequest {
    fn drop(&mut self) {
        let a = &self.0;
        a.last_read_ms.store(a.now_ms(), Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A transport that reports arriving bytes to its [`Activity`].
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Tracked<T> {
        Tracked { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_bytes();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Answers a connection over `gateway.max_connections` with 503 and closes it,
/// spending at most a second on it.
pub async fn refuse<T: AsyncWrite + Unpin>(mut stream: T, retry_after_secs: u64) {
    let body = r#"{"error":{"code":"overloaded","message":"the gateway is at its connection limit; retry shortly","request_id":"","details":[]}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after_secs}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_head_times_out_and_an_answered_request_goes_idle() {
        let a = Activity::new();
        let (head, idle) = (Duration::from_millis(0), Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(a.judge(head, idle), Verdict::Idle, "no request at all");
        a.read_bytes();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(a.judge(head, idle), Verdict::HeadTimeout);
        let req = a.begin();
        assert!(
            matches!(a.judge(head, idle), Verdict::Wait(_)),
            "in a request"
        );
        drop(req);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(a.judge(head, idle), Verdict::Idle);
    }
}
