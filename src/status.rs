//! Readiness, lag and broker contact: written by ingest, read by the API (`/health/ready`, the
//! freshness headers, the 503 while replaying). Its own module, below both, so that neither
//! imports the other. Every field is private: readers get snapshots (`is_ready`, `lag`,
//! `progress`), and the writer methods keep the rules (the latch only ever flips to ready, and
//! the replay time is taken once, when it does).

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;

/// Replay progress and freshness, written by ingest and read by the API.
#[derive(Debug)]
pub struct IngestStatus {
    ready: AtomicBool,
    lag: AtomicU64,
    target: AtomicU64,
    replayed: AtomicU64,
    started: Instant,
    ready_after_ms: AtomicU64,
    /// Milliseconds after `started` of the last sign of the broker; `u64::MAX` before the first.
    last_contact_ms: AtomicU64,
    waiting_for: Mutex<Option<String>>,
    /// Records the state never saw (deleted by the topic before it read them).
    history_missing: AtomicU64,
}

/// What `/health/ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Whether the projection has caught up since start.
    pub ready: bool,
    /// Records applied of those below the start watermarks.
    pub replayed: u64,
    /// Records below the start watermarks.
    pub target: u64,
    /// `replayed` as a percentage of `target` (100 when there is nothing to replay).
    pub percent: f64,
    /// Records not yet applied, at the last check.
    pub lag: u64,
    /// Seconds the replay took, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_seconds: Option<f64>,
    /// Why ingest is waiting, when it is (e.g. the broker is unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// How old `lag` is: seconds since ingest last heard from the broker (a record or a metadata
    /// answer). Stays near 0 while connected and grows while the broker is unreachable, when the
    /// lag cannot be measured and keeps its last known value. Absent before the first contact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_age_seconds: Option<f64>,
}

impl Default for IngestStatus {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            lag: AtomicU64::new(0),
            target: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            started: Instant::now(),
            ready_after_ms: AtomicU64::new(0),
            last_contact_ms: AtomicU64::new(u64::MAX),
            waiting_for: Mutex::new(Some("the broker's metadata".into())),
            history_missing: AtomicU64::new(0),
        }
    }
}

impl IngestStatus {
    /// A status that is not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the projection has caught up since start (a one-way latch).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records between what is applied and the high watermarks, at the last check.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Flips the readiness latch.
    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            let took = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.ready_after_ms.store(took, Ordering::Relaxed);
        }
    }

    /// The replay's progress.
    pub fn progress(&self) -> Progress {
        let ready = self.is_ready();
        let target = self.target.load(Ordering::Relaxed);
        let replayed = self.replayed.load(Ordering::Relaxed).min(target);
        Progress {
            ready,
            replayed,
            target,
            percent: if ready {
                100.0
            } else if target == 0 {
                0.0
            } else {
                (replayed as f64 * 1000.0 / target as f64).floor() / 10.0
            },
            lag: self.lag(),
            replay_seconds: ready
                .then(|| self.ready_after_ms.load(Ordering::Relaxed) as f64 / 1000.0),
            waiting_for: self
                .waiting_for
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            lag_age_seconds: self
                .lag_age()
                .map(|age| (age.as_secs_f64() * 10.0).floor() / 10.0),
        }
    }

    /// Time since ingest last heard from the broker; `None` before the first contact.
    pub fn lag_age(&self) -> Option<Duration> {
        let at = self.last_contact_ms.load(Ordering::Relaxed);
        (at != u64::MAX).then(|| {
            self.started
                .elapsed()
                .saturating_sub(Duration::from_millis(at))
        })
    }

    /// Notes that the broker answered just now (a record, or a metadata answer).
    pub fn note_contact(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_contact_ms.store(now, Ordering::Relaxed);
    }

    /// Says why ingest is waiting (`None`: it is not).
    pub fn set_waiting_for(&self, why: Option<String>) {
        *self
            .waiting_for
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why;
    }

    /// Adds records below newly assigned partitions' start watermarks to the replay's target.
    pub fn add_to_target(&self, records: u64) {
        self.target.fetch_add(records, Ordering::Relaxed);
    }

    /// Records applied so far of those below the start watermarks.
    pub fn set_replayed(&self, records: u64) {
        self.replayed.store(records, Ordering::Relaxed);
    }

    /// Records the state never saw because the topic had deleted them (0: none): served only
    /// with `--allow-missing-history`, and then said on every answer.
    pub fn history_missing(&self) -> u64 {
        self.history_missing.load(Ordering::Relaxed)
    }

    /// Notes how many records the state never saw.
    pub fn set_history_missing(&self, records: u64) {
        self.history_missing.store(records, Ordering::Relaxed);
    }

    /// Records between what is applied and the high watermarks, as just measured.
    pub fn set_lag(&self, records: u64) {
        self.lag.store(records, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_age_is_absent_before_the_first_contact_and_small_after_it() {
        let status = IngestStatus::new();
        assert_eq!(status.lag_age(), None);
        let json = serde_json::to_value(status.progress()).expect("serializes");
        assert!(json.get("lag_age_seconds").is_none(), "{json}");
        status.note_contact();
        let age = status.lag_age().expect("contact noted");
        assert!(age < Duration::from_secs(1), "{age:?}");
        let json = serde_json::to_value(status.progress()).expect("serializes");
        assert!(json["lag_age_seconds"].as_f64().is_some(), "{json}");
    }
}
