//! Request body intake: content type and encoding checks, the compressed-size
//! cap, the body timeout and the shared body budget while reading, and gzip decoding under the decompressed-size cap (a gzip bomb
//! stops at the cap, so memory stays bounded).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
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
pub struct RawBody {
    pub bytes: Bytes,
    _reserved: Option<OwnedSemaphorePermit>,
}

/// How a body may be read: its size, its time, and the shared byte budget.
pub struct ReadLimits<'a> {
    pub max_body: u64,
    pub timeout: Duration,
    pub budget: &'a Arc<Semaphore>,
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
        // The buffer's capacity is what is reserved: a declared length is only
        // a hint, and memory follows what has arrived (at most doubling).
        let mut buf: Vec<u8> = Vec::new();
        let mut reserved: Option<OwnedSemaphorePermit> = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let needed = buf.len() + data.len();
            if needed as u64 > max_body {
                return Err(ApiError::PayloadTooLarge { limit: max_body });
            }
            if needed > buf.capacity() {
                let cap = needed.max((2 * buf.capacity()).min(max_body as usize));
                let more = cap - reserved.as_ref().map_or(0, |r| r.num_permits());
                let n = u32::try_from(more).unwrap_or(u32::MAX);
                let permit = Arc::clone(limits.budget)
                    .try_acquire_many_owned(n)
                    .map_err(|_| ApiError::BodyBudget {
                        limit: budget_total,
                    })?;
                match &mut reserved {
                    Some(r) => r.merge(permit),
                    None => reserved = Some(permit),
                }
                buf.reserve_exact(cap - buf.len());
            }
            buf.extend_from_slice(&data);
        }
        Ok(RawBody {
            bytes: Bytes::from(buf),
            _reserved: reserved,
        })
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

/// Decodes a raw body (at most `max_decoded` bytes after decompression).
pub fn decode(raw: &Bytes, encoding: Encoding, max_decoded: u64) -> Result<Vec<u8>, ApiError> {
    match encoding {
        Encoding::Identity => Ok(raw.to_vec()),
        Encoding::Gzip => gunzip(raw, max_decoded),
    }
}

/// Inflates `data`, refusing to produce more than `max` bytes.
pub fn gunzip(data: &[u8], max: u64) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity((data.len() * 4).min(max as usize));
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

    #[test]
    fn corrupt_gzip_is_malformed() {
        assert!(matches!(
            gunzip(b"not gzip", 100),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
