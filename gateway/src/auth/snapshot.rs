//! The in-memory key snapshot: configured keys merged with ClickHouse's rows,
//! indexed by tenant and (for signing keys) by key id.

use std::collections::{HashMap, HashSet};

use ed25519_dalek::VerifyingKey;
use shared::config::{parse_net, StaticKey};
use shared::domain::Tier;
use uuid::Uuid;

use super::KeyKind;

#[derive(Debug, Clone)]
pub(super) struct Key {
    /// From `auth.keys`: judged without ClickHouse.
    pub(super) from_config: bool,
    pub(super) key_id: Option<Uuid>,
    pub(super) public_key: Option<VerifyingKey>,
    pub(super) digest: [u8; 32],
    pub(super) kind: KeyKind,
    pub(super) allowed_origins: Vec<String>,
    pub(super) ip_allowlist: Vec<ipnet::IpNet>,
    pub(super) require_signature: bool,
    pub(super) expires_at_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub(super) struct Tenant {
    pub(super) tier: Tier,
    pub(super) anonymize_ip: bool,
    pub(super) over_quota: bool,
    pub(super) keys: Vec<Key>,
}

#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) by_tenant: HashMap<Uuid, Tenant>,
    /// Signing keys by key id: (tenant, index in its keys).
    pub(super) by_key_id: HashMap<Uuid, (Uuid, usize)>,
    /// Every origin some browser key allows: answers CORS preflights, which
    /// carry no key.
    pub(super) origins: HashSet<String>,
}

impl Snapshot {
    /// The snapshot of `static_keys` and ClickHouse's `records`, with the
    /// tenants in `over_quota` marked.
    pub(super) fn build(
        static_keys: &[StaticKey],
        records: Vec<shared::store::keys::KeyRecord>,
        over_quota: &[String],
    ) -> Snapshot {
        let mut snap = Snapshot::default();
        for k in static_keys {
            if let Some(digest) = parse_digest(&k.secret_sha256) {
                snap.add(
                    k.tenant_id,
                    k.tier,
                    k.anonymize_ip,
                    false,
                    Key {
                        from_config: true,
                        key_id: None,
                        public_key: None,
                        digest,
                        kind: KeyKind::Server,
                        allowed_origins: Vec::new(),
                        ip_allowlist: Vec::new(),
                        require_signature: false,
                        expires_at_ms: None,
                    },
                );
            }
        }
        for r in records {
            let (Ok(tenant), Some(digest)) = (
                Uuid::try_parse(&r.tenant_id),
                parse_digest(&r.secret_sha256),
            ) else {
                tracing::warn!(key_id = %r.key_id, "skipping a malformed key row");
                continue;
            };
            let public_key = if r.signing_public_key.is_empty() {
                None
            } else {
                let parsed = shared::credential::parse_ed25519_public(&r.signing_public_key)
                    .map(|k| VerifyingKey::from_bytes(&k));
                match parsed {
                    Ok(Ok(k)) => Some(k),
                    Ok(Err(e)) => {
                        tracing::warn!(key_id = %r.key_id, error = %e, "skipping a key whose signing key is not a curve point");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(key_id = %r.key_id, error = %e, "skipping a key with an unusable signing key");
                        continue;
                    }
                }
            };
            snap.add(
                tenant,
                shared::store::keys::resolve_tier(Some(&r.tier), static_keys, tenant),
                r.anonymize_ip,
                r.over_quota,
                Key {
                    from_config: false,
                    key_id: Uuid::try_parse(&r.key_id).ok(),
                    public_key,
                    digest,
                    kind: if r.kind == "browser" {
                        KeyKind::Browser
                    } else {
                        KeyKind::Server
                    },
                    allowed_origins: r.allowed_origins,
                    ip_allowlist: parse_nets(&r.ip_allowlist),
                    require_signature: r.require_signature,
                    expires_at_ms: r.expires_at_ms,
                },
            );
        }
        // Quota marks apply to every tenant, whichever way it is defined.
        for id in over_quota {
            if let Some(t) = Uuid::try_parse(id)
                .ok()
                .and_then(|id| snap.by_tenant.get_mut(&id))
            {
                t.over_quota = true;
            }
        }
        snap
    }

    fn add(&mut self, tenant: Uuid, tier: Tier, anonymize_ip: bool, over_quota: bool, key: Key) {
        for o in &key.allowed_origins {
            self.origins.insert(o.clone());
        }
        let t = self.by_tenant.entry(tenant).or_insert(Tenant {
            tier,
            anonymize_ip,
            over_quota,
            keys: Vec::new(),
        });
        t.tier = tier;
        t.anonymize_ip = anonymize_ip;
        t.over_quota |= over_quota;
        if let (Some(id), Some(_)) = (key.key_id, key.public_key) {
            self.by_key_id.insert(id, (tenant, t.keys.len()));
        }
        t.keys.push(key);
    }
}

fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut d).ok()?;
    Some(d)
}

fn parse_nets(list: &[String]) -> Vec<ipnet::IpNet> {
    list.iter().filter_map(|s| parse_net(s)).collect()
}
