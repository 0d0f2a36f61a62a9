//! The trivial-handler baseline: a hyper server on the same runtime settings
//! as the gateway that reads each request's body and answers `200 {}`. What it
//! costs per request under a load is the machine's price of HTTP alone (the
//! sockets, the kernel, hyper), measured beside every gateway figure so that
//! ratios, not absolute numbers, carry from one machine to another.
//!
//! With a wait (`--wait-ms`), every answer is held until a thread outside the
//! runtime releases all waiting answers at once, every that many milliseconds:
//! the shape of a producer's acknowledgements (a linger, then one batch of
//! delivery reports from librdkafka's thread), without a broker. It prices the
//! sleeping and waking that any server answering only after an
//! acknowledgement pays, apart from the work of ingesting.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Largest body the baseline reads (larger ones are answered 413).
const MAX_BODY: usize = 16 << 20;

/// Answers waiting for the next release (bounded by the clients' connections:
/// each holds at most one).
type Waiting = Arc<Mutex<Vec<oneshot::Sender<()>>>>;

async fn answer(
    req: Request<Incoming>,
    waiting: Option<Waiting>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect().await;
    if let Some(waiting) = waiting {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = waiting.lock() {
            w.push(tx);
        }
        let _ = rx.await;
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    if read.is_err() {
        *resp.status_mut() = hyper::StatusCode::PAYLOAD_TOO_LARGE;
    }
    Ok(resp)
}

/// Serves until the process ends; prints the bound address first. With
/// `wait`, answers are released in batches by a thread every `wait`.
pub async fn serve(listener: TcpListener, wait: Option<Duration>) -> std::io::Result<()> {
    let waiting = wait.map(|every| {
        let waiting: Waiting = Arc::default();
        let released = Arc::clone(&waiting);
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            let batch = match released.lock() {
                Ok(mut w) => std::mem::take(&mut *w),
                Err(_) => return,
            };
            for tx in batch {
                let _ = tx.send(());
            }
        });
        waiting
    });
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let waiting = waiting.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, waiting.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    async fn serve(wait: Option<Duration>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(super::serve(listener, wait));
        addr
    }

    async fn post(client: &reqwest::Client, addr: std::net::SocketAddr, body: Vec<u8>) {
        let r = client
            .post(format!("http://{addr}/anything"))
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("body"), "{}");
    }

    #[tokio::test]
    async fn answers_every_request_after_reading_its_body() {
        let addr = serve(None).await;
        let client = reqwest::Client::new();
        for body in [Vec::new(), vec![b'x'; 100_000]] {
            post(&client, addr, body).await;
        }
    }

    #[tokio::test]
    async fn a_held_answer_waits_for_the_next_release() {
        let period = Duration::from_millis(150);
        let addr = serve(Some(period)).await;
        let client = reqwest::Client::new();
        post(&client, addr, Vec::new()).await; // answered at some release
                                               // Each next request arrives just after the release that answered the
                                               // one before, so it waits about a whole period.
        let sent = Instant::now();
        for _ in 0..2 {
            post(&client, addr, vec![b'x'; 1000]).await;
        }
        assert!(
            sent.elapsed() >= period * 3 / 2,
            "two held answers came back in {:?}, under 1.5 periods",
            sent.elapsed()
        );
    }
}
