//! The read path: what a stats request costs in process, from the client code to the exact
//! response bytes (the lookup of the client's published view and the body, whole or filtered),
//! and what a write costs the readers: rebuilding a 1,000-row view when its counters change.
//!
//! `cargo bench --bench query`

mod support;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use permit_stats::{
    events::{Change, PermitEvent},
    projection::Projection,
};
use support::{TYPES, created, zone};

/// Zones per client; with two types each that makes 1,000 (zone, type) rows.
const ZONES: usize = 500;

/// A projection whose `clients` clients each have 1,000 non-zero (zone, type) rows.
fn projection(clients: usize) -> Projection {
    let projection = Projection::new();
    let mut events = Vec::new();
    for c in 0..clients {
        let client = format!("OC-{c:02}");
        for z in 0..ZONES {
            for (t, permit_type) in TYPES[..2].iter().enumerate() {
                // A few permits per row, so totals have one to three digits.
                for n in 0..=(z % 3) {
                    let id = format!("p-{z}-{t}-{n}");
                    events.push(created(&client, &id, 1, zone(z), permit_type));
                }
            }
        }
    }
    projection.apply_batch(&events);
    projection
}

fn query(c: &mut Criterion) {
    let one = projection(1);
    let view = one.view("OC-00").expect("the client has permits");
    let rows = view.counters().len();
    assert_eq!(rows, 1_000);
    let body_len = view.body(None).len() as u64;

    let mut group = c.benchmark_group("query");
    group.throughput(Throughput::Elements(1));
    group.bench_function("all_rows_1000", |b| {
        b.iter(|| one.view(black_box("OC-00")).map(|v| v.body(None)))
    });
    // The vendor's example asks for two zones: a join of two runs of the ready body.
    let two = ["Lot 017", "Lot 342"];
    group.bench_function("two_zones", |b| {
        b.iter(|| {
            one.view(black_box("OC-00"))
                .map(|v| v.body(Some(black_box(&two))))
        })
    });
    // A client that sent a zone list of 50 names (the 1,000-name limit is far above this).
    let fifty: Vec<String> = (0..50).map(|z| zone(z * 10)).collect();
    let fifty: Vec<&str> = fifty.iter().map(String::as_str).collect();
    group.bench_function("fifty_zones", |b| {
        b.iter(|| {
            one.view(black_box("OC-00"))
                .map(|v| v.body(Some(black_box(&fifty))))
        })
    });
    // The same request over the decoded rows (what `Projection::query` returns), for contrast
    // with the ready-encoded body.
    group.bench_function("rows_vec_1000", |b| {
        b.iter(|| one.query(black_box("OC-00"), None))
    });

    let ten = projection(10);
    let clients: Vec<String> = (0..10).map(|c| format!("OC-{c:02}")).collect();
    group.throughput(Throughput::Elements(clients.len() as u64));
    group.bench_function("ten_clients_all_rows", |b| {
        b.iter(|| {
            for client in &clients {
                black_box(ten.view(client).map(|v| v.body(None)));
            }
        })
    });

    // Encoding: a write to a 1,000-row client rebuilds its view (sort + encode) once per batch.
    group.throughput(Throughput::Bytes(body_len));
    let mut live = false;
    group.bench_function("publish_1000_rows", |b| {
        b.iter_batched_ref(
            || {
                live = !live;
                let change = if live {
                    Change::Created {
                        zone: zone(3),
                        permit_type: TYPES[2].to_owned(),
                    }
                } else {
                    Change::Deleted
                };
                PermitEvent {
                    client: "OC-00".into(),
                    reference_id: "toggled".into(),
                    revision: None,
                    occurred_at_ms: None,
                    change,
                }
            },
            |event| one.apply(event),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, query);
criterion_main!(benches);
