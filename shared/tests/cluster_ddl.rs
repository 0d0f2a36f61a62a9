//! The schema on a ClickHouse cluster (`clickhouse.cluster`): every statement
//! the migrations run there, and the mutations the jobs send, are accepted by
//! ClickHouse's own parser (the embedded engine's `formatQuery`, which parses
//! a statement without running it: there is no cluster on these machines), and
//! have the cluster's shape: `ON CLUSTER`, replicated engines only, the big
//! tables sharded behind Distributed tables, views writing to local shards.

use shared::store::schema::cluster::{SHARDED, SHARDING_KEY};
use shared::store::schema::SchemaContext;
use shared::store::Db;
use shared::testkit::services;

fn cluster_config() -> shared::Config {
    let mut cfg = shared::Config::load_from(None, Vec::new()).expect("defaults");
    cfg.clickhouse.cluster = "analytics".into();
    cfg.kafka.partition_key = shared::config::PartitionKey::Tenant;
    cfg.validate().expect("a valid cluster configuration");
    cfg
}

/// ClickHouse's parser's verdict on `sql`: its canonical form, or the error.
async fn parse(client: &clickhouse::Client, sql: &str) -> Result<String, String> {
    client
        .query("SELECT formatQuery(?)")
        .bind(sql)
        .fetch_one::<String>()
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_cluster_statement_parses_and_has_the_cluster_shape() {
    let svc = services();
    let client = shared::store::client(&shared::testkit::config(&svc).clickhouse);
    // The check can fail: a statement ClickHouse cannot parse is refused.
    assert!(
        parse(&client, "CREATE TABLE t ON CLUSTER ENGINE = MergeTree")
            .await
            .is_err(),
        "formatQuery accepted a broken statement"
    );

    let cfg = cluster_config();
    let ctx = SchemaContext::new(&cfg.clickhouse, &cfg.kafka);
    let statements = ctx.all_statements();
    let mut failures = Vec::new();
    for (version, sql) in &statements {
        if let Err(e) = parse(&client, sql).await {
            failures.push(format!("migration {version}: {e}\n  {sql}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    for (version, sql) in &statements {
        if sql.starts_with("INSERT INTO") {
            continue;
        }
        assert!(
            sql.contains(" ON CLUSTER `analytics`"),
            "migration {version} is not ON CLUSTER: {sql}"
        );
        for engine in sql.split("ENGINE = ").skip(1) {
            let name: String = engine
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            assert!(
                !name.ends_with("MergeTree") || name.starts_with("Replicated"),
                "migration {version}: an unreplicated {name} on a cluster: {sql}"
            );
        }
        if sql.starts_with("CREATE MATERIALIZED VIEW") {
            for t in SHARDED {
                assert!(
                    !sql.contains(&format!("TO `overwatch`.`{t}` ")),
                    "migration {version}: a view writes to the Distributed {t}, not its local shard: {sql}"
                );
            }
        }
    }
    for t in SHARDED {
        assert!(
            statements.iter().any(|(_, s)| s.starts_with(&format!(
                "CREATE TABLE IF NOT EXISTS `overwatch`.`{t}_local` ON CLUSTER `analytics`"
            )) && s.contains("ENGINE = Replicated")
                && s.contains(&format!(
                    "'/clickhouse/tables/{{shard}}/overwatch/{t}_local', '{{replica}}'"
                ))),
            "no replicated {t}_local"
        );
        assert!(
            statements.iter().any(|(_, s)| s.contains(&format!(
                "`overwatch`.`{t}` ON CLUSTER `analytics` AS `overwatch`.`{t}_local` ENGINE = \
                 Distributed('analytics', 'overwatch', '{t}_local', {SHARDING_KEY})"
            ))),
            "no Distributed {t}"
        );
    }

    // The jobs' mutations go to the local tables on every node.
    let db = Db::for_config(&cfg.clickhouse);
    let mutations = [
        format!(
            "DELETE FROM {} WHERE tenant_id = toUUID('00000000-0000-0000-0000-000000000001')",
            db.mutable("events")
        ),
        format!(
            "DELETE FROM {} WHERE session_start < now()",
            db.mutable("sessions")
        ),
        format!(
            "ALTER TABLE {} UPDATE browser = 'x' WHERE browser = ''",
            db.mutable("events")
        ),
        format!(
            "DELETE FROM {} WHERE tenant_id = toUUID('00000000-0000-0000-0000-000000000001')",
            db.mutable("archive_stage")
        ),
    ];
    for m in &mutations {
        parse(&client, m)
            .await
            .unwrap_or_else(|e| panic!("{e}\n  {m}"));
    }
    assert!(mutations[0].contains("`overwatch`.`events_local` ON CLUSTER `analytics`"));
    assert!(
        !mutations[3].contains("ON CLUSTER"),
        "global tables replicate their mutations"
    );

    // One server: the same statements as before the cluster setting existed.
    let single = shared::Config::load_from(None, Vec::new()).expect("defaults");
    let one = SchemaContext::new(&single.clickhouse, &single.kafka).all_statements();
    assert!(one
        .iter()
        .all(|(_, s)| !s.contains("ON CLUSTER") && !s.contains("Replicated")));
    for (version, sql) in &one {
        parse(&client, sql)
            .await
            .unwrap_or_else(|e| panic!("migration {version}: {e}\n  {sql}"));
    }
}

#[test]
fn round_robin_partitions_are_refused_on_a_cluster() {
    let mut cfg = cluster_config();
    cfg.kafka.partition_key = shared::config::PartitionKey::RoundRobin;
    let e = cfg.validate().expect_err("round robin on a cluster");
    assert!(e.to_string().contains("kafka.partition_key"), "{e}");
}
