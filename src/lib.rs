//! rapport — an event-sourced customer-engagement stream processor.
//!
//! Product, email, call and CRM events about customer accounts are folded, per account, into
//! engagement state kept in RocksDB; each account's health is scored, and score changes and churn
//! alerts are streamed out with the drivers that explain them.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, its defaults and its start-up checks.
//! - [`domain`]: the pure engine — events, state, `fold`, scoring, alert rules. No I/O, no clock.
//! - [`codec`]: JSON and protobuf in, dead-letter reasons; output records out.
//! - [`store`]: the store trait, its RocksDB and in-memory implementations, the key layout.
//! - [`source`] / [`sink`]: where records come from and go to (NDJSON files; Kafka).
//! - [`changelog`]: a partition's state as records of a compacted topic, and their guarantee.
//! - [`pipeline`]: the batch loop — poll → decode → fold/score → one atomic write → publish outbox.
//! - [`telemetry`]: metric names, tracing setup, the `/metrics` `/healthz` `/readyz` endpoint.
//! - [`generate`]: synthetic portfolios for the demo, the tests and the benchmarks.
//! - [`topics`]: Kafka topic checks (co-partitioning) and creation.
//! - [`bench`]: `rapport bench kafka` — raw consume vs rapport on the same topics, and latency.
//! - [`memory`]: how the process takes memory from the kernel (huge pages, glibc's heap).
//! - [`app`]: the commands (`run`, `demo`, `inspect`, `replay`, …) wired from the parts above.

pub mod codec;
pub mod config;
pub mod domain;
pub mod generate;
pub mod memory;

/// Protobuf messages generated from `proto/rapport/v1/*.proto`.
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/rapport.v1.rs"));
}
pub mod app;
pub mod bench;
pub mod changelog;
pub mod churn;
pub mod stats;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod topics;
