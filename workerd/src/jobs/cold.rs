//! Cold storage for compressed days (object_store): a local directory or an
//! S3-compatible bucket, as `[cold_storage]` says. Both write
//! a file whole or not at all (local: temporary name then rename; S3: a single
//! PUT), so a killed run never leaves a half-written `events.parquet`.

use std::sync::Arc;

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use shared::config::{ColdStorageConfig, S3ColdStorage};
use time::Date;
use uuid::Uuid;

use super::error::JobError;

/// A `date=YYYY-MM-DD` day as stored (folder names, `toString` of a `Date`).
pub fn parse_day(d: &str) -> Result<Date, JobError> {
    Date::parse(d, &time::format_description::well_known::Iso8601::DATE).map_err(|_| {
        JobError::Stored {
            what: "day",
            value: d.to_string(),
        }
    })
}

pub struct ColdStore {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket` or the directory, for messages and the audit log.
    root: String,
    prefix: String,
}

impl ColdStore {
    /// The store `[cold_storage]` names: a local directory or an S3 bucket.
    pub fn new(cfg: &ColdStorageConfig) -> Result<ColdStore, JobError> {
        match cfg {
            ColdStorageConfig::Local(l) => Self::local(&l.dir),
            ColdStorageConfig::S3(c) => Self::s3(c),
        }
    }

    fn local(dir: &str) -> Result<ColdStore, JobError> {
        let directory = |source| JobError::ColdDirectory {
            dir: dir.to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(directory)?;
        let store =
            LocalFileSystem::new_with_prefix(dir).map_err(|source| JobError::ColdSetup {
                root: dir.to_string(),
                source,
            })?;
        Ok(ColdStore {
            store: Arc::new(store),
            root: dir.trim_end_matches('/').to_string(),
            prefix: String::new(),
        })
    }

    fn s3(c: &S3ColdStorage) -> Result<ColdStore, JobError> {
        let root = format!("s3://{}", c.bucket);
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_allow_http(c.allow_http);
        if !c.endpoint.is_empty() {
            // Path-style requests: what S3-compatible services expect by default.
            b = b
                .with_endpoint(&c.endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if !c.access_key_id.is_empty() {
            b = b
                .with_access_key_id(&c.access_key_id)
                .with_secret_access_key(c.secret_access_key.expose());
        }
        let store = b.build().map_err(|source| JobError::ColdSetup {
            root: root.clone(),
            source,
        })?;
        Ok(ColdStore {
            store: Arc::new(store),
            root,
            prefix: c.prefix.trim_matches('/').to_string(),
        })
    }

    fn failed(&self, action: &'static str, key: &Path) -> impl Fn(object_store::Error) -> JobError {
        let location = self.location(key);
        move |source| JobError::Cold {
            action,
            location: location.clone(),
            source,
        }
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
            .map_err(|source| JobError::Cold {
                action: "listing",
                location: format!("{}/{folder}", self.root),
                source,
            })?;
        let mut days = Vec::new();
        for p in listed.common_prefixes {
            let Some(d) = p.filename().and_then(|f| f.strip_prefix("date=")) else {
                continue;
            };
            if let Ok(day) = parse_day(d) {
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
            .map_err(self.failed("writing", key))
    }

    /// The object at `key`, or `None` when there is none (any other failure is
    /// an error: a flaky store must never look like an empty archive).
    pub async fn get_optional(&self, key: &Path) -> Result<Option<Bytes>, JobError> {
        let read = async { self.store.get(key).await?.bytes().await };
        match read.await {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("reading back", key)(e)),
        }
    }

    pub async fn get(&self, key: &Path) -> Result<Bytes, JobError> {
        let read = async { self.store.get(key).await?.bytes().await };
        read.await.map_err(self.failed("reading back", key))
    }
}
