//! The wiring of history: restoring the newest usable checkpoint at start, the task that writes
//! ingest's cuts, and the two commands built on them, `checkpoint` (catch up, write one, exit)
//! and `replay --until` (the stats as they stood at a time).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::kafka_settings;
use crate::{
    api,
    checkpoint::{self, Checkpoints, Store, Written},
    config::{CheckpointArgs, ReplayArgs, ReplayFormat, TopicArgs},
    ingest::{self, CheckpointSink, Cut, IngestConfig},
    kafka::{KafkaSettings, PartitionMark, offsets},
    projection::{Projection, Row},
    status::IngestStatus,
};

/// Where ingest starts: what the restored checkpoint covers (nothing without one).
#[derive(Debug, Default)]
pub(super) struct Start {
    pub(super) marks: Vec<PartitionMark>,
    pub(super) history_missing: u64,
    /// The checkpoint restored, if any.
    pub(super) name: Option<String>,
}

/// Opens `--checkpoint-store`, keeping `keep` checkpoints of `topic`.
pub(super) fn open(location: &str, topic: &str, keep: u64) -> anyhow::Result<Checkpoints> {
    let store = Store::open(location)
        .with_context(|| format!("cannot open the checkpoint store {location}"))?;
    Ok(Checkpoints::new(
        store,
        topic,
        usize::try_from(keep).unwrap_or(usize::MAX),
    ))
}

/// Restores into `projection` the newest checkpoint that is whole, of this topic as the broker
/// has it now, and (for `replay --until`) covers no record at or after `until`. Without one the
/// projection stays empty and ingest reads every partition from its beginning.
pub(super) async fn restore(
    checkpoints: &Checkpoints,
    kafka: &KafkaSettings,
    topic: &str,
    projection: &Projection,
    until: Option<&BTreeMap<i32, i64>>,
) -> Start {
    let started = Instant::now();
    let loaded = checkpoints
        .newest(|header| {
            let (kafka, topic, until) = (kafka.clone(), topic.to_owned(), until.cloned());
            async move {
                if let Some(until) = &until
                    && let Some(after) = header.partitions.iter().find(|mark| {
                        mark.next_offset > until.get(&mark.partition).copied().unwrap_or(0)
                    })
                {
                    return Err(format!(
                        "it covers records after --until (partition {} up to offset {})",
                        after.partition, after.next_offset
                    ));
                }
                tokio::task::spawn_blocking(move || {
                    checkpoint::verify::against_topic(&kafka, &topic, &header.partitions)
                })
                .await
                .map_err(|e| e.to_string())?
            }
        })
        .await;
    let Some(loaded) = loaded else {
        info!(store = %checkpoints.location(), "no usable checkpoint: replaying the whole topic");
        return Start::default();
    };
    if let Err(e) = projection.restore(&loaded.snapshot) {
        error!(checkpoint = %loaded.name, error = %e,
            "checkpoint passed its checks but does not restore: replaying the whole topic");
        return Start::default();
    }
    info!(
        store = %checkpoints.location(),
        checkpoint = %loaded.name,
        permits = loaded.header.permits,
        records = loaded.header.covered(),
        ms = started.elapsed().as_millis() as u64,
        "restored the state from a checkpoint: replaying only the records after it"
    );
    Start {
        marks: loaded.header.partitions,
        history_missing: loaded.header.history_missing_records,
        name: Some(loaded.name),
    }
}

/// The task that writes each cut ingest hands over; it ends when ingest drops its sender, with
/// the last checkpoint it wrote.
pub(super) fn spawn_writer(
    checkpoints: Checkpoints,
    every: Duration,
) -> (CheckpointSink, JoinHandle<Option<Written>>) {
    let (cuts, mut queue) = mpsc::channel::<Cut>(1);
    let task = tokio::spawn(async move {
        let mut last = None;
        while let Some(cut) = queue.recv().await {
            if let Ok(written) = checkpoints
                .write(cut.state, cut.partitions, cut.history_missing_records)
                .await
            {
                last = Some(written);
            }
        }
        last
    });
    (CheckpointSink { every, cuts }, task)
}

/// Waits until ingest is caught up (its target reached, `ready`), drawing a progress bar on a
/// terminal. `Err` with the partitions and offsets lost when history is missing and that is not
/// allowed.
async fn caught_up(status: &IngestStatus) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying {bar:40} {pos}/{len} records ({percent}%, {per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let progress = status.progress();
        bar.set_length(progress.target);
        bar.set_position(progress.replayed);
        if progress.ready {
            bar.finish_and_clear();
            return Ok(());
        }
        if status.history_missing() > 0
            && let Some(why) = progress.waiting_for.filter(|w| w.starts_with("history"))
        {
            bar.abandon();
            bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Kafka settings of a command that needs a real cluster (no embedded broker).
fn cluster(command: &str, source: &TopicArgs) -> anyhow::Result<KafkaSettings> {
    let kafka = kafka_settings(source.brokers.as_deref(), &source.kafka)?;
    if kafka.bootstrap().is_none() {
        bail!("{command} needs a cluster: --brokers (or bootstrap.servers in the Kafka settings)");
    }
    Ok(kafka)
}

/// Runs ingest with `config` until it is caught up (see [`caught_up`]), then stops it.
/// `on_failure` runs before the stop when it cannot catch up.
async fn catch_up(
    config: IngestConfig,
    projection: &Arc<Projection>,
    status: &Arc<IngestStatus>,
    on_failure: impl FnOnce(),
) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let ingest = ingest::spawn(
        config,
        Arc::clone(projection),
        Arc::clone(status),
        cancel.clone(),
    )?;
    let waited = caught_up(status).await;
    if waited.is_err() {
        on_failure();
    }
    cancel.cancel();
    ingest
        .await
        .map_err(|_| anyhow!("the ingest thread panicked"))??;
    waited
}

/// `permit-stats checkpoint`.
pub(crate) async fn checkpoint(args: CheckpointArgs) -> anyhow::Result<()> {
    let kafka = cluster("checkpoint", &args.source)?;
    let checkpoints = open(
        &args.checkpoint_store,
        &args.source.topic,
        args.checkpoint_keep,
    )?;
    let projection = Arc::new(Projection::new());
    let status = Arc::new(IngestStatus::new());
    let start = restore(&checkpoints, &kafka, &args.source.topic, &projection, None).await;
    // Only the last cut, at the cancellation.
    let (sink, writer) = spawn_writer(checkpoints.clone(), Duration::MAX);
    let config = IngestConfig {
        start: start.marks,
        history_missing_before: start.history_missing,
        allow_missing_history: args.allow_missing_history,
        checkpoints: Some(sink),
        ..IngestConfig::new(kafka, args.source.topic.clone())
    };
    // No checkpoint of a state that is not exact: the writer goes before ingest's last cut.
    catch_up(config, &projection, &status, || writer.abort()).await?;
    match writer.await.ok().flatten() {
        Some(written) => println!(
            "wrote {} ({} bytes, {} permits, {} ms) to {}",
            written.name,
            written.bytes,
            written.permits,
            written.took.as_millis(),
            checkpoints.location()
        ),
        None => println!(
            "nothing new since {}: no checkpoint written",
            start.name.as_deref().unwrap_or("the last checkpoint")
        ),
    }
    Ok(())
}

/// `permit-stats replay --until`.
pub(crate) async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let kafka = cluster("replay", &args.source)?;
    let zones = api::zone_filter(args.zones.as_deref()).map_err(|e| anyhow!("--zones: {e}"))?;
    let until_ms = i64::try_from(args.until.unix_timestamp_nanos() / 1_000_000)
        .context("--until is out of range")?;
    let until = {
        let (kafka, topic) = (kafka.clone(), args.source.topic.clone());
        tokio::task::spawn_blocking(move || offsets::first_after(&kafka, &topic, until_ms))
            .await?
            .map_err(|e| anyhow!(e))?
    };
    let projection = Arc::new(Projection::new());
    let status = Arc::new(IngestStatus::new());
    let start = match &args.checkpoint_store {
        Some(location) => {
            let checkpoints = open(
                location,
                &args.source.topic,
                checkpoint::DEFAULT_KEEP as u64,
            )?;
            restore(
                &checkpoints,
                &kafka,
                &args.source.topic,
                &projection,
                Some(&until),
            )
            .await
        }
        None => Start::default(),
    };
    let config = IngestConfig {
        start: start.marks,
        history_missing_before: start.history_missing,
        allow_missing_history: args.allow_missing_history,
        until: Some(until),
        ..IngestConfig::new(kafka, args.source.topic.clone())
    };
    catch_up(config, &projection, &status, || {}).await?;

    let out = match args.format {
        ReplayFormat::Json => projection.view(&args.client).map_or_else(
            || br#"{"data":[]}"#.to_vec(),
            |view| view.body(zones.as_deref()).to_vec(),
        ),
        ReplayFormat::Csv => csv(&projection.query(&args.client, zones.as_deref())),
        ReplayFormat::Table => table(&projection.query(&args.client, zones.as_deref())),
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&out)?;
    // The JSON is the answer's bytes exactly; a newline only for a person at a terminal.
    if args.format == ReplayFormat::Json && std::io::stdout().is_terminal() {
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    if status.history_missing() > 0 {
        eprintln!(
            "warning: {} records before --until were deleted by the topic before they were read: \
             these counts are not exact",
            status.history_missing()
        );
    }
    Ok(())
}

/// `type,zone,total` with a header line (RFC 4180 quoting).
fn csv(rows: &[Row]) -> Vec<u8> {
    fn field(text: &str) -> String {
        if text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_owned()
        }
    }
    let mut out = String::from("type,zone,total\n");
    for row in rows {
        out += &format!(
            "{},{},{}\n",
            field(&row.permit_type),
            field(&row.zone),
            row.total
        );
    }
    out.into_bytes()
}

/// Aligned columns: type, zone, total (right-aligned).
fn table(rows: &[Row]) -> Vec<u8> {
    let width = |header: &str, cell: &dyn Fn(&Row) -> usize| {
        rows.iter().map(cell).max().unwrap_or(0).max(header.len())
    };
    let type_width = width("TYPE", &|r| r.permit_type.chars().count());
    let zone_width = width("ZONE", &|r| r.zone.chars().count());
    let total_width = width("TOTAL", &|r| r.total.to_string().len());
    let mut out = format!(
        "{:type_width$}  {:zone_width$}  {:>total_width$}\n",
        "TYPE", "ZONE", "TOTAL"
    );
    for row in rows {
        out += &format!(
            "{:type_width$}  {:zone_width$}  {:>total_width$}\n",
            row.permit_type, row.zone, row.total
        );
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row {
                zone: "Lot 1".into(),
                permit_type: "temp".into(),
                total: 12,
            },
            Row {
                zone: "Lot \"2\", west".into(),
                permit_type: "standard".into(),
                total: 3,
            },
        ]
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(
            String::from_utf8(csv(&rows())).expect("utf-8"),
            "type,zone,total\ntemp,Lot 1,12\nstandard,\"Lot \"\"2\"\", west\",3\n"
        );
    }

    #[test]
    fn a_table_aligns_its_columns() {
        let text = String::from_utf8(table(&rows())).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "TYPE      ZONE           TOTAL");
        assert_eq!(lines[1], "temp      Lot 1             12");
        assert_eq!(lines[2], r#"standard  Lot "2", west      3"#);
    }
}
