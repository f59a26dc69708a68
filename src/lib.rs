//! permit-stats answers the OPS-COM "Permit Stats" request (`POST /api/{client}/v1/permits/stats`)
//! from memory: a consumer replays the permit events of a Kafka topic into a projection of live
//! permits per (client, zone, type), and an axum front serves the stats straight from it.
//!
//! # Layout
//!
//! Data flows one way: bytes from Kafka become domain events in [`events`], [`ingest`] applies
//! them to the [`projection`], and [`api`] reads from the projection. Nothing reads back up.
//!
//! - [`config`]: the command line (clap), every flag also an environment variable.
//! - [`events`]: the protobuf/JSON wire types from `proto/` and the validated domain event.
//! - [`projection`]: the read model; pure and synchronous, no I/O (its permit table in
//!   `projection/table.rs`).
//! - [`ingest`]: the consumer and apply threads: assignment from the beginning, readiness, lag,
//!   bad records and their dead-letter copies.
//! - [`api`]: the router (`api.rs`), the stats request (`api/stats.rs`), errors and their OPS-COM
//!   codes (`api/error.rs`), limits and rate limit (`api/limits.rs`), the HTTP server
//!   (`api/server.rs`), health and metrics pages (`api/health.rs`), request metrics
//!   (`api/track.rs`), and [`api::auth`]: the token file and check (`api/auth.rs`) and its reload
//!   on SIGHUP or change (`api/auth/reload.rs`).
//! - [`telemetry`]: logs (`telemetry.rs`), the one catalogue of metric families and route labels
//!   (`telemetry/catalogue.rs`), the recorder's install and upkeep (`telemetry/recorder.rs`), the
//!   `/metrics` page (`telemetry/page.rs`), librdkafka statistics (`telemetry/kafka.rs`).
//! - [`embedded`]: the in-process broker for `serve` without `--brokers`.
//! - [`produce`]: the deterministic workload generator.
//! - `app.rs`: wiring of `serve`, `produce` and `token`, the command line turned into each part's
//!   configuration, and shutdown.
//! - [`status`]: readiness, lag and broker contact, written by ingest and read by the API.
//! - [`text`]: byte-class checks (ids, tokens) shared by events and the API.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod api;
mod app;
pub mod config;
pub mod events;
pub mod ingest;
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
    }
}
