//! Checkpoints: the projection's whole state and, per partition, the offset it reflects, written
//! to a local directory or an object store, so that a start replays only the records after the
//! newest one, and history that the topic's retention deleted is not lost.
//!
//! - Writing ([`Checkpoints::write`]): ingest copies the state at a batch boundary (its only
//!   pause) and hands the copy over; here it is put in canonical order and encoded off the async
//!   threads, written as one object, and the oldest are pruned down to `--checkpoint-keep`.
//! - Loading ([`Checkpoints::newest`]): the newest object of the topic that decodes, passes its
//!   checksum and version, names this topic, restores into a consistent state, and that the
//!   caller accepts (the topic is still the one it was cut from: [`verify::against_topic`]; for
//!   `replay --until`, it covers no record after that time). Each one refused is logged with the
//!   reason, and the next older one is tried; with none, ingest replays from the beginning.
//!
//! # Files
//!
//! - this file: [`Checkpoints`], loading and writing, and the metrics of writing.
//! - `format.rs`: the object's bytes and name.
//! - `store.rs`: where the objects live (a directory, S3, GCS, Azure).
//! - `verify.rs`: a checkpoint's marks checked against the topic.

use std::{
    future::Future,
    time::{Duration, Instant, SystemTime},
};

use metrics::{counter, gauge};
use tracing::{info, warn};

use crate::{
    kafka::PartitionMark,
    projection::{Snapshot, StateCopy},
    telemetry,
};

pub mod format;
pub mod store;
pub mod verify;

pub use format::{FormatError, Header};
pub use store::{Store, StoreError};

/// Default `--checkpoint-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Default `--checkpoint-keep`.
pub const DEFAULT_KEEP: usize = 3;

/// The checkpoints of one topic in one store.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    store: Store,
    topic: String,
    keep: usize,
}

/// A checkpoint that was read back, checked and accepted.
#[derive(Debug)]
pub struct Loaded {
    /// Its name in the store.
    pub name: String,
    /// Its header (offsets, counts).
    pub header: Header,
    /// The state.
    pub snapshot: Snapshot,
}

/// A checkpoint written.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its name in the store.
    pub name: String,
    /// Its size.
    pub bytes: usize,
    /// Permits in it, tombstones included.
    pub permits: usize,
    /// Time to encode and write it.
    pub took: Duration,
}

/// Why a checkpoint was not written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The store refused it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encoding did not finish (its thread panicked or the runtime is shutting down).
    #[error("encoding the checkpoint failed: {0}")]
    Encode(String),
}

impl Checkpoints {
    /// The checkpoints of `topic` in `store`, keeping the newest `keep` (at least 1).
    pub fn new(store: Store, topic: &str, keep: usize) -> Self {
        gauge!(telemetry::CHECKPOINT_LAST_SUCCESS).set(0.0);
        counter!(telemetry::CHECKPOINT_FAILURES).absolute(0);
        Self {
            store,
            topic: topic.to_owned(),
            keep: keep.max(1),
        }
    }

    /// The store, as given (for logs).
    pub fn location(&self) -> &str {
        self.store.location()
    }

    /// The names of this topic's checkpoints, newest (most records covered) first.
    pub async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<(u64, String)> = self
            .store
            .list(&self.topic)
            .await?
            .into_iter()
            .filter_map(|name| format::covered_of(&name).map(|covered| (covered, name)))
            .collect();
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names.into_iter().map(|(_, name)| name).collect())
    }

    /// The newest checkpoint of the topic that is whole, of this format, of this topic, a state
    /// a projection could hold, and that `accept` takes; each one refused is logged with why.
    /// `None` when there is none (or the store cannot be listed: logged too).
    pub async fn newest<F, Fut>(&self, mut accept: F) -> Option<Loaded>
    where
        F: FnMut(Header) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let names = match self.list().await {
            Ok(names) => names,
            Err(e) => {
                warn!(store = %self.location(), error = %e,
                    "cannot list the checkpoints: replaying the whole topic");
                return None;
            }
        };
        for name in names {
            let skip = |reason: &dyn std::fmt::Display| {
                warn!(store = %self.location(), checkpoint = %name, %reason,
                    "skipped a checkpoint; trying an older one");
            };
            let bytes = match self.store.get(&name).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    skip(&e);
                    continue;
                }
            };
            let decoded = match tokio::task::spawn_blocking(move || format::decode(&bytes)).await {
                Ok(Ok(decoded)) => decoded,
                Ok(Err(e)) => {
                    skip(&e);
                    continue;
                }
                Err(e) => {
                    skip(&e);
                    continue;
                }
            };
            if decoded.header.topic != self.topic {
                skip(&format_args!(
                    "it is a checkpoint of topic {}, not {}",
                    decoded.header.topic, self.topic
                ));
                continue;
            }
            if let Err(reason) = accept(decoded.header.clone()).await {
                skip(&reason);
                continue;
            }
            return Some(Loaded {
                name,
                header: decoded.header,
                snapshot: decoded.snapshot,
            });
        }
        None
    }

    /// Encodes `state` at `partitions` and writes it, then prunes the oldest; counted in the
    /// checkpoint metrics either way.
    pub async fn write(
        &self,
        state: StateCopy,
        partitions: Vec<PartitionMark>,
        history_missing_records: u64,
    ) -> Result<Written, CheckpointError> {
        let result = self
            .write_inner(state, partitions, history_missing_records)
            .await;
        match &result {
            Ok(written) => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                gauge!(telemetry::CHECKPOINT_LAST_SUCCESS).set(now.as_secs_f64());
                gauge!(telemetry::CHECKPOINT_DURATION).set(written.took.as_secs_f64());
                gauge!(telemetry::CHECKPOINT_SIZE).set(written.bytes as f64);
                info!(store = %self.location(), checkpoint = %written.name, bytes = written.bytes,
                    permits = written.permits, ms = written.took.as_millis() as u64,
                    "checkpoint written");
            }
            Err(e) => {
                counter!(telemetry::CHECKPOINT_FAILURES).increment(1);
                warn!(store = %self.location(), error = %e, "checkpoint failed; the next interval tries again");
            }
        }
        result
    }

    async fn write_inner(
        &self,
        state: StateCopy,
        partitions: Vec<PartitionMark>,
        history_missing_records: u64,
    ) -> Result<Written, CheckpointError> {
        let started = Instant::now();
        let topic = self.topic.clone();
        let (name, bytes, permits) = tokio::task::spawn_blocking(move || {
            let snapshot = state.snapshot();
            let permits = snapshot.permits();
            let (name, bytes) =
                format::encode(&topic, partitions, history_missing_records, snapshot);
            (name, bytes, permits)
        })
        .await
        .map_err(|e| CheckpointError::Encode(e.to_string()))?;
        let size = bytes.len();
        self.store.put(&name, bytes).await?;
        let took = started.elapsed();
        if let Err(e) = self.prune(&name).await {
            warn!(store = %self.location(), error = %e, "could not prune old checkpoints");
        }
        Ok(Written {
            name,
            bytes: size,
            permits,
            took,
        })
    }

    /// Deletes all but the newest `keep` checkpoints of the topic, by the time they were
    /// written, never `just_written`. (By time, not by records covered: after the topic was
    /// deleted and created again, the old topic's checkpoints cover more records than the new
    /// one's, and must be the ones to go.)
    async fn prune(&self, just_written: &str) -> Result<(), StoreError> {
        let mut objects: Vec<_> = self
            .store
            .list_with_times(&self.topic)
            .await?
            .into_iter()
            .filter(|(name, _)| format::covered_of(name).is_some() && name != just_written)
            .collect();
        objects.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
        for (name, _) in objects.into_iter().skip(self.keep - 1) {
            self.store.delete(&name).await?;
        }
        Ok(())
    }
}
