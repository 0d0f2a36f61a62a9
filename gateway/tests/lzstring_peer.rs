//! The gateway's lz-string decoder (PostHog's `compression=lz64`) against the
//! real JavaScript library: 400 texts of several kinds, compressed by
//! lz-string 1.5.0 in Node, decompress to exactly the same text.

mod common;

#[test]
fn decodes_what_the_javascript_library_encodes() {
    let out = common::sdk::node("lzstring-vectors.cjs", &["lz-string"])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vectors: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("vectors");
    assert_eq!(vectors.len(), 400);
    for v in &vectors {
        let (text, b64) = (
            v["text"].as_str().expect("text"),
            v["b64"].as_str().expect("b64"),
        );
        let got = gateway::compat::lzstring::decompress_from_base64(b64, 1 << 20)
            .unwrap_or_else(|e| panic!("{e} for {b64:?} (of {text:?})"));
        assert_eq!(got, text, "{b64}");
    }
}
