//! Soak on a REAL Apache Kafka broker: about a minute of steady ingest (creates, moves, deletes,
//! duplicates, a little garbage) over a fixed set of permits, with concurrent stats requests all
//! along. Resident memory of the service (`VmRSS`) must level off, no request may fail, and the
//! final answers must equal the reference model's exactly.
//!
//! ```text
//! scripts/kafka.sh run -- cargo test --test it soak -- --nocapture
//! ```
//!
//! `PERMIT_STATS_SOAK_SECS` sets the length of the stream (default 50 s), `PERMIT_STATS_SOAK_RATE`
//! its rate (default 1,500 records/s).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::support::{
    client::{get, http, metric, stats, wait_exact},
    kafka::{
        bootstrap, delete_topic, join_writer, produce, produce_in_background, topic_and_tokens,
    },
    service::{Service, assert_clean_exit},
    workload::{CLIENTS, Workload},
};

/// Permits of the soak: the set is fixed, so that the projection's size has a bound.
const PERMITS: usize = 20_000;
/// Concurrent readers.
const READERS: usize = 3;

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_ingest_and_reads_keeps_memory_level_and_counts_exact() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let t0 = Instant::now();
    let secs = env_number("PERMIT_STATS_SOAK_SECS", 50.0);
    let rate = env_number("PERMIT_STATS_SOAK_RATE", 1_500.0);
    let (topic, _dir, tokens_path, tokens) = topic_and_tokens(&bootstrap, "soak", 4).await;

    // Fill first, so that the stream then churns a projection of steady size.
    let mut workload = Workload::new(0x50A4, PERMITS);
    produce(&bootstrap, &topic, workload.records(2 * PERMITS, 0.002)).await;
    let http = http();
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    wait_exact(
        &mut service,
        &http,
        &tokens,
        &workload.model,
        Duration::from_secs(120),
        true,
    )
    .await;
    let filled_rss = service.rss_kib();
    eprintln!(
        "soak: filled ({} live permits) in {:?}; RSS {} MiB",
        workload.model.live_permits(),
        t0.elapsed(),
        filled_rss / 1024
    );

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let stream = workload.records((secs * rate) as usize, 0.002);
    let writer = produce_in_background(&bootstrap, &topic, stream, rate);

    // Readers: every client, with and without zone filters, back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (http, base, tokens) = (http.clone(), service.base.clone(), tokens.clone());
        let (stop, statuses) = (Arc::clone(&stop), Arc::clone(&statuses));
        readers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(r as u64);
            let mut seen = BTreeMap::<u16, u64>::new();
            while !stop.load(Ordering::Relaxed) {
                let client = CLIENTS[rng.random_range(0..CLIENTS.len())];
                let zones = match rng.random_range(0..3) {
                    0 => None,
                    1 => Some("Lot 01,Zoné"),
                    _ => Some("Red Lot, Street parking ,Nope"),
                };
                let answer = stats(&http, &base, client, &tokens[client], zones).await;
                *seen.entry(answer.status).or_default() += 1;
            }
            let mut all = statuses.lock().expect("not poisoned");
            for (status, n) in seen {
                *all.entry(status).or_default() += n;
            }
        }));
    }

    // Resident memory once a second while the stream runs (sampling, not synchronization).
    let mut samples = Vec::new();
    let stream_started = Instant::now();
    while !writer.is_finished() {
        service.assert_running();
        samples.push(service.rss_kib());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let streamed = stream_started.elapsed();
    join_writer(writer).await;
    let seen = wait_exact(
        &mut service,
        &http,
        &tokens,
        &workload.model,
        Duration::from_secs(60),
        false,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.expect("reader");
    }
    let statuses = statuses.lock().expect("not poisoned").clone();
    let reads: u64 = statuses.values().sum();
    let page = get(&http, format!("{}/metrics", service.base)).await.text();

    let mib = |kib: u64| kib as f64 / 1024.0;
    let n = samples.len();
    let third = n / 3;
    let middle = samples[third..2 * third]
        .iter()
        .copied()
        .max()
        .unwrap_or_default();
    let last = samples[2 * third..]
        .iter()
        .copied()
        .max()
        .unwrap_or_default();
    eprintln!(
        "soak: {} records in {streamed:?} ({:.0}/s), {reads} reads ({statuses:?}), exact {:?} \
         after the stream; RSS MiB filled {:.1}, max of the middle third {:.1}, of the last third \
         {:.1}; samples {:?}",
        (secs * rate) as u64,
        (secs * rate) / streamed.as_secs_f64(),
        seen.after,
        mib(filled_rss),
        mib(middle),
        mib(last),
        samples
            .iter()
            .map(|&k| (mib(k) * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );

    assert!(n >= 15, "the stream ran long enough to judge: {n} samples");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        vec![200],
        "every read during the soak answered 200: {statuses:?}"
    );
    assert!(reads >= 1_000, "the readers really read: {reads}");
    // Levelled off: the last third of the run raises the peak by at most 3% (or 2 MiB) over
    // the middle third's. Each third carries ~25,000 records and ~25,000 requests, so a leak of
    // some 80 bytes per record or request would already break this.
    let allowed = middle + (middle * 3 / 100).max(2 * 1024);
    assert!(
        last <= allowed,
        "resident memory kept growing: middle third peak {:.1} MiB, last third {:.1} MiB",
        mib(middle),
        mib(last)
    );
    assert_eq!(
        metric(&page, "permit_stats_records_rejected_total", ""),
        workload.bad_total() as f64,
        "every bad record was counted"
    );
    assert_clean_exit(&mut service);
    delete_topic(&bootstrap, &topic).await;
    eprintln!("soak: done in {:?}", t0.elapsed());
}
