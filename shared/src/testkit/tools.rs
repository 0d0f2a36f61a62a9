//! Tools tests share: a GeoIP database written on the fly, and promtool.

use std::path::Path;

/// Writes a MaxMind-format City database mapping each `/24` network of `nets`
/// (`(network address, country ISO code, country name, region, city)`) to its
/// place, for geo enrichment tests.
pub fn write_geo_mmdb(path: &Path, nets: &[(&str, &str, &str, &str, &str)]) {
    use maxminddb_writer::{metadata::IpVersion, paths::IpAddrWithMask, Database};
    use std::collections::BTreeMap;
    #[derive(serde::Serialize)]
    struct Named {
        #[serde(skip_serializing_if = "Option::is_none")]
        iso_code: Option<String>,
        names: BTreeMap<String, String>,
    }
    #[derive(serde::Serialize)]
    struct City {
        country: Named,
        subdivisions: Vec<Named>,
        city: Named,
    }
    let named = |iso: Option<&str>, en: &str| Named {
        iso_code: iso.map(str::to_string),
        names: BTreeMap::from([("en".to_string(), en.to_string())]),
    };
    let mut db = Database::default();
    db.metadata.ip_version = IpVersion::V6;
    db.metadata.database_type = "Overwatch-Test-City".into();
    db.metadata.languages = vec!["en".into()];
    db.metadata.binary_format_major_version = 2;
    for (net, iso, country, region, city) in nets {
        let data = db
            .insert_value(City {
                country: named(Some(iso), country),
                subdivisions: vec![named(None, region)],
                city: named(None, city),
            })
            .expect("insert value");
        let ip: std::net::IpAddr = net.parse().expect("network address");
        // IPv4 lives under ::/96 in an IPv6 tree.
        let v6 = match ip {
            std::net::IpAddr::V4(v4) => std::net::IpAddr::V6(v4.to_ipv6_compatible()),
            std::net::IpAddr::V6(v6) => std::net::IpAddr::V6(v6),
        };
        db.insert_node(IpAddrWithMask::new(v6, 96 + 24), data);
    }
    let file = std::fs::File::create(path).expect("create mmdb");
    db.write_to(std::io::BufWriter::new(file))
        .expect("write mmdb");
}

/// Asserts that `promtool check metrics` accepts `exposition` (promtool is
/// installed by `make provision`; the test fails when it is missing).
pub fn promtool_check(exposition: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is required: `make provision` installs it (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
