//! Decoding: Kafka record values (as `permit-stats produce` writes them, vendor fields included)
//! to validated domain events: protobuf as ingest decodes it (borrowing its strings) and into owned
//! events, and JSON; and decode plus apply, the work per record after the consumer hands it over.
//!
//! `cargo bench --bench decode`

mod support;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use permit_stats::{
    events::{self, Encoding},
    produce::{Format, Workload, WorkloadSpec},
    projection::Projection,
};
use support::size;

fn records(format: Format, n: usize) -> Vec<(Vec<u8>, Encoding)> {
    let spec = WorkloadSpec {
        permits: 100_000,
        zones: 20,
        format,
        ..WorkloadSpec::default()
    };
    Workload::new(spec)
        .take(n)
        .map(|r| {
            let encoding = Encoding::from_content_type(Some(r.content_type.as_bytes()))
                .expect("the generator labels its records");
            (r.value, encoding)
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let n = size(10_000, 500);
    let mut group = c.benchmark_group("decode");
    for (name, format) in [("protobuf", Format::Protobuf), ("json", Format::Json)] {
        let records = records(format, n);
        let bytes: usize = records.iter().map(|(value, _)| value.len()).sum();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("{name}_records"), |b| {
            b.iter(|| {
                for (value, encoding) in &records {
                    black_box(events::decode(black_box(value), *encoding)).ok();
                }
            })
        });
        if format == Format::Protobuf {
            group.bench_function("protobuf_records_borrowed", |b| {
                b.iter(|| {
                    for (value, _) in &records {
                        black_box(events::decode_protobuf(black_box(value))).ok();
                    }
                })
            });
        }
        eprintln!(
            "decode/{name}: {n} records, {} bytes each on average",
            bytes / n
        );
    }

    // Ingest's work per record: decode, then apply in batches of 4,096 with one publish each.
    let records = records(Format::Protobuf, n);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("protobuf_decode_and_apply", |b| {
        b.iter_batched_ref(
            Projection::new,
            |projection| {
                for chunk in records.chunks(4_096) {
                    let events: Vec<_> = chunk
                        .iter()
                        .filter_map(|(value, _)| events::decode_protobuf(value).ok())
                        .collect();
                    let mut batch = projection.batch();
                    batch.apply_all(&events);
                    black_box(batch.finish());
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
