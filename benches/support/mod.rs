//! What the benches share: deterministic permit ids and events, and the size switch that keeps
//! `cargo test --all-targets` (which runs every bench once, unoptimised) fast.

#![allow(dead_code)] // each bench uses a different part

use permit_stats::events::{Change, PermitEvent};

/// `cargo bench` passes `--bench`; `cargo test` runs the same binary without it, once per bench.
/// Sizes then shrink so that the unoptimised test run stays in the seconds.
pub fn benchmarking() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// `full` when benchmarking, else `quick`; `PERMIT_STATS_BENCH_PERMITS` overrides both.
pub fn size(full: usize, quick: usize) -> usize {
    std::env::var("PERMIT_STATS_BENCH_PERMITS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if benchmarking() { full } else { quick })
}

/// A canonical lowercase UUID derived from `n` (a splitmix64 scramble, so ids look random and
/// spread over the hash table as real ones do).
pub fn uuid(n: u64) -> String {
    let a = splitmix(n);
    let b = splitmix(a ^ 0x9e37_79b9_7f4a_7c15);
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The next value of a splitmix64 sequence: a cheap, good scramble of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `Lot 001`, `Lot 002`, ...
pub fn zone(n: usize) -> String {
    format!("Lot {:03}", n + 1)
}

/// The vendor's permit types.
pub const TYPES: [&str; 3] = ["standard", "temp", "validator"];

/// A create of permit `id` of `client`.
pub fn created(client: &str, id: &str, revision: u64, zone: String, t: &str) -> PermitEvent {
    PermitEvent {
        client: client.to_owned(),
        reference_id: id.to_owned(),
        revision: Some(revision),
        occurred_at_ms: Some(1_795_923_044_250),
        change: Change::Created {
            zone,
            permit_type: t.to_owned(),
        },
    }
}
