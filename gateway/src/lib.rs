//! The Overwatch gateway as a library: `main.rs` only loads configuration, sets
//! up telemetry, binds and calls [`serve`], so tests run the same server on port 0.
//!
//! By stage: [`app`] (state assembled from the configuration) → [`server`]
//! (the public listener and shutdown) → [`router`] (the route table, with
//! [`cors`]) → [`ingest`] (decode, authenticate via [`auth`], rate-limit via
//! [`ratelimit`], validate, [`enrich`]) → [`sink`] (the broker). [`ops`] is
//! what the operations port reports; [`alloc`] the allocator's settings; [`error`] the one status table;
//! [`telemetry`] the internal events.

pub mod alloc;
pub mod app;
pub mod auth;
pub mod budget;
pub mod compat;
pub mod cors;
pub mod enrich;
pub mod error;
pub mod ingest;
pub mod ops;
pub mod ratelimit;
pub mod router;
pub mod server;
pub mod sink;
pub mod telemetry;

pub use app::App;
pub use server::serve;
