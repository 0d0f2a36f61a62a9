//! The real SDKs' side of the tests: the npm packages of gateway/tests/sdk,
//! installed into the cache by `make provision`, and Node to run the scripts
//! beside them.

use std::path::PathBuf;
use std::process::Command;

/// Where `make provision` installed gateway/tests/sdk's packages
/// (`OVERWATCH_SDK_NODE_MODULES`, else `<cache>/sdk-node/node_modules`);
/// fails, naming the fix, when one of `packages` is missing.
pub fn node_modules(packages: &[&str]) -> PathBuf {
    let dir = std::env::var("OVERWATCH_SDK_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("OVERWATCH_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/overwatch")
                })
                .join("sdk-node/node_modules")
        });
    for p in packages {
        assert!(
            dir.join(p).is_dir(),
            "{p} is not installed at {} (run `make provision`)",
            dir.display()
        );
    }
    dir
}

/// `node gateway/tests/sdk/<script>` with `packages` on its module path.
pub fn node(script: &str, packages: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sdk")
            .join(script),
    )
    .env("NODE_PATH", node_modules(packages));
    cmd
}
