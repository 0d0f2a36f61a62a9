//! Cold storage for compressed days (object_store): the local directory
//! `jobs.cold_dir`, or an S3-compatible bucket (`cold_storage.s3_*`). Both write
//! a file whole or not at all (local: temporary name then rename; S3: a single
//! PUT), so a killed run never leaves a half-written `events.parquet`.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shared::config::Config;
use uuid::Uuid;

use super::JobError;

pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or the directory, for messages and the audit log.
    root: String,
    prefix: String,
}

impl ColdStore {
    pub fn from_config(cfg: &Config) -> Result<ColdStore, JobError> {
        let c = &cfg.cold_storage;
        if c.s3_bucket.is_empty() {
            let dir = &cfg.jobs.cold_dir;
            std::fs::create_dir_all(dir)
                .map_err(|e| JobError::Invalid(format!("creating jobs.cold_dir {dir}: {e}")))?;
            let store = LocalFileSystem::new_with_prefix(dir)
                .map_err(|e| JobError::Invalid(format!("opening jobs.cold_dir {dir}: {e}")))?;
            return Ok(ColdStore {
                store: Arc::new(store),
                root: dir.trim_end_matches('/').to_string(),
                prefix: String::new(),
            });
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&c.s3_bucket)
            .with_region(&c.s3_region)
            .with_allow_http(c.s3_allow_http);
        if !c.s3_endpoint.is_empty() {
            // Path-style requests: what S3-compatible services expect by default.
            b = b
                .with_endpoint(&c.s3_endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !c.s3_access_key_id.is_empty() {
            b = b
                .with_access_key_id(&c.s3_access_key_id)
                .with_secret_access_key(&c.s3_secret_access_key);
        }
        let store = b.build().map_err(|e| {
            JobError::Invalid(format!(
                "cold_storage: cannot set up S3 bucket {}: {e}",
                c.s3_bucket
            ))
        })?;
        Ok(ColdStore {
            store: Arc::new(store),
            root: format!("s3://{}", c.s3_bucket),
            prefix: c.s3_prefix.trim_matches('/').to_string(),
        })
    }

    /// `[<prefix>/]tenant=<id>/date=<YYYY-MM-DD>/events.parquet`.
    pub fn key(&self, tenant: Uuid, day: time::Date) -> Path {
        let rel = format!("tenant={tenant}/date={day}/events.parquet");
        if self.prefix.is_empty() {
            Path::from(rel)
        } else {
            Path::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The days of `tenant` that have a folder in cold storage.
    pub async fn days(&self, tenant: Uuid) -> Result<Vec<time::Date>, JobError> {
        let folder = if self.prefix.is_empty() {
            format!("tenant={tenant}")
        } else {
            format!("{}/tenant={tenant}", self.prefix)
        };
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from(folder.as_str())))
            .await
            .map_err(|e| JobError::Invalid(format!("listing {}/{folder}: {e}", self.root)))?;
        let mut days = Vec::new();
        for p in listed.common_prefixes {
            let Some(d) = p.filename().and_then(|f| f.strip_prefix("date=")) else {
                continue;
            };
            if let Ok(day) = super::archive::parse_day(d) {
                days.push(day);
            }
        }
        Ok(days)
    }

    /// Where `key` lives, e.g. `s3://bucket/…` or `/var/lib/overwatch/cold/…`.
    pub fn location(&self, key: &Path) -> String {
        format!("{}/{key}", self.root)
    }

    pub async fn put(&self, key: &Path, data: Bytes) -> Result<(), JobError> {
        self.store
            .put(key, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| JobError::Invalid(format!("writing {}: {e}", self.location(key))))
    }

    /// The object at `key`, or `None` when there is none (any other failure is
    /// an error: a flaky store must never look like an empty archive).
    pub async fn get_optional(&self, key: &Path) -> Result<Option<Bytes>, JobError> {
        let read = async { self.store.get(key).await?.bytes().await };
        match read.await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(JobError::Invalid(format!(
                "reading back {}: {e}",
                self.location(key)
            ))),
        }
    }

    pub async fn get(&self, key: &Path) -> Result<Bytes, JobError> {
        let read = async { self.store.get(key).await?.bytes().await };
        read.await
            .map_err(|e| JobError::Invalid(format!("reading back {}: {e}", self.location(key))))
    }
}
