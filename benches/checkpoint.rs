//! Checkpoints at 1M live permits (sized down under `cargo test`): the three costs an operator
//! sees, each on the same projection (UUID ids over 3 clients and 20 zones, plus a tenth as many
//! tombstones: deleted permits kept for their revision, as a real topic leaves them).
//!
//! - `copy_state`: the ingest pause (ingest holds its write lock this long at a batch boundary).
//! - `snapshot_encode`: the writer's CPU, off ingest and off the async threads: the copy put in
//!   canonical order, encoded and checksummed.
//! - `decode_restore`: a start from a checkpoint, store read aside: checked, decoded, restored and
//!   published.
//!
//! The checkpoint's size is printed once, per live permit and per permit held.
//!
//! `cargo bench --bench checkpoint`

mod support;

use std::{hint::black_box, time::Duration};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use permit_stats::{
    checkpoint::format,
    events::{Change, PermitEvent},
    kafka::{PartitionMark, RecordMark},
    projection::Projection,
};
use support::{TYPES, created, size, uuid, zone};

/// Ingest's batch size.
const BATCH: usize = 4_096;
const ZONES: usize = 20;
const CLIENTS: [&str; 3] = ["OC-TOMA", "OC_TOMA", "OC-UVIC"];

/// A projection with `live` live permits and `live / 10` tombstones.
fn projection(live: usize) -> Projection {
    let projection = Projection::new();
    let total = live + live / 10;
    let client = |i: usize| CLIENTS[i % CLIENTS.len()];
    let ids: Vec<String> = (0..total as u64).map(uuid).collect();
    for chunk in (0..total).collect::<Vec<_>>().chunks(BATCH) {
        let events: Vec<PermitEvent> = chunk
            .iter()
            .map(|&i| created(client(i), &ids[i], 1, zone(i % ZONES), TYPES[i % 3]))
            .collect();
        projection.apply_batch(&events);
    }
    for chunk in (live..total).collect::<Vec<_>>().chunks(BATCH) {
        let events: Vec<PermitEvent> = chunk
            .iter()
            .map(|&i| PermitEvent {
                client: client(i).to_owned(),
                reference_id: ids[i].clone(),
                revision: Some(2),
                occurred_at_ms: Some(1_795_923_044_251),
                change: Change::Deleted,
            })
            .collect();
        projection.apply_batch(&events);
    }
    projection
}

/// Four partitions, 10M records between them.
fn marks() -> Vec<PartitionMark> {
    (0..4)
        .map(|partition| PartitionMark {
            partition,
            next_offset: 2_500_000,
            last_record: Some(RecordMark {
                offset: 2_499_999,
                timestamp_ms: Some(1_795_923_044_251),
            }),
        })
        .collect()
}

fn checkpoint(c: &mut Criterion) {
    let live = size(1_000_000, 10_000);
    let projection = projection(live);
    let (_, bytes) = format::encode("permits", marks(), 0, projection.copy_state().snapshot());
    let held = live + live / 10;
    eprintln!(
        "checkpoint of {live} live permits and {} tombstones: {} bytes, {:.1} bytes per live \
         permit, {:.1} per permit held",
        live / 10,
        bytes.len(),
        bytes.len() as f64 / live as f64,
        bytes.len() as f64 / held as f64
    );

    let mut group = c.benchmark_group(format!("checkpoint_{live}_permits"));
    // Each iteration is tens to hundreds of milliseconds on a 2-core machine shared with builds:
    // few samples, short runs.
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(held as u64));
    group.bench_function("copy_state", |b| {
        b.iter_with_large_drop(|| projection.copy_state())
    });
    group.bench_function("snapshot_encode", |b| {
        b.iter_batched(
            || projection.copy_state(),
            |copy| format::encode("permits", marks(), 0, copy.snapshot()),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("decode_restore", |b| {
        b.iter_batched(
            Projection::new,
            |fresh| {
                let decoded = format::decode(black_box(&bytes)).expect("the bench's own bytes");
                fresh
                    .restore(&decoded.snapshot)
                    .expect("a snapshot of a projection");
                fresh
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
