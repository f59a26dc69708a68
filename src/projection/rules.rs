//! The write side and the five rules of `spec/events.md`: how one event changes its permit's
//! state and the counters, and how a batch of events is applied.
//!
//! [`Writer::apply_all`] is the apply loop: per group of events it finds each event's client and
//! hashes its id ([`Writer::key`]), touches their permit slots together so the cache misses
//! overlap, then applies them in order ([`Writer::apply`]: one probe of the permit table, then
//! [`Tables::step`], the rules themselves). [`Writer::publish`] then rebuilds the view of every
//! client the batch changed.

use std::{hash::BuildHasher, sync::Arc};

use dashmap::DashMap;

use super::{
    FastMap, Hasher, Kind, Outcome, SkipReason, Tally,
    names::{ClientId, Counter, CounterId, Interner, NameId, same_text},
    table::{self, Hashed, PermitState, Probe, UuidTable},
    uuid::parse_canonical_uuid,
    view::{ClientView, Layout},
};
use crate::events::{Change, EventRef};

/// One client's permits: UUID ids compacted, any other id as text.
#[derive(Default)]
pub(super) struct ClientPermits {
    pub(super) uuids: UuidTable,
    pub(super) texts: FastMap<Box<str>, PermitState>,
}

/// One client's counters and publishing state.
#[derive(Default)]
pub(super) struct ClientState {
    /// This client's counters, in creation order.
    pub(super) counters: Vec<CounterId>,
    /// The answer order of `counters`; `None` after a counter was added, until the next publish.
    layout: Option<Arc<Layout>>,
    pub(super) as_of_ms: Option<i64>,
    dirty: bool,
}

/// Everything an event may change besides its permit's own slot.
#[derive(Default)]
pub(super) struct Tables {
    pub(super) clients: Interner,
    pub(super) zones: Interner,
    pub(super) types: Interner,
    pub(super) states: Vec<ClientState>,
    pub(super) counters: Vec<Counter>,
    counter_ids: FastMap<(ClientId, NameId, NameId), CounterId>,
    /// The same counters, found by the names themselves (see `named_counter`); a counter enters
    /// here the first time a create looks it up by name.
    by_names: hashbrown::HashTable<CounterId>,
    names_hasher: Hasher,
    dirty: Vec<ClientId>,
    /// The client of the previous event: consecutive events of one client skip the name lookup.
    last_client: Option<ClientId>,
}

/// The write side: every client's permits and the tables they count into.
#[derive(Default)]
pub(super) struct Writer {
    pub(super) tables: Tables,
    /// Per client, indexed like `tables.states`.
    pub(super) permits: Vec<ClientPermits>,
}

/// What an event does to its permit's slot.
enum Step {
    Skip(SkipReason),
    /// Store this state (`None`: forget the permit).
    Store(Option<PermitState>, Kind),
}

/// Events whose permit slots are touched together before any of them is applied: enough to keep
/// many cache misses in flight, few enough that the touched slots are still cached when used.
/// (32 beat 16 only once the keys were hashed before the touch loop, whose hashing had filled the
/// core's window; 64 lost to 32: see BENCHMARKS.md.)
const GROUP: usize = 32;

impl Writer {
    /// Applies events in order, counting what they did into `tally`.
    ///
    /// [`Self::key`], [`Self::apply`] and [`Tables::step`] are forced inline into this loop: as
    /// calls they cost prologues and results passed through memory, and the plain `#[inline]`
    /// hint was not taken (see BENCHMARKS.md).
    pub(super) fn apply_all(&mut self, events: &[EventRef<'_>], tally: &mut Tally) {
        for group in events.chunks(GROUP) {
            let mut keys = [(0, None); GROUP];
            for (event, key) in group.iter().zip(&mut keys) {
                *key = self.key(event);
            }
            // A tight loop of loads, so that their misses are in flight together: an out-of-order
            // core overlaps only the misses that sit within a few hundred instructions, so the
            // keys are hashed before it.
            for &(client, id) in &keys[..group.len()] {
                if let Some(id) = id {
                    self.permits[client as usize].uuids.touch(id);
                }
            }
            for (event, &(client, id)) in group.iter().zip(&keys) {
                let outcome = self.apply(client, id, event);
                tally.record(outcome, event);
            }
        }
    }

    /// The event's client, and its id hashed for the client's table when it is a canonical UUID.
    #[inline(always)]
    pub(super) fn key(&mut self, event: &EventRef<'_>) -> (ClientId, Option<Hashed>) {
        let client = self.tables.client(event.client);
        if client as usize == self.permits.len() {
            self.permits.push(ClientPermits::default());
        }
        let uuids = &self.permits[client as usize].uuids;
        (
            client,
            parse_canonical_uuid(event.reference_id).map(|id| uuids.hashed(id)),
        )
    }

    /// One event, given its client and its id when that is a canonical UUID.
    #[inline(always)]
    pub(super) fn apply(
        &mut self,
        client: ClientId,
        uuid: Option<Hashed>,
        event: &EventRef<'_>,
    ) -> Outcome {
        let tables = &mut self.tables;
        let permits = &mut self.permits[client as usize];
        // One probe of the permit's table: read, then write or remove in place.
        let step = |tables: &mut Tables, previous| tables.step(client, previous, event);
        match uuid {
            Some(id) => match permits.uuids.probe(id) {
                Probe::Found(at) => match step(tables, Some(permits.uuids.get(at))) {
                    Step::Skip(reason) => Outcome::Skipped(reason),
                    Step::Store(Some(state), kind) => {
                        permits.uuids.set(at, state);
                        Outcome::Applied(kind)
                    }
                    Step::Store(None, kind) => {
                        permits.uuids.remove(at);
                        Outcome::Applied(kind)
                    }
                },
                Probe::Absent(at) => match step(tables, None) {
                    Step::Skip(reason) => Outcome::Skipped(reason),
                    Step::Store(state, kind) => {
                        if let Some(state) = state {
                            permits.uuids.insert(at, id, state);
                        }
                        Outcome::Applied(kind)
                    }
                },
            },
            None => {
                let id = event.reference_id;
                match step(tables, permits.texts.get(id).copied()) {
                    Step::Skip(reason) => Outcome::Skipped(reason),
                    Step::Store(Some(state), kind) => {
                        match permits.texts.get_mut(id) {
                            Some(slot) => *slot = state,
                            None => {
                                permits.texts.insert(id.into(), state);
                            }
                        }
                        Outcome::Applied(kind)
                    }
                    Step::Store(None, kind) => {
                        permits.texts.remove(id);
                        Outcome::Applied(kind)
                    }
                }
            }
        }
    }

    /// Rebuilds the view of every client the last events changed.
    pub(super) fn publish(&mut self, views: &DashMap<Arc<str>, Arc<ClientView>, Hasher>) {
        let tables = &mut self.tables;
        for client in tables.dirty.drain(..) {
            let state = &mut tables.states[client as usize];
            state.dirty = false;
            let layout = state.layout.get_or_insert_with(|| {
                Arc::new(Layout::new(
                    &state.counters,
                    &tables.counters,
                    &tables.zones,
                    &tables.types,
                ))
            });
            let view = ClientView::build(Arc::clone(layout), &tables.counters, state.as_of_ms);
            views.insert(Arc::clone(tables.clients.name(client)), Arc::new(view));
        }
    }

    /// Permits known to the write side (live ones and tombstones that carry a revision).
    pub(super) fn tracked_permits(&self) -> usize {
        self.permits
            .iter()
            .map(|p| p.uuids.len() + p.texts.len())
            .sum()
    }
}

impl Tables {
    pub(super) fn client(&mut self, name: &str) -> ClientId {
        if let Some(last) = self.last_client
            && same_text(self.clients.name(last), name)
        {
            return last;
        }
        let id = self.clients.intern(name);
        if id as usize == self.states.len() {
            self.states.push(ClientState::default());
        }
        self.last_client = Some(id);
        id
    }

    pub(super) fn counter(
        &mut self,
        client: ClientId,
        zone: NameId,
        permit_type: NameId,
    ) -> CounterId {
        let counters = &mut self.counters;
        let states = &mut self.states;
        *self
            .counter_ids
            .entry((client, zone, permit_type))
            .or_insert_with(|| {
                let id = CounterId::try_from(counters.len())
                    .ok()
                    .filter(|&id| id < table::EMPTY)
                    .expect("fewer than 2^32 - 2 counters");
                counters.push(Counter {
                    client,
                    zone,
                    permit_type,
                    total: 0,
                });
                let state = &mut states[client as usize];
                state.counters.push(id);
                state.layout = None;
                id
            })
    }

    /// The counter of (client, zone, type) given by name: one hash of the names as they arrive
    /// and one probe, where interning both names and then finding the counter took three.
    fn named_counter(&mut self, client: ClientId, zone: &str, permit_type: &str) -> CounterId {
        let hash = self.names_hasher.hash_one((client, zone, permit_type));
        let (counters, zones, types) = (&self.counters, &self.zones, &self.types);
        let same = |&id: &CounterId| {
            let counter = &counters[id as usize];
            counter.client == client
                && same_text(zones.name(counter.zone), zone)
                && same_text(types.name(counter.permit_type), permit_type)
        };
        if let Some(&id) = self.by_names.find(hash, same) {
            return id;
        }
        let zone_id = self.zones.intern(zone);
        let type_id = self.types.intern(permit_type);
        let id = self.counter(client, zone_id, type_id);
        let (counters, zones, types, hasher) =
            (&self.counters, &self.zones, &self.types, &self.names_hasher);
        self.by_names.insert_unique(hash, id, |&id| {
            let counter = &counters[id as usize];
            hasher.hash_one((
                counter.client,
                &**zones.name(counter.zone),
                &**types.name(counter.permit_type),
            ))
        });
        id
    }

    pub(super) fn mark_dirty(&mut self, client: ClientId) {
        let state = &mut self.states[client as usize];
        if !state.dirty {
            state.dirty = true;
            self.dirty.push(client);
        }
    }

    /// The rules of spec/events.md for one event, given the permit's stored state; counters,
    /// freshness and dirty marks are updated here, the permit's slot by the caller.
    #[inline(always)]
    fn step(
        &mut self,
        client: ClientId,
        previous: Option<PermitState>,
        event: &EventRef<'_>,
    ) -> Step {
        let revision = event.revision.unwrap_or(0);
        // Rule 5: a revision not greater than the stored one is stale.
        if let Some(state) = previous
            && revision != 0
            && state.revision() != 0
            && revision <= state.revision()
        {
            return Step::Skip(SkipReason::StaleRevision);
        }
        let live = previous.and_then(PermitState::live);

        let (next, kind) = match &event.change {
            // Rule 1: live with exactly these fields, replacing whatever was there.
            Change::Created { zone, permit_type } => (
                Some(self.named_counter(client, zone, permit_type)),
                Kind::Created,
            ),
            // Rule 2: merge into a live permit, moving it if zone or type changed.
            Change::Updated { zone, permit_type } => match live {
                Some(current) => {
                    let next = match (zone, permit_type) {
                        (None, None) => current,
                        _ => {
                            let Counter {
                                zone: z,
                                permit_type: t,
                                ..
                            } = self.counters[current as usize];
                            let z = zone.map_or(z, |z| self.zones.intern(z));
                            let t = permit_type.map_or(t, |t| self.types.intern(t));
                            self.counter(client, z, t)
                        }
                    };
                    (Some(next), Kind::Updated)
                }
                // Rule 3: an update for an unknown or deleted permit is a create when it can be.
                None => match (zone, permit_type) {
                    (Some(zone), Some(permit_type)) => (
                        Some(self.named_counter(client, zone, permit_type)),
                        Kind::Updated,
                    ),
                    _ => return Step::Skip(SkipReason::OrphanUpdate),
                },
            },
            Change::Deleted => match live {
                Some(_) => (None, Kind::Deleted),
                // Rule 4.
                None => return Step::Skip(SkipReason::OrphanDelete),
            },
        };

        if live != next {
            if let Some(old) = live {
                let total = &mut self.counters[old as usize].total;
                *total = total.saturating_sub(1);
            }
            if let Some(new) = next {
                self.counters[new as usize].total += 1;
            }
            self.mark_dirty(client);
        }
        if let Some(at) = event.occurred_at_ms {
            let state = &mut self.states[client as usize];
            if state.as_of_ms.is_none_or(|as_of| at > as_of) {
                state.as_of_ms = Some(at);
                self.mark_dirty(client);
            }
        }

        let revision = if revision != 0 {
            revision
        } else {
            previous.map_or(0, PermitState::revision)
        };
        let state = match next {
            Some(counter) => Some(PermitState::new(revision, Some(counter))),
            // A tombstone guards a revision; without one, forgetting is the same as deleting.
            None if revision != 0 => Some(PermitState::new(revision, None)),
            None => None,
        };
        Step::Store(state, kind)
    }
}

#[cfg(test)]
mod tests {
    use crate::projection::{
        Kind, Outcome, Projection, SkipReason,
        tests::{counts, created, deleted, rev, row, updated},
    };

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
}
