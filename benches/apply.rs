//! The write path: decoded events applied to a projection that holds 1M live permits (sized down
//! under `cargo test`), in ingest's batches of 4,096 (one publish per batch, as ingest does).
//!
//! Each mix keeps the state steady, so every iteration meets the same 1M permits: revisions keep
//! growing, deletes are paired with re-creates of deleted permits.
//!
//! `cargo bench --bench apply`

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use permit_stats::{
    events::{Change, PermitEvent},
    projection::Projection,
};
use support::{TYPES, created, size, splitmix, uuid, zone};

/// Ingest's batch size.
const BATCH: usize = 4_096;
const ZONES: usize = 20;
const CLIENT: &str = "OC-TOMA";

/// What one batch holds.
#[derive(Clone, Copy)]
enum Mix {
    /// Creates of live permits (rule 1 replacements), half of them into another zone.
    Created,
    /// Updates: a third move zone, a sixth change type, the rest change neither (vendor fields).
    Updated,
    /// Deletes of live permits, each followed later by a create of a deleted one.
    Deleted,
    /// The workload generator's shares: 55% creates (15 points of them bringing deleted permits
    /// back), 30% updates, 15% deletes.
    Mixed,
}

/// Generates batches against a tracked state, so that each event does what its mix says.
struct Stream {
    ids: Vec<String>,
    live: Vec<u32>,
    dead: Vec<u32>,
    revision: Vec<u64>,
    rng: u64,
}

impl Stream {
    fn new(permits: usize) -> (Self, Projection) {
        // A tenth more ids than live permits, so there are deleted ones to bring back.
        let total = permits + permits / 10;
        let ids: Vec<String> = (0..total as u64).map(uuid).collect();
        let projection = Projection::new();
        let mut stream = Self {
            live: (0..permits as u32).collect(),
            dead: (permits as u32..total as u32).collect(),
            revision: vec![1; total],
            ids,
            rng: 7,
        };
        for chunk in stream.live.chunks(BATCH) {
            let events: Vec<PermitEvent> = chunk
                .iter()
                .map(|&i| {
                    let zone = zone(i as usize % ZONES);
                    created(
                        CLIENT,
                        &stream.ids[i as usize],
                        1,
                        zone,
                        TYPES[i as usize % 3],
                    )
                })
                .collect();
            projection.apply_batch(&events);
        }
        stream.revision.iter_mut().for_each(|r| *r = 2);
        (stream, projection)
    }

    fn roll(&mut self, below: u64) -> u64 {
        self.rng = splitmix(self.rng);
        self.rng % below
    }

    fn event(&mut self, i: u32, change: Change) -> PermitEvent {
        let revision = self.revision[i as usize];
        self.revision[i as usize] += 1;
        PermitEvent {
            client: CLIENT.to_owned(),
            reference_id: self.ids[i as usize].clone(),
            revision: Some(revision),
            occurred_at_ms: Some(1_795_923_044_250 + revision as i64),
            change,
        }
    }

    fn batch(&mut self, mix: Mix) -> Vec<PermitEvent> {
        (0..BATCH)
            .map(|_| {
                let kind = match mix {
                    Mix::Created => 0,
                    Mix::Updated => 1,
                    // Delete and re-create alternate, so the live count stays put.
                    Mix::Deleted => {
                        if self.dead.len() > self.live.len() / 10 {
                            3
                        } else {
                            2
                        }
                    }
                    // Some creates bring deleted permits back, so the live count stays put.
                    Mix::Mixed => match self.roll(100) {
                        0..40 => 0,
                        40..55 if !self.dead.is_empty() => 3,
                        40..55 => 0,
                        55..85 => 1,
                        _ => 2,
                    },
                };
                match kind {
                    0 | 1 => {
                        let slot = self.roll(self.live.len() as u64) as usize;
                        let i = self.live[slot];
                        let z = self.roll(ZONES as u64) as usize;
                        let change = if kind == 0 {
                            Change::Created {
                                zone: zone(z),
                                permit_type: TYPES[z % 3].to_owned(),
                            }
                        } else {
                            match self.roll(6) {
                                0 | 1 => Change::Updated {
                                    zone: Some(zone(z)),
                                    permit_type: None,
                                },
                                2 => Change::Updated {
                                    zone: None,
                                    permit_type: Some(TYPES[z % 3].to_owned()),
                                },
                                _ => Change::Updated {
                                    zone: None,
                                    permit_type: None,
                                },
                            }
                        };
                        self.event(i, change)
                    }
                    2 => {
                        let slot = self.roll(self.live.len() as u64) as usize;
                        let i = self.live.swap_remove(slot);
                        self.dead.push(i);
                        self.event(i, Change::Deleted)
                    }
                    _ => {
                        let slot = self.roll(self.dead.len() as u64) as usize;
                        let i = self.dead.swap_remove(slot);
                        self.live.push(i);
                        let z = self.roll(ZONES as u64) as usize;
                        self.event(
                            i,
                            Change::Created {
                                zone: zone(z),
                                permit_type: TYPES[z % 3].to_owned(),
                            },
                        )
                    }
                }
            })
            .collect()
    }
}

fn apply(c: &mut Criterion) {
    let permits = size(1_000_000, 10_000);
    let mut group = c.benchmark_group(format!("apply_{permits}_permits"));
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, mix) in [
        ("created", Mix::Created),
        ("updated", Mix::Updated),
        ("deleted", Mix::Deleted),
        ("mixed", Mix::Mixed),
    ] {
        let (mut stream, projection) = Stream::new(permits);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || stream.batch(mix),
                |events| black_box(projection.apply_batch(events.iter())),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
