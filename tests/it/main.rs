//! The integration tests, one binary (`cargo test --test it`): one link instead of one per file,
//! and one home for what they share, [`support`]. Each file below is one concern.
//!
//! Without a broker (no Kafka needed):
//!
//! - `http_api`: the HTTP contract of spec/stats-api.md over real HTTP, in-process.
//! - `http_limits`: slow, oversized, too many and too frequent clients, and a graceful shutdown.
//! - `fuzz_http`: generated requests through the API in process, and mangled bytes on the wire.
//! - `corpus`: the raw requests of `tests/corpus/`, each with its expected answer.
//! - `openapi`: `docs/openapi.json` against the real API.
//! - `browser`: the vendor's `XMLHttpRequest` example in headless Chromium (skips without it).
//! - `projection_model`: the projection against the reference model, property-tested.
//! - `token_reload`: token files reloaded by the running binary, and no token ever logged.
//! - `https`: the API over TLS (a test CA), ALPN, handshake limits, certificate reload (the
//!   binary with `--demo` and its embedded broker for the SIGHUP and start-up ones).
//! - `metrics`: `/metrics` of the running binary, with `promtool` (skips without it).
//! - `logs`: the binary's JSON logs.
//! - `deploy`: docker-compose.yml and the Grafana dashboard agree with the binary.
//! - `checkpoint_store`: the checkpoint store over S3, against moto (a real S3-protocol server,
//!   skips without it locally, fails in CI).
//!
//! Against a real Apache Kafka broker (`scripts/kafka.sh run -- cargo test --test it`; without
//! `KAFKA_BOOTSTRAP` they skip locally and fail in CI); `metrics` has one such test too:
//!
//! - `kafka_e2e`: replay, restart and live updates against the reference model, byte for byte.
//! - `faults`: bad records and dead letters, broker outages, SIGKILL, new partitions, replicas.
//! - `shutdown`: SIGTERM with requests in flight, and a stuck request.
//! - `soak`: a minute of ingest and reads; memory levels off, counts stay exact.
//! - `kafka_security`: every codec (written by Kafka's ConsoleProducer), SASL_SSL from a
//!   properties file, mutual TLS, and a cluster that refuses the service; these need the
//!   broker's secured listeners (`KAFKA_SECURITY=1 scripts/kafka.sh run -- ...`).
//! - `topic_retention`: the topic's retention read at start, its warnings (log and metric), and
//!   DeleteRecords as retention does it.

mod support;

mod browser;
mod checkpoint_store;
mod corpus;
mod deploy;
mod faults;
mod fuzz_http;
mod history;
mod http_api;
mod http_limits;
mod https;
mod kafka_e2e;
mod kafka_security;
mod logs;
mod metrics;
mod openapi;
mod projection_model;
mod shutdown;
mod soak;
mod token_reload;
mod topic_retention;
