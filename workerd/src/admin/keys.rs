//! API keys: issue, list, revoke and rotate.

use std::time::Duration;

use serde::Deserialize;
use shared::credential;
use uuid::Uuid;

use super::{Admin, AdminError};

#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, Deserialize)]
pub struct KeyRow {
    pub key_id: String,
    pub tenant_id: String,
    pub kind: String,
    pub description: String,
    pub allowed_origins: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub require_signature: bool,
    /// Base64 Ed25519 public key of a signing key (empty otherwise).
    pub signing_public_key: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

/// What `key issue` accepts.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    /// `server` (default) or `browser`.
    pub kind: String,
    pub description: String,
    pub allowed_origins: Vec<String>,
    pub ip_allowlist: Vec<String>,
    pub require_signature: bool,
    /// An Ed25519 public key (PEM or base64): the key then signs its requests
    /// and is presented by id, never by a secret.
    pub signing_public_key: Option<String>,
    pub expires_in: Option<Duration>,
}

/// A freshly issued key: the only time its secret is known.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key_id: Uuid,
    pub tenant_id: Uuid,
    pub secret: String,
}

impl Issued {
    /// What clients send: `<tenant_id>:<secret>`.
    pub fn api_key(&self) -> String {
        format!("{}:{}", self.tenant_id, self.secret)
    }
}

impl KeySpec {
    fn validate(&self) -> Result<(), AdminError> {
        if self.kind != "server" && self.kind != "browser" {
            return Err(AdminError::KeyKind(self.kind.clone()));
        }
        if self.kind == "server" && !self.allowed_origins.is_empty() {
            return Err(AdminError::OriginsOnServerKey);
        }
        for o in &self.allowed_origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(AdminError::Origin(o.clone()));
            }
        }
        for c in &self.ip_allowlist {
            if shared::config::parse_net(c).is_none() {
                return Err(AdminError::IpOrCidr(c.clone()));
            }
        }
        Ok(())
    }
}

impl Admin {
    pub async fn key_issue(&self, tenant: Uuid, spec: &KeySpec) -> Result<Issued, AdminError> {
        spec.validate()?;
        if self.tenant(tenant).await?.is_none() {
            return Err(AdminError::NoTenant(tenant));
        }
        let secret = credential::new_secret()?;
        let key_id = Uuid::new_v4();
        let public = match &spec.signing_public_key {
            None => String::new(),
            Some(text) => {
                credential::encode_ed25519_public(&credential::parse_ed25519_public(text)?)
            }
        };
        let require_signature = spec.require_signature || !public.is_empty();
        let expires_ms = spec.expires_in.map(|d| d.as_millis() as i64).unwrap_or(0);
        self.client
            .query(&format!(
                "INSERT INTO {} (key_id, tenant_id, secret_sha256, kind, description, \
                 allowed_origins, ip_allowlist, require_signature, signing_public_key, created_at, expires_at, \
                 revoked_at, updated_at) \
                 SELECT toUUID(?), toUUID(?), ?, ?, ?, ?, ?, ?, ?, now64(3), \
                 if(? = 0, NULL, now64(3) + toIntervalMillisecond(?)), NULL, now64(3)",
                self.table("api_keys")
            ))
            .bind(key_id.to_string())
            .bind(tenant.to_string())
            .bind(credential::hash_secret(&secret))
            .bind(&spec.kind)
            .bind(&spec.description)
            .bind(&spec.allowed_origins)
            .bind(&spec.ip_allowlist)
            .bind(require_signature)
            .bind(&public)
            .bind(expires_ms)
            .bind(expires_ms)
            .execute()
            .await?;
        self.audit(
            "key.issue",
            Some(tenant),
            &key_id.to_string(),
            serde_json::json!({
                "kind": spec.kind, "description": spec.description,
                "allowed_origins": spec.allowed_origins, "ip_allowlist": spec.ip_allowlist,
                "require_signature": require_signature,
                "signing_public_key": public,
                "expires_in_ms": spec.expires_in.map(|d| d.as_millis() as u64),
            }),
        )
        .await?;
        Ok(Issued {
            key_id,
            tenant_id: tenant,
            secret,
        })
    }

    pub async fn key(&self, key_id: Uuid) -> Result<Option<KeyRow>, AdminError> {
        Ok(self
            .client
            .query(&format!("{} WHERE key_id = ?", self.key_select()))
            .bind(key_id.to_string())
            .fetch_optional::<KeyRow>()
            .await?)
    }

    fn key_select(&self) -> String {
        format!(
            "SELECT toString(key_id) AS key_id, toString(tenant_id) AS tenant_id, kind, \
             description, allowed_origins, ip_allowlist, require_signature, signing_public_key, \
             toUnixTimestamp64Milli(created_at) AS created_at_ms, \
             if(expires_at IS NULL, NULL, toUnixTimestamp64Milli(assumeNotNull(expires_at))) AS expires_at_ms, \
             if(revoked_at IS NULL, NULL, toUnixTimestamp64Milli(assumeNotNull(revoked_at))) AS revoked_at_ms \
             FROM {} FINAL",
            self.table("api_keys")
        )
    }

    pub async fn key_list(&self, tenant: Option<Uuid>) -> Result<Vec<KeyRow>, AdminError> {
        let target = tenant.map_or_else(|| "*".to_string(), |t| t.to_string());
        self.audit("key.list", tenant, &target, serde_json::json!({}))
            .await?;
        let q = match tenant {
            Some(t) => self
                .client
                .query(&format!(
                    "{} WHERE tenant_id = ? ORDER BY created_at, key_id",
                    self.key_select()
                ))
                .bind(t.to_string()),
            None => self.client.query(&format!(
                "{} ORDER BY tenant_id, created_at, key_id",
                self.key_select()
            )),
        };
        Ok(q.fetch_all::<KeyRow>().await?)
    }

    /// Rewrites a key's row with `revoked_at` and/or `expires_at` set (ms from now).
    async fn amend_key(
        &self,
        key_id: Uuid,
        revoke: bool,
        expire_in_ms: Option<i64>,
    ) -> Result<(), AdminError> {
        let expires = match expire_in_ms {
            Some(_) => "least(ifNull(expires_at, toDateTime64('2299-12-31 00:00:00', 3, 'UTC')), now64(3) + toIntervalMillisecond(?))",
            None => "expires_at",
        };
        let revoked = if revoke { "now64(3)" } else { "revoked_at" };
        let mut q = self.client.query(&format!(
            "INSERT INTO {t} (key_id, tenant_id, secret_sha256, kind, description, allowed_origins, \
             ip_allowlist, require_signature, signing_public_key, created_at, expires_at, revoked_at, updated_at) \
             SELECT key_id, tenant_id, secret_sha256, kind, description, allowed_origins, \
             ip_allowlist, require_signature, signing_public_key, created_at, {expires}, {revoked}, now64(3) \
             FROM {t} FINAL WHERE key_id = ?",
            t = self.table("api_keys")
        ));
        if let Some(ms) = expire_in_ms {
            q = q.bind(ms);
        }
        q.bind(key_id.to_string()).execute().await?;
        Ok(())
    }

    pub async fn key_revoke(&self, key_id: Uuid) -> Result<(), AdminError> {
        let k = self.key(key_id).await?.ok_or(AdminError::NoKey(key_id))?;
        if k.revoked_at_ms.is_some() {
            return Err(AdminError::AlreadyRevoked(key_id));
        }
        self.amend_key(key_id, true, None).await?;
        let tenant = Uuid::try_parse(&k.tenant_id).ok();
        self.audit(
            "key.revoke",
            tenant,
            &key_id.to_string(),
            serde_json::json!({}),
        )
        .await
    }

    /// Issues a successor with the same settings; the old key stays valid for
    /// `overlap`, then expires.
    pub async fn key_rotate(&self, key_id: Uuid, overlap: Duration) -> Result<Issued, AdminError> {
        let k = self.key(key_id).await?.ok_or(AdminError::NoKey(key_id))?;
        if k.revoked_at_ms.is_some() {
            return Err(AdminError::AlreadyRevoked(key_id));
        }
        let tenant = Uuid::try_parse(&k.tenant_id).map_err(|_| AdminError::Stored {
            what: "key tenant id",
            value: k.tenant_id.clone(),
        })?;
        let spec = KeySpec {
            kind: k.kind.clone(),
            description: k.description.clone(),
            allowed_origins: k.allowed_origins.clone(),
            ip_allowlist: k.ip_allowlist.clone(),
            require_signature: k.require_signature,
            signing_public_key: (!k.signing_public_key.is_empty())
                .then(|| k.signing_public_key.clone()),
            expires_in: None,
        };
        let issued = self.key_issue(tenant, &spec).await?;
        self.amend_key(key_id, false, Some(overlap.as_millis() as i64))
            .await?;
        self.audit(
            "key.rotate",
            Some(tenant),
            &key_id.to_string(),
            serde_json::json!({"successor": issued.key_id.to_string(), "overlap_ms": overlap.as_millis() as u64}),
        )
        .await?;
        Ok(issued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_checked() {
        let ok = KeySpec {
            kind: "browser".into(),
            allowed_origins: vec!["https://shop.example".into()],
            ip_allowlist: vec!["10.0.0.0/8".into()],
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            KeySpec {
                kind: "robot".into(),
                ..Default::default()
            },
            KeySpec {
                kind: "server".into(),
                allowed_origins: vec!["https://a".into()],
                ..Default::default()
            },
            KeySpec {
                kind: "browser".into(),
                allowed_origins: vec!["shop.example".into()],
                ..Default::default()
            },
            KeySpec {
                kind: "server".into(),
                ip_allowlist: vec!["nope".into()],
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
