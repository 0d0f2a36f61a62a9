//! ClickHouse client construction from configuration.

use crate::config::ClickHouseConfig;

/// A client for the configured server. Statements name their database explicitly
/// (`db.table`), so the client sets none: `CREATE DATABASE` must work before the
/// database exists.
pub fn client(cfg: &ClickHouseConfig) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(cfg.url.clone())
        .with_user(cfg.user.clone())
        .with_password(cfg.password.clone())
}

/// Quotes an identifier for ClickHouse SQL (backticks, escaped).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Quotes a string literal for ClickHouse SQL.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}
