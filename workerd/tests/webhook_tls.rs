//! Webhook, Slack and Discord deliveries over HTTPS, to a real TLS server on
//! loopback whose certificate a test CA signed (as the SMTP test does): trusted
//! through the channel's `ca_file` the alert arrives signed; without it the
//! certificate is refused, and the failure, in the result and in
//! `notifications_log`, never shows the URL's secret path.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use shared::config::{ChannelConfig, HookChannel, WebhookChannel};
use shared::testkit::{services, TestSchema};
use tokio::net::TcpListener;
use workerd::notify::{self, Alert, Notifier, Outcome};

const SECRET_PATH: &str = "/services/T0SECRET/B0SECRET/xoxo";

type Got = Arc<Mutex<Vec<(String, hyper::HeaderMap, Bytes)>>>;

/// An HTTPS server recording every request (path, headers, body).
async fn https_server(acceptor: tokio_rustls::TlsAcceptor) -> (String, Got) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("https://{}", listener.local_addr().expect("addr"));
    let got: Got = Arc::default();
    let seen = Arc::clone(&got);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                // An untrusting client aborts the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        seen.lock().expect("lock").push((
                            parts.uri.path().to_string(),
                            parts.headers,
                            body,
                        ));
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (base, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_channels_deliver_with_their_ca_and_never_leak_the_url() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let (ca_pem, acceptor) = common::tls();
    let ca = common::ca_file(&ca_pem);
    let (base, got) = https_server(acceptor).await;
    let mut cfg = schema.config.clone();
    cfg.notifications.max_attempts = 1;
    cfg.notifications.channels = vec![
        ChannelConfig::Webhook(WebhookChannel {
            name: "hook".into(),
            url: format!("{base}/hook").into(),
            secret: "s3cret".into(),
            ca_file: ca.clone(),
        }),
        ChannelConfig::Slack(HookChannel {
            name: "slack".into(),
            url: format!("{base}/slack{SECRET_PATH}").into(),
            ca_file: ca.clone(),
        }),
        ChannelConfig::Discord(HookChannel {
            name: "untrusted".into(),
            url: format!("{base}/discord{SECRET_PATH}").into(),
            ca_file: String::new(),
        }),
    ];
    cfg.validate().expect("valid channels");
    let shown = format!("{:?}", cfg.notifications);
    assert!(!shown.contains("T0SECRET"), "{shown}");
    let n = Notifier::new(
        shared::store::client(&cfg.clickhouse),
        shared::store::Db::new(&cfg.clickhouse.database),
        &cfg.notifications,
    );
    let alert = Alert::QuotaExceeded {
        tenant: uuid::Uuid::new_v4(),
    };
    let out = n.notify(&alert).await;
    let outcome = |name: &str| {
        out.iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.clone())
            .expect("outcome")
    };
    assert_eq!(outcome("hook"), Outcome::Sent);
    assert_eq!(outcome("slack"), Outcome::Sent);
    let Outcome::Failed(error) = outcome("untrusted") else {
        panic!("an untrusted certificate was accepted: {out:?}")
    };
    assert!(
        error.to_lowercase().contains("certificate"),
        "the failure names its cause: {error}"
    );
    assert!(
        !error.contains("SECRET") && !error.contains(&base),
        "{error}"
    );

    let got = got.lock().expect("lock").clone();
    let hook = got
        .iter()
        .find(|(p, _, _)| p == "/hook")
        .expect("webhook over https");
    let ts = hook.1[notify::TIMESTAMP_HEADER].to_str().expect("ascii");
    assert_eq!(
        hook.1[notify::SIGNATURE_HEADER],
        notify::sign("s3cret", ts, &hook.2).as_str()
    );
    assert!(got.iter().any(|(p, _, _)| p.starts_with("/slack/")));
    assert!(!got.iter().any(|(p, _, _)| p.starts_with("/discord")));

    let log: Vec<String> = schema
        .client
        .query(&format!(
            "SELECT detail FROM `{}`.notifications_log WHERE status = 'failed'",
            schema.database()
        ))
        .fetch_all()
        .await
        .expect("log");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(!log[0].contains("SECRET"), "{}", log[0]);
    let _ = std::fs::remove_file(&ca);
}
