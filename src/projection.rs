//! The read model: live permits per (client, zone, type), kept exact under the rules of
//! `spec/events.md`, and published per client as an immutable, ready-encoded view.
//!
//! Two halves with one owner each:
//! - the *write side* (behind a mutex that only ingest's apply thread takes): interned names, the
//!   per-permit state (reference id -> counter, revision, tombstone) that makes duplicates, moves,
//!   orphans and stale revisions exact, and the counters;
//! - the *read side*: a `DashMap` from client code to an `Arc<ClientView>`, replaced whole when a
//!   batch changed that client. A view holds the exact response body, so a stats request is a
//!   lookup and a cheap clone of bytes, and no answer ever mixes two states of one permit move.
//!
//! Sized for millions of permits (numbers in BENCHMARKS.md): a permit with a canonical UUID id costs
//! one 28-byte slot of its client's permit table (the UUID's 16 bytes, a 64-bit revision and a
//! 32-bit counter id, which is also the tombstone mark), growth slack aside. Names are interned
//! once; counters are indexed by id, so an event costs one probe of the permit table and no
//! allocation, and a batch starts the probes of 32 events at once so that their cache misses
//! overlap. Publishing a client re-sorts its rows only when a row was added, and copies each row's
//! pre-encoded JSON.
//!
//! Pure and synchronous: no tokio, rdkafka or axum here.
//!
//! # Files
//!
//! - `projection.rs` (this file): the public API: [`Projection`], [`Batch`], what an event did
//!   ([`Outcome`], [`Kind`], [`SkipReason`], [`Tally`]) and [`Row`].
//! - `projection/rules.rs`: the write side and the five rules: the apply loop, one event's step,
//!   publishing the changed clients.
//! - `projection/view.rs`: [`ClientView`], the ready-encoded answer per client, and its layout.
//! - `projection/snapshot.rs`: the whole state as canonical data ([`Snapshot`]), for checkpoints:
//!   copied under the write lock, sorted off it, restored whole.
//! - `projection/table.rs`: the permit table (canonical-UUID ids to their 12-byte state).
//! - `projection/uuid.rs`: the canonical UUID parse (SSE2, and word at a time elsewhere).
//! - `projection/names.rs`: interned names, the counters they key, the short-name compare.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use dashmap::DashMap;

use crate::events::{EventRef, PermitEvent};

mod names;
mod rules;
mod snapshot;
mod table;
mod uuid;
mod view;

use rules::Writer;
pub use snapshot::{ClientSnapshot, CounterName, Snapshot, SnapshotError, StateCopy, TextPermit};
pub use view::ClientView;

type Hasher = foldhash::fast::RandomState;
type FastMap<K, V> = HashMap<K, V, Hasher>;

/// The live-permit projection. Share it behind an `Arc`: ingest applies, the API reads.
#[derive(Default)]
pub struct Projection {
    writer: Mutex<Writer>,
    views: DashMap<Arc<str>, Arc<ClientView>, Hasher>,
}

impl fmt::Debug for Projection {
    /// The number of published clients, not the tables (and without taking the write side, which
    /// a batch on this thread may hold).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("clients", &self.views.len())
            .finish_non_exhaustive()
    }
}

/// What one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event changed or confirmed the permit's state.
    Applied(Kind),
    /// A valid event that changed nothing.
    Skipped(SkipReason),
}

/// The kind of an applied event (the `kind` label of `permit_stats_events_applied_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A create.
    Created,
    /// An update, including one applied as a create (rule 3).
    Updated,
    /// A delete of a live permit.
    Deleted,
}

/// Why a valid event changed nothing (the `reason` label of `permit_stats_events_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// An update for an unknown or deleted permit without both zone and type (rule 3).
    OrphanUpdate,
    /// A delete for an unknown or deleted permit (rule 4).
    OrphanDelete,
    /// An event whose revision is not greater than the stored one (rule 5).
    StaleRevision,
}

impl Kind {
    /// Every kind, in the order of [`Tally::applied`].
    pub const ALL: [Self; 3] = [Self::Created, Self::Updated, Self::Deleted];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

impl SkipReason {
    /// Every reason, in the order of [`Tally::skipped`].
    pub const ALL: [Self; 3] = [Self::OrphanUpdate, Self::OrphanDelete, Self::StaleRevision];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::OrphanUpdate => "orphan_update",
            Self::OrphanDelete => "orphan_delete",
            Self::StaleRevision => "stale_revision",
        }
    }
}

/// What a batch did, counted per [`Kind`] and [`SkipReason`] (indexed like their `ALL`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Applied events per kind.
    pub applied: [u64; 3],
    /// Skipped events per reason.
    pub skipped: [u64; 3],
    /// Newest event time among the applied events, in milliseconds since the Unix epoch.
    pub newest_ms: Option<i64>,
}

impl Tally {
    /// Counts what one event did.
    fn record(&mut self, outcome: Outcome, event: &EventRef<'_>) {
        match outcome {
            Outcome::Applied(kind) => {
                self.applied[kind as usize] += 1;
                if let Some(at) = event.occurred_at_ms {
                    self.newest_ms = Some(self.newest_ms.map_or(at, |seen| seen.max(at)));
                }
            }
            Outcome::Skipped(reason) => self.skipped[reason as usize] += 1,
        }
    }
}

/// One counter: the live permits of one (zone, type) of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The zone name.
    pub zone: Arc<str>,
    /// The permit type.
    pub permit_type: Arc<str>,
    /// Live permits.
    pub total: u64,
}

impl Projection {
    /// An empty projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and publishes its effect.
    pub fn apply(&self, event: &PermitEvent) -> Outcome {
        let mut batch = self.batch();
        batch.apply(event.borrowed())
    }

    /// Applies a batch in order and publishes once at the end, so readers see the state before
    /// or after the batch, never a part of one move.
    pub fn apply_batch<'a>(&self, events: impl IntoIterator<Item = &'a PermitEvent>) -> Tally {
        let events: Vec<EventRef<'_>> = events.into_iter().map(PermitEvent::borrowed).collect();
        let mut batch = self.batch();
        batch.apply_all(&events);
        batch.finish()
    }

    /// Starts a batch: events applied to it are published together when it is finished or
    /// dropped. Holds the write side until then, so readers never see part of a batch; ingest's
    /// apply thread takes one per decoded batch, whose events borrow their strings from that
    /// batch's buffer.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            writer: self.lock(),
            views: &self.views,
            tally: Tally::default(),
        }
    }

    /// The published view of one client, if it ever had a permit.
    pub fn view(&self, client: &str) -> Option<Arc<ClientView>> {
        self.views.get(client).map(|view| Arc::clone(view.value()))
    }

    /// The non-zero counters of one client, sorted by zone then type; only the named zones when
    /// `zones` is given.
    pub fn query(&self, client: &str, zones: Option<&[&str]>) -> Vec<Row> {
        let Some(view) = self.view(client) else {
            return Vec::new();
        };
        view.counters()
            .iter()
            .filter(|row| row.total > 0)
            .filter(|row| zones.is_none_or(|zones| zones.contains(&&*row.zone)))
            .cloned()
            .collect()
    }

    /// Every client's view, for scrape-time gauges. The views are cloned out first, so no map
    /// guard is held while the caller works.
    pub fn views(&self) -> Vec<(Arc<str>, Arc<ClientView>)> {
        let mut views: Vec<_> = self
            .views
            .iter()
            .map(|entry| (Arc::clone(entry.key()), Arc::clone(entry.value())))
            .collect();
        views.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        views
    }

    /// Permits known to the write side (live ones and tombstones that carry a revision).
    pub fn tracked_permits(&self) -> usize {
        self.lock().tracked_permits()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // Applying never panics midway, so a poisoned lock still guards consistent state.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Events applied together and published at once (see [`Projection::batch`]).
#[must_use = "a batch publishes when finished or dropped"]
pub struct Batch<'p> {
    writer: std::sync::MutexGuard<'p, Writer>,
    views: &'p DashMap<Arc<str>, Arc<ClientView>, Hasher>,
    tally: Tally,
}

impl Batch<'_> {
    /// Applies one event; readers see it when the batch is published.
    pub fn apply(&mut self, event: EventRef<'_>) -> Outcome {
        let (client, uuid) = self.writer.key(&event);
        let outcome = self.writer.apply(client, uuid, &event);
        self.tally.record(outcome, &event);
        outcome
    }

    /// Applies events in order; readers see them when the batch is published. Faster per event
    /// than [`Self::apply`]: the permit lookups of neighbouring events overlap.
    pub fn apply_all(&mut self, events: &[EventRef<'_>]) {
        self.writer.apply_all(events, &mut self.tally);
    }

    /// Publishes every client the batch changed, and says what it did.
    pub fn finish(mut self) -> Tally {
        self.writer.publish(self.views);
        self.tally
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Nothing left to publish after `finish`; this covers a batch dropped without it.
        self.writer.publish(self.views);
    }
}

impl fmt::Debug for Batch<'_> {
    /// What the batch did so far, not the tables it holds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("tally", &self.tally)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Change;

    pub(super) fn event(
        client: &str,
        id: &str,
        revision: Option<u64>,
        change: Change,
    ) -> PermitEvent {
        PermitEvent {
            client: client.into(),
            reference_id: id.into(),
            revision,
            occurred_at_ms: None,
            change,
        }
    }

    pub(super) fn created(id: &str, zone: &str, t: &str) -> PermitEvent {
        event(
            "C",
            id,
            None,
            Change::Created {
                zone: zone.into(),
                permit_type: t.into(),
            },
        )
    }

    pub(super) fn updated(id: &str, zone: Option<&str>, t: Option<&str>) -> PermitEvent {
        event(
            "C",
            id,
            None,
            Change::Updated {
                zone: zone.map(Into::into),
                permit_type: t.map(Into::into),
            },
        )
    }

    pub(super) fn deleted(id: &str) -> PermitEvent {
        event("C", id, None, Change::Deleted)
    }

    pub(super) fn rev(mut e: PermitEvent, revision: u64) -> PermitEvent {
        e.revision = Some(revision);
        e
    }

    pub(super) fn counts(p: &Projection) -> Vec<(String, String, u64)> {
        p.query("C", None)
            .into_iter()
            .map(|r| (r.zone.to_string(), r.permit_type.to_string(), r.total))
            .collect()
    }

    pub(super) fn row(zone: &str, t: &str, total: u64) -> (String, String, u64) {
        (zone.into(), t.into(), total)
    }

    #[test]
    fn a_batch_is_seen_whole_once_finished_or_dropped() {
        let p = Projection::new();
        let (one, two) = (created("a", "Lot 1", "temp"), created("b", "Lot 1", "temp"));
        let mut batch = p.batch();
        batch.apply(one.borrowed());
        batch.apply_all(&[two.borrowed()]);
        // Readers never see half a batch: the write side is held and nothing is published yet.
        assert!(p.view("C").is_none());
        drop(batch);
        assert_eq!(counts(&p), vec![row("Lot 1", "temp", 2)]);

        let mut batch = p.batch();
        batch.apply(deleted("a").borrowed());
        let tally = batch.finish();
        assert_eq!(tally.applied, [0, 0, 1]);
        assert_eq!(counts(&p), vec![row("Lot 1", "temp", 1)]);
    }

    #[test]
    fn clients_are_isolated_and_rows_sorted_by_zone_then_type() {
        let p = Projection::new();
        for (id, zone, t) in [
            ("1", "b", "temp"),
            ("2", "a", "temp"),
            ("3", "a", "standard"),
            ("4", "B", "x"),
        ] {
            p.apply(&created(id, zone, t));
        }
        p.apply(&event(
            "OTHER",
            "1",
            None,
            Change::Created {
                zone: "a".into(),
                permit_type: "temp".into(),
            },
        ));
        assert_eq!(
            counts(&p),
            vec![
                row("B", "x", 1),
                row("a", "standard", 1),
                row("a", "temp", 1),
                row("b", "temp", 1)
            ]
        );
        assert_eq!(p.query("OTHER", None).len(), 1);
        assert!(p.query("nobody", None).is_empty());
    }
}
