//! The projection's whole state as plain data, for checkpoints: every client's counters, each
//! permit with its revision (tombstones included) and the client's newest event time. A
//! [`Snapshot`] is canonical: it depends only on the state, never on the order in which the state
//! was reached (which counter or client was interned first, where a permit sits in its table), so
//! that two replicas that applied the same records describe them with the same bytes.
//!
//! Cutting one is two steps, so that ingest waits only for the first: [`Projection::copy_state`]
//! copies the write side under its lock (one copy of each permit table, no sorting, no
//! allocation per permit), and [`StateCopy::snapshot`] puts the copy in canonical order on any
//! other thread. Readers never wait: they read the published views, which this does not touch.
//!
//! Totals are not stored: a counter's total is the number of live permits that point at it, so a
//! restore recomputes them, and a snapshot cannot hold totals that disagree with its permits.

use std::sync::Arc;

use super::{
    FastMap, Projection,
    names::{ClientId, CounterId},
    rules::{ClientPermits, Writer},
    table::{PermitState, UuidTable},
    uuid::Uuid,
};

/// The write side as copied at a batch boundary, before it is put in canonical order.
pub struct StateCopy {
    clients: Vec<ClientCopy>,
    /// Per counter id: its zone and type names.
    counters: Vec<(Arc<str>, Arc<str>)>,
}

struct ClientCopy {
    code: Arc<str>,
    as_of_ms: Option<i64>,
    counters: Vec<CounterId>,
    uuids: UuidTable,
    texts: FastMap<Box<str>, PermitState>,
}

impl std::fmt::Debug for StateCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCopy")
            .field("clients", &self.clients.len())
            .field("counters", &self.counters.len())
            .finish_non_exhaustive()
    }
}

/// The whole state in canonical order: clients by code, counters by zone then type, permits by
/// id (all in byte order). The layout is the checkpoint body's (`proto/permit_stats/checkpoint.proto`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every client with a counter, a permit or an event time.
    pub clients: Vec<ClientSnapshot>,
}

/// One client's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The client code.
    pub code: String,
    /// Newest event time applied to this client (the `X-Stats-As-Of` header).
    pub as_of_ms: Option<i64>,
    /// Every (zone, type) this client ever counted, zero totals included (the gauges show them).
    pub counters: Vec<CounterName>,
    /// Permits with a canonical UUID id: 16 bytes each, sorted.
    pub uuid_ids: Vec<u8>,
    /// Their revisions (0: none), in the order of `uuid_ids`.
    pub uuid_revisions: Vec<u64>,
    /// Their counters, in the order of `uuid_ids`: an index into `counters` plus one, or 0 for a
    /// deleted permit kept for its revision (a tombstone).
    pub uuid_counters: Vec<u32>,
    /// Permits with any other id, sorted by id.
    pub text_permits: Vec<TextPermit>,
}

/// A counter's names.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct CounterName {
    /// The zone.
    pub zone: String,
    /// The permit type.
    pub permit_type: String,
}

/// A permit whose id is not a canonical UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextPermit {
    /// The reference id.
    pub id: String,
    /// Its revision (0: none).
    pub revision: u64,
    /// Its counter, as in [`ClientSnapshot::uuid_counters`].
    pub counter: u32,
}

/// Why a snapshot cannot be restored: it is not one that a projection could have written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// A client appears twice.
    #[error("client {0:?} is listed twice")]
    DuplicateClient(String),
    /// A (zone, type) appears twice for one client.
    #[error("client {client:?}: counter ({zone:?}, {permit_type:?}) is listed twice")]
    DuplicateCounter {
        /// The client.
        client: String,
        /// The zone.
        zone: String,
        /// The type.
        permit_type: String,
    },
    /// A permit id appears twice for one client.
    #[error("client {client:?}: permit {id} is listed twice")]
    DuplicatePermit {
        /// The client.
        client: String,
        /// The permit id.
        id: String,
    },
    /// A permit names a counter that is not there.
    #[error("client {client:?}: a permit names counter {counter} of {counters}")]
    NoSuchCounter {
        /// The client.
        client: String,
        /// The counter named (index plus one).
        counter: u32,
        /// How many the client has.
        counters: usize,
    },
    /// The UUID columns differ in length.
    #[error("client {0:?}: the permit columns differ in length")]
    Columns(String),
}

impl Snapshot {
    /// Permits held: live ones and tombstones.
    pub fn permits(&self) -> usize {
        self.clients
            .iter()
            .map(|c| c.uuid_revisions.len() + c.text_permits.len())
            .sum()
    }

    /// Live permits.
    pub fn live_permits(&self) -> usize {
        self.clients
            .iter()
            .map(|c| {
                c.uuid_counters.iter().filter(|&&n| n != 0).count()
                    + c.text_permits.iter().filter(|p| p.counter != 0).count()
            })
            .sum()
    }
}

impl Projection {
    /// Copies the write side (taking its lock, so between two batches): one copy of each
    /// permit table and of the names. Call [`StateCopy::snapshot`] on the copy elsewhere.
    pub fn copy_state(&self) -> StateCopy {
        let writer = self.lock();
        let tables = &writer.tables;
        let clients = writer
            .permits
            .iter()
            .enumerate()
            .map(|(client, permits)| {
                let state = &tables.states[client];
                ClientCopy {
                    code: Arc::clone(tables.clients.name(client as ClientId)),
                    as_of_ms: state.as_of_ms,
                    counters: state.counters.clone(),
                    uuids: permits.uuids.clone(),
                    texts: permits.texts.clone(),
                }
            })
            .collect();
        let counters = tables
            .counters
            .iter()
            .map(|c| {
                (
                    Arc::clone(tables.zones.name(c.zone)),
                    Arc::clone(tables.types.name(c.permit_type)),
                )
            })
            .collect();
        StateCopy { clients, counters }
    }

    /// Replaces the whole state with `snapshot` and publishes every client. On an error the
    /// projection is left as it was.
    pub fn restore(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        let restored = restored(snapshot)?;
        let mut writer = self.lock();
        *writer = restored;
        self.views.clear();
        writer.publish(&self.views);
        Ok(())
    }
}

impl StateCopy {
    /// The copy in canonical order.
    pub fn snapshot(self) -> Snapshot {
        let counters = self.counters;
        let mut clients: Vec<ClientSnapshot> = self
            .clients
            .into_iter()
            .filter(|c| {
                !c.counters.is_empty()
                    || c.as_of_ms.is_some()
                    || c.uuids.len() > 0
                    || !c.texts.is_empty()
            })
            .map(|c| client_snapshot(c, &counters))
            .collect();
        clients.sort_unstable_by(|a, b| a.code.cmp(&b.code));
        Snapshot { clients }
    }
}

fn client_snapshot(client: ClientCopy, names: &[(Arc<str>, Arc<str>)]) -> ClientSnapshot {
    let mut counters: Vec<(CounterName, CounterId)> = client
        .counters
        .iter()
        .map(|&id| {
            let (zone, permit_type) = &names[id as usize];
            (
                CounterName {
                    zone: zone.to_string(),
                    permit_type: permit_type.to_string(),
                },
                id,
            )
        })
        .collect();
    counters.sort_unstable();
    // Counter id -> its position in the sorted list, plus one (0 is a tombstone).
    let mut position: FastMap<CounterId, u32> = FastMap::default();
    for (at, (_, id)) in counters.iter().enumerate() {
        position.insert(*id, at as u32 + 1);
    }
    let index = |state: PermitState| state.live().map_or(0, |id| position[&id]);

    let mut uuids: Vec<(Uuid, PermitState)> = client.uuids.entries().collect();
    uuids.sort_unstable_by_key(|(id, _)| id.0);
    let mut snapshot = ClientSnapshot {
        code: client.code.to_string(),
        as_of_ms: client.as_of_ms,
        counters: counters.into_iter().map(|(name, _)| name).collect(),
        uuid_ids: Vec::with_capacity(uuids.len() * 16),
        uuid_revisions: Vec::with_capacity(uuids.len()),
        uuid_counters: Vec::with_capacity(uuids.len()),
        text_permits: Vec::with_capacity(client.texts.len()),
    };
    for (id, state) in uuids {
        snapshot.uuid_ids.extend_from_slice(&id.0);
        snapshot.uuid_revisions.push(state.revision());
        snapshot.uuid_counters.push(index(state));
    }
    let mut texts: Vec<_> = client.texts.into_iter().collect();
    texts.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    snapshot.text_permits = texts
        .into_iter()
        .map(|(id, state)| TextPermit {
            id: id.into(),
            revision: state.revision(),
            counter: index(state),
        })
        .collect();
    snapshot
}

/// A write side holding exactly `snapshot`, every client marked for publishing.
fn restored(snapshot: &Snapshot) -> Result<Writer, SnapshotError> {
    let mut writer = Writer::default();
    for c in &snapshot.clients {
        let code = || c.code.clone();
        let client = writer.tables.client(&c.code);
        if client as usize != writer.permits.len() {
            return Err(SnapshotError::DuplicateClient(code()));
        }
        writer.permits.push(ClientPermits::default());
        let tables = &mut writer.tables;
        let mut ids = Vec::with_capacity(c.counters.len());
        for name in &c.counters {
            let zone = tables.zones.intern(&name.zone);
            let permit_type = tables.types.intern(&name.permit_type);
            let before = tables.counters.len();
            let id = tables.counter(client, zone, permit_type);
            if id as usize != before {
                return Err(SnapshotError::DuplicateCounter {
                    client: code(),
                    zone: name.zone.clone(),
                    permit_type: name.permit_type.clone(),
                });
            }
            ids.push(id);
        }
        let n = c.uuid_revisions.len();
        if c.uuid_counters.len() != n || c.uuid_ids.len() != n * 16 {
            return Err(SnapshotError::Columns(code()));
        }
        let live = |counter: u32| match counter {
            0 => Ok(None),
            n => ids
                .get(n as usize - 1)
                .map(|&id| Some(id))
                .ok_or(SnapshotError::NoSuchCounter {
                    client: code(),
                    counter: n,
                    counters: ids.len(),
                }),
        };
        let permits = &mut writer.permits[client as usize];
        for ((id, &revision), &counter) in c
            .uuid_ids
            .chunks_exact(16)
            .zip(&c.uuid_revisions)
            .zip(&c.uuid_counters)
        {
            let live = live(counter)?;
            let id = Uuid(id.try_into().expect("chunks of 16 bytes"));
            if !permits
                .uuids
                .insert_new(id, PermitState::new(revision, live))
            {
                return Err(SnapshotError::DuplicatePermit {
                    client: code(),
                    id: hex::encode(id.0),
                });
            }
            if let Some(counter) = live {
                tables.counters[counter as usize].total += 1;
            }
        }
        for permit in &c.text_permits {
            let live = live(permit.counter)?;
            let state = PermitState::new(permit.revision, live);
            if permits
                .texts
                .insert(permit.id.as_str().into(), state)
                .is_some()
            {
                return Err(SnapshotError::DuplicatePermit {
                    client: code(),
                    id: permit.id.clone(),
                });
            }
            if let Some(counter) = live {
                tables.counters[counter as usize].total += 1;
            }
        }
        tables.states[client as usize].as_of_ms = c.as_of_ms;
        if !c.counters.is_empty() || c.as_of_ms.is_some() {
            tables.mark_dirty(client);
        }
    }
    Ok(writer)
}
