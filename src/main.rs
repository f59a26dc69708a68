//! The `permit-stats` binary: parse the command line, run (logging starts there), report the error
//! chain.

use std::process::ExitCode;

use clap::Parser;
use permit_stats::config::Cli;

/// mimalloc, built with `override`, so that librdkafka's C allocations use it too: under glibc's
/// allocator the fetcher thread allocated every message and the ingest thread freed it, and the
/// two contended on glibc's arena locks. Its v2: v3 held on to freed memory in steps, which the
/// soak test reads as growth (BENCHMARKS.md, "What each change bought").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match permit_stats::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
