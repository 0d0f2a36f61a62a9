//! Request body intake: content type and encoding checks, the compressed-size
//! cap, the body timeout and the shared body budget while reading, and gzip decoding under the decompressed-size cap (a gzip bomb
//! stops at the cap, so memory stays bounded).

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// The media type of `Content-Type`, lowercased, without parameters.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(CONTENT_TYPE)?.to_str().unwrap_or("");
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Accepts JSON (`application/json`, `*+json`, or no content type), also
/// `text/plain` when `beacon` (`sendBeacon` requests, foreign SDKs) and
/// `application/x-www-form-urlencoded` when `form` (PostHog's browser library
/// posts `data=<base64>` on page unload), and the identity or gzip encodings.
pub fn check_headers(headers: &HeaderMap, beacon: bool, form: bool) -> Result<Encoding, ApiError> {
    if let Some(mime) = media_type(headers) {
        let ct = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let json = mime == "application/json" || mime.ends_with("+json");
        let beacon_text = beacon && mime == "text/plain";
        let form_body = form && mime == "application/x-www-form-urlencoded";
        if !(json || beacon_text || form_body) {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type `{ct}` is not supported; send application/json"
            )));
        }
    }
    match headers.get(CONTENT_ENCODING) {
        None => Ok(Encoding::Identity),
        Some(v) => {
            let enc = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
            match enc.as_str() {
                "" | "identity" => Ok(Encoding::Identity),
                "gzip" | "x-gzip" => Ok(Encoding::Gzip),
                _ => Err(ApiError::UnsupportedMediaType(format!(
                    "content encoding `{enc}` is not supported; send identity or gzip"
                ))),
            }
        }
    }
}

/// A request body as sent, holding its share of
/// `gateway.max_buffered_body_bytes` until it is dropped.
///
/// It keeps the frames hyper read, as they came: the network thread copies
/// nothing (it used to copy every frame into one growing buffer, twice the
/// body's bytes moved per request), and decoding makes the one contiguous
/// copy the parser needs, on the worker.
pub struct RawBody {
    chunks: Vec<Bytes>,
    len: usize,
    _reserved: Option<OwnedSemaphorePermit>,
}

impl RawBody {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body in one slice: borrowed when it came in one frame, else copied.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.chunks.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(one),
            many => {
                let mut v = Vec::with_capacity(self.len);
                for c in many {
                    v.extend_from_slice(c);
                }
                Cow::Owned(v)
            }
        }
    }

    /// SHA-256 of the body, frame by frame (a signed body is checked without
    /// joining it first; decoding makes the one contiguous copy).
    pub fn sha256(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for c in &self.chunks {
            h.update(c);
        }
        h.finalize().into()
    }

    /// A reader over the frames in order.
    fn reader(&self) -> impl Read + '_ {
        ChunksReader {
            chunks: &self.chunks,
            offset: 0,
        }
    }
}

/// A body already in memory (tests, benches), outside the body budget.
impl From<Bytes> for RawBody {
    fn from(bytes: Bytes) -> RawBody {
        RawBody {
            len: bytes.len(),
            chunks: vec![bytes],
            _reserved: None,
        }
    }
}

/// A body's frames while it is read. A frame of at least half of hyper's
/// read buffer is kept as hyper read it (a fast client's are the whole
/// buffer); smaller ones are copied together into buffers of that size, so a
/// client trickling its body byte by byte makes a chunk per buffer, not a
/// frame each.
struct Frames {
    chunks: Vec<Bytes>,
    small: BytesMut,
    len: usize,
    /// hyper's read buffer size.
    frame_buffer: usize,
}

impl Frames {
    fn new(frame_buffer: usize) -> Frames {
        Frames {
            chunks: Vec::new(),
            small: BytesMut::new(),
            len: 0,
            frame_buffer: frame_buffer.max(2),
        }
    }

    /// Nothing pushed yet.
    fn first(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    fn keeps(&self, data: &Bytes) -> bool {
        self.first() || data.len() >= self.frame_buffer / 2
    }

    /// A copied `data` does not fit the copy buffer: a new one is started.
    fn starts_copy_buffer(&self, data: &Bytes) -> bool {
        self.small.len() + data.len() > self.small.capacity()
    }

    /// What pushing `data` takes of the body budget. A kept frame holds on to
    /// the read buffer it lies in (all of it, at most twice the frame),
    /// except the first, which lies in the connection's own buffer (the
    /// bound's connection term); a copied one takes room in a copy buffer,
    /// charged whole when it is started.
    fn charge(&self, data: &Bytes) -> usize {
        if self.first() {
            data.len()
        } else if self.keeps(data) {
            data.len().max(self.frame_buffer)
        } else if self.starts_copy_buffer(data) {
            self.frame_buffer
        } else {
            0
        }
    }

    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if self.keeps(&data) {
            self.flush();
            self.chunks.push(data);
            return;
        }
        if self.starts_copy_buffer(&data) {
            self.flush();
            self.small.reserve(self.frame_buffer);
        }
        self.small.extend_from_slice(&data);
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(std::mem::take(&mut self.small).freeze());
        }
    }

    fn finish(mut self, reserved: Option<OwnedSemaphorePermit>) -> RawBody {
        self.flush();
        RawBody {
            chunks: self.chunks,
            len: self.len,
            _reserved: reserved,
        }
    }
}

struct ChunksReader<'a> {
    chunks: &'a [Bytes],
    /// How much of the first chunk was read already.
    offset: usize,
}

impl Read for ChunksReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while let Some((first, rest)) = self.chunks.split_first() {
            let left = &first[self.offset..];
            if left.is_empty() {
                (self.chunks, self.offset) = (rest, 0);
                continue;
            }
            let n = left.len().min(out.len());
            out[..n].copy_from_slice(&left[..n]);
            self.offset += n;
            return Ok(n);
        }
        Ok(0)
    }
}

/// How a body may be read: its size, its time, and the shared byte budget.
pub struct ReadLimits<'a> {
    pub max_body: u64,
    pub timeout: Duration,
    pub budget: &'a Arc<Semaphore>,
    /// hyper's read buffer (`GatewayConfig::read_buffer_bytes`): the most a
    /// kept frame can hold on to.
    pub frame_buffer: usize,
}

/// Reads the body as sent: at most `max_body` bytes on the wire, within
/// `timeout` (408 otherwise), reserving each chunk from the budget as it
/// arrives, so a slow upload holds only what it has sent (503 when the
/// budget is spent).
pub async fn read_raw(
    mut body: Incoming,
    headers: &HeaderMap,
    limits: ReadLimits<'_>,
) -> Result<RawBody, ApiError> {
    let max_body = limits.max_body;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body) {
        discard(&mut body, max_body).await;
        return Err(ApiError::PayloadTooLarge { limit: max_body });
    }
    let budget_total = limits.budget.available_permits() as u64;
    let read = async {
        // Each frame is reserved as it arrives, so a slow upload holds only
        // about what it has sent (`Frames::charge`: at most twice).
        let mut frames = Frames::new(limits.frame_buffer);
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if (frames.len + data.len()) as u64 > max_body {
                return Err(ApiError::PayloadTooLarge { limit: max_body });
            }
            let charge = frames.charge(&data);
            if charge > 0 {
                let n = u32::try_from(charge).unwrap_or(u32::MAX);
                let permit = Arc::clone(limits.budget)
                    .try_acquire_many_owned(n)
                    .map_err(|_| ApiError::BodyBudget {
                        limit: budget_total,
                    })?;
                match &mut reserved {
                    Some(r) => r.merge(permit),
                    None => reserved = Some(permit),
                }
            }
            frames.push(data);
        }
        Ok(frames.finish(reserved))
    };
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => Err(ApiError::BodyTimeout {
            limit_ms: limits.timeout.as_millis() as u64,
        }),
        Ok(Err(e @ (ApiError::BodyBudget { .. } | ApiError::PayloadTooLarge { .. }))) => {
            discard(&mut body, max_body).await;
            Err(e)
        }
        Ok(outcome) => outcome,
    }
}

/// Reads and drops what is left of a refused request's body (at most `max`
/// bytes, for at most a second, nothing kept), so the client reads the answer
/// instead of a reset connection.
pub async fn discard(body: &mut Incoming, max: u64) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > max {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Decodes a raw body into one buffer the parser may rewrite (at most
/// `max_decoded` bytes after decompression).
pub fn decode(raw: &RawBody, encoding: Encoding, max_decoded: u64) -> Result<Vec<u8>, ApiError> {
    match encoding {
        Encoding::Identity => Ok(raw.contiguous().into_owned()),
        Encoding::Gzip => gunzip_from(raw.reader(), raw.len(), max_decoded),
    }
}

/// Inflates `data`, refusing to produce more than `max` bytes.
pub fn gunzip(data: &[u8], max: u64) -> Result<Vec<u8>, ApiError> {
    gunzip_from(data, data.len(), max)
}

/// Inflates what `data` reads (`len` bytes of it), refusing to produce more
/// than `max` bytes.
fn gunzip_from(data: impl Read, len: usize, max: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity((len * 4).min(max as usize));
    let mut reader = flate2::read::MultiGzDecoder::new(data).take(max + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| ApiError::MalformedBody(format!("invalid gzip data: {e}")))?;
    if out.len() as u64 > max {
        return Err(ApiError::DecompressedTooLarge { limit: max });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).expect("compress");
        e.finish().expect("finish")
    }

    #[test]
    fn gzip_round_trips_under_the_cap() {
        let body = br#"{"events":[]}"#;
        assert_eq!(gunzip(&gz(body), 100).expect("fits"), body);
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        let bomb = gz(&vec![b' '; 5_000_000]);
        assert!(bomb.len() < 20_000, "a real bomb: {} bytes", bomb.len());
        assert!(matches!(
            gunzip(&bomb, 1_000_000),
            Err(ApiError::DecompressedTooLarge { limit: 1_000_000 })
        ));
    }

    /// `bytes` as frames of `size` bytes each (the last shorter), as hyper
    /// hands a body over.
    fn framed(bytes: &[u8], size: usize) -> RawBody {
        let chunks: Vec<Bytes> = bytes.chunks(size).map(Bytes::copy_from_slice).collect();
        RawBody {
            len: bytes.len(),
            chunks,
            _reserved: None,
        }
    }

    #[test]
    fn a_body_in_frames_decodes_as_the_same_body_in_one() {
        let body: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        let packed = gz(&body);
        for size in [1, 7, 4096, 16384, body.len()] {
            let plain = framed(&body, size);
            assert_eq!(plain.len(), body.len());
            assert_eq!(&*plain.contiguous(), &body[..], "frames of {size}");
            let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
            assert_eq!(plain.sha256(), digest, "the digest of frames of {size}");
            assert_eq!(
                decode(&plain, Encoding::Identity, u64::MAX).expect("plain"),
                body
            );
            let zipped = framed(&packed, size);
            assert_eq!(
                decode(&zipped, Encoding::Gzip, 1 << 30).expect("gzip"),
                body,
                "gzip in frames of {size}"
            );
            assert!(matches!(
                decode(&zipped, Encoding::Gzip, 1000),
                Err(ApiError::DecompressedTooLarge { limit: 1000 })
            ));
        }
        let one = RawBody::from(Bytes::from(body.clone()));
        assert!(
            matches!(one.contiguous(), Cow::Borrowed(_)),
            "one frame is not copied"
        );
    }

    #[test]
    fn large_frames_are_kept_and_a_trickle_is_copied_together() {
        let mut frames = Frames::new(16 * 1024);
        let mut charged = 0;
        let mut push = |frames: &mut Frames, data: Bytes| {
            charged += frames.charge(&data);
            frames.push(data);
        };
        let big = Bytes::from(vec![b'a'; 16 * 1024]);
        let at = big.as_ptr();
        push(&mut frames, big);
        for _ in 0..100_000 {
            push(&mut frames, Bytes::from_static(b"b"));
        }
        push(&mut frames, Bytes::from(vec![b'c'; 8192]));
        // Charged at least what the chunks and the copy buffer hold, and at
        // most twice the bytes and one buffer.
        let held = frames.chunks.iter().map(Bytes::len).sum::<usize>() + frames.small.capacity();
        assert!(charged >= held, "charged {charged} for {held} held");
        assert!(charged <= 2 * frames.len + 16 * 1024, "charged {charged}");
        let body = frames.finish(None);
        assert_eq!(body.len(), 16 * 1024 + 100_000 + 8192);
        assert_eq!(body.chunks[0].as_ptr(), at, "a full frame is not copied");
        assert!(body.chunks.len() <= 10, "{} chunks", body.chunks.len());
        let all = body.contiguous();
        assert_eq!(all.iter().filter(|&&b| b == b'b').count(), 100_000);
        assert_eq!(&all[all.len() - 8192..], &[b'c'; 8192][..]);
    }

    #[test]
    fn corrupt_gzip_is_malformed() {
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
