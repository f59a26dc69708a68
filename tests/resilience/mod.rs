//! The real-Kafka fixtures, shared by `tests/kafka_e2e.rs` and the resilience tests
//! (`tests/faults.rs`, `tests/soak.rs`): an independent reference model of the five rules of
//! `spec/events.md`, a seeded workload of permit events, topics and an independent producer, the
//! real `permit-stats serve` binary, HTTP helpers, and brokers of the tests' own that can be
//! stopped and started again (`scripts/kafka.sh down` / `up`).
//!
//! Nothing here uses the crate's projection, generator or producer: the answer a test expects is
//! computed by [`Model`], which follows the rules literally, event by event, in the order the
//! events were produced. That order is each permit's order on its partition (records are keyed
//! by reference id, or pinned to a partition by the test), and a permit's state depends only on
//! its own events, so the model's final state is what a correct projection holds.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use permit_stats::{auth, events::pb};
use prost::Message as _;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use rdkafka::{
    ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The broker gate.
// ---------------------------------------------------------------------------------------------

/// The shared real broker's address; `None` (after a loud notice) when a developer runs the
/// tests without one. In CI a missing broker is a failure.
pub fn bootstrap() -> Option<String> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b.trim().to_owned()),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "real-Kafka tests need KAFKA_BOOTSTRAP; run them through scripts/kafka.sh run -- cargo test"
            );
            eprintln!(
                "\n!! SKIPPED: real-Kafka test (KAFKA_BOOTSTRAP is not set). This is NOT evidence\n\
                 !! of anything. Run: scripts/kafka.sh run -- cargo test --test {} -- --nocapture\n",
                env!("CARGO_CRATE_NAME")
            );
            None
        }
    }
}

/// A name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::rng().random::<u32>()
    )
}

// ---------------------------------------------------------------------------------------------
// The universe and the reference model.
// ---------------------------------------------------------------------------------------------

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

#[derive(Debug, Clone)]
struct ModelPermit {
    live: bool,
    zone: String,
    permit_type: String,
    /// 0 = no revision stored.
    revision: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOutcome {
    Created,
    Updated,
    Deleted,
    OrphanUpdate,
    OrphanDelete,
    Stale,
}

/// The five rules, literally, over a `HashMap` of (client, reference id).
#[derive(Debug, Default, Clone)]
pub struct Model {
    permits: HashMap<(String, String), ModelPermit>,
    /// Newest `occurred_at` (ms) among the events applied to each client.
    pub as_of_ms: HashMap<String, i64>,
    /// Outcomes so far, for the event counters of `/metrics`.
    pub outcomes: HashMap<&'static str, u64>,
}

impl ModelOutcome {
    /// The label of the event counters of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::OrphanUpdate => "orphan_update",
            Self::OrphanDelete => "orphan_delete",
            Self::Stale => "stale_revision",
        }
    }
}

impl Model {
    /// Applies one valid event.
    pub fn apply(&mut self, event: &pb::PermitEvent) -> ModelOutcome {
        use pb::permit_event::Change;
        let key = (event.client.clone(), event.reference_id.clone());
        let stored = self.permits.get(&key).cloned();
        // Rule 5 (checked first): both carry a revision and the event's is not greater: stale.
        if let Some(s) = &stored
            && event.revision != 0
            && s.revision != 0
            && event.revision <= s.revision
        {
            return self.count(ModelOutcome::Stale);
        }
        let live = stored.as_ref().filter(|s| s.live);
        let (next, outcome) = match event
            .change
            .as_ref()
            .expect("generated events have a change")
        {
            // Rule 1: live with exactly these fields.
            Change::Created(c) => (
                Some((c.zone.clone(), c.permit_type.clone())),
                ModelOutcome::Created,
            ),
            Change::Updated(u) => match live {
                // Rule 2: merge the present fields.
                Some(s) => (
                    Some((
                        u.zone.clone().unwrap_or_else(|| s.zone.clone()),
                        u.permit_type
                            .clone()
                            .unwrap_or_else(|| s.permit_type.clone()),
                    )),
                    ModelOutcome::Updated,
                ),
                // Rule 3: unknown or deleted: a create when it carries zone and type.
                None => match (&u.zone, &u.permit_type) {
                    (Some(z), Some(t)) => (Some((z.clone(), t.clone())), ModelOutcome::Updated),
                    _ => return self.count(ModelOutcome::OrphanUpdate),
                },
            },
            Change::Deleted(_) => match live {
                Some(_) => (None, ModelOutcome::Deleted),
                // Rule 4.
                None => return self.count(ModelOutcome::OrphanDelete),
            },
        };
        let revision = if event.revision != 0 {
            event.revision
        } else {
            stored.as_ref().map_or(0, |s| s.revision)
        };
        let state = match next {
            Some((zone, permit_type)) => ModelPermit {
                live: true,
                zone,
                permit_type,
                revision,
            },
            None => {
                let s = stored.expect("a delete applies only to a live permit");
                ModelPermit {
                    live: false,
                    revision,
                    ..s
                }
            }
        };
        self.permits.insert(key, state);
        if let Some(at) = &event.occurred_at {
            let ms = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
            let entry = self.as_of_ms.entry(event.client.clone()).or_insert(ms);
            *entry = (*entry).max(ms);
        }
        self.count(outcome)
    }

    fn count(&mut self, outcome: ModelOutcome) -> ModelOutcome {
        *self.outcomes.entry(outcome.label()).or_default() += 1;
        outcome
    }

    /// Whether the permit is live.
    pub fn is_live(&self, client: &str, id: &str) -> bool {
        self.permits
            .get(&(client.to_owned(), id.to_owned()))
            .is_some_and(|p| p.live)
    }

    /// Live permits of every client.
    pub fn live_permits(&self) -> usize {
        self.permits.values().filter(|p| p.live).count()
    }

    /// The non-zero counters of one client, sorted by zone then type in byte order (`String`'s
    /// `Ord` is byte order); only the given zones when `zones` is `Some`.
    pub fn rows(&self, client: &str, zones: Option<&[&str]>) -> Vec<(String, String, u64)> {
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for ((c, _), p) in &self.permits {
            if c == client && p.live && zones.is_none_or(|z| z.contains(&p.zone.as_str())) {
                *counts
                    .entry((p.zone.clone(), p.permit_type.clone()))
                    .or_default() += 1;
            }
        }
        counts.into_iter().map(|((z, t), n)| (z, t, n)).collect()
    }

    /// The exact response body the stats request must answer.
    pub fn body(&self, client: &str, zones: Option<&[&str]>) -> String {
        let mut out = String::from("{\"data\":[");
        for (i, (zone, permit_type, total)) in self.rows(client, zones).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write!(
                out,
                "{{\"type\":{},\"zone\":{},\"total\":\"{total}\"}}",
                json_string(permit_type),
                json_string(zone)
            )
            .expect("writing to a String");
        }
        out.push_str("]}");
        out
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

// ---------------------------------------------------------------------------------------------
// The workload.
// ---------------------------------------------------------------------------------------------

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
pub struct Workload {
    rng: StdRng,
    /// The reference state after every record made so far.
    pub model: Model,
    permits: Vec<GenPermit>,
    history: Vec<Record>,
    history_events: Vec<pb::PermitEvent>,
    clock_ms: i64,
    ghosts: usize,
    bad_seq: usize,
    /// When set, records not pinned otherwise go to `fnv(key) % n`.
    pin_modulo: Option<i32>,
    /// Bad records made so far, by kind.
    pub bad_made: BTreeMap<Bad, usize>,
    /// Good records made so far.
    pub good_made: usize,
}

impl Workload {
    /// `permits` permits spread over [`CLIENTS`].
    pub fn new(seed: u64, permits: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let permits = (0..permits)
            .map(|i| GenPermit {
                client: CLIENTS[i % CLIENTS.len()],
                id: reference_id(&mut rng, i),
                revisioned: rng.random_range(0..10) != 0,
                next_revision: 1,
                partition: None,
            })
            .collect();
        Self {
            rng,
            model: Model::default(),
            permits,
            history: Vec::new(),
            history_events: Vec::new(),
            // 2026-01-05T08:00:00Z
            clock_ms: 1_767_600_000_000,
            ghosts: 0,
            bad_seq: 0,
            pin_modulo: None,
            bad_made: BTreeMap::new(),
            good_made: 0,
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
                client: CLIENTS[i % CLIENTS.len()],
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

    /// A good record: applied to the model; JSON, protobuf with or without the header.
    fn good(&mut self, event: pb::PermitEvent, partition: Option<i32>) -> Record {
        self.model.apply(&event);
        self.good_made += 1;
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
            self.good_made += 1;
            return self.history[i].clone();
        }
        if roll < 45 {
            self.ghosts += 1;
            let client = CLIENTS[self.ghosts % CLIENTS.len()];
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
            return self.good(event, None);
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
        let permit = &mut self.permits[index];
        let revision = if permit.revisioned {
            let r = permit.next_revision;
            permit.next_revision += 1 + u64::from(self.rng.random_range(0..8u8) == 0);
            // Now and then an event repeats an older revision: stale, must be skipped.
            if self.rng.random_range(0..40) == 0 && r > 2 {
                r - 2
            } else {
                r
            }
        } else {
            0
        };
        let event = self.event(client, &id, revision, change);
        self.good(event, pinned)
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

// ---------------------------------------------------------------------------------------------
// Kafka: topics, an independent producer, a reader.
// ---------------------------------------------------------------------------------------------

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

/// Creates a topic with `partitions` partitions.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(bootstrap)
        .create_topics([&topic], &options)
        .await
        .expect("create_topics request")
    {
        result.unwrap_or_else(|(t, code)| panic!("cannot create topic {t}: {code}"));
    }
}

/// Grows a topic to `total` partitions.
pub async fn add_partitions(bootstrap: &str, name: &str, total: usize) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(bootstrap)
        .create_partitions([&NewPartitions::new(name, total)], &options)
        .await
        .expect("create_partitions request")
    {
        result.unwrap_or_else(|(t, code)| panic!("cannot add partitions to {t}: {code}"));
    }
}

/// Deletes a topic, ignoring failures (clean-up only).
pub async fn delete_topic(bootstrap: &str, name: &str) {
    let _ = admin(bootstrap)
        .delete_topics(&[name], &AdminOptions::new())
        .await;
}

/// Where each record landed, by its index in what was sent.
type Landed = Arc<Mutex<Vec<Option<(i32, i64)>>>>;

struct Deliveries {
    landed: Landed,
    failed: AtomicUsize,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        match result {
            Ok(message) => {
                let mut landed = self.landed.lock().expect("not poisoned");
                landed[*index] = Some((message.partition(), message.offset()));
            }
            Err((e, _)) => {
                eprintln!("test producer: delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes `records` in order (keyed, idempotent, acks=all) at `rate` records per second (0: as
/// fast as possible), waits for every acknowledgement, and returns where each one landed.
/// `message.timeout.ms` is long, so records written while the broker is down wait in the
/// producer and arrive once it is back (that is what a real producer does, too).
pub fn produce_blocking(
    bootstrap: &str,
    topic: &str,
    records: &[Record],
    rate: f64,
) -> Vec<(i32, i64)> {
    let landed: Landed = Arc::new(Mutex::new(vec![None; records.len()]));
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "240000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries {
            landed: Arc::clone(&landed),
            failed: AtomicUsize::new(0),
        })
        .expect("test producer");
    let started = Instant::now();
    for (i, record) in records.iter().enumerate() {
        if rate > 0.0 {
            // Pacing, not synchronization: the stream is meant to take this long.
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            while Instant::now() < due {
                producer.poll(Duration::from_millis(1));
            }
        }
        let mut base = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(record.key.as_str())
            .payload(record.payload.as_slice());
        if let Some(ct) = record.content_type {
            base = base.headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(ct),
            }));
        }
        if let Some(p) = record.partition {
            base = base.partition(p);
        }
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("test producer: cannot enqueue: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(240))
        .expect("test producer: flush");
    assert_eq!(
        producer.context().failed.load(Ordering::Relaxed),
        0,
        "every record must be delivered"
    );
    let landed = landed.lock().expect("not poisoned");
    landed
        .iter()
        .map(|l| l.expect("every record was acknowledged"))
        .collect()
}

/// [`produce_blocking`] on a blocking thread.
pub async fn produce(bootstrap: &str, topic: &str, records: Vec<Record>) -> Vec<(i32, i64)> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || produce_blocking(&bootstrap, &topic, &records, 0.0))
        .await
        .expect("producer thread")
}

/// [`produce_blocking`] at `rate` on a thread of its own, for streams that run while the test
/// does other things.
pub fn produce_in_background(
    bootstrap: &str,
    topic: &str,
    records: Vec<Record>,
    rate: f64,
) -> thread::JoinHandle<Vec<(i32, i64)>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    thread::spawn(move || produce_blocking(&bootstrap, &topic, &records, rate))
}

/// Every record of `topic` up to its high watermarks, read from the beginning, once at least
/// `at_least` are there (or the deadline passes).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("resilience-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let deadline = Instant::now() + within;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = HashMap::new();
        let mut total = 0;
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            total += usize::try_from(high - low).expect("non-negative");
            if high > low {
                ends.insert(p, high);
            }
        }
        if total < at_least && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for &p in ends.keys() {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::with_capacity(total);
        while !ends.is_empty() {
            assert!(
                Instant::now() < deadline + Duration::from_secs(30),
                "could not read {topic} to its end"
            );
            if let Some(result) = consumer.poll(Duration::from_millis(100)) {
                let message = result.expect("read a record");
                if ends
                    .get(&message.partition())
                    .is_some_and(|&end| message.offset() + 1 >= end)
                {
                    ends.remove(&message.partition());
                }
                out.push(message.detach());
            }
        }
        return out;
    }
}

// ---------------------------------------------------------------------------------------------
// A broker of the test's own, which it may stop and start again.
// ---------------------------------------------------------------------------------------------

/// At most one private broker at a time: the machine has two cores, and each is a JVM.
static PRIVATE_BROKERS: Mutex<()> = Mutex::new(());

/// A real Kafka broker started by `scripts/kafka.sh start DIR` for one test; stopped (and its
/// folder removed) on drop.
pub struct PrivateBroker {
    /// Its run folder.
    pub dir: PathBuf,
    /// Its bootstrap address.
    pub bootstrap: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

fn run_script(args: &[&str]) -> String {
    let output = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka.sh");
    assert!(
        output.status.success(),
        "scripts/kafka.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl PrivateBroker {
    /// Starts one (waits its turn if another test holds one).
    pub fn start() -> Self {
        let turn = PRIVATE_BROKERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = std::env::temp_dir().join(unique("permit-stats-broker"));
        let out = run_script(&["start", dir.to_str().expect("utf-8 path")]);
        let bootstrap = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("KAFKA_BOOTSTRAP="))
            .unwrap_or_else(|| panic!("no KAFKA_BOOTSTRAP in {out:?}"))
            .to_owned();
        Self {
            dir,
            bootstrap,
            _turn: turn,
        }
    }

    /// Stops the broker (SIGTERM, or SIGKILL with `kill`), keeping its data and ports.
    pub fn down(&self, kill: bool) {
        let dir = self.dir.to_str().expect("utf-8 path");
        if kill {
            run_script(&["down", "--kill", dir]);
        } else {
            run_script(&["down", dir]);
        }
    }

    /// Starts it again on the same ports with the same data; returns once it answers.
    pub fn up(&self) {
        run_script(&["up", self.dir.to_str().expect("utf-8 path")]);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// The service under test: the real binary.
// ---------------------------------------------------------------------------------------------

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh one.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Writes a token file with one token per client of [`CLIENTS`].
pub fn write_tokens(dir: &Path) -> (PathBuf, HashMap<String, String>) {
    write_tokens_for(dir, &CLIENTS, |_| "resilience".to_owned())
}

/// Writes a token file with one token per client, each named by `name(client)`.
pub fn write_tokens_for(
    dir: &Path,
    clients: &[&str],
    name: impl Fn(&str) -> String,
) -> (PathBuf, HashMap<String, String>) {
    let mut text = String::new();
    let mut tokens = HashMap::new();
    for &client in clients {
        let token = auth::generate();
        text.push_str(&auth::entry_for(&token, client, &name(client)).expect("entry"));
        tokens.insert(client.to_owned(), token);
    }
    let path = dir.join("tokens.toml");
    fs::write(&path, text).expect("write token file");
    (path, tokens)
}

/// A running `permit-stats serve`; SIGTERM (SIGKILL after 10 s) on drop, its log printed when
/// the test fails.
pub struct Service {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    log: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl Service {
    /// Starts the binary against `bootstrap`/`topic` with the token file and extra flags; its
    /// output goes to a log file in `dir`.
    pub fn start(bootstrap: &str, topic: &str, tokens: &Path, dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let log = dir.join(format!("service-{port}.log"));
        let log_file = fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_permit-stats"))
            .args(["serve", "--brokers", bootstrap, "--topic", topic])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tokens")
            .arg(tokens)
            .args(extra)
            .env("RUST_LOG", "info,librdkafka=warn")
            .env_remove("PERMIT_STATS_DEMO")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start permit-stats serve");
        Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            addr: format!("127.0.0.1:{port}"),
            log,
            started: Instant::now(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 60 lines of its log.
    pub fn log_tail(&self) -> String {
        let Ok(file) = fs::File::open(&self.log) else {
            return String::new();
        };
        let lines: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Panics, with its log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "permit-stats exited unexpectedly ({status}); its log:\n{}",
                self.log_tail()
            );
        }
    }

    /// Sends a signal (`TERM`, `KILL`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `within` for the process to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then up to 10 s; the exit status, or `None` if it had to be killed.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(10));
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// Resident memory of the process, in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if self.child.is_some() {
            self.terminate();
        }
        if panicking {
            eprintln!(
                "---- permit-stats log ({}) ----\n{}\n----",
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.
// ---------------------------------------------------------------------------------------------

/// One answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// `X-Stats-Lag` as a number.
    pub fn lag(&self) -> u64 {
        self.header("x-stats-lag")
            .unwrap_or_else(|| panic!("no X-Stats-Lag on a {} answer", self.status))
            .parse()
            .expect("X-Stats-Lag is a number")
    }
}

/// An HTTP client without proxies.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// `Err` when the connection was refused or reset (not listening).
pub async fn try_send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
            Ok(Answer {
                status,
                headers,
                body,
            })
        }
        Err(e) if e.is_connect() => Err(e.to_string()),
        Err(e) => panic!("HTTP request failed: {e}"),
    }
}

/// The stats request of one client.
pub async fn stats(
    http: &reqwest::Client,
    base: &str,
    client: &str,
    token: &str,
    zones: Option<&str>,
) -> Answer {
    try_send(stats_request(http, base, client, token, zones))
        .await
        .expect("the service is listening")
}

/// The stats request of one client, to send.
pub fn stats_request(
    http: &reqwest::Client,
    base: &str,
    client: &str,
    token: &str,
    zones: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut body = serde_json::json!({ "apiToken": token });
    if let Some(zones) = zones {
        body["zones"] = Value::from(zones);
    }
    http.post(format!("{base}/api/{client}/v1/permits/stats"))
        .header("Accept", "application/json")
        .json(&body)
}

/// A GET.
pub async fn get(http: &reqwest::Client, url: String) -> Answer {
    try_send(http.get(url))
        .await
        .expect("the service is listening")
}

/// Sums the samples of `name` whose labels contain `filter`.
pub fn metric(page: &str, name: &str, filter: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(filter))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("unparsable sample: {l}"))
        })
        .sum()
}

/// How a wait for the exact answer went.
#[derive(Debug, Default)]
pub struct Converged {
    /// Answers seen, by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Time until every client's answer was exact with `X-Stats-Lag: 0`.
    pub after: Duration,
    /// The final bodies, by client.
    pub bodies: HashMap<String, Vec<u8>>,
}

/// Polls every client's stats until each body equals the model's, byte for byte, with
/// `X-Stats-Lag: 0`. Any status other than 200 (or 503 while `allow_503`, i.e. before the
/// first ready) fails the test at once; so does the deadline, with the differences.
pub async fn wait_exact(
    service: &mut Service,
    http: &reqwest::Client,
    tokens: &HashMap<String, String>,
    model: &Model,
    within: Duration,
    allow_503: bool,
) -> Converged {
    let started = Instant::now();
    let mut seen = Converged::default();
    loop {
        service.assert_running();
        let mut done = true;
        let mut behind = Vec::new();
        for client in CLIENTS {
            let request = stats_request(http, &service.base, client, &tokens[client], None);
            let Ok(answer) = try_send(request).await else {
                // Not listening yet: only a start may see that.
                assert!(
                    allow_503 && seen.statuses.is_empty(),
                    "the service stopped listening"
                );
                done = false;
                break;
            };
            *seen.statuses.entry(answer.status).or_default() += 1;
            match answer.status {
                200 => {
                    let expected = model.body(client, None);
                    let exact = answer.text() == expected && answer.lag() == 0;
                    if exact {
                        seen.bodies.insert(client.to_owned(), answer.body.clone());
                    } else {
                        behind.push((client, answer.lag(), answer.text(), expected));
                    }
                    done &= exact;
                }
                503 if allow_503 && !seen.statuses.contains_key(&200) => done = false,
                other => panic!(
                    "{client}: the stats request answered {other}: {}",
                    answer.text()
                ),
            }
        }
        if done {
            seen.after = started.elapsed();
            return seen;
        }
        if started.elapsed() > within {
            let mut report = String::new();
            for (client, lag, got, want) in behind {
                let _ = writeln!(
                    report,
                    "{client} (X-Stats-Lag {lag}):\n  got  {got}\n  want {want}"
                );
            }
            panic!(
                "not exact within {within:?} (statuses {:?}):\n{report}",
                seen.statuses
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh topic named `{name}-…` with `partitions` partitions, a temporary folder, and a token
/// file for [`CLIENTS`] in it: (topic, folder, token file, tokens by client).
pub async fn topic_and_tokens(
    bootstrap: &str,
    name: &str,
    partitions: i32,
) -> (String, TempDir, PathBuf, HashMap<String, String>) {
    let topic = unique(name);
    create_topic(bootstrap, &topic, partitions).await;
    let dir = TempDir::new(name);
    let (tokens_path, tokens) = write_tokens(&dir.0);
    (topic, dir, tokens_path, tokens)
}

/// Waits (off the async threads) for a [`produce_in_background`] writer to finish.
pub async fn join_writer(writer: thread::JoinHandle<Vec<(i32, i64)>>) {
    tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("writer");
}

/// SIGTERM; the service must exit 0.
pub fn assert_clean_exit(service: &mut Service) {
    let status = service.terminate();
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
}

/// A flag a background task sets when it should stop.
pub type StopFlag = Arc<AtomicBool>;
