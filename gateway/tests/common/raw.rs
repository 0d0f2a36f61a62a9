//! Raw HTTP/1.1 over TCP for hostile probes: bytes exactly as written (no
//! client library fixing them up), slow writers, and answers read as bytes.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Status codes of every response read, in order, and the bytes of all.
    Responses(Vec<u16>, Vec<u8>),
    /// The gateway closed the connection without answering.
    Closed,
    /// Nothing within the wait.
    Silent,
}

impl Answer {
    pub fn first(&self) -> Option<u16> {
        match self {
            Answer::Responses(s, _) => s.first().copied(),
            _ => None,
        }
    }

    pub fn body(&self) -> &[u8] {
        match self {
            Answer::Responses(_, b) => b,
            _ => &[],
        }
    }

    pub fn show(&self) -> String {
        match self {
            Answer::Responses(s, _) => s.iter().map(u16::to_string).collect::<Vec<_>>().join("+"),
            Answer::Closed => "closed".into(),
            Answer::Silent => "silent".into(),
        }
    }
}

/// Status codes of every `HTTP/1.1 NNN` status line in `bytes`.
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Reads until the peer closes, `want` responses arrived, or `wait` passed.
pub async fn read_answer(stream: &mut TcpStream, want: usize, wait: Duration) -> Answer {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if complete_responses(&buf) >= want {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        // Closed, or silent until the wait ran out.
        return match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Answer::Closed,
            _ => Answer::Silent,
        };
    }
    Answer::Responses(statuses(&buf), buf)
}

/// Responses whose head and declared body are complete in `buf`.
fn complete_responses(buf: &[u8]) -> usize {
    let mut n = 0;
    let mut rest = buf;
    while let Some(end) = find(rest, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let total = end + 4 + len;
        if rest.len() < total {
            break;
        }
        n += 1;
        rest = &rest[total..];
    }
    n
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` on a fresh connection and reads `want` answers.
pub async fn exchange(addr: &str, bytes: &[u8], want: usize, wait: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if s.write_all(bytes).await.is_err() {
        return read_answer(&mut s, want, wait).await;
    }
    read_answer(&mut s, want, wait).await
}

/// Sends `at_once`, then `slowly` a few bytes at a time, `pause` apart
/// (stopping once the gateway answers or closes), then reads the answer.
pub async fn trickle(
    addr: &str,
    at_once: &[u8],
    slowly: &[u8],
    step: usize,
    pause: Duration,
    wait: Duration,
) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    if s.write_all(at_once).await.is_ok() {
        for piece in slowly.chunks(step) {
            if s.write_all(piece).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            if tokio::time::timeout(pause, s.peek(&mut probe))
                .await
                .is_ok()
            {
                break;
            }
        }
    }
    read_answer(&mut s, 1, wait).await
}

/// An HTTP/1.1 request: `head` lines (without the request line's CRLF) and a body.
pub fn request(line: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{line}\r\nhost: gateway\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}
