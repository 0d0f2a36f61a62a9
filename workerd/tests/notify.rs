//! Notifications to real peers on loopback: an HTTP receiver (webhook, Slack,
//! Discord) that checks payloads and signatures, and a small SMTP server that
//! receives the mail. Cooldown suppression, retries and notifications_log too.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use shared::config::{ChannelConfig, EmailChannel, HookChannel, SmtpTls, WebhookChannel};
use shared::testkit::{services, TestSchema};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use uuid::Uuid;
use workerd::jobs::JobName;
use workerd::notify::{self, Alert, Notifier, Outcome, Rule};
use workerd::scheduler::Tick;

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: hyper::HeaderMap,
    raw: Bytes,
    body: serde_json::Value,
}

/// An HTTP receiver on loopback; the first `fail_first` requests get 500.
async fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&got);
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = Arc::clone(&seen);
            let attempts = Arc::clone(&attempts);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = Arc::clone(&seen);
                    let attempts = Arc::clone(&attempts);
                    async move {
                        let path = req.uri().path().to_string();
                        let headers = req.headers().clone();
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let status = if n < fail_first { 500 } else { 200 };
                        if status == 200 {
                            seen.lock().expect("lock").push(Received {
                                path,
                                headers,
                                body: serde_json::from_slice(&body)
                                    .unwrap_or(serde_json::Value::Null),
                                raw: body,
                            });
                        }
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (url, got)
}

/// A minimal SMTP server (no TLS, no auth) that keeps each message's DATA.
async fn smtp_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let store = Arc::clone(&mails);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut lines = BufReader::new(r).lines();
                let _ = w.write_all(b"220 test-smtp ready\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250-test-smtp\r\n250 8BITMIME\r\n"
                    } else if cmd.starts_with("DATA") {
                        let _ = w.write_all(b"354 go ahead\r\n").await;
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        store.lock().expect("lock").push(data);
                        b"250 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        let _ = w.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (port, mails)
}

fn hook(name: &str, url: String) -> HookChannel {
    HookChannel {
        name: name.into(),
        url: url.into(),
        ca_file: String::new(),
    }
}

fn notifier(cfg: &shared::Config) -> Notifier {
    Notifier::new(
        shared::store::client(&cfg.clickhouse),
        shared::store::Db::new(&cfg.clickhouse.database),
        &cfg.notifications,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_every_channel_once_per_cooldown() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let (hook_url, hooks) = receiver(1).await; // the first delivery fails: retried
    let (port, mails) = smtp_server().await;
    let mut cfg = schema.config.clone();
    cfg.notifications.retry_base_ms = 10;
    cfg.notifications.channels = vec![
        ChannelConfig::Webhook(WebhookChannel {
            name: "ops-webhook".into(),
            url: format!("{hook_url}/hook").into(),
            secret: "s3cret".into(),
            ca_file: String::new(),
        }),
        ChannelConfig::Slack(hook("slack", format!("{hook_url}/slack"))),
        ChannelConfig::Discord(hook("discord", format!("{hook_url}/discord"))),
        ChannelConfig::Email(EmailChannel {
            name: "mail".into(),
            smtp_host: "127.0.0.1".into(),
            smtp_port: port,
            smtp_tls: SmtpTls::None,
            smtp_user: String::new(),
            smtp_password: Default::default(),
            smtp_ca_file: String::new(),
            from: "overwatch@example.com".into(),
            to: vec!["oncall@example.com".into()],
        }),
    ];
    cfg.validate().expect("valid channels");
    let n = notifier(&cfg);
    let tenant = Uuid::new_v4();
    let alert = &Alert::QuotaExceeded { tenant };
    assert_eq!(alert.rule(), Rule::QuotaExceeded);

    let first = n.notify(alert).await;
    assert!(first.iter().all(|(_, o)| *o == Outcome::Sent), "{first:?}");

    let got = hooks.lock().expect("lock").clone();
    let hook = got
        .iter()
        .find(|r| r.path == "/hook")
        .expect("webhook delivered");
    let ts = hook.headers[notify::TIMESTAMP_HEADER]
        .to_str()
        .expect("ascii");
    let expected = notify::sign("s3cret", ts, &hook.raw);
    assert_eq!(hook.headers[notify::SIGNATURE_HEADER], expected.as_str());
    assert_eq!(hook.body["rule"], "quota_exceeded");
    assert_eq!(hook.body["tenant_id"], tenant.to_string());
    let slack = got
        .iter()
        .find(|r| r.path == "/slack")
        .expect("slack delivered");
    assert!(slack.body["text"]
        .as_str()
        .expect("text")
        .contains("exceeded its monthly quota"));
    let discord = got
        .iter()
        .find(|r| r.path == "/discord")
        .expect("discord delivered");
    assert!(discord.body["content"]
        .as_str()
        .expect("content")
        .contains("[Overwatch]"));
    let mail = mails.lock().expect("lock").clone();
    assert_eq!(mail.len(), 1);
    assert!(mail[0].contains("To: oncall@example.com"), "{}", mail[0]);
    assert!(
        mail[0].contains("exceeded its monthly quota"),
        "{}",
        mail[0]
    );

    // Inside the cooldown: suppressed everywhere, nothing delivered, all logged.
    let second = n.notify(alert).await;
    assert!(
        second.iter().all(|(_, o)| *o == Outcome::Suppressed),
        "{second:?}"
    );
    assert_eq!(hooks.lock().expect("lock").len(), 3);
    assert_eq!(mails.lock().expect("lock").len(), 1);
    let log: Vec<(String, String)> = schema
        .client
        .query(&format!(
            "SELECT channel, status FROM `{}`.notifications_log ORDER BY at, channel",
            schema.database()
        ))
        .fetch_all()
        .await
        .expect("log");
    let count = |status: &str| log.iter().filter(|(_, s)| s == status).count();
    assert_eq!((count("sent"), count("suppressed")), (4, 4), "{log:?}");

    // Another tenant is its own dedup key.
    let other = Alert::QuotaExceeded {
        tenant: Uuid::new_v4(),
    };
    assert!(n
        .notify(&other)
        .await
        .iter()
        .all(|(_, o)| *o == Outcome::Sent));
}

#[tokio::test]
async fn an_unreachable_channel_fails_after_retries_and_is_logged() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let mut cfg = schema.config.clone();
    cfg.notifications.retry_base_ms = 10;
    let dead = format!("http://127.0.0.1:{}/hook", shared::testkit::free_port());
    cfg.notifications.channels = vec![ChannelConfig::Webhook(WebhookChannel {
        name: "dead".into(),
        url: dead.into(),
        secret: Default::default(),
        ca_file: String::new(),
    })];
    let n = notifier(&cfg);
    // A failed run's tick raises job_failure.
    let alerts = Tick::Ran(Err("ClickHouse is down".into())).alerts(JobName::Sessions);
    assert_eq!(alerts[0].rule(), Rule::JobFailure);
    let out = n.notify(&alerts[0]).await;
    assert!(
        matches!(&out[0].1, Outcome::Failed(e) if e.contains("3 attempts")),
        "{out:?}"
    );
    let statuses: Vec<String> = schema
        .client
        .query(&format!(
            "SELECT status FROM `{}`.notifications_log",
            schema.database()
        ))
        .fetch_all()
        .await
        .expect("log");
    assert_eq!(statuses, ["failed"]);
    // A failure does not start a cooldown: the next alert is tried again.
    let again = n.notify(&alerts[0]).await;
    assert!(matches!(again[0].1, Outcome::Failed(_)));
}
