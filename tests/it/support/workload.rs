//! The one event generator of the Kafka tests: a seeded stream of permit events over a fixed set
//! of permits (so that memory has a bound), with moves, replacements, deletes and re-creates,
//! orphans, exact redeliveries, stale revisions and, on request, bad records of every kind the
//! service must reject, each made as a Kafka [`Record`] (protobuf with and without the
//! `content-type` header, or canonical JSON).
//!
//! Every good event is applied to the reference [`Model`] as it is made, in the order it will be
//! produced. That order is each permit's order on its partition (records are keyed by reference
//! id, or pinned to a partition by the test), and a permit's state depends only on its own
//! events, so the model's final state is what a correct projection holds. Nothing here uses the
//! crate's own generator or producer.

use std::collections::BTreeMap;

use permit_stats::events::pb;
use prost::Message as _;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

use super::model::Model;

/// Three clients: two of the vendor's spellings (different clients) and a third.
pub const CLIENTS: [&str; 3] = ["OC-TOMA", "OC_TOMA", "OC-UVIC"];

/// Zones with spaces, case twins, a prefix of another, JSON escaping and a non-ASCII byte.
pub const ZONES: [&str; 10] = [
    "Lot 01",
    "Lot 02",
    "Lot 01 East",
    "Red Lot",
    "Street parking",
    "Zone A",
    "zone a",
    "Garage P2",
    "North \"B\" Lot",
    "Zoné",
];

/// The vendor's types.
pub const TYPES: [&str; 3] = ["standard", "temp", "validator"];

/// The bad records of the issue, each with the reason the service must count it under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bad {
    /// A protobuf value cut short.
    TruncatedProtobuf,
    /// Half a JSON document.
    InvalidJson,
    /// A valid JSON event under `content-type: text/plain`.
    WrongContentType,
    /// An event without a client.
    MissingClient,
    /// An event without a reference id.
    MissingReferenceId,
    /// A create whose zone is 101 characters.
    OversizedZone,
    /// An event with no change at all.
    EmptyChange,
}

impl Bad {
    /// Every kind, in the order the workload cycles through them.
    pub const ALL: [Self; 7] = [
        Self::TruncatedProtobuf,
        Self::InvalidJson,
        Self::WrongContentType,
        Self::MissingClient,
        Self::MissingReferenceId,
        Self::OversizedZone,
        Self::EmptyChange,
    ];

    /// The `reason` label of `permit_stats_records_rejected_total` (spec: counted by reason).
    pub fn reason(self) -> &'static str {
        match self {
            Self::TruncatedProtobuf => "malformed_protobuf",
            Self::InvalidJson => "malformed_json",
            Self::WrongContentType => "unsupported_content_type",
            Self::MissingClient => "missing_client",
            Self::MissingReferenceId => "missing_reference_id",
            Self::OversizedZone => "zone_too_long",
            Self::EmptyChange => "missing_change",
        }
    }
}

/// One Kafka record to produce.
#[derive(Debug, Clone)]
pub struct Record {
    /// The key (the reference id for good records).
    pub key: String,
    /// The value.
    pub payload: Vec<u8>,
    /// The `content-type` header, if any.
    pub content_type: Option<&'static str>,
    /// A partition the test pins the record to; `None`: the producer's partitioner decides.
    pub partition: Option<i32>,
    /// `Some` for a bad record.
    pub bad: Option<Bad>,
}

#[derive(Debug)]
struct GenPermit {
    client: &'static str,
    id: String,
    revisioned: bool,
    next_revision: u64,
    /// The partition all of this permit's records go to, when the test pins them.
    partition: Option<i32>,
}

/// A seeded stream of permit events over a fixed set of permits (so that memory has a bound),
/// with moves, replacements, deletes and re-creates, orphans, exact redeliveries and, on
/// request, bad records. Every good event is applied to [`Model`] as it is made.
#[derive(Debug)]
pub struct Workload {
    rng: StdRng,
    /// The clients of the permits and ghosts.
    clients: &'static [&'static str],
    /// The reference state after every record made so far.
    pub model: Model,
    permits: Vec<GenPermit>,
    /// Permits of [`Workload::next_bulk`], kept apart from the main stream's.
    bulk: Vec<GenPermit>,
    history: Vec<Record>,
    history_events: Vec<pb::PermitEvent>,
    clock_ms: i64,
    ghosts: usize,
    bad_seq: usize,
    /// When set, records not pinned otherwise go to `fnv(key) % n`.
    pin_modulo: Option<i32>,
    /// Bad records made so far, by kind.
    pub bad_made: BTreeMap<Bad, usize>,
}

impl Workload {
    /// `permits` permits spread over [`CLIENTS`].
    pub fn new(seed: u64, permits: usize) -> Self {
        Self::over(seed, &CLIENTS, permits)
    }

    /// `permits` permits spread over `clients`.
    pub fn over(seed: u64, clients: &'static [&'static str], permits: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let permits = (0..permits)
            .map(|i| GenPermit {
                client: clients[i % clients.len()],
                id: reference_id(&mut rng, i),
                revisioned: rng.random_range(0..10) != 0,
                next_revision: 1,
                partition: None,
            })
            .collect();
        Self {
            rng,
            clients,
            model: Model::default(),
            permits,
            bulk: Vec::new(),
            history: Vec::new(),
            history_events: Vec::new(),
            // 2026-01-05T08:00:00Z
            clock_ms: 1_767_600_000_000,
            ghosts: 0,
            bad_seq: 0,
            pin_modulo: None,
            bad_made: BTreeMap::new(),
        }
    }

    /// From now on, records not pinned otherwise go to partition `fnv(key) % n`, the same for
    /// every record of a key, whatever the topic's partition count becomes.
    pub fn pin_by_key(&mut self, n: i32) {
        self.pin_modulo = Some(n);
    }

    /// Adds `n` permits whose records all go to the partition `partition_of(i)` chooses.
    pub fn add_pinned_permits(&mut self, n: usize, partition_of: impl Fn(usize) -> i32) {
        let base = self.permits.len();
        for i in 0..n {
            let id = format!("new-{}-{:06}", base, i);
            self.permits.push(GenPermit {
                client: self.clients[i % self.clients.len()],
                id,
                revisioned: true,
                next_revision: 1,
                partition: Some(partition_of(i)),
            });
        }
    }

    /// `n` records, each bad with probability `garbage`.
    pub fn records(&mut self, n: usize, garbage: f64) -> Vec<Record> {
        (0..n).map(|_| self.next(garbage)).collect()
    }

    /// Bad records made so far.
    pub fn bad_total(&self) -> usize {
        self.bad_made.values().sum()
    }

    fn pin(&self, key: &str, own: Option<i32>) -> Option<i32> {
        own.or_else(|| {
            self.pin_modulo.map(|n| {
                let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                i32::try_from(hash % u64::try_from(n).expect("positive")).expect("small")
            })
        })
    }

    fn tick(&mut self) -> pbjson_types::Timestamp {
        self.clock_ms += self.rng.random_range(1..1_500);
        pbjson_types::Timestamp {
            seconds: self.clock_ms.div_euclid(1000),
            nanos: i32::try_from(self.clock_ms.rem_euclid(1000) * 1_000_000).expect("< 1e9"),
        }
    }

    fn zone(&mut self) -> String {
        (*ZONES.choose(&mut self.rng).expect("not empty")).to_owned()
    }

    fn permit_type(&mut self) -> String {
        (*TYPES.choose(&mut self.rng).expect("not empty")).to_owned()
    }

    fn created(&mut self) -> pb::permit_event::Change {
        let n = self.rng.random_range(1000..9999);
        pb::permit_event::Change::Created(pb::PermitCreated {
            zone: self.zone(),
            permit_type: self.permit_type(),
            permit_no: format!("P-{n}"),
            licence_plate: format!("PL{n}X"),
            start_time: "2026-01-05T08:00:00".into(),
            end_time: "2026-01-05T18:00:00".into(),
            amount: format!("{}.50", n % 40),
            currency: "CAD".into(),
        })
    }

    fn event(
        &mut self,
        client: &str,
        id: &str,
        revision: u64,
        change: pb::permit_event::Change,
    ) -> pb::PermitEvent {
        pb::PermitEvent {
            event_id: format!("evt-{:016x}", self.rng.random::<u64>()),
            client: client.to_owned(),
            reference_id: id.to_owned(),
            revision,
            occurred_at: Some(self.tick()),
            change: Some(change),
        }
    }

    /// A good record: applied to the model; JSON, protobuf with or without the header. Kept (in
    /// a bounded history) for exact redeliveries when `keep`.
    fn good(&mut self, event: pb::PermitEvent, partition: Option<i32>, keep: bool) -> Record {
        self.model.apply(&event);
        let (payload, content_type) = match self.rng.random_range(0..6) {
            0..2 => (
                serde_json::to_vec(&event).expect("pbjson serializes"),
                Some("application/json"),
            ),
            2..5 => (event.encode_to_vec(), Some("application/x-protobuf")),
            _ => (event.encode_to_vec(), None),
        };
        let record = Record {
            partition: self.pin(&event.reference_id, partition),
            key: event.reference_id.clone(),
            payload,
            content_type,
            bad: None,
        };
        if !keep {
            return record;
        }
        if self.history.len() < 4096 {
            self.history.push(record.clone());
            self.history_events.push(event);
        } else {
            let i = self.rng.random_range(0..self.history.len());
            self.history[i] = record.clone();
            self.history_events[i] = event;
        }
        record
    }

    /// The next record: bad with probability `garbage`, else a redelivery, an orphan of a
    /// permit that never exists, or the next change of one of the permits.
    pub fn next(&mut self, garbage: f64) -> Record {
        use pb::permit_event::Change;
        if self.rng.random_bool(garbage.clamp(0.0, 1.0)) {
            return self.bad();
        }
        let roll = self.rng.random_range(0..1000);
        if roll < 30 && !self.history.is_empty() {
            // An exact redelivery of an earlier good record, applied again by the model.
            let i = self.rng.random_range(0..self.history.len());
            let event = self.history_events[i].clone();
            self.model.apply(&event);
            return self.history[i].clone();
        }
        if roll < 45 {
            self.ghosts += 1;
            let client = self.clients[self.ghosts % self.clients.len()];
            let id = format!("ghost-{}", self.ghosts);
            let change = if self.rng.random_bool(0.5) {
                Change::Deleted(pb::PermitDeleted {})
            } else {
                Change::Updated(pb::PermitUpdated {
                    zone: Some(self.zone()),
                    ..Default::default()
                })
            };
            let revision = self.rng.random_range(0..3);
            let event = self.event(client, &id, revision, change);
            return self.good(event, None, true);
        }
        let index = self.rng.random_range(0..self.permits.len());
        let (client, id, pinned) = {
            let p = &self.permits[index];
            (p.client, p.id.clone(), p.partition)
        };
        let change = if self.model.is_live(client, &id) {
            match self.rng.random_range(0..100) {
                0..25 => Change::Updated(pb::PermitUpdated {
                    zone: Some(self.zone()),
                    ..Default::default()
                }),
                25..38 => Change::Updated(pb::PermitUpdated {
                    permit_type: Some(self.permit_type()),
                    ..Default::default()
                }),
                38..48 => Change::Updated(pb::PermitUpdated {
                    zone: Some(self.zone()),
                    permit_type: Some(self.permit_type()),
                    ..Default::default()
                }),
                48..60 => Change::Updated(pb::PermitUpdated {
                    licence_plate: Some("NEW123".into()),
                    ..Default::default()
                }),
                60..66 => self.created(),
                _ => Change::Deleted(pb::PermitDeleted {}),
            }
        } else {
            match self.rng.random_range(0..100) {
                0..6 => Change::Deleted(pb::PermitDeleted {}),
                6..12 => Change::Updated(pb::PermitUpdated {
                    permit_type: Some(self.permit_type()),
                    ..Default::default()
                }),
                12..20 => Change::Updated(pb::PermitUpdated {
                    zone: Some(self.zone()),
                    permit_type: Some(self.permit_type()),
                    ..Default::default()
                }),
                _ => self.created(),
            }
        };
        let revision = revision(&mut self.rng, &mut self.permits[index]);
        let event = self.event(client, &id, revision, change);
        self.good(event, pinned, true)
    }

    /// Adds `n` permits of `client` (`bulk-000000`...) for [`Workload::next_bulk`]: a stream of
    /// its own that makes a topic long without adding anything the test looks at closely.
    pub fn add_bulk_permits(&mut self, client: &'static str, n: usize) {
        let base = self.bulk.len();
        self.bulk.extend((base..base + n).map(|i| GenPermit {
            client,
            id: format!("bulk-{i:06}"),
            revisioned: true,
            next_revision: 1,
            partition: None,
        }));
    }

    /// The next record of the bulk permits: a create of one that is not live, else a move or a
    /// delete. Not kept for redeliveries (those are for the main stream).
    pub fn next_bulk(&mut self) -> Record {
        use pb::permit_event::Change;
        let index = self.rng.random_range(0..self.bulk.len());
        let (client, id) = (self.bulk[index].client, self.bulk[index].id.clone());
        let change = if !self.model.is_live(client, &id) {
            Change::Created(pb::PermitCreated {
                zone: self.zone(),
                permit_type: self.permit_type(),
                ..Default::default()
            })
        } else if self.rng.random_range(0..10) < 7 {
            Change::Updated(pb::PermitUpdated {
                zone: Some(self.zone()),
                ..Default::default()
            })
        } else {
            Change::Deleted(pb::PermitDeleted {})
        };
        let revision = revision(&mut self.rng, &mut self.bulk[index]);
        let event = self.event(client, &id, revision, change);
        self.good(event, None, false)
    }

    /// The next bad record, cycling through every kind.
    pub fn bad(&mut self) -> Record {
        let kind = Bad::ALL[self.bad_seq % Bad::ALL.len()];
        self.bad_seq += 1;
        *self.bad_made.entry(kind).or_default() += 1;
        let index = self.rng.random_range(0..self.permits.len());
        let (client, id) = (self.permits[index].client, self.permits[index].id.clone());
        let change = self.created();
        // Revision 0: even a mistaken decode could guard nothing.
        let mut event = self.event(client, &id, 0, change);
        let (payload, content_type) = match kind {
            Bad::TruncatedProtobuf => {
                let mut bytes = event.encode_to_vec();
                bytes.truncate(bytes.len() - 3);
                assert!(pb::PermitEvent::decode(bytes.as_slice()).is_err());
                (bytes, Some("application/x-protobuf"))
            }
            Bad::InvalidJson => {
                let json = serde_json::to_vec(&event).expect("serializes");
                (json[..json.len() / 2].to_vec(), Some("application/json"))
            }
            Bad::WrongContentType => (
                serde_json::to_vec(&event).expect("serializes"),
                Some("text/plain"),
            ),
            Bad::MissingClient => {
                event.client.clear();
                (event.encode_to_vec(), None)
            }
            Bad::MissingReferenceId => {
                event.reference_id.clear();
                (
                    serde_json::to_vec(&event).expect("serializes"),
                    Some("application/json"),
                )
            }
            Bad::OversizedZone => {
                event.change = Some(pb::permit_event::Change::Created(pb::PermitCreated {
                    zone: "Z".repeat(101),
                    permit_type: "temp".into(),
                    ..Default::default()
                }));
                (event.encode_to_vec(), Some("application/x-protobuf"))
            }
            Bad::EmptyChange => {
                event.change = None;
                (event.encode_to_vec(), Some("application/x-protobuf"))
            }
        };
        Record {
            partition: self.pin(&id, None),
            key: id,
            payload,
            content_type,
            bad: Some(kind),
        }
    }
}

/// The revision of a permit's next event: 0 for permits without revisions; else growing, now
/// and then by two, and now and then an older one (stale, must be skipped).
fn revision(rng: &mut StdRng, permit: &mut GenPermit) -> u64 {
    if !permit.revisioned {
        return 0;
    }
    let r = permit.next_revision;
    permit.next_revision += 1 + u64::from(rng.random_range(0..8u8) == 0);
    if rng.random_range(0..40) == 0 && r > 2 {
        r - 2
    } else {
        r
    }
}

/// A seeded reference id: mostly UUIDs, some uppercase or dash-less, some plain codes.
pub fn reference_id(rng: &mut StdRng, i: usize) -> String {
    let uuid = format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>() & 0xfff,
        0x8000 | (rng.random::<u16>() & 0x3fff),
        rng.random::<u64>() & 0xffff_ffff_ffff
    );
    match i % 10 {
        7 => uuid.to_uppercase(),
        8 => uuid.replace('-', ""),
        9 => format!("P-{i:05}"),
        _ => uuid,
    }
}
