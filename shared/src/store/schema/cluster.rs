//! The schema on a ClickHouse cluster (`clickhouse.cluster`): every migration
//! statement, written for one server, rewritten for the named cluster.
//!
//! - Every DDL statement runs `ON CLUSTER`.
//! - **Sharded** tables ([`SHARDED`]: `events`, `sessions`, `rollups_hourly`,
//!   `rollups_daily`) become `<name>_local`, a `Replicated*MergeTree` per shard
//!   (`/clickhouse/tables/{shard}/<db>/<name>_local`), behind `<name>`, a
//!   `Distributed` table with the sharding key [`SHARDING_KEY`]. Reads and
//!   inserts go through `<name>`; mutations go to `<name>_local ON CLUSTER`
//!   ([`crate::store::Db::mutable`]).
//! - Every other MergeTree table is **global**: one replicated table on every
//!   node of the cluster (`/clickhouse/tables/all/<db>/<name>`), so tenants,
//!   keys, leases and the archive catalogue read the same everywhere. Tables fed
//!   by materialized views on several nodes (`usage_daily`, `dead_letter`) turn
//!   off insert deduplication, which would otherwise drop two nodes' identical
//!   blocks.
//! - Kafka-engine tables, materialized views and Join tables exist on every
//!   node, unreplicated: each node's `events_queue` consumes its share of the
//!   partitions (one consumer group) and its `events_mv` writes to the local
//!   shard, so events are sharded by the broker partition that node reads
//!   (`kafka.partition_key` = tenant or session keeps a tenant's or session's
//!   duplicates on one shard, where `FINAL` collapses them).
//!
//! The statements are ours, in a few fixed shapes; a shape this module does not
//! know is a programming error caught by the tests, which also run every
//! rewritten statement through ClickHouse's parser.

use std::sync::OnceLock;

use regex::Regex;

use crate::store::{ident, literal};

/// Tables split across shards (the big ones).
pub const SHARDED: &[&str] = &["events", "sessions", "rollups_hourly", "rollups_daily"];
/// How rows inserted through a Distributed table pick their shard.
pub const SHARDING_KEY: &str = "cityHash64(tenant_id)";
/// Global tables written by materialized views on several nodes at once.
const NO_DEDUP: &[&str] = &["usage_daily", "dead_letter"];

pub fn is_sharded(table: &str) -> bool {
    SHARDED.contains(&table)
}

fn shape() -> &'static Regex {
    static SHAPE: OnceLock<Regex> = OnceLock::new();
    SHAPE.get_or_init(|| {
        Regex::new(
            r"(?s)^(CREATE TABLE IF NOT EXISTS|CREATE MATERIALIZED VIEW IF NOT EXISTS|CREATE DATABASE IF NOT EXISTS|DROP VIEW IF EXISTS|DROP TABLE IF EXISTS|ALTER TABLE|INSERT INTO) (`[^`]+`(?:\.`([^`]+)`)?)(.*)$",
        )
        .expect("valid regex")
    })
}

fn engine() -> &'static Regex {
    static ENGINE: OnceLock<Regex> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Regex::new(r"ENGINE = ([A-Za-z]*MergeTree)(\(([^()]*)\))?").expect("valid regex")
    })
}

fn view_target() -> &'static Regex {
    static TO: OnceLock<Regex> = OnceLock::new();
    TO.get_or_init(|| Regex::new(r"^ TO `[^`]+`\.`([^`]+)`").expect("valid regex"))
}

/// The statement(s) that do on `cluster` what `sql` does on one server.
pub fn adapt(sql: &str, database: &str, cluster: &str) -> Vec<String> {
    let on = format!(" ON CLUSTER {}", ident(cluster));
    let Some(c) = shape().captures(sql) else {
        panic!("a schema statement of an unknown shape: {sql}");
    };
    let (verb, name, table, rest) = (&c[1], &c[2], c.get(3).map(|m| m.as_str()), &c[4]);
    let local = |t: &str| format!("{}.{}", ident(database), ident(&format!("{t}_local")));
    match (verb, table) {
        ("INSERT INTO", _) => vec![sql.to_string()],
        ("CREATE DATABASE IF NOT EXISTS", _) => vec![format!("{verb} {name}{on}{rest}")],
        ("CREATE TABLE IF NOT EXISTS", Some(t)) if engine().is_match(rest) => {
            let sharded = is_sharded(t);
            let (target, path) = if sharded {
                (
                    local(t),
                    format!("/clickhouse/tables/{{shard}}/{database}/{t}_local"),
                )
            } else {
                (
                    name.to_string(),
                    format!("/clickhouse/tables/all/{database}/{t}"),
                )
            };
            let mut body = engine()
                .replace(rest, |e: &regex::Captures| {
                    let args = e.get(3).map(|a| a.as_str()).filter(|a| !a.is_empty());
                    format!(
                        "ENGINE = Replicated{}({}, '{{replica}}'{})",
                        &e[1],
                        literal(&path),
                        args.map(|a| format!(", {a}")).unwrap_or_default()
                    )
                })
                .into_owned();
            if NO_DEDUP.contains(&t) {
                body.push_str(" SETTINGS replicated_deduplication_window = 0");
            }
            let mut out = vec![format!("{verb} {target}{on}{body}")];
            if sharded {
                out.push(format!(
                    "{verb} {name}{on} AS {target} ENGINE = Distributed({}, {}, {}, {SHARDING_KEY})",
                    literal(cluster),
                    literal(database),
                    literal(&format!("{t}_local")),
                ));
            }
            out
        }
        ("CREATE TABLE IF NOT EXISTS", Some(_)) => vec![format!("{verb} {name}{on}{rest}")],
        ("CREATE MATERIALIZED VIEW IF NOT EXISTS", Some(_)) => {
            let rest = match view_target().captures(rest) {
                Some(m) if is_sharded(&m[1]) => {
                    format!(" TO {}{}", local(&m[1]), &rest[m[0].len()..])
                }
                _ => rest.to_string(),
            };
            vec![format!("{verb} {name}{on}{rest}")]
        }
        ("DROP VIEW IF EXISTS" | "DROP TABLE IF EXISTS", Some(_)) => {
            vec![format!("{verb} {name}{on}{rest}")]
        }
        ("ALTER TABLE", Some(t)) if is_sharded(t) => vec![
            format!("{verb} {}{on}{rest}", local(t)),
            format!("{verb} {name}{on}{rest}"),
        ],
        ("ALTER TABLE", Some(_)) => vec![format!("{verb} {name}{on}{rest}")],
        _ => panic!("a schema statement of an unknown shape: {sql}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_tables_get_a_replicated_local_table_behind_a_distributed_one() {
        let out = adapt(
            "CREATE TABLE IF NOT EXISTS `ow`.`events` (\n    `id` UUID\n) ENGINE = ReplacingMergeTree(received_at)\nORDER BY id",
            "ow",
            "main",
        );
        assert_eq!(
            out,
            [
                "CREATE TABLE IF NOT EXISTS `ow`.`events_local` ON CLUSTER `main` (\n    `id` UUID\n) \
                 ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ow/events_local', '{replica}', received_at)\nORDER BY id",
                "CREATE TABLE IF NOT EXISTS `ow`.`events` ON CLUSTER `main` AS `ow`.`events_local` \
                 ENGINE = Distributed('main', 'ow', 'events_local', cityHash64(tenant_id))",
            ]
        );
    }

    #[test]
    fn global_tables_replicate_everywhere_and_views_write_locally() {
        assert_eq!(
            adapt("CREATE TABLE IF NOT EXISTS `ow`.`tenants` (`a` UInt8) ENGINE = MergeTree ORDER BY a", "ow", "c"),
            ["CREATE TABLE IF NOT EXISTS `ow`.`tenants` ON CLUSTER `c` (`a` UInt8) \
              ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/ow/tenants', '{replica}') ORDER BY a"]
        );
        assert_eq!(
            adapt("CREATE TABLE IF NOT EXISTS `ow`.`dead_letter` (`a` UInt8) ENGINE = MergeTree ORDER BY a", "ow", "c")[0],
            "CREATE TABLE IF NOT EXISTS `ow`.`dead_letter` ON CLUSTER `c` (`a` UInt8) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/ow/dead_letter', '{replica}') ORDER BY a \
             SETTINGS replicated_deduplication_window = 0"
        );
        assert_eq!(
            adapt("CREATE MATERIALIZED VIEW IF NOT EXISTS `ow`.`events_mv` TO `ow`.`events` AS SELECT 1", "ow", "c"),
            ["CREATE MATERIALIZED VIEW IF NOT EXISTS `ow`.`events_mv` ON CLUSTER `c` TO `ow`.`events_local` AS SELECT 1"]
        );
        assert_eq!(
            adapt(
                "ALTER TABLE `ow`.`events` ADD COLUMN IF NOT EXISTS `x` Bool",
                "ow",
                "c"
            ),
            [
                "ALTER TABLE `ow`.`events_local` ON CLUSTER `c` ADD COLUMN IF NOT EXISTS `x` Bool",
                "ALTER TABLE `ow`.`events` ON CLUSTER `c` ADD COLUMN IF NOT EXISTS `x` Bool",
            ]
        );
        assert_eq!(
            adapt("CREATE TABLE IF NOT EXISTS `ow`.`q` (`a` UInt8) ENGINE = Kafka SETTINGS x = 1", "ow", "c"),
            ["CREATE TABLE IF NOT EXISTS `ow`.`q` ON CLUSTER `c` (`a` UInt8) ENGINE = Kafka SETTINGS x = 1"]
        );
    }
}
