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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

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

/// Most bytes of a refused connection's request head read before answering.
const REFUSAL_HEAD_BYTES: usize = 16 * 1024;
/// Most bytes a refused client may still send after its answer (a body it
/// had started) before the connection is dropped anyway.
const REFUSAL_LINGER_BYTES: usize = 8 << 20;

/// Answers a connection over `gateway.max_connections` with 503 and
/// `Retry-After`, and closes it cleanly, spending at most `budget` on it.
///
/// The request head is read first and whatever the client still sends is
/// drained until it closes (a lingering close): a socket closed with unread
/// bytes makes the kernel send a reset, and the client then sees a broken
/// connection instead of the 503.
pub async fn refuse<T: AsyncRead + AsyncWrite + Unpin>(
    mut stream: T,
    retry_after_secs: u64,
    budget: Duration,
) {
    let body = r#"{"error":{"code":"overloaded","message":"the gateway is at its connection limit; retry shortly","request_id":"","details":[]}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: {retry_after_secs}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let work = async {
        let mut buf = [0u8; 4096];
        let mut head = HeadEnd::default();
        let mut read = 0;
        while !head.done && read < REFUSAL_HEAD_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    read += n;
                    head.feed(&buf[..n]);
                }
            }
        }
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        let _ = stream.shutdown().await;
        let mut drained = 0;
        while drained < REFUSAL_LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(budget, work).await;
}

/// Finds the blank line that ends a request head, across reads.
#[derive(Default)]
struct HeadEnd {
    /// The last bytes seen (the end marker may span two reads).
    tail: [u8; 3],
    done: bool,
}

impl HeadEnd {
    fn feed(&mut self, bytes: &[u8]) {
        if self.done {
            return;
        }
        let mut joined = Vec::with_capacity(3 + bytes.len());
        joined.extend_from_slice(&self.tail);
        joined.extend_from_slice(bytes);
        self.done = joined.windows(4).any(|w| w == b"\r\n\r\n");
        let keep = joined.len().min(3);
        self.tail = [0; 3];
        self.tail[3 - keep..].copy_from_slice(&joined[joined.len() - keep..]);
    }
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

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let mut h = HeadEnd::default();
        h.feed(b"POST /ingest HTTP/1.1\r\nhost: x\r\n\r");
        assert!(!h.done);
        h.feed(b"\n{\"events\"");
        assert!(h.done);
        let mut h = HeadEnd::default();
        for b in b"GET / HTTP/1.1\r\n\r\n" {
            h.feed(&[*b]);
        }
        assert!(h.done, "one byte at a time");
        let mut h = HeadEnd::default();
        h.feed(b"GET / HTTP/1.1\r\nx: \r\r\n");
        assert!(!h.done);
    }

    /// A client refused at the connection limit while it uploads a large body
    /// reads the 503 (the old refusal closed with its bytes unread: a reset).
    #[tokio::test]
    async fn a_refused_upload_reads_its_503_not_a_reset() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            refuse(stream, 3, Duration::from_secs(5)).await;
        });
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let body = vec![b'x'; 2 << 20];
        let head = format!(
            "POST /ingest HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.expect("head");
        // The answer may come while the body is still going out; the client
        // keeps sending (as HTTP clients do) and then reads.
        let sent = client.write_all(&body).await;
        let mut answer = Vec::new();
        let read = client.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 503") && text.contains("retry-after: 3"),
            "sent {sent:?}, read {read:?}: {text}"
        );
    }
}
