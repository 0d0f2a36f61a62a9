//! The ClickHouse store both binaries talk to: the client built from
//! `[clickhouse]`, a database's table names ([`Db`]), the SQL fragments every
//! query shares ([`sql`]), the schema and its migrations ([`schema`]), tenants
//! and keys as stored ([`keys`]) and the audit log ([`audit`]).

pub mod audit;
pub mod keys;
pub mod schema;
pub mod sql;

pub use sql::{ident, literal};

use crate::config::ClickHouseConfig;

/// A client for the configured server. Statements name their database explicitly
/// (`db.table`), so the client sets none: `CREATE DATABASE` must work before the
/// database exists.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(cfg.url.clone())
        .with_user(cfg.user.clone())
        .with_password(cfg.password.expose().to_string())
}

/// One database's tables, quoted for SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Db {
    name: String,
    /// `clickhouse.cluster`, when the schema is on a cluster.
    cluster: Option<String>,
}

impl Db {
    /// One server's database.
    pub fn new(database: &str) -> Db {
        Db {
            name: database.to_string(),
            cluster: None,
        }
    }

    /// The database of `[clickhouse]`, on its cluster when one is named.
    pub fn for_config(c: &ClickHouseConfig) -> Db {
        Db {
            name: c.database.clone(),
            cluster: (!c.cluster.is_empty()).then(|| c.cluster.clone()),
        }
    }

    /// The cluster the schema is on, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// Where `DELETE`, `ALTER … UPDATE` and `TRUNCATE` of `name` go: the
    /// table itself on one server; for a sharded table on a cluster, its
    /// `<name>_local` tables `ON CLUSTER` (a Distributed table takes no
    /// mutations).
    pub fn mutable(&self, name: &str) -> String {
        match &self.cluster {
            Some(c) if schema::cluster::is_sharded(name) => format!(
                "{} ON CLUSTER {}",
                self.table(&format!("{name}_local")),
                ident(c)
            ),
            _ => self.table(name),
        }
    }

    /// The database's name, unquoted.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `` `db`.`name` ``.
    pub fn table(&self, name: &str) -> String {
        format!("{}.{}", ident(&self.name), ident(name))
    }
}
