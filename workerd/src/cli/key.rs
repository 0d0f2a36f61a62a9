//! `workerd key issue|list|revoke|rotate`: a secret is printed once, at issue
//! or rotation; a signing key has none.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use shared::config::Config;
use shared::runtime::exit::Exit;
use uuid::Uuid;

use super::text;
use crate::admin::{self, Admin, AdminError, Issued, KeySpec};

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Issue a key and print it once.
    Issue {
        #[arg(long)]
        tenant: Uuid,
        /// `server` or `browser` (browser keys may use CORS and sendBeacon).
        #[arg(long, default_value = "server")]
        kind: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Allowed browser origin, e.g. https://shop.example (repeatable; `*` for any).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// Client IP or CIDR allowed to use the key (repeatable; none = any).
        #[arg(long = "allow-ip")]
        allow_ip: Vec<String>,
        /// An Ed25519 public key file (PEM, as `openssl pkey -pubout` writes, or
        /// base64): requests are then signed with its private key and present
        /// the key id, never a secret (docs/api.md, "Signed requests").
        #[arg(long, value_name = "FILE")]
        signing_public_key: Option<PathBuf>,
        /// Expire after this long, e.g. 90d.
        #[arg(long, value_parser = admin::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<Uuid>,
    },
    /// Revoke a key; gateways refuse it within one refresh interval.
    Revoke { key_id: Uuid },
    /// Issue a successor; the old key keeps working for the overlap, then expires.
    Rotate {
        key_id: Uuid,
        #[arg(long, default_value = "24h", value_parser = admin::parse_duration)]
        overlap: Duration,
    },
}

pub async fn run(config: &Config, cmd: KeyCmd) -> Exit {
    match key(&super::tenant::admin(config), cmd).await {
        Ok(()) => Exit::Ok,
        Err(e) => super::failed("", e),
    }
}

fn print_issued(i: &Issued) {
    println!("key_id {}", i.key_id);
    println!("api_key {}", i.api_key());
    eprintln!("Store the api_key now: its secret is not kept and cannot be shown again.");
}

async fn key(admin: &Admin, cmd: KeyCmd) -> Result<(), AdminError> {
    match cmd {
        KeyCmd::Issue {
            tenant,
            kind,
            description,
            origins,
            allow_ip,
            signing_public_key,
            expires_in,
        } => {
            let public = match &signing_public_key {
                None => None,
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                    AdminError::SigningKeyFile {
                        path: path.display().to_string(),
                        source,
                    }
                })?),
            };
            let spec = KeySpec {
                kind,
                description,
                allowed_origins: origins,
                ip_allowlist: allow_ip,
                require_signature: public.is_some(),
                signing_public_key: public,
                expires_in,
            };
            let issued = admin.key_issue(tenant, &spec).await?;
            if spec.signing_public_key.is_some() {
                println!("key_id {}", issued.key_id);
                eprintln!(
                    "Sign requests with the private key; send X-Overwatch-Key-Id: {}",
                    issued.key_id
                );
            } else {
                print_issued(&issued);
            }
        }
        KeyCmd::List { tenant } => {
            println!(
                "{:<36}  {:<36}  {:<7}  {:<24}  {:<24}  {:<24}  description",
                "key_id", "tenant_id", "kind", "created_at", "expires_at", "revoked_at"
            );
            for k in admin.key_list(tenant).await? {
                println!(
                    "{:<36}  {:<36}  {:<7}  {:<24}  {:<24}  {:<24}  {}",
                    k.key_id,
                    k.tenant_id,
                    k.kind,
                    text::rfc3339(k.created_at_ms),
                    text::maybe_rfc3339(k.expires_at_ms),
                    text::maybe_rfc3339(k.revoked_at_ms),
                    k.description
                );
            }
        }
        KeyCmd::Revoke { key_id } => {
            admin.key_revoke(key_id).await?;
            println!("key {key_id} revoked");
        }
        KeyCmd::Rotate { key_id, overlap } => {
            let issued = admin.key_rotate(key_id, overlap).await?;
            print_issued(&issued);
            println!("old_key {key_id} expires in {}s", overlap.as_secs());
        }
    }
    Ok(())
}
