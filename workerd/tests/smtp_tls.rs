//! Email alerts over STARTTLS with authentication, against a loopback SMTP
//! server that refuses AUTH and MAIL before STARTTLS and presents a certificate
//! from a test CA: delivered when `smtp_ca_file` names that CA and the
//! credentials are right; refused with an untrusted certificate or a wrong
//! password.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use shared::config::{ChannelConfig, EmailChannel, SmtpTls};
use shared::testkit::{services, TestSchema};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use workerd::notify::{Alert, Notifier, Outcome};

const USER: &str = "alerts@example.com";
const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Default)]
struct Mail {
    authenticated_as: String,
    data: String,
}

async fn reply<W: AsyncWrite + Unpin>(w: &mut W, text: &str) {
    let _ = w.write_all(text.as_bytes()).await;
    let _ = w.flush().await;
}

/// SMTP that requires STARTTLS, then AUTH PLAIN, before it takes a message.
async fn starttls_server(acceptor: tokio_rustls::TlsAcceptor) -> (u16, Arc<Mutex<Vec<Mail>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mails: Arc<Mutex<Vec<Mail>>> = Arc::default();
    let store = Arc::clone(&mails);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (store, acceptor) = (Arc::clone(&store), acceptor.clone());
            tokio::spawn(async move {
                let mut plain = BufReader::new(tcp);
                reply(plain.get_mut(), "220 test-smtp ready\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if plain.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_ascii_uppercase();
                    if cmd.starts_with("EHLO") {
                        reply(
                            plain.get_mut(),
                            "250-test-smtp\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
                        )
                        .await;
                    } else if cmd == "STARTTLS" {
                        reply(plain.get_mut(), "220 go ahead\r\n").await;
                        break;
                    } else if cmd == "QUIT" {
                        return;
                    } else {
                        reply(
                            plain.get_mut(),
                            "530 5.7.0 Must issue a STARTTLS command first\r\n",
                        )
                        .await;
                    }
                }
                // A client that rejects the certificate just hangs up here.
                let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                let mut mail = Mail::default();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let text = line.trim_end().to_string();
                    let cmd = text.to_ascii_uppercase();
                    if cmd.starts_with("EHLO") {
                        reply(
                            r.get_mut(),
                            "250-test-smtp\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                        )
                        .await;
                    } else if cmd.starts_with("AUTH PLAIN ") {
                        let decoded = base64::engine::general_purpose::STANDARD
                            .decode(&text["AUTH PLAIN ".len()..])
                            .unwrap_or_default();
                        if decoded == format!("\0{USER}\0{PASSWORD}").as_bytes() {
                            mail.authenticated_as = USER.into();
                            reply(r.get_mut(), "235 2.7.0 Authentication successful\r\n").await;
                        } else {
                            reply(
                                r.get_mut(),
                                "535 5.7.8 Authentication credentials invalid\r\n",
                            )
                            .await;
                        }
                    } else if cmd.starts_with("MAIL") && mail.authenticated_as.is_empty() {
                        reply(r.get_mut(), "530 5.7.0 Authentication required\r\n").await;
                    } else if cmd == "DATA" {
                        reply(r.get_mut(), "354 go ahead\r\n").await;
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0
                                || line.trim_end() == "."
                            {
                                break;
                            }
                            mail.data.push_str(&line);
                        }
                        store.lock().expect("mails").push(mail.clone());
                        reply(r.get_mut(), "250 queued\r\n").await;
                    } else if cmd == "QUIT" {
                        reply(r.get_mut(), "221 bye\r\n").await;
                        return;
                    } else {
                        reply(r.get_mut(), "250 ok\r\n").await;
                    }
                }
            });
        }
    });
    (port, mails)
}

fn email(name: &str, port: u16, password: &str, ca_file: &str) -> ChannelConfig {
    ChannelConfig::Email(EmailChannel {
        name: name.into(),
        smtp_host: "127.0.0.1".into(),
        smtp_port: port,
        smtp_tls: SmtpTls::Starttls,
        smtp_user: USER.into(),
        smtp_password: password.into(),
        smtp_ca_file: ca_file.into(),
        from: "overwatch@example.com".into(),
        to: vec!["oncall@example.com".into()],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_over_starttls_with_auth_and_checks_the_certificate() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let (ca_pem, acceptor) = common::tls();
    let ca = common::ca_file(&ca_pem);
    let (port, mails) = starttls_server(acceptor).await;
    let mut cfg = schema.config.clone();
    cfg.notifications.max_attempts = 1;
    cfg.notifications.channels = vec![
        email("trusted", port, PASSWORD, &ca),
        email("untrusted", port, PASSWORD, ""),
        email("wrong-password", port, "guess", &ca),
    ];
    cfg.validate().expect("valid channels");
    let alert = Alert::QuotaExceeded {
        tenant: uuid::Uuid::new_v4(),
    };
    let notifier = Notifier::new(
        shared::store::client(&cfg.clickhouse),
        shared::store::Db::new(&cfg.clickhouse.database),
        &cfg.notifications,
    );
    let outcomes = notifier.notify(&alert).await;

    let outcome = |name: &str| {
        outcomes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.clone())
            .expect("outcome")
    };
    assert_eq!(outcome("trusted"), Outcome::Sent);
    assert!(
        matches!(outcome("untrusted"), Outcome::Failed(ref e) if !e.is_empty()),
        "a certificate from an unknown CA must be refused: {outcomes:?}"
    );
    assert!(
        matches!(outcome("wrong-password"), Outcome::Failed(_)),
        "{outcomes:?}"
    );
    let mails = mails.lock().expect("mails").clone();
    assert_eq!(
        mails.len(),
        1,
        "exactly the trusted, authenticated delivery: {mails:?}"
    );
    assert_eq!(mails[0].authenticated_as, USER);
    assert!(
        mails[0].data.contains("exceeded its monthly quota"),
        "{}",
        mails[0].data
    );
    assert!(
        outcomes.iter().all(|(_, o)| match o {
            Outcome::Failed(e) => !e.contains(PASSWORD) && !e.contains("guess"),
            _ => true,
        }),
        "no password in errors: {outcomes:?}"
    );
    let _ = std::fs::remove_file(&ca);
}
