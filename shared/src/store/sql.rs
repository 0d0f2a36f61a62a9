//! SQL fragments shared by every query: quoting, the one way a Unix-millisecond
//! parameter becomes a ClickHouse time, and the one tenant filter.

use uuid::Uuid;

/// Quotes an identifier for ClickHouse SQL (backticks, escaped).
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// Quotes a string literal for ClickHouse SQL.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A bound Unix-milliseconds parameter as a UTC `DateTime64(3)`: bind an `i64`.
pub const AT_MS: &str = "fromUnixTimestamp64Milli(toInt64(?), 'UTC')";

/// `t` as Unix milliseconds, the form times are bound in.
pub fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Which tenants a statement touches: an `AND …` clause to append to a
/// `WHERE` (empty for all). Ids are UUIDs, so they are written inline.
#[derive(Debug, Clone, Copy)]
pub enum Tenants<'a> {
    All,
    Only(Uuid),
    /// Every tenant but these (computed separately).
    Except(&'a [Uuid]),
}

impl Tenants<'_> {
    /// One tenant when `only` is set, else all.
    pub fn of(only: Option<Uuid>) -> Tenants<'static> {
        only.map_or(Tenants::All, Tenants::Only)
    }

    pub fn clause(&self) -> String {
        match self {
            Tenants::All => String::new(),
            Tenants::Except([]) => String::new(),
            Tenants::Only(t) => format!(" AND tenant_id = toUUID('{t}')"),
            Tenants::Except(list) => {
                let ids: Vec<String> = list.iter().map(|t| format!("toUUID('{t}')")).collect();
                format!(" AND tenant_id NOT IN ({})", ids.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_what_would_end_the_quote() {
        assert_eq!(ident("a`b"), "`a\\`b`");
        assert_eq!(literal("it's"), "'it\\'s'");
        assert_eq!(literal("a\\"), "'a\\\\'");
    }

    #[test]
    fn tenant_clauses() {
        let t = Uuid::nil();
        assert_eq!(Tenants::All.clause(), "");
        assert_eq!(Tenants::Except(&[]).clause(), "");
        assert_eq!(
            Tenants::Only(t).clause(),
            format!(" AND tenant_id = toUUID('{t}')")
        );
        assert_eq!(
            Tenants::Except(&[t, t]).clause(),
            format!(" AND tenant_id NOT IN (toUUID('{t}'), toUUID('{t}'))")
        );
    }
}
