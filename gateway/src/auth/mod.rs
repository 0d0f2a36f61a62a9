//! API-key authentication against an in-memory snapshot of the keys.
//!
//! Keys are `<tenant_id>:<secret>`, sent as `Authorization: Bearer <key>`,
//! `X-API-Key: <key>`, or (browser keys, for `navigator.sendBeacon`) the
//! `api_key` query parameter. Only the SHA-256 of each secret is held, and digests
//! are compared in constant time. The snapshot merges `auth.keys` from the
//! configuration with the `api_keys`/`tenants` tables in ClickHouse, reloaded every
//! `auth.refresh_interval_ms`; when ClickHouse is unreachable the last good
//! snapshot keeps serving for `auth.max_snapshot_age_ms`, and `/health` reports
//! its age. A key the gateway cannot judge (no snapshot yet, or one past that
//! age) gets 503 with `Retry-After`, never 401: 401 means the key is wrong.
//! Signing keys present their id and an Ed25519 signature instead ([`sign`]).

pub(crate) mod presented;
pub mod sign;
mod snapshot;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use hyper::header::HeaderMap;
use shared::config::{AuthConfig, ClickHouseConfig, StaticKey};
use shared::domain::Tier;
use uuid::Uuid;

use crate::error::ApiError;
use presented::presented_key;
use snapshot::{Key, Snapshot, Tenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Server,
    Browser,
}

/// Who a request's key belongs to, and what the key demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Uuid,
    pub tier: Tier,
    pub anonymize_ip: bool,
    pub kind: KeyKind,
    /// A signed request: what its signature must be checked against once the
    /// body is read (see [`sign`]).
    pub signed: Option<SignedBy>,
    /// Origins a browser key may be used from (`*` for any).
    pub allowed_origins: Vec<String>,
    /// The tenant used up its monthly quota (marked by workerd's quota job).
    pub over_quota: bool,
}

/// A signed request's headers and the public key that must have signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    pub presented: sign::Presented,
    pub public: VerifyingKey,
}

/// Where a snapshot stands, for `/health`.
#[derive(Debug, Clone)]
pub struct SnapshotStatus {
    pub keys: usize,
    pub from_clickhouse: bool,
    /// Time since the last successful load from ClickHouse.
    pub age: Option<Duration>,
    pub last_error: Option<String>,
}

pub struct KeyStore {
    static_keys: Vec<StaticKey>,
    /// `auth.max_snapshot_age_ms`.
    max_age: Duration,
    /// Nonces of signed requests (`auth.replay_cache_size`).
    pub replay: sign::ReplayCache,
    current: RwLock<Arc<Snapshot>>,
    source: Option<(clickhouse::Client, String)>,
    loaded_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    /// Keys the last installed ClickHouse load held (see [`KeyStore::refresh`]).
    loaded_keys: std::sync::atomic::AtomicUsize,
    /// The previous reload came back empty while the snapshot held keys.
    empty_once: std::sync::atomic::AtomicBool,
}

/// Why a reload of the key snapshot was not installed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("the reload returned no keys where the snapshot has {had}; kept the snapshot until a second reload agrees")]
    Emptied { had: usize },
}

impl KeyStore {
    /// Keys of `[auth]`, and those in ClickHouse when `auth.clickhouse_keys`.
    pub fn new(auth: &AuthConfig, clickhouse: &ClickHouseConfig) -> KeyStore {
        let source = auth.clickhouse_keys.then(|| {
            (
                shared::store::client(clickhouse),
                clickhouse.database.clone(),
            )
        });
        Self::with_source(auth, source)
    }

    /// Only the keys in `auth.keys`, never reloaded from ClickHouse.
    pub fn from_config(auth: &AuthConfig) -> KeyStore {
        Self::with_source(auth, None)
    }

    fn with_source(auth: &AuthConfig, source: Option<(clickhouse::Client, String)>) -> KeyStore {
        let store = KeyStore {
            static_keys: auth.keys.clone(),
            max_age: Duration::from_millis(auth.max_snapshot_age_ms),
            replay: sign::ReplayCache::new(auth.replay_cache_size, auth.signature_max_skew_secs),
            current: RwLock::new(Arc::new(Snapshot::default())),
            source,
            loaded_at: Mutex::new(None),
            last_error: Mutex::new(None),
            loaded_keys: std::sync::atomic::AtomicUsize::new(0),
            empty_once: std::sync::atomic::AtomicBool::new(false),
        };
        store.install(Vec::new(), &[]);
        store
    }

    fn install(&self, records: Vec<shared::store::keys::KeyRecord>, over_quota: &[String]) {
        let snap = Snapshot::build(&self.static_keys, records, over_quota);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Loads the keys from ClickHouse once; on failure the previous snapshot
    /// stays. A reload that comes back empty while the snapshot holds keys (a
    /// table being recreated, a half-restored database) is believed only when
    /// the next reload agrees: until then the previous snapshot keeps serving
    /// and ages, so valid keys are never turned away on one odd answer.
    pub async fn refresh(&self) -> Result<(), RefreshError> {
        let Some((client, db)) = &self.source else {
            return Ok(());
        };
        let loaded = async {
            let records = shared::store::keys::load(client, db).await?;
            let over = shared::store::keys::over_quota(client, db).await?;
            Ok::<_, clickhouse::error::Error>((records, over))
        };
        match loaded.await {
            Ok((records, over)) => {
                use std::sync::atomic::Ordering;
                let n = records.len();
                let had = self.loaded_keys.load(Ordering::Relaxed);
                if n == 0 && had > 0 && !self.empty_once.swap(true, Ordering::Relaxed) {
                    let e = RefreshError::Emptied { had };
                    tracing::warn!("{e}");
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(e.to_string());
                    return Err(e);
                }
                self.empty_once.store(false, Ordering::Relaxed);
                self.loaded_keys.store(n, Ordering::Relaxed);
                self.install(records, &over);
                let first = self
                    .loaded_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace(Instant::now())
                    .is_none();
                if self
                    .last_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .is_some()
                    || first
                {
                    tracing::info!(keys = n, "API key snapshot loaded");
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(error = %msg, "reloading API keys failed; serving the last snapshot");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
                Err(RefreshError::ClickHouse(e))
            }
        }
    }

    /// Reloads every `interval` until the task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let _ = store.refresh().await;
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// Whether the snapshot can judge keys: configured keys only, or a
    /// ClickHouse load succeeded within `auth.max_snapshot_age_ms`.
    pub fn usable(&self) -> Result<(), ApiError> {
        if self.source.is_none() {
            return Ok(());
        }
        let loaded = *self.loaded_at.lock().unwrap_or_else(|e| e.into_inner());
        match loaded {
            None => Err(ApiError::KeysUnavailable(
                "the API key snapshot has not loaded from ClickHouse yet".into(),
            )),
            Some(at) if at.elapsed() > self.max_age => Err(ApiError::KeysUnavailable(format!(
                "the API key snapshot is {} s old, past auth.max_snapshot_age_ms",
                at.elapsed().as_secs()
            ))),
            Some(_) => Ok(()),
        }
    }

    pub fn status(&self) -> SnapshotStatus {
        SnapshotStatus {
            keys: self
                .snapshot()
                .by_tenant
                .values()
                .map(|t| t.keys.len())
                .sum(),
            from_clickhouse: self.source.is_some(),
            age: self
                .loaded_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|t| t.elapsed()),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Whether some browser key allows `origin` (CORS preflight).
    pub fn origin_known(&self, origin: &str) -> bool {
        let snap = self.snapshot();
        snap.origins.contains(origin) || snap.origins.contains("*")
    }

    /// Authenticates a request by its headers or `api_key` query parameter;
    /// the second value says whether the key came from the query.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        client_ip: IpAddr,
    ) -> Result<(Principal, bool), ApiError> {
        if let Some(signed) = sign::presented(headers) {
            return self.authenticate_signed(signed?, client_ip);
        }
        let presented = presented_key(headers, query).ok_or(ApiError::Unauthorized(
            "missing API key: send `Authorization: Bearer <tenant_id>:<secret>` or `X-API-Key`",
        ))?;
        let principal = self.check_key(&presented.raw, presented.from_query, client_ip)?;
        Ok((principal, presented.from_query))
    }

    /// Whether the request's head presents a key at all (SDKs that put theirs
    /// in the body are authenticated once it is parsed).
    pub fn presents_key(headers: &HeaderMap, query: Option<&str>) -> bool {
        sign::presented(headers).is_some() || presented_key(headers, query).is_some()
    }

    /// Authenticates a key found in the body (PostHog's `api_key` / `token`).
    pub fn authenticate_token(
        &self,
        token: &str,
        client_ip: IpAddr,
    ) -> Result<Principal, ApiError> {
        self.check_key(token, false, client_ip)
    }

    fn check_key(
        &self,
        raw: &str,
        from_query: bool,
        client_ip: IpAddr,
    ) -> Result<Principal, ApiError> {
        let (tenant, secret) = raw.split_once(':').ok_or(ApiError::Unauthorized(
            "malformed API key: expected <tenant_id>:<secret>",
        ))?;
        let tenant = Uuid::try_parse(tenant.trim())
            .map_err(|_| ApiError::Unauthorized("malformed API key: tenant id is not a UUID"))?;
        let digest = shared::credential::secret_digest(secret);
        let snap = self.snapshot();
        let t = snap.by_tenant.get(&tenant);
        // Compare against every candidate so timing does not tell which matched.
        let mut found: Option<&Key> = None;
        for k in t.map(|t| &t.keys[..]).unwrap_or_default() {
            if ct_eq(&k.digest, &digest) {
                found = Some(k);
            }
        }
        let (t, key) = self.judged(t.zip(found))?;
        if key.public_key.is_some() || key.require_signature {
            return Err(ApiError::Unauthorized(
                "this key signs its requests: send X-Overwatch-Key-Id and an Ed25519 signature (docs/api.md)",
            ));
        }
        if from_query && key.kind != KeyKind::Browser {
            return Err(ApiError::Unauthorized(
                "the api_key query parameter is accepted for browser keys only",
            ));
        }
        self.principal(tenant, t, key, client_ip, None)
    }

    fn authenticate_signed(
        &self,
        presented: sign::Presented,
        client_ip: IpAddr,
    ) -> Result<(Principal, bool), ApiError> {
        let snap = self.snapshot();
        let found = snap
            .by_key_id
            .get(&presented.key_id)
            .and_then(|(tenant, i)| {
                let t = snap.by_tenant.get(tenant)?;
                Some((*tenant, t, t.keys.get(*i)?))
            });
        let Some((tenant, t, key)) = found else {
            self.usable()?;
            return Err(ApiError::Unauthorized("unknown API key"));
        };
        let (t, key) = self.judged(Some((t, key)))?;
        let Some(public) = key.public_key else {
            return Err(ApiError::Unauthorized("unknown API key"));
        };
        let signed = SignedBy { presented, public };
        Ok((
            self.principal(tenant, t, key, client_ip, Some(signed))?,
            false,
        ))
    }

    /// A found key stands when it is configured or the snapshot is usable; a key
    /// not found is wrong (401) only when the snapshot could have known it.
    fn judged<'s>(
        &self,
        found: Option<(&'s Tenant, &'s Key)>,
    ) -> Result<(&'s Tenant, &'s Key), ApiError> {
        match found {
            Some((t, k)) if k.from_config => Ok((t, k)),
            found => {
                self.usable()?;
                found.ok_or(ApiError::Unauthorized("unknown API key"))
            }
        }
    }

    fn principal(
        &self,
        tenant: Uuid,
        t: &Tenant,
        key: &Key,
        client_ip: IpAddr,
        signed: Option<SignedBy>,
    ) -> Result<Principal, ApiError> {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        if key.expires_at_ms.is_some_and(|exp| exp <= now_ms) {
            return Err(ApiError::Unauthorized("API key expired"));
        }
        if !key.ip_allowlist.is_empty() && !key.ip_allowlist.iter().any(|n| n.contains(&client_ip))
        {
            return Err(ApiError::IpNotAllowed(client_ip.to_string()));
        }
        Ok(Principal {
            tenant,
            tier: t.tier,
            anonymize_ip: t.anonymize_ip,
            kind: key.kind,
            signed,
            allowed_origins: key.allowed_origins.clone(),
            over_quota: t.over_quota,
        })
    }
}

impl Principal {
    /// A browser key used from a page must come from one of its origins.
    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), ApiError> {
        match (self.kind, origin) {
            (KeyKind::Browser, Some(o)) => {
                if self.allowed_origins.iter().any(|a| a == "*" || a == o) {
                    Ok(())
                } else {
                    Err(ApiError::OriginNotAllowed(o.to_string()))
                }
            }
            (KeyKind::Browser, None) | (KeyKind::Server, _) => Ok(()),
        }
    }
}

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn store() -> KeyStore {
        let mut auth = shared::Config::load_from(None, Vec::new())
            .expect("defaults")
            .auth;
        auth.keys = vec![StaticKey {
            tenant_id: Uuid::nil(),
            secret_sha256: shared::credential::hash_secret("secret"),
            tier: Tier::Paid,
            anonymize_ip: false,
        }];
        KeyStore::from_config(&auth)
    }

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("header"));
        h
    }

    fn ip() -> IpAddr {
        "192.0.2.1".parse().expect("ip")
    }

    #[test]
    fn bearer_and_x_api_key_are_accepted() {
        let s = store();
        let key = "00000000-0000-0000-0000-000000000000:secret";
        for h in [
            headers("authorization", &format!("Bearer {key}")),
            headers("x-api-key", key),
        ] {
            let (p, from_query) = s.authenticate(&h, None, ip()).expect("valid");
            assert_eq!(
                (p.tenant, p.tier, from_query),
                (Uuid::nil(), Tier::Paid, false)
            );
        }
    }

    #[test]
    fn wrong_missing_or_malformed_keys_are_401() {
        let s = store();
        for h in [
            HeaderMap::new(),
            headers(
                "authorization",
                "Bearer 00000000-0000-0000-0000-000000000000:wrong",
            ),
            headers(
                "authorization",
                "Bearer 11111111-1111-1111-1111-111111111111:secret",
            ),
            headers("authorization", "Bearer nocolon"),
            headers("authorization", "Basic abc"),
        ] {
            assert!(
                matches!(
                    s.authenticate(&h, None, ip()),
                    Err(ApiError::Unauthorized(_))
                ),
                "{h:?}"
            );
        }
        // A server key may not travel in the query string.
        let q = "api_key=00000000-0000-0000-0000-000000000000:secret";
        assert!(matches!(
            s.authenticate(&HeaderMap::new(), Some(q), ip()),
            Err(ApiError::Unauthorized(_))
        ));
    }
}
