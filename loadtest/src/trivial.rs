//! The trivial-handler baseline: a hyper server on the same runtime settings
//! as the gateway that reads each request's body and answers `200 {}`. What it
//! costs per request under a load is the machine's price of HTTP alone (the
//! sockets, the kernel, hyper), measured beside every gateway figure so that
//! ratios, not absolute numbers, carry from one machine to another.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Largest body the baseline reads (larger ones are answered 413).
const MAX_BODY: usize = 16 << 20;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect().await;
    let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
    if read.is_err() {
        *resp.status_mut() = hyper::StatusCode::PAYLOAD_TOO_LARGE;
    }
    Ok(resp)
}

/// Serves until the process ends; prints the bound address first.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
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
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn answers_every_request_after_reading_its_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(super::serve(listener));
        let client = reqwest::Client::new();
        for body in [Vec::new(), vec![b'x'; 100_000]] {
            let r = client
                .post(format!("http://{addr}/anything"))
                .body(body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
            assert_eq!(r.text().await.expect("body"), "{}");
        }
    }
}
