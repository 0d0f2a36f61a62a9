//! The signing clients docs/api.md shows, run as a user would: an Ed25519 key
//! pair from `openssl genpkey`, the public key registered with the built
//! `workerd key issue --signing-public-key`, then `docs/examples/sign.sh`
//! (openssl + curl) and `docs/examples/sign.py` (Python `cryptography`) send
//! signed batches that the gateway accepts. The same request sent again is
//! refused as a replay.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{event, TestGateway};
use shared::domain::Tier;
use shared::testkit::{eventually, services, TestSchema};
use uuid::Uuid;
use workerd::admin::Admin;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn workerd_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gateway")).with_file_name("workerd");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`; make test does)",
        bin.display()
    );
    bin
}

fn python() -> String {
    std::env::var("OVERWATCH_CH_PYTHON").expect(
        "OVERWATCH_CH_PYTHON (the provisioned venv's python, with `cryptography`): run through make test",
    )
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run the client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_shell_and_python_clients_sign_requests() {
    let svc = services();
    let schema = TestSchema::create(&svc).await;
    let admin = Admin::new(
        schema.client.clone(),
        shared::store::Db::new(schema.database()),
        "signing-test",
    );
    let tenant = admin
        .tenant_create(None, "signer", Tier::Paid, false)
        .await
        .expect("tenant");
    let dir = std::env::temp_dir().join(format!("ow-sign-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (private, public) = (dir.join("client.pem"), dir.join("client.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("openssl genpkey")
        .success();
    assert!(ok, "openssl genpkey");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl pkey")
        .success();
    assert!(ok, "openssl pkey -pubout");

    let issued = shared::testkit::workerd_command(&workerd_bin(), &schema.config)
        .args([
            "key",
            "issue",
            "--tenant",
            &tenant.to_string(),
            "--signing-public-key",
        ])
        .arg(&public)
        .output()
        .expect("workerd key issue");
    let stdout = String::from_utf8_lossy(&issued.stdout).to_string();
    assert!(
        issued.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    assert!(
        !stdout.contains("api_key"),
        "a signing key has no secret to show: {stdout}"
    );
    let key_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key_id "))
        .expect("key_id printed")
        .trim()
        .to_string();

    let gw = TestGateway::start(schema.config.clone()).await;
    let batch = |n: usize| {
        let path = dir.join(format!("batch-{n}.json"));
        let body = serde_json::json!({"events": [event("click", n, Uuid::new_v4())]});
        std::fs::write(&path, body.to_string()).expect("write batch");
        path
    };
    let env = |cmd: &mut Command| {
        cmd.env("OVERWATCH_URL", format!("http://{}", gw.addr))
            .env("KEY_ID", &key_id)
            .env("PRIVATE_KEY", &private);
    };
    let shell = |file: PathBuf| {
        let mut c = Command::new("bash");
        c.arg(root().join("docs/examples/sign.sh")).arg(file);
        env(&mut c);
        c
    };
    let py = |file: PathBuf| {
        let mut c = Command::new(python());
        c.arg(root().join("docs/examples/sign.py")).arg(file);
        env(&mut c);
        c
    };
    // The key reaches the gateway within a snapshot refresh.
    let first = batch(1);
    eventually("the signing key to load", Duration::from_secs(20), || {
        let mut c = shell(first.clone());
        async move { run(&mut c).0.then_some(()) }
    })
    .await;
    let (ok, out) = run(&mut shell(batch(2)));
    assert!(ok && out.contains("\"accepted\":1"), "shell client: {out}");
    let (ok, out) = run(&mut py(batch(3)));
    assert!(ok && out.contains("\"accepted\":1"), "python client: {out}");

    // A captured request replayed byte for byte is refused.
    let body = std::fs::read(batch(4)).expect("read");
    let ts = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let nonce = "replay-0123456789abcdef";
    let msg = gateway::auth::sign::message("POST", "/ingest", &ts, nonce, &body);
    std::fs::write(dir.join("msg"), &msg).expect("msg");
    let sig = Command::new("openssl")
        .args(["pkeyutl", "-sign", "-rawin", "-inkey"])
        .arg(&private)
        .arg("-in")
        .arg(dir.join("msg"))
        .output()
        .expect("openssl sign");
    assert!(sig.status.success());
    let sig = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&sig.stdout)
    };
    let send = || {
        reqwest::Client::new()
            .post(gw.url("/ingest"))
            .header("content-type", "application/json")
            .header("x-overwatch-key-id", &key_id)
            .header("x-overwatch-timestamp", &ts)
            .header("x-overwatch-nonce", nonce)
            .header("x-overwatch-signature", &sig)
            .body(body.clone())
            .send()
    };
    assert_eq!(
        send().await.expect("send").status(),
        200,
        "signed by openssl"
    );
    let replay = send().await.expect("send");
    assert_eq!(replay.status(), 401);
    let v: serde_json::Value = replay.json().await.expect("json");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("replayed"),
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
