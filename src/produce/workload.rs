//! The deterministic workload: an endless iterator of permit event records decided by a seed.
//!
//! [`Workload`] keeps a population of at most `permits` live permits and draws, per event,
//! roughly 55% creates of new permits (while fewer than `permits` are live; otherwise an update),
//! 30% updates (a third move zone, a sixth change type, the rest change only vendor details such
//! as the licence plate or end time) and 15% deletes. The population first ramps up and then
//! churns at about 15% creates, 70% updates and 15% deletes. A deleted permit may come back later
//! as a new permit with a new reference id. No clock and no I/O: only a seeded [`StdRng`], and a
//! [`Clock`] that is part of the spec.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::events::{Change, Encoding, InvalidEvent, MAX_CLIENT_CHARS, PermitEvent, pb};

/// How record values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Every value is protobuf (`application/x-protobuf`).
    Protobuf,
    /// Every value is canonical proto3 JSON (`application/json`).
    Json,
    /// Each value is protobuf or JSON, about half each.
    Mixed,
}

/// What a [`Workload`] generates.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    /// Most permits live at once; at least 1.
    pub permits: u32,
    /// Number of zones, named `Lot 01`, `Lot 02`, ...; at least 1.
    pub zones: u32,
    /// Client codes the permits are spread over; at least one, each 1 to 50 characters.
    pub clients: Vec<String>,
    /// Seed of the generator.
    pub seed: u64,
    /// Fraction of records that repeat the previous good record exactly.
    pub duplicates: f64,
    /// Fraction of records that are garbage.
    pub bad_records: f64,
    /// Encoding of the values.
    pub format: Format,
    /// The events' `occurred_at`.
    pub clock: Clock,
}

impl Default for WorkloadSpec {
    /// The defaults of `permit-stats produce`.
    fn default() -> Self {
        Self {
            permits: 1_000,
            zones: 20,
            clients: vec!["OC-TOMA".to_owned()],
            seed: 42,
            duplicates: 0.0,
            bad_records: 0.0,
            format: Format::Protobuf,
            clock: Clock::default(),
        }
    }
}

impl WorkloadSpec {
    /// The `serve --demo` workload: one client, the other defaults, and a clock that starts now
    /// and ticks at the demo's default rate of 20 records a second, so event times look current.
    pub fn demo(client: &str) -> Self {
        Self {
            clients: vec![client.to_owned()],
            clock: Clock::starting_now(20.0),
            ..Self::default()
        }
    }

    /// Refuses a spec that cannot generate what it says: no permits, zones or clients, a client
    /// code the service would reject, or fractions outside 0 to 1 or adding up to more than 1.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.permits == 0 {
            return Err(SpecError::NoPermits);
        }
        if self.zones == 0 {
            return Err(SpecError::NoZones);
        }
        if self.clients.is_empty() {
            return Err(SpecError::NoClients);
        }
        if let Some(bad) = self
            .clients
            .iter()
            .find(|c| c.is_empty() || c.chars().count() > MAX_CLIENT_CHARS)
        {
            return Err(SpecError::InvalidClient(bad.clone()));
        }
        let fraction = |f: f64| (0.0..=1.0).contains(&f);
        if !fraction(self.duplicates)
            || !fraction(self.bad_records)
            || self.duplicates + self.bad_records > 1.0
        {
            return Err(SpecError::InvalidFractions {
                duplicates: self.duplicates,
                bad_records: self.bad_records,
            });
        }
        Ok(())
    }
}

/// The generator's clock: record `i` occurred at `start_ms + i * tick_ms`. It is part of the spec,
/// not read from the system, so that a seed alone decides every byte; the demo may start it at the
/// current time instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Time of the first record, in milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Time between consecutive records, in milliseconds.
    pub tick_ms: i64,
}

impl Clock {
    /// 2026-01-01T00:00:00Z, one second per record.
    pub const FIXED: Self = Self {
        start_ms: 1_767_225_600_000,
        tick_ms: 1_000,
    };

    /// A clock starting at the current time and ticking once per record at `rate` records a
    /// second (0 or less: not ticking), for live demos where event times should look current.
    pub fn starting_now(rate: f64) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let tick_ms = if rate.is_finite() && rate > 0.0 {
            (1_000.0 / rate).round() as i64
        } else {
            0
        };
        Self {
            start_ms: i64::try_from(now.as_millis()).unwrap_or(i64::MAX),
            tick_ms,
        }
    }

    fn at(self, seq: u64) -> i64 {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.start_ms
            .saturating_add(seq.saturating_mul(self.tick_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::FIXED
    }
}

/// Why a [`WorkloadSpec`] cannot generate anything sensible.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// `permits` is 0.
    #[error("the number of permits must be at least 1")]
    NoPermits,
    /// `zones` is 0.
    #[error("the number of zones must be at least 1")]
    NoZones,
    /// `clients` is empty.
    #[error("at least one client code is needed")]
    NoClients,
    /// A client code the service would reject.
    #[error("client code {0:?} is not 1 to {MAX_CLIENT_CHARS} characters")]
    InvalidClient(String),
    /// `duplicates` or `bad_records` outside 0 to 1, or both together above 1.
    #[error(
        "duplicates ({duplicates}) and bad records ({bad_records}) must be fractions adding up to at most 1"
    )]
    InvalidFractions {
        /// The duplicates fraction given.
        duplicates: f64,
        /// The bad records fraction given.
        bad_records: f64,
    },
}

/// One Kafka record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The permit's reference id (empty for a bad record without one).
    pub key: Vec<u8>,
    /// The encoded `PermitEvent`, or garbage.
    pub value: Vec<u8>,
    /// The `content-type` header.
    pub content_type: &'static str,
    /// The event the value decodes to; `None` for a bad record.
    pub event: Option<PermitEvent>,
    /// Whether this is a new event, a re-sent one or garbage.
    pub kind: RecordKind,
}

/// What a [`Record`] is, so that writers can count and tests can check each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A new, valid event.
    Fresh,
    /// An exact copy of the previous valid record.
    Duplicate,
    /// Garbage the service must reject.
    Bad(BadKind),
}

/// The kinds of garbage a workload mixes in, in the order it cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadKind {
    /// The first half of a protobuf value.
    TruncatedProtobuf,
    /// The first half of a JSON value, labelled JSON.
    InvalidJson,
    /// A valid value labelled `text/plain`.
    WrongContentType,
    /// An event with an empty client.
    MissingClient,
    /// An event with an empty reference id.
    MissingReferenceId,
    /// A create with a zone longer than 100 characters.
    ZoneTooLong,
    /// An event with none of created, updated, deleted.
    NoChange,
}

impl BadKind {
    const CYCLE: [Self; 7] = [
        Self::TruncatedProtobuf,
        Self::InvalidJson,
        Self::WrongContentType,
        Self::MissingClient,
        Self::MissingReferenceId,
        Self::ZoneTooLong,
        Self::NoChange,
    ];

    /// The reason the service must reject a record of this kind with.
    pub fn rejection(self) -> InvalidEvent {
        match self {
            Self::TruncatedProtobuf => InvalidEvent::MalformedProtobuf,
            Self::InvalidJson => InvalidEvent::MalformedJson,
            Self::WrongContentType => InvalidEvent::UnsupportedContentType,
            Self::MissingClient => InvalidEvent::MissingClient,
            Self::MissingReferenceId => InvalidEvent::MissingReferenceId,
            Self::ZoneTooLong => InvalidEvent::ZoneTooLong,
            Self::NoChange => InvalidEvent::MissingChange,
        }
    }
}

/// An endless, deterministic stream of permit event records (see the module docs for the mix).
/// Take as many as needed with [`Iterator::take`].
#[derive(Debug, Clone)]
pub struct Workload {
    spec: WorkloadSpec,
    rng: StdRng,
    live: Vec<Permit>,
    seq: u64,
    bad_seq: usize,
    /// Kept only when duplicates are asked for, so that the common case pays no clone.
    last: Option<Record>,
}

/// A live permit: just enough to continue its story consistently.
#[derive(Debug, Clone)]
struct Permit {
    reference_id: String,
    client: usize,
    zone: u32,
    permit_type: PermitType,
    revision: u64,
    end_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PermitType {
    Standard,
    Temp,
    Validator,
}

impl PermitType {
    fn name(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Temp => "temp",
            Self::Validator => "validator",
        }
    }

    /// The vendor's stats are dominated by standard (monthly) permits, then temporary ones.
    fn pick(rng: &mut StdRng) -> Self {
        match rng.random_range(0..10) {
            0..6 => Self::Standard,
            6..9 => Self::Temp,
            _ => Self::Validator,
        }
    }

    /// Another type, weighted as [`PermitType::pick`] would among the remaining two.
    fn other(self, rng: &mut StdRng) -> Self {
        match self {
            Self::Standard if rng.random_bool(0.75) => Self::Temp,
            Self::Standard => Self::Validator,
            Self::Temp if rng.random_bool(6.0 / 7.0) => Self::Standard,
            Self::Temp => Self::Validator,
            Self::Validator if rng.random_bool(2.0 / 3.0) => Self::Standard,
            Self::Validator => Self::Temp,
        }
    }

    /// Start, end (Unix seconds) and price of a permit of this type bought at `at_s`.
    fn terms(self, at_s: i64, rng: &mut StdRng) -> (i64, i64, String) {
        match self {
            Self::Standard => {
                let start = at_s - at_s.rem_euclid(86_400);
                let months = rng.random_range(1..=3);
                let price = [45, 60, 75, 90][rng.random_range(0..4)] * months;
                (start, start + months * 30 * 86_400, format!("{price}.00"))
            }
            Self::Temp => {
                let start = at_s - at_s.rem_euclid(900);
                let half_hours = rng.random_range(1..=16);
                let cents = half_hours * 250;
                (
                    start,
                    start + half_hours * 1_800,
                    format!("{}.{:02}", cents / 100, cents % 100),
                )
            }
            Self::Validator => {
                let start = at_s - at_s.rem_euclid(900);
                (start, start + 2 * 3_600, "0.00".to_owned())
            }
        }
    }
}

/// The share of creates, updates and deletes drawn per event (the rest of 1 is deletes).
const CREATE_SHARE: f64 = 0.55;
const UPDATE_SHARE: f64 = 0.30;

impl Workload {
    /// A workload generating `spec` from its seed. It never fails: a spec that
    /// [`WorkloadSpec::validate`] would refuse is first made usable (at least one permit, zone and
    /// client; fractions clamped into 0 to 1), so callers that build a fixed spec need no error
    /// path. An invalid client code is kept, and its records are then rejected by the service.
    pub fn new(mut spec: WorkloadSpec) -> Self {
        spec.permits = spec.permits.max(1);
        spec.zones = spec.zones.max(1);
        if spec.clients.is_empty() {
            spec.clients = WorkloadSpec::default().clients;
        }
        let clamp = |f: f64| if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
        spec.bad_records = clamp(spec.bad_records);
        spec.duplicates = clamp(spec.duplicates).min(1.0 - spec.bad_records);
        Self {
            rng: StdRng::seed_from_u64(spec.seed),
            live: Vec::new(),
            seq: 0,
            bad_seq: 0,
            last: None,
            spec,
        }
    }

    /// The spec this workload generates.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// How many permits are live after the records generated so far.
    pub fn live_permits(&self) -> usize {
        self.live.len()
    }

    fn fresh(&mut self, at_ms: i64) -> Record {
        use pb::permit_event::Change as Wire;

        let at_s = at_ms.div_euclid(1000);
        let rng = &mut self.rng;
        let roll: f64 = rng.random();
        let room = self.live.len() < self.spec.permits as usize;
        let (permit, change, wire) = if self.live.is_empty() || (roll < CREATE_SHARE && room) {
            let permit_type = PermitType::pick(rng);
            // Min of two draws: low-numbered lots are busier, as the main lots are in practice.
            let zone = rng
                .random_range(0..self.spec.zones)
                .min(rng.random_range(0..self.spec.zones));
            let (start_s, end_s, amount) = permit_type.terms(at_s, rng);
            let permit = Permit {
                reference_id: uuid(rng),
                client: rng.random_range(0..self.spec.clients.len()),
                zone,
                permit_type,
                revision: 1,
                end_s,
            };
            let wire = Wire::Created(pb::PermitCreated {
                zone: zone_name(zone),
                permit_type: permit_type.name().to_owned(),
                permit_no: permit_no(zone, rng),
                licence_plate: licence_plate(rng),
                start_time: vendor_time(start_s),
                end_time: vendor_time(end_s),
                amount,
                currency: "CAD".to_owned(),
            });
            let change = Change::Created {
                zone: zone_name(zone),
                permit_type: permit_type.name().to_owned(),
            };
            self.live.push(permit.clone());
            (permit, change, wire)
        } else if roll < CREATE_SHARE + UPDATE_SHARE {
            let index = rng.random_range(0..self.live.len());
            let permit = &mut self.live[index];
            permit.revision += 1;
            let mut update = pb::PermitUpdated::default();
            let what: f64 = rng.random();
            if what < 1.0 / 3.0 && self.spec.zones > 1 {
                let mut zone = rng.random_range(0..self.spec.zones - 1);
                if zone >= permit.zone {
                    zone += 1;
                }
                permit.zone = zone;
                update.zone = Some(zone_name(zone));
                update.permit_no = Some(permit_no(zone, rng));
            } else if what < 0.5 {
                let permit_type = permit.permit_type.other(rng);
                let (_, end_s, amount) = permit_type.terms(at_s, rng);
                permit.permit_type = permit_type;
                permit.end_s = end_s;
                update.permit_type = Some(permit_type.name().to_owned());
                update.end_time = Some(vendor_time(end_s));
                update.amount = Some(amount);
            } else if rng.random_bool(0.5) {
                update.licence_plate = Some(licence_plate(rng));
            } else {
                permit.end_s += rng.random_range(1..=8) * 1_800;
                update.end_time = Some(vendor_time(permit.end_s));
            }
            let change = Change::Updated {
                zone: update.zone.clone(),
                permit_type: update.permit_type.clone(),
            };
            (permit.clone(), change, Wire::Updated(update))
        } else {
            let index = rng.random_range(0..self.live.len());
            let mut permit = self.live.swap_remove(index);
            permit.revision += 1;
            (permit, Change::Deleted, Wire::Deleted(pb::PermitDeleted {}))
        };

        let client = &self.spec.clients[permit.client];
        let wire = pb::PermitEvent {
            event_id: uuid(rng),
            client: client.clone(),
            reference_id: permit.reference_id.clone(),
            revision: permit.revision,
            occurred_at: Some(timestamp(at_ms)),
            change: Some(wire),
        };
        let event = PermitEvent {
            client: client.clone(),
            reference_id: permit.reference_id.clone(),
            revision: Some(permit.revision),
            occurred_at_ms: Some(at_ms),
            change,
        };
        let (value, content_type) = encode(&wire, self.spec.format, rng);
        Record {
            key: permit.reference_id.into_bytes(),
            value,
            content_type,
            event: Some(event),
            kind: RecordKind::Fresh,
        }
    }

    fn bad(&mut self, at_ms: i64) -> Record {
        let kind = BadKind::CYCLE[self.bad_seq % BadKind::CYCLE.len()];
        self.bad_seq += 1;
        let rng = &mut self.rng;
        let zone = rng.random_range(0..self.spec.zones);
        let mut created = pb::PermitCreated {
            zone: zone_name(zone),
            permit_type: PermitType::pick(rng).name().to_owned(),
            licence_plate: licence_plate(rng),
            ..Default::default()
        };
        if kind == BadKind::ZoneTooLong {
            created.zone =
                format!("{} - overflow parking behind the arena, ", created.zone).repeat(3);
        }
        let mut wire = pb::PermitEvent {
            event_id: uuid(rng),
            client: self.spec.clients[rng.random_range(0..self.spec.clients.len())].clone(),
            reference_id: uuid(rng),
            revision: 1,
            occurred_at: Some(timestamp(at_ms)),
            change: Some(pb::permit_event::Change::Created(created)),
        };
        match kind {
            BadKind::MissingClient => wire.client.clear(),
            BadKind::MissingReferenceId => wire.reference_id.clear(),
            BadKind::NoChange => wire.change = None,
            _ => {}
        }
        let (value, content_type) = match kind {
            // Any strict prefix fails: either a length-delimited field runs past the end, or the
            // change (the last field written) is missing.
            BadKind::TruncatedProtobuf => {
                let mut value = wire.encode_to_vec();
                value.truncate(value.len() / 2);
                (value, Encoding::Protobuf.content_type())
            }
            // A prefix of a JSON object lacks at least its closing brace.
            BadKind::InvalidJson => {
                let mut value = serde_json::to_vec(&wire).unwrap_or_default();
                value.truncate(value.len() / 2);
                (value, Encoding::Json.content_type())
            }
            BadKind::WrongContentType => (encode(&wire, self.spec.format, rng).0, "text/plain"),
            _ => encode(&wire, self.spec.format, rng),
        };
        Record {
            key: wire.reference_id.into_bytes(),
            value,
            content_type,
            event: None,
            kind: RecordKind::Bad(kind),
        }
    }
}

impl Iterator for Workload {
    type Item = Record;

    /// Never `None`: the workload is endless.
    fn next(&mut self) -> Option<Record> {
        let at_ms = self.spec.clock.at(self.seq);
        self.seq += 1;
        let roll: f64 = self.rng.random();
        if roll < self.spec.bad_records {
            return Some(self.bad(at_ms));
        }
        if roll < self.spec.bad_records + self.spec.duplicates {
            if let Some(last) = &self.last {
                return Some(Record {
                    kind: RecordKind::Duplicate,
                    ..last.clone()
                });
            }
        }
        let record = self.fresh(at_ms);
        if self.spec.duplicates > 0.0 {
            self.last = Some(record.clone());
        }
        Some(record)
    }
}

/// Encodes per `format`. JSON falls back to protobuf if the timestamp is outside what RFC 3339
/// can write (a clock run beyond year 9999), since the generator has no error path to report it.
fn encode(wire: &pb::PermitEvent, format: Format, rng: &mut StdRng) -> (Vec<u8>, &'static str) {
    let json = match format {
        Format::Protobuf => false,
        Format::Json => true,
        Format::Mixed => rng.random_bool(0.5),
    };
    if json {
        if let Ok(value) = serde_json::to_vec(wire) {
            return (value, Encoding::Json.content_type());
        }
    }
    (wire.encode_to_vec(), Encoding::Protobuf.content_type())
}

fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // The remainder is below 1000, so the product fits easily.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn zone_name(zone: u32) -> String {
    format!("Lot {:02}", zone + 1)
}

/// Like the vendor's `L4-1138`: the lot, then a serial.
fn permit_no(zone: u32, rng: &mut StdRng) -> String {
    format!("L{}-{}", zone + 1, rng.random_range(1000..10_000))
}

/// Ontario's current format: four letters, three digits.
fn licence_plate(rng: &mut StdRng) -> String {
    let mut plate = String::with_capacity(7);
    for _ in 0..4 {
        plate.push(char::from(b'A' + rng.random_range(0..26u8)));
    }
    for _ in 0..3 {
        plate.push(char::from(b'0' + rng.random_range(0..10u8)));
    }
    plate
}

/// A random (version 4) UUID in lowercase canonical form, drawn from the seeded generator so that
/// reference ids repeat with the seed.
fn uuid(rng: &mut StdRng) -> String {
    let mut bytes: [u8; 16] = rng.random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The vendor's `Y-m-d\TH:i:s` text of a Unix time (taken as UTC, since the vendor's text carries
/// no zone).
fn vendor_time(unix_s: i64) -> String {
    let days = unix_s.div_euclid(86_400);
    let secs = unix_s.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days: exact for every day, without a date library's error path.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::decode;

    fn workload(spec: WorkloadSpec) -> Workload {
        Workload::new(spec)
    }

    fn decoded(record: &Record) -> Result<PermitEvent, InvalidEvent> {
        Encoding::from_content_type(Some(record.content_type.as_bytes()))
            .and_then(|encoding| decode(&record.value, encoding))
    }

    #[test]
    fn the_same_seed_writes_the_same_bytes_and_another_seed_does_not() {
        let spec = WorkloadSpec {
            format: Format::Mixed,
            duplicates: 0.05,
            bad_records: 0.05,
            ..WorkloadSpec::default()
        };
        let a: Vec<Record> = workload(spec.clone()).take(1000).collect();
        let b: Vec<Record> = workload(spec.clone()).take(1000).collect();
        assert_eq!(a, b);
        let c: Vec<Record> = workload(WorkloadSpec { seed: 43, ..spec })
            .take(1000)
            .collect();
        assert_ne!(a[0].value, c[0].value);
        assert!(a.iter().zip(&c).filter(|(a, c)| a.value == c.value).count() < 10);
    }

    #[test]
    fn the_mix_has_realistic_proportions() {
        let mut w = workload(WorkloadSpec::default());
        let mut counts = std::collections::HashMap::new();
        let mut types = std::collections::HashMap::new();
        let mut revisions = std::collections::HashMap::new();
        for record in w.by_ref().take(10_000) {
            let event = record.event.expect("no bad records asked for");
            *counts.entry(event.change.kind()).or_insert(0u32) += 1;
            if let Change::Created { permit_type, .. } = &event.change {
                *types.entry(permit_type.clone()).or_insert(0u32) += 1;
            }
            let last = revisions.insert(event.reference_id.clone(), event.revision);
            assert_eq!(event.revision, Some(last.flatten().unwrap_or(0) + 1));
        }
        let share = |kind| f64::from(counts[kind]) / 10_000.0;
        assert!((0.18..0.35).contains(&share("created")), "{counts:?}");
        assert!((0.50..0.70).contains(&share("updated")), "{counts:?}");
        assert!((0.12..0.18).contains(&share("deleted")), "{counts:?}");
        let created = f64::from(counts["created"]);
        assert!((0.55..0.65).contains(&(f64::from(types["standard"]) / created)));
        assert!((0.25..0.35).contains(&(f64::from(types["temp"]) / created)));
        assert!(w.live_permits() <= 1_000 && w.live_permits() > 900);
    }

    #[test]
    fn updates_move_zones_change_types_or_only_details() {
        let (mut moves, mut retypes, mut details) = (0, 0, 0);
        for record in workload(WorkloadSpec::default()).take(10_000) {
            if let Some(Change::Updated { zone, permit_type }) = record.event.map(|e| e.change) {
                match (zone, permit_type) {
                    (Some(_), None) => moves += 1,
                    (None, Some(_)) => retypes += 1,
                    (None, None) => details += 1,
                    (Some(_), Some(_)) => panic!("an update changes one thing"),
                }
            }
        }
        let total = f64::from(moves + retypes + details);
        assert!((0.28..0.38).contains(&(f64::from(moves) / total)));
        assert!((0.12..0.22).contains(&(f64::from(retypes) / total)));
    }

    #[test]
    fn good_records_decode_to_their_event_and_bad_ones_are_rejected() {
        for format in [Format::Protobuf, Format::Json, Format::Mixed] {
            let spec = WorkloadSpec {
                format,
                bad_records: 0.1,
                clients: vec!["OC-TOMA".into(), "OC-DEMO".into()],
                ..WorkloadSpec::default()
            };
            let mut bad = 0;
            for (i, record) in workload(spec).take(10_000).enumerate() {
                match (&record.event, record.kind) {
                    (Some(event), _) => {
                        assert_eq!(decoded(&record).as_ref(), Ok(event), "record {i}");
                        assert_eq!(record.key, event.reference_id.as_bytes());
                    }
                    (None, RecordKind::Bad(kind)) => {
                        bad += 1;
                        assert_eq!(decoded(&record), Err(kind.rejection()), "record {i}");
                    }
                    (None, kind) => panic!("record {i} of kind {kind:?} has no event"),
                }
            }
            assert!((900..1100).contains(&bad), "{format:?}: {bad} bad");
        }
    }

    #[test]
    fn json_values_use_the_canonical_mapping_and_vendor_fields() {
        let record = workload(WorkloadSpec {
            format: Format::Json,
            ..WorkloadSpec::default()
        })
        .next()
        .expect("endless");
        assert_eq!(record.content_type, "application/json");
        let json: serde_json::Value = serde_json::from_slice(&record.value).expect("json");
        assert_eq!(json["revision"], "1");
        assert_eq!(json["occurredAt"], "2026-01-01T00:00:00+00:00");
        let created = &json["created"];
        assert_eq!(created["currency"], "CAD");
        for field in ["zone", "permitType", "permitNo", "licencePlate", "amount"] {
            assert!(created[field].is_string(), "{field} in {json}");
        }
        let start = created["startTime"].as_str().expect("start time");
        assert!(start.starts_with("2026-01-01T00:00:00") || start.starts_with("2025-12-3"));
        let id = json["referenceId"].as_str().expect("reference id");
        assert_eq!(id.len(), 36);
        assert_eq!(id.as_bytes()[14], b'4');
    }

    #[test]
    fn duplicates_repeat_the_previous_record_exactly() {
        let records: Vec<Record> = workload(WorkloadSpec {
            duplicates: 0.2,
            ..WorkloadSpec::default()
        })
        .take(5_000)
        .collect();
        let mut duplicates = 0;
        for pair in records.windows(2) {
            if pair[1].kind == RecordKind::Duplicate {
                duplicates += 1;
                assert_eq!(pair[1].key, pair[0].key);
                assert_eq!(pair[1].value, pair[0].value);
                assert_eq!(pair[1].content_type, pair[0].content_type);
                assert_eq!(pair[1].event, pair[0].event);
            }
        }
        assert!((800..1200).contains(&duplicates), "{duplicates}");
    }

    #[test]
    fn vendor_time_is_the_civil_date() {
        assert_eq!(vendor_time(0), "1970-01-01T00:00:00");
        assert_eq!(vendor_time(1_767_225_600), "2026-01-01T00:00:00");
        assert_eq!(vendor_time(1_530_522_000), "2018-07-02T09:00:00");
        assert_eq!(vendor_time(951_782_400 + 3_661), "2000-02-29T01:01:01");
    }

    #[test]
    fn invalid_specs_are_refused() {
        let check = |spec: WorkloadSpec| spec.validate().err();
        assert_eq!(
            check(WorkloadSpec {
                permits: 0,
                ..WorkloadSpec::default()
            }),
            Some(SpecError::NoPermits)
        );
        assert_eq!(
            check(WorkloadSpec {
                clients: vec![String::new()],
                ..WorkloadSpec::default()
            }),
            Some(SpecError::InvalidClient(String::new()))
        );
        assert!(
            check(WorkloadSpec {
                duplicates: 0.6,
                bad_records: 0.6,
                ..WorkloadSpec::default()
            })
            .is_some()
        );
    }
}
