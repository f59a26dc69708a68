//! permit-stats answers the OPS-COM "Permit Stats" request (`POST /api/{client}/v1/permits/stats`)
//! from memory: a consumer replays the permit events of a Kafka topic (from the newest checkpoint,
//! when there is one) into a projection of live permits per (client, zone, type), and an axum
//! front serves the stats straight from it.
//!
//! # Layout
//!
//! Data flows one way: bytes from Kafka become domain events in [`events`], [`ingest`] applies
//! them to the [`projection`], and [`api`] reads from the projection. Nothing reads back up.
//! Imports run top to bottom: `main` → `app` → {[`config`], [`api`], [`ingest`], [`produce`],
//! [`checkpoint`]} →
//! {[`projection`], [`status`], [`telemetry`], [`kafka`]} → [`events`] → [`text`]. The stages import
//! none of each other and only `app` knows them all; telemetry reads the projection, for the
//! permit gauges it renders at scrape time.
//!
//! - `main.rs`: the thin binary (parse, run, report the error chain); mimalloc as the allocator.
//! - `app.rs`: the wiring of `serve`, `produce` and `token`; the command line turned into each
//!   part's own configuration; the tasks it starts, and their shutdown. `app/history.rs`: the
//!   restore at start, the checkpoint writer task, and the `checkpoint` and `replay` commands.
//! - [`checkpoint`]: checkpoints of the projection: loading the newest usable one, writing and
//!   pruning (`checkpoint.rs`); the object's bytes and name (`checkpoint/format.rs`); where they
//!   are stored, a local directory or an object store (`checkpoint/store.rs`); a checkpoint
//!   checked against the topic (`checkpoint/verify.rs`).
//! - [`config`]: the command line (clap), every flag also an environment variable.
//! - [`api`]: the router and shared state (`api.rs`); the stats request (`api/stats.rs`); errors
//!   and their OPS-COM codes (`api/error.rs`); limits and the rate limit (`api/limits.rs`); the
//!   HTTP server, plain or over TLS (`api/server.rs`); health and metrics pages
//!   (`api/health.rs`); request metrics (`api/track.rs`); [`api::auth`]: the token file and check
//!   (`api/auth.rs`) and its reload on SIGHUP or change (`api/auth/reload.rs`); [`api::tls`]: the
//!   HTTPS certificate and key and their reload (`api/tls.rs`); the one reload mechanism
//!   (SIGHUP, a poll of the files) both use (`api/reload.rs`).
//! - [`ingest`]: the stage (`ingest.rs`); the consumer loop and assignment
//!   (`ingest/consumer.rs`); the apply thread (`ingest/apply.rs`); offsets, readiness, lag and
//!   outages (`ingest/tracker.rs`); dead-letter copies (`ingest/dead_letter.rs`); rate-limited
//!   warnings (`ingest/summary.rs`); the stage's error (`ingest/error.rs`); the embedded broker
//!   for `serve` without `--brokers` (`ingest/embedded.rs`).
//! - [`produce`]: the Kafka writer (`produce.rs`) and the deterministic workload generator
//!   (`produce/workload.rs`).
//! - [`projection`]: the read model's API (`projection.rs`); the five rules
//!   (`projection/rules.rs`); the ready-encoded client views (`projection/view.rs`); the permit
//!   table (`projection/table.rs`); the UUID parse (`projection/uuid.rs`); interned names and
//!   counters (`projection/names.rs`); the whole state as canonical data, for checkpoints
//!   (`projection/snapshot.rs`). Pure and synchronous, no I/O.
//! - [`status`]: readiness, lag and broker contact, written by ingest and read by the API.
//! - [`kafka`]: the Kafka client settings every client of the binary takes (`--brokers`,
//!   `--kafka-option`, `--kafka-config`): the `client.properties` reader, precedence, settings
//!   the service owns, redaction of secrets, and how a cluster's refusal is told (`kafka.rs`);
//!   the topic's retention read at start (`kafka/retention.rs`); a state's place in the topic
//!   (`kafka/marks.rs`); offsets by time (`kafka/offsets.rs`).
//! - [`telemetry`]: logs (`telemetry.rs`); the one catalogue of metric families and route labels
//!   (`telemetry/catalogue.rs`); the recorder's install and upkeep (`telemetry/recorder.rs`); the
//!   `/metrics` page (`telemetry/page.rs`); librdkafka statistics (`telemetry/kafka.rs`).
//! - [`events`]: the validated domain event and its decoding (`events.rs`); the protobuf reader
//!   (`events/wire.rs`); the checks shared by both decoders (`events/validate.rs`).
//! - [`text`]: byte-class checks (ids, tokens) shared by events and the API, with their SSE2 form
//!   (`text/simd.rs`).

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod api;
mod app;
pub mod checkpoint;
pub mod config;
pub mod events;
pub mod ingest;
pub mod kafka;
pub mod produce;
pub mod projection;
pub mod status;
pub mod telemetry;
pub mod text;

use config::{Cli, Command};
// The binary's allocator (src/main.rs), a dependency of the package rather than of this library.
use mimalloc as _;

/// Starts logging, then runs one subcommand to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    app::init_logs(cli.log_format);
    match cli.command {
        Command::Serve(args) => app::serve(args).await,
        Command::Produce(args) => tokio::task::spawn_blocking(move || app::produce(&args)).await?,
        Command::Token(args) => app::token(&args),
        Command::Checkpoint(args) => app::checkpoint(args).await,
        Command::Replay(args) => app::replay(args).await,
    }
}
