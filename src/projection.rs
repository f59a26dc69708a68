//! The read model: live permits per (client, zone, type), kept exact under the rules of
//! `spec/events.md`, and published per client as an immutable, ready-encoded view.
//!
//! Two halves with one owner each:
//! - the *write side* (behind a mutex that only ingest takes): interned names, the per-permit state
//!   (reference id -> bucket, revision, tombstone) that makes duplicates, moves, orphans and stale
//!   revisions exact, and the counters;
//! - the *read side*: a `DashMap` from client code to an `Arc<ClientView>`, replaced whole when a
//!   batch changed that client. A view holds the client's counters sorted by zone then type and the
//!   exact response body, so a stats request is a lookup and a cheap clone of bytes, and no answer
//!   ever mixes two states of one permit move.
//!
//! Pure and synchronous: no tokio, rdkafka or axum here.

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use dashmap::DashMap;

use crate::events::{Change, PermitEvent};

type Hasher = foldhash::fast::RandomState;
type FastMap<K, V> = HashMap<K, V, Hasher>;

/// The live-permit projection. Share it behind an `Arc`: ingest applies, the API reads.
#[derive(Default)]
pub struct Projection {
    writer: Mutex<Writer>,
    views: DashMap<Arc<str>, Arc<ClientView>, Hasher>,
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
    fn add(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Applied(kind) => self.applied[kind as usize] += 1,
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

/// One client's published state: immutable, replaced whole when a batch changes it.
#[derive(Debug)]
pub struct ClientView {
    /// Every (zone, type) this client ever had, zeros included (a gauge falls to 0, not away),
    /// sorted by zone then type in byte order.
    counters: Vec<Row>,
    /// `{"data":[...]}` with one row per non-zero counter, in the order of `counters`.
    body: Bytes,
    /// Where each zone's rows sit in `body`: a contiguous run, commas between rows included.
    zone_rows: FastMap<Arc<str>, Range<usize>>,
    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    as_of_ms: Option<i64>,
}

const BODY_START: &[u8] = br#"{"data":["#;
const BODY_END: &[u8] = b"]}";
const EMPTY_BODY: &[u8] = br#"{"data":[]}"#;

impl ClientView {
    /// Every counter of this client, zeros included, sorted by zone then type.
    pub fn counters(&self) -> &[Row] {
        &self.counters
    }

    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    pub fn as_of_ms(&self) -> Option<i64> {
        self.as_of_ms
    }

    /// The stats response body: every zone when `zones` is `None`, else only the named zones
    /// (exact match; unknown names and duplicates add nothing). Rows stay sorted by zone, then type.
    pub fn body(&self, zones: Option<&[&str]>) -> Bytes {
        let Some(zones) = zones else {
            return self.body.clone();
        };
        let mut runs: Vec<Range<usize>> = zones
            .iter()
            .filter_map(|zone| self.zone_rows.get(*zone).cloned())
            .collect();
        if runs.is_empty() {
            return Bytes::from_static(EMPTY_BODY);
        }
        runs.sort_unstable_by_key(|run| run.start);
        runs.dedup();
        let len = runs.iter().map(|run| run.len() + 1).sum::<usize>() + BODY_START.len();
        let mut out = Vec::with_capacity(len + BODY_END.len());
        out.extend_from_slice(BODY_START);
        for (i, run) in runs.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.body[run]);
        }
        out.extend_from_slice(BODY_END);
        Bytes::from(out)
    }

    fn build(mut counters: Vec<Row>, as_of_ms: Option<i64>) -> Self {
        counters.sort_unstable_by(|a, b| {
            (a.zone.as_bytes(), a.permit_type.as_bytes())
                .cmp(&(b.zone.as_bytes(), b.permit_type.as_bytes()))
        });
        let mut body = Vec::with_capacity(BODY_START.len() + counters.len() * 48);
        body.extend_from_slice(BODY_START);
        let mut zone_rows: FastMap<Arc<str>, Range<usize>> = FastMap::default();
        for row in counters.iter().filter(|row| row.total > 0) {
            if body.len() > BODY_START.len() {
                body.push(b',');
            }
            let start = body.len();
            write_row(&mut body, row);
            // Rows are sorted by zone, so each zone's rows form one run.
            zone_rows
                .entry(Arc::clone(&row.zone))
                .and_modify(|run| run.end = body.len())
                .or_insert(start..body.len());
        }
        body.extend_from_slice(BODY_END);
        Self {
            counters,
            body: Bytes::from(body),
            zone_rows,
            as_of_ms,
        }
    }
}

/// `{"type":"..","zone":"..","total":"N"}`: the vendor's key order, the total as a string.
fn write_row(out: &mut Vec<u8>, row: &Row) {
    out.extend_from_slice(br#"{"type":"#);
    write_json_string(out, &row.permit_type);
    out.extend_from_slice(br#","zone":"#);
    write_json_string(out, &row.zone);
    out.extend_from_slice(br#","total":""#);
    out.extend_from_slice(itoa::Buffer::new().format(row.total).as_bytes());
    out.extend_from_slice(br#""}"#);
}

fn write_json_string(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

impl Projection {
    /// An empty projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and publishes its effect.
    pub fn apply(&self, event: &PermitEvent) -> Outcome {
        let mut writer = self.lock();
        let outcome = writer.apply(event);
        writer.publish(&self.views);
        outcome
    }

    /// Applies a batch in order and publishes once at the end, so readers see the state before
    /// or after the batch, never a part of one move.
    pub fn apply_batch<'a>(&self, events: impl IntoIterator<Item = &'a PermitEvent>) -> Tally {
        let mut tally = Tally::default();
        let mut writer = self.lock();
        for event in events {
            let outcome = writer.apply(event);
            tally.add(outcome);
            if let (Outcome::Applied(_), Some(at)) = (outcome, event.occurred_at_ms) {
                tally.newest_ms = Some(tally.newest_ms.map_or(at, |seen| seen.max(at)));
            }
        }
        writer.publish(&self.views);
        tally
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
        view.counters
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
        self.lock().permits.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Writer> {
        // Applying never panics midway, so a poisoned lock still guards consistent state.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type ClientId = u32;
type NameId = u32;

/// A permit's identity: canonical lowercase UUIDs (the vendor's ids in practice) are kept as 16
/// bytes, anything else as text. The two forms never collide, since only canonical text is
/// compacted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RefId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl RefId {
    fn new(id: &str) -> Self {
        parse_canonical_uuid(id).map_or_else(|| Self::Text(id.into()), Self::Uuid)
    }
}

fn parse_canonical_uuid(id: &str) -> Option<[u8; 16]> {
    let bytes = id.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        let value = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        out[nibbles / 2] |= value << (4 * (1 - nibbles % 2));
        nibbles += 1;
    }
    Some(out)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PermitKey {
    client: ClientId,
    id: RefId,
}

/// A permit's state: its bucket while live, and the newest applied revision (0 = none). A deleted
/// permit stays as a tombstone only while it has a revision to guard; without one it is forgotten,
/// which rules 1-4 treat exactly like a deleted permit.
#[derive(Debug, Clone, Copy)]
struct PermitState {
    revision: u64,
    bucket: Bucket,
    live: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Bucket {
    zone: NameId,
    permit_type: NameId,
}

#[derive(Default)]
struct Interner {
    ids: FastMap<Arc<str>, NameId>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = NameId::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        let name: Arc<str> = name.into();
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: NameId) -> &Arc<str> {
        &self.names[id as usize]
    }
}

#[derive(Default)]
struct ClientCounters {
    counts: FastMap<Bucket, u64>,
    as_of_ms: Option<i64>,
    dirty: bool,
}

#[derive(Default)]
struct Writer {
    clients: Interner,
    zones: Interner,
    types: Interner,
    counters: Vec<ClientCounters>,
    permits: FastMap<PermitKey, PermitState>,
    dirty: Vec<ClientId>,
}

impl Writer {
    fn apply(&mut self, event: &PermitEvent) -> Outcome {
        let client = self.clients.intern(&event.client);
        if client as usize == self.counters.len() {
            self.counters.push(ClientCounters::default());
        }
        let key = PermitKey {
            client,
            id: RefId::new(&event.reference_id),
        };
        let revision = event.revision.unwrap_or(0);
        let previous = self.permits.get(&key).copied();

        // Rule 5: a revision not greater than the stored one is stale.
        if let Some(state) = previous
            && revision != 0
            && state.revision != 0
            && revision <= state.revision
        {
            return Outcome::Skipped(SkipReason::StaleRevision);
        }
        let live_bucket = previous.filter(|s| s.live).map(|s| s.bucket);

        let (next, outcome) = match &event.change {
            // Rule 1: live with exactly these fields, replacing whatever was there.
            Change::Created { zone, permit_type } => (
                Some(self.bucket(zone, permit_type)),
                Outcome::Applied(Kind::Created),
            ),
            // Rule 2: merge into a live permit, moving it if zone or type changed.
            Change::Updated { zone, permit_type } => match live_bucket {
                Some(current) => {
                    let bucket = Bucket {
                        zone: zone
                            .as_deref()
                            .map_or(current.zone, |z| self.zones.intern(z)),
                        permit_type: permit_type
                            .as_deref()
                            .map_or(current.permit_type, |t| self.types.intern(t)),
                    };
                    (Some(bucket), Outcome::Applied(Kind::Updated))
                }
                // Rule 3: an update for an unknown or deleted permit is a create when it can be.
                None => match (zone, permit_type) {
                    (Some(zone), Some(permit_type)) => (
                        Some(self.bucket(zone, permit_type)),
                        Outcome::Applied(Kind::Updated),
                    ),
                    _ => return Outcome::Skipped(SkipReason::OrphanUpdate),
                },
            },
            Change::Deleted => match live_bucket {
                Some(_) => (None, Outcome::Applied(Kind::Deleted)),
                // Rule 4.
                None => return Outcome::Skipped(SkipReason::OrphanDelete),
            },
        };

        let counters = &mut self.counters[client as usize];
        if live_bucket != next {
            if let Some(old) = live_bucket
                && let Some(count) = counters.counts.get_mut(&old)
            {
                *count = count.saturating_sub(1);
            }
            if let Some(new) = next {
                *counters.counts.entry(new).or_default() += 1;
            }
            if !counters.dirty {
                counters.dirty = true;
                self.dirty.push(client);
            }
        }
        if let Some(at) = event.occurred_at_ms
            && counters.as_of_ms.is_none_or(|as_of| at > as_of)
        {
            counters.as_of_ms = Some(at);
            if !counters.dirty {
                counters.dirty = true;
                self.dirty.push(client);
            }
        }

        let revision = if revision != 0 {
            revision
        } else {
            previous.map_or(0, |s| s.revision)
        };
        match next {
            Some(bucket) => {
                self.permits.insert(
                    key,
                    PermitState {
                        revision,
                        bucket,
                        live: true,
                    },
                );
            }
            // A tombstone guards a revision; without one, forgetting is the same as deleting.
            None if revision != 0 => {
                self.permits.insert(
                    key,
                    PermitState {
                        revision,
                        bucket: live_bucket.unwrap_or(Bucket {
                            zone: 0,
                            permit_type: 0,
                        }),
                        live: false,
                    },
                );
            }
            None => {
                self.permits.remove(&key);
            }
        }
        outcome
    }

    fn bucket(&mut self, zone: &str, permit_type: &str) -> Bucket {
        Bucket {
            zone: self.zones.intern(zone),
            permit_type: self.types.intern(permit_type),
        }
    }

    /// Rebuilds the view of every client the last events changed.
    fn publish(&mut self, views: &DashMap<Arc<str>, Arc<ClientView>, Hasher>) {
        for client in self.dirty.drain(..) {
            let counters = &mut self.counters[client as usize];
            counters.dirty = false;
            let rows = counters
                .counts
                .iter()
                .map(|(bucket, &total)| Row {
                    zone: Arc::clone(self.zones.name(bucket.zone)),
                    permit_type: Arc::clone(self.types.name(bucket.permit_type)),
                    total,
                })
                .collect();
            let view = ClientView::build(rows, counters.as_of_ms);
            views.insert(Arc::clone(self.clients.name(client)), Arc::new(view));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(client: &str, id: &str, revision: Option<u64>, change: Change) -> PermitEvent {
        PermitEvent {
            client: client.into(),
            reference_id: id.into(),
            revision,
            occurred_at_ms: None,
            change,
        }
    }

    fn created(id: &str, zone: &str, t: &str) -> PermitEvent {
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

    fn updated(id: &str, zone: Option<&str>, t: Option<&str>) -> PermitEvent {
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

    fn deleted(id: &str) -> PermitEvent {
        event("C", id, None, Change::Deleted)
    }

    fn rev(mut e: PermitEvent, revision: u64) -> PermitEvent {
        e.revision = Some(revision);
        e
    }

    fn counts(p: &Projection) -> Vec<(String, String, u64)> {
        p.query("C", None)
            .into_iter()
            .map(|r| (r.zone.to_string(), r.permit_type.to_string(), r.total))
            .collect()
    }

    fn row(zone: &str, t: &str, total: u64) -> (String, String, u64) {
        (zone.into(), t.into(), total)
    }

    #[test]
    fn rule_1_a_duplicate_create_replaces_and_counts_once() {
        let p = Projection::new();
        assert_eq!(
            p.apply(&created("a", "Lot 1", "temp")),
            Outcome::Applied(Kind::Created)
        );
        p.apply(&created("a", "Lot 1", "temp"));
        assert_eq!(counts(&p), vec![row("Lot 1", "temp", 1)]);
        p.apply(&created("a", "Lot 2", "standard"));
        assert_eq!(counts(&p), vec![row("Lot 2", "standard", 1)]);
    }

    #[test]
    fn rule_2_an_update_merges_and_moves() {
        let p = Projection::new();
        p.apply(&created("a", "Lot 1", "temp"));
        p.apply(&created("b", "Lot 1", "temp"));
        p.apply(&updated("a", Some("Lot 2"), None));
        assert_eq!(
            counts(&p),
            vec![row("Lot 1", "temp", 1), row("Lot 2", "temp", 1)]
        );
        p.apply(&updated("a", None, Some("standard")));
        p.apply(&updated("b", None, None));
        assert_eq!(
            counts(&p),
            vec![row("Lot 1", "temp", 1), row("Lot 2", "standard", 1)]
        );
    }

    #[test]
    fn rule_3_an_orphan_update_creates_only_with_zone_and_type() {
        let p = Projection::new();
        assert_eq!(
            p.apply(&updated("a", Some("Lot 1"), None)),
            Outcome::Skipped(SkipReason::OrphanUpdate)
        );
        assert!(counts(&p).is_empty());
        assert_eq!(
            p.apply(&updated("a", Some("Lot 1"), Some("temp"))),
            Outcome::Applied(Kind::Updated)
        );
        p.apply(&deleted("a"));
        assert_eq!(
            p.apply(&updated("a", None, Some("temp"))),
            Outcome::Skipped(SkipReason::OrphanUpdate)
        );
        assert!(counts(&p).is_empty());
    }

    #[test]
    fn rule_4_an_orphan_delete_changes_nothing() {
        let p = Projection::new();
        p.apply(&created("a", "Lot 1", "temp"));
        assert_eq!(
            p.apply(&deleted("b")),
            Outcome::Skipped(SkipReason::OrphanDelete)
        );
        assert_eq!(p.apply(&deleted("a")), Outcome::Applied(Kind::Deleted));
        assert_eq!(
            p.apply(&deleted("a")),
            Outcome::Skipped(SkipReason::OrphanDelete)
        );
        assert!(counts(&p).is_empty());
    }

    #[test]
    fn rule_5_stale_revisions_are_skipped_and_tombstones_hold() {
        let p = Projection::new();
        p.apply(&rev(created("a", "Lot 1", "temp"), 2));
        assert_eq!(
            p.apply(&rev(updated("a", Some("Lot 9"), None), 2)),
            Outcome::Skipped(SkipReason::StaleRevision)
        );
        // An event without a revision applies and leaves the stored revision as it was.
        p.apply(&updated("a", Some("Lot 2"), None));
        assert_eq!(
            p.apply(&rev(updated("a", Some("Lot 9"), None), 1)),
            Outcome::Skipped(SkipReason::StaleRevision)
        );
        p.apply(&rev(deleted("a"), 5));
        // A late, older create cannot bring the permit back...
        assert_eq!(
            p.apply(&rev(created("a", "Lot 1", "temp"), 4)),
            Outcome::Skipped(SkipReason::StaleRevision)
        );
        assert!(counts(&p).is_empty());
        // ...a newer one can.
        p.apply(&rev(created("a", "Lot 3", "temp"), 6));
        assert_eq!(counts(&p), vec![row("Lot 3", "temp", 1)]);
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

    #[test]
    fn bodies_are_exact_and_filtered_by_zone() {
        let p = Projection::new();
        p.apply(&created("1", "zone1", "standard"));
        p.apply(&created("2", "zone1", "temp"));
        p.apply(&created("3", "Lot \"2\"", "temp"));
        p.apply(&created("4", "gone", "temp"));
        p.apply(&deleted("4"));
        let view = p.view("C").expect("client has a view");
        assert_eq!(
            view.body(None),
            &br#"{"data":[{"type":"temp","zone":"Lot \"2\"","total":"1"},{"type":"standard","zone":"zone1","total":"1"},{"type":"temp","zone":"zone1","total":"1"}]}"#[..]
        );
        assert_eq!(
            view.body(Some(&["zone1", "nope", "Lot \"2\"", "zone1"])),
            view.body(None)
        );
        assert_eq!(
            view.body(Some(&["zone1"])),
            &br#"{"data":[{"type":"standard","zone":"zone1","total":"1"},{"type":"temp","zone":"zone1","total":"1"}]}"#[..]
        );
        assert_eq!(view.body(Some(&["gone"])), &br#"{"data":[]}"#[..]);
        // The emptied counter stays, at zero, for the gauges.
        assert!(
            view.counters()
                .iter()
                .any(|r| &*r.zone == "gone" && r.total == 0)
        );
        let parsed: serde_json::Value =
            serde_json::from_slice(&view.body(None)).expect("body is JSON");
        assert_eq!(parsed["data"][0]["zone"], "Lot \"2\"");
    }

    #[test]
    fn uuid_ids_are_compacted_without_colliding_with_text() {
        let id = "1a9b5375-cb75-4c71-9939-eeae550b09ac";
        assert!(matches!(RefId::new(id), RefId::Uuid(_)));
        assert!(matches!(RefId::new(&id.to_uppercase()), RefId::Text(_)));
        let p = Projection::new();
        p.apply(&created(id, "z", "t"));
        p.apply(&created(&id.to_uppercase(), "z", "t"));
        assert_eq!(counts(&p), vec![row("z", "t", 2)]);
    }
}
