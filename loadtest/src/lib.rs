//! Overwatch's load and resilience harness: realistic SDK traffic
//! ([`traffic`]), an open- and closed-loop driver that measures the gateway
//! ([`run`], [`procstat`]), and the checker that compares acknowledged event
//! ids with ClickHouse ([`check`]), and the trivial-handler baseline
//! ([`trivial`]). `make bench`, `make soak` and `make chaos`
//! drive it (see docs/benchmarks.md).

pub mod check;
pub mod procstat;
pub mod run;
pub mod traffic;
pub mod trivial;
