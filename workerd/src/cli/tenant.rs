//! `workerd tenant create|list|set-tier`.

use clap::Subcommand;
use shared::config::Config;
use shared::domain::Tier;
use shared::runtime::exit::Exit;
use uuid::Uuid;

use super::text;
use crate::admin::{Admin, AdminError};

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Create a tenant and print its id.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "free", value_parser = text::tier)]
        tier: Tier,
        /// Use this id instead of a random one.
        #[arg(long)]
        id: Option<Uuid>,
        /// Truncate this tenant's IP addresses at the gateway.
        #[arg(long)]
        anonymize_ip: bool,
    },
    /// List tenants.
    List,
    /// Change a tenant's tier (rate limits follow within one key refresh).
    SetTier {
        tenant: Uuid,
        #[arg(value_parser = text::tier)]
        tier: Tier,
    },
}

/// The admin API on the configured database, acting as the OS user.
pub fn admin(config: &Config) -> Admin {
    Admin::new(
        shared::store::client(&config.clickhouse),
        shared::store::Db::new(&config.clickhouse.database),
        &std::env::var("USER").unwrap_or_else(|_| "workerd-cli".into()),
    )
}

pub async fn run(config: &Config, cmd: TenantCmd) -> Exit {
    match tenant(&admin(config), cmd).await {
        Ok(()) => Exit::Ok,
        Err(e) => super::failed("", e),
    }
}

async fn tenant(admin: &Admin, cmd: TenantCmd) -> Result<(), AdminError> {
    match cmd {
        TenantCmd::Create {
            name,
            tier,
            id,
            anonymize_ip,
        } => {
            let id = admin.tenant_create(id, &name, tier, anonymize_ip).await?;
            println!("tenant_id {id}");
        }
        TenantCmd::List => {
            println!(
                "{:<36}  {:<10}  {:<9}  {:<24}  name",
                "tenant_id", "tier", "anon_ip", "created_at"
            );
            for t in admin.tenant_list().await? {
                println!(
                    "{:<36}  {:<10}  {:<9}  {:<24}  {}",
                    t.tenant_id,
                    t.tier,
                    t.anonymize_ip,
                    text::rfc3339(t.created_at_ms),
                    t.name
                );
            }
        }
        TenantCmd::SetTier { tenant, tier } => {
            admin.tenant_set_tier(tenant, tier).await?;
            println!("tenant {tenant} is now {}", tier.as_str());
        }
    }
    Ok(())
}
