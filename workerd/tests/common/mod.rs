//! Helpers the tests share: a test CA for the TLS tests, and `workerd run` as
//! a child process scheduling only the sessions job.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::Arc;

use tokio_rustls::rustls;

/// `pem` written to a fresh file (a channel's `ca_file`); its path.
pub fn ca_file(pem: &str) -> String {
    let path = std::env::temp_dir().join(format!("ow-test-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, pem).expect("write CA");
    path.display().to_string()
}

/// A test CA (its PEM) and a TLS acceptor with a certificate for 127.0.0.1 it signed.
pub fn tls() -> (String, tokio_rustls::TlsAcceptor) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// `workerd run` on `database` at `clickhouse_url`, operations on 127.0.0.1
/// `port`, not migrating at start, with every job unscheduled but `sessions`,
/// which runs every second. Add settings with `.env`, then spawn.
pub fn run_sessions_every_second(clickhouse_url: &str, database: &str, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_workerd"));
    cmd.arg("run")
        .env_remove("OVERWATCH_CONFIG")
        .env("OVERWATCH__WORKERD__LISTEN", format!("127.0.0.1:{port}"))
        .env("OVERWATCH__WORKERD__MIGRATE_ON_START", "false")
        .env("OVERWATCH__CLICKHOUSE__URL", clickhouse_url)
        .env("OVERWATCH__CLICKHOUSE__DATABASE", database);
    for job in [
        "RETENTION",
        "ROLLUPS",
        "QUOTA",
        "COMPRESSION",
        "ENRICHMENT",
        "ALERTS",
    ] {
        cmd.env(format!("OVERWATCH__JOBS__{job}_CRON"), "");
    }
    cmd.env("OVERWATCH__JOBS__SESSIONS_CRON", "* * * * * *")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}
