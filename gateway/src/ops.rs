//! What the gateway's operations endpoints report (served by
//! [`shared::runtime::ops`] on `gateway.operations_listen`): readiness from the
//! broker, the key snapshot and shutdown; `/health` adds connections, budgets,
//! memory and the components; `/metrics` first refreshes the scrape-time gauges.

use serde_json::{json, Value};
use shared::runtime::ops::Operations;

use crate::app::App;
use crate::auth::KeyStore;

fn keys_report(keys: &KeyStore) -> Value {
    let st = keys.status();
    json!({
        "status": if keys.usable().is_ok() { "up" } else { "down" },
        "source": if st.from_clickhouse { "config+clickhouse" } else { "config" },
        "keys": st.keys,
        "snapshot_age_seconds": st.age.map(|a| a.as_secs_f64()),
        "last_error": st.last_error,
    })
}

impl Operations for App {
    async fn not_ready(&self) -> Vec<String> {
        App::not_ready(self)
    }

    async fn health(&self) -> (Vec<String>, Value) {
        let report = json!({
            "shutting_down": self.shutting_down(),
            "ingest_in_progress": self.in_progress(),
            "connections": self.connections(),
            "body_budget_free_bytes": self.body_budget.available_permits(),
            "threads": {
                "network": tokio::runtime::Handle::current().metrics().num_workers(),
                "cpu_workers": self.workers.threads(),
            },
            "memory": {
                "rss_bytes": crate::alloc::resident_bytes(),
                "bound_bytes": crate::budget::MemoryBound::of(&self.config).total(),
            },
            "components": {
                "broker": {
                    "status": if self.sink.broker_up() { "up" } else { "down" },
                    "brokers": self.config.kafka.brokers,
                    "in_flight": self.sink.in_flight(),
                },
                "keys": keys_report(&self.keys),
            }
        });
        (App::not_ready(self), report)
    }

    async fn scrape(&self) {
        let st = self.keys.status();
        crate::telemetry::ScrapeState {
            ready: self.ready(),
            broker_up: self.sink.broker_up(),
            in_flight: self.sink.in_flight(),
            keys: st.keys,
            snapshot_age: st.age,
        }
        .emit();
    }
}
