//! `[cold_storage]`: where the compression job keeps verified Parquet
//! archives — a local directory or an S3-compatible bucket, by `kind`.

use serde::Deserialize;

use super::check::not_blank;
use super::{ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColdStorageConfig {
    /// `<dir>/tenant=<id>/date=<YYYY-MM-DD>/events.parquet` on this machine.
    Local(LocalColdStorage),
    /// `s3://<bucket>/<prefix>/tenant=<id>/date=<YYYY-MM-DD>/events.parquet`.
    S3(S3ColdStorage),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalColdStorage {
    pub dir: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3ColdStorage {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing slash needed).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible service; empty = AWS S3.
    #[serde(default)]
    pub endpoint: String,
    pub region: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: Secret,
    /// Allow a plain `http://` endpoint (local MinIO-style services).
    #[serde(default)]
    pub allow_http: bool,
}

impl ColdStorageConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            ColdStorageConfig::Local(l) => not_blank("cold_storage.dir", &l.dir),
            ColdStorageConfig::S3(s) => {
                not_blank("cold_storage.bucket", &s.bucket)?;
                not_blank("cold_storage.region", &s.region)?;
                let url = &s.endpoint;
                if url.starts_with("http://") && !s.allow_http {
                    return Err(ConfigError::new(
                        "cold_storage.allow_http",
                        "endpoint is plain http://; set allow_http = true to allow it",
                    ));
                }
                if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "cold_storage.endpoint",
                        "must be an http:// or https:// URL, or empty for AWS S3",
                    ));
                }
                Ok(())
            }
        }
    }
}
