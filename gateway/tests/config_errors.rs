//! Black-box: the built binaries refuse bad configuration with exit 64 naming the key.

use std::process::Command;

fn run(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("OVERWATCH_CONFIG")
        .output()
        .expect("spawn binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_file(text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ow-cfg-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&p, text).expect("write config");
    p
}

/// (command-line arguments, environment, the key the error must name)
type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn gateway_names_the_offending_key() {
    let bin = env!("CARGO_BIN_EXE_gateway");
    let unknown = temp_file("[gateway]\nlisten_addr = \"127.0.0.1:1\"\n");
    let malformed = temp_file("[kafka]\nbrokers = \n");
    let cases: Vec<Case> = vec![
        (
            vec!["--config".into(), unknown.display().to_string()],
            vec![],
            "gateway.listen_addr",
        ),
        (
            vec!["--config".into(), malformed.display().to_string()],
            vec![],
            "brokers",
        ),
        (
            vec!["--config".into(), "/nonexistent/overwatch.toml".into()],
            vec![],
            "--config",
        ),
        (
            vec![],
            vec![("OVERWATCH__GATEWAY__LISTEN", "nowhere")],
            "gateway.listen",
        ),
        (
            vec![],
            vec![("OVERWATCH__GATEWAY__DELIVERY_TIMEOUT_MS", "soon")],
            "gateway.delivery_timeout_ms",
        ),
        (
            vec![],
            vec![("OVERWATCH__KAFKA__COMPRESSION", "brotli")],
            "kafka.compression",
        ),
        (
            vec![],
            vec![("OVERWATCH__KAFKA__TOPIC_PREFIX", "bad prefix!")],
            "kafka.topic_prefix",
        ),
        (
            vec![],
            vec![("OVERWATCH__TELEMETRY__SAMPLING_RATIO", "1.5")],
            "telemetry.sampling_ratio",
        ),
        (
            vec![],
            vec![("OVERWATCH__TELEMETRY__OTLP_ENDPOINT", "collector:4317")],
            "telemetry.otlp_endpoint",
        ),
        (vec![], vec![("OVERWATCH__NOPE__KEY", "1")], "nope"),
    ];
    for (args, env, key) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run(bin, &args, &env);
        assert_eq!(code, Some(64), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{key} not named in: {stderr}"
        );
    }
    let _ = std::fs::remove_file(unknown);
    let _ = std::fs::remove_file(malformed);
}
