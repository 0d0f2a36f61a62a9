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
}

impl Db {
    pub fn new(database: &str) -> Db {
        Db {
            name: database.to_string(),
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
