//! The read model: live permits per (client, zone, type), kept exact under the rules of
//! `spec/events.md`, and published per client as an immutable, ready-encoded view.
//!
//! Two halves with one owner each:
//! - the *write side* (behind a mutex that only ingest takes): interned names, the per-permit state
//!   (reference id -> counter, revision, tombstone) that makes duplicates, moves, orphans and stale
//!   revisions exact, and the counters;
//! - the *read side*: a `DashMap` from client code to an `Arc<ClientView>`, replaced whole when a
//!   batch changed that client. A view holds the exact response body, so a stats request is a
//!   lookup and a cheap clone of bytes, and no answer ever mixes two states of one permit move.
//!
//! Sized for millions of permits (numbers in BENCHMARKS.md): a permit with a canonical UUID id costs
//! one 28-byte slot of its client's permit table (`table.rs`: the UUID's 16 bytes, a 64-bit
//! revision and a 32-bit counter id, which is also the tombstone mark): measured 60 bytes resident
//! per permit at 1M permits and 47 at 10M, growth slack included. Names are interned once;
//! counters are indexed by id, so an event costs one probe of the permit table and no allocation,
//! and a batch starts the probes of 32 events at once so that their cache misses overlap.
//! Publishing a client re-sorts its rows only when a row was added, and copies each row's
//! pre-encoded JSON.
//!
//! Pure and synchronous: no tokio, rdkafka or axum here.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
    ops::Range,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use bytes::Bytes;
use dashmap::DashMap;

use crate::events::{Change, EventRef, PermitEvent};

mod table;

use table::{Hashed, Probe, UuidTable};

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

/// One client's published state: immutable, replaced whole when a batch changes it.
#[derive(Debug)]
pub struct ClientView {
    /// Every (zone, type) this client ever had, sorted by zone then type in byte order; shared
    /// by the client's views until a row is added.
    layout: Arc<Layout>,
    /// The total of each row of `layout`, zeros included.
    totals: Vec<u64>,
    /// `{"data":[...]}` with one row per non-zero counter, in the order of `layout`.
    body: Bytes,
    /// Per zone of `layout.zones`: where its rows sit in `body` (a contiguous run, commas between
    /// rows included), empty when none of them is non-zero.
    zone_runs: Vec<Range<u32>>,
    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    as_of_ms: Option<i64>,
    /// `as_of_ms` as RFC 3339 text, formatted once per publish rather than once per request.
    as_of_rfc3339: Option<Bytes>,
    /// The rows with their names, made on first use (by the scrape-time gauges), not per publish.
    rows: OnceLock<Vec<Row>>,
}

/// A client's rows in answer order, and its zones.
#[derive(Debug, Default)]
struct Layout {
    /// Per row: its zone (an index into `zone_names`), its type name, and its JSON up to the total.
    rows: Vec<LayoutRow>,
    /// The distinct zones, in order.
    zone_names: Vec<Arc<str>>,
    /// Zone name -> index into `zone_names`.
    zone_index: FastMap<Arc<str>, u32>,
}

#[derive(Debug)]
struct LayoutRow {
    counter: CounterId,
    zone: u32,
    permit_type: Arc<str>,
    /// `{"type":"..","zone":"..","total":"`: everything of the row before the number.
    prefix: Box<[u8]>,
}

const BODY_START: &[u8] = br#"{"data":["#;
const BODY_END: &[u8] = b"]}";
const EMPTY_BODY: &[u8] = br#"{"data":[]}"#;
const ROW_END: &[u8] = br#""}"#;

impl ClientView {
    /// Every counter of this client, zeros included, sorted by zone then type.
    pub fn counters(&self) -> &[Row] {
        self.rows.get_or_init(|| {
            self.layout
                .rows
                .iter()
                .zip(&self.totals)
                .map(|(row, &total)| Row {
                    zone: Arc::clone(&self.layout.zone_names[row.zone as usize]),
                    permit_type: Arc::clone(&row.permit_type),
                    total,
                })
                .collect()
        })
    }

    /// Newest event time applied to this client, in milliseconds since the Unix epoch.
    pub fn as_of_ms(&self) -> Option<i64> {
        self.as_of_ms
    }

    /// [`Self::as_of_ms`] as RFC 3339 text (UTC, e.g. `2026-11-29T03:30:44.25Z`): the
    /// `X-Stats-As-Of` header, ready to hand out without formatting or copying.
    pub fn as_of_rfc3339(&self) -> Option<Bytes> {
        self.as_of_rfc3339.clone()
    }

    /// The stats response body: every zone when `zones` is `None`, else only the named zones
    /// (exact match; unknown names and duplicates add nothing). Rows stay sorted by zone, then type.
    pub fn body(&self, zones: Option<&[&str]>) -> Bytes {
        let Some(zones) = zones else {
            return self.body.clone();
        };
        // Zone indexes follow the answer's order, so sorting them sorts the runs.
        let mut picked: Vec<u32> = Vec::with_capacity(zones.len());
        for zone in zones {
            if let Some(&index) = self.layout.zone_index.get(*zone)
                && !self.zone_runs[index as usize].is_empty()
            {
                picked.push(index);
            }
        }
        match picked.len() {
            0 => return Bytes::from_static(EMPTY_BODY),
            1 => {}
            _ => {
                picked.sort_unstable();
                picked.dedup();
            }
        }
        let runs = picked.iter().map(|&i| {
            let run = &self.zone_runs[i as usize];
            run.start as usize..run.end as usize
        });
        let len: usize = runs.clone().map(|run| run.len() + 1).sum();
        let mut out = Vec::with_capacity(BODY_START.len() + len + BODY_END.len());
        out.extend_from_slice(BODY_START);
        for (i, run) in runs.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.body[run]);
        }
        out.extend_from_slice(BODY_END);
        Bytes::from(out)
    }

    /// Encodes the client's current totals along its layout.
    fn build(layout: Arc<Layout>, counters: &[Counter], as_of_ms: Option<i64>) -> Self {
        let totals: Vec<u64> = layout
            .rows
            .iter()
            .map(|row| counters[row.counter as usize].total)
            .collect();
        let mut zone_runs = vec![0..0; layout.zone_names.len()];
        let mut body = Vec::with_capacity(
            BODY_START.len()
                + BODY_END.len()
                + layout
                    .rows
                    .iter()
                    .zip(&totals)
                    .filter(|(_, total)| **total > 0)
                    .map(|(row, _)| row.prefix.len() + 24)
                    .sum::<usize>(),
        );
        body.extend_from_slice(BODY_START);
        let mut digits = itoa::Buffer::new();
        for (row, &total) in layout.rows.iter().zip(&totals) {
            if total == 0 {
                continue;
            }
            if body.len() > BODY_START.len() {
                body.push(b',');
            }
            let start = body.len() as u32;
            body.extend_from_slice(&row.prefix);
            body.extend_from_slice(digits.format(total).as_bytes());
            body.extend_from_slice(ROW_END);
            // Rows are sorted by zone, so each zone's rows form one run.
            let run = &mut zone_runs[row.zone as usize];
            if run.start == run.end {
                *run = start..body.len() as u32;
            } else {
                run.end = body.len() as u32;
            }
        }
        body.extend_from_slice(BODY_END);
        Self {
            layout,
            totals,
            body: Bytes::from(body),
            zone_runs,
            as_of_ms,
            as_of_rfc3339: as_of_ms.and_then(rfc3339),
            rows: OnceLock::new(),
        }
    }
}

impl Layout {
    /// The layout of `ids`: sorted by zone then type in byte order, each row's JSON prefix encoded
    /// once.
    fn new(ids: &[CounterId], counters: &[Counter], zones: &Interner, types: &Interner) -> Self {
        let mut ids = ids.to_vec();
        ids.sort_unstable_by(|&a, &b| {
            let (a, b) = (&counters[a as usize], &counters[b as usize]);
            (
                zones.name(a.zone).as_bytes(),
                types.name(a.permit_type).as_bytes(),
            )
                .cmp(&(
                    zones.name(b.zone).as_bytes(),
                    types.name(b.permit_type).as_bytes(),
                ))
        });
        let mut layout = Self::default();
        for id in ids {
            let counter = &counters[id as usize];
            let zone_name = zones.name(counter.zone);
            let permit_type = types.name(counter.permit_type);
            if layout.zone_names.last() != Some(zone_name) {
                let index = layout.zone_names.len() as u32;
                layout.zone_names.push(Arc::clone(zone_name));
                layout.zone_index.insert(Arc::clone(zone_name), index);
            }
            let mut prefix = Vec::with_capacity(32 + zone_name.len() + permit_type.len());
            prefix.extend_from_slice(br#"{"type":"#);
            write_json_string(&mut prefix, permit_type);
            prefix.extend_from_slice(br#","zone":"#);
            write_json_string(&mut prefix, zone_name);
            prefix.extend_from_slice(br#","total":""#);
            layout.rows.push(LayoutRow {
                counter: id,
                zone: layout.zone_names.len() as u32 - 1,
                permit_type: Arc::clone(permit_type),
                prefix: prefix.into_boxed_slice(),
            });
        }
        layout
    }
}

fn rfc3339(ms: i64) -> Option<Bytes> {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let text = at
        .format(&time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(Bytes::from(text))
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
    /// dropped. Holds the write side until then; ingest applies each record as it polls it, so an
    /// event can borrow its strings from the record.
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
        self.lock()
            .permits
            .iter()
            .map(|p| p.uuids.len() + p.texts.len())
            .sum()
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

type ClientId = u32;
type NameId = u32;
type CounterId = u32;

/// A canonical lowercase UUID (the vendor's ids in practice), as its 16 bytes. Any other id is kept
/// as text; the two never collide, since only canonical text is compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uuid([u8; 16]);

impl Hash for Uuid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // One 128-bit write instead of a length-prefixed slice.
        state.write_u128(u128::from_ne_bytes(self.0));
    }
}

fn parse_canonical_uuid(id: &str) -> Option<Uuid> {
    canonical_digits(id).and_then(hex_digits).map(Uuid)
}

/// The 32 digits of an id shaped like a canonical UUID (36 bytes, dashes at 8, 13, 18 and 23), as
/// four words of eight in text order, the first digit in the lowest byte; not yet checked.
fn canonical_digits(id: &str) -> Option<[u64; 4]> {
    let bytes: &[u8; 36] = id.as_bytes().try_into().ok()?;
    if bytes[8] != b'-' || bytes[13] != b'-' || bytes[18] != b'-' || bytes[23] != b'-' {
        return None;
    }
    let four = |at: usize| {
        u64::from(u32::from_le_bytes([
            bytes[at],
            bytes[at + 1],
            bytes[at + 2],
            bytes[at + 3],
        ]))
    };
    Some([
        four(0) | four(4) << 32,
        four(9) | four(14) << 32,
        four(19) | four(24) << 32,
        four(28) | four(32) << 32,
    ])
}

/// [`canonical_digits`] to their 16 bytes, or `None` if any digit is not one of `0-9a-f`: sixteen
/// digits per step in SSE2 registers ([`crate::simd`]). The whole parse is then ~70 instructions
/// instead of ~145 with `hex_digits_swar`, which had become the largest part of applying an
/// event.
#[cfg(target_feature = "sse2")]
fn hex_digits(words: [u64; 4]) -> Option<[u8; 16]> {
    use crate::text::simd::{m128i, splat, within};
    use safe_arch::{
        bitand_m128i, bitor_m128i, move_mask_i8_m128i, pack_i16_to_u8_m128i, set_i64_m128i,
        set_splat_i16_m128i, shl_imm_u16_m128i, shr_imm_u16_m128i, sub_i8_m128i,
    };
    // Sixteen digits to eight bytes, each in the low byte of a 16-bit lane; and a mask with a bit
    // per digit that is one of `0-9a-f`.
    let half = |first: u64, second: u64| -> (m128i, i32) {
        let text = set_i64_m128i(second as i64, first as i64);
        let letter = within(text, b'a', b'f');
        let valid = move_mask_i8_m128i(bitor_m128i(within(text, b'0', b'9'), letter));
        // '0'-'9' less '0' are 0-9; 'a'-'f' less '0' are 49-54, and 39 less again 10-15.
        let nibbles = sub_i8_m128i(
            sub_i8_m128i(text, splat(b'0')),
            bitand_m128i(letter, splat(39)),
        );
        // Each lane holds two digits, the first in its low byte: to first * 16 + second.
        let pairs = bitor_m128i(
            shl_imm_u16_m128i::<4>(bitand_m128i(nibbles, set_splat_i16_m128i(0x0f))),
            shr_imm_u16_m128i::<8>(nibbles),
        );
        (pairs, valid)
    };
    let (low, low_valid) = half(words[0], words[1]);
    let (high, high_valid) = half(words[2], words[3]);
    // Every lane is below 256, so the saturating pack is a plain one: the 16 bytes in order.
    (low_valid & high_valid == 0xffff).then(|| pack_i16_to_u8_m128i(low, high).into())
}

#[cfg(not(target_feature = "sse2"))]
use hex_digits_swar as hex_digits;

/// [`hex_digits`] eight digits per step in a general-purpose register: all four words converted,
/// then one check (a branch per word cost more than the conversions).
#[cfg(any(test, not(target_feature = "sse2")))]
fn hex_digits_swar(words: [u64; 4]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut invalid = 0;
    for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
        let (value, bad) = hex_word(word);
        chunk.copy_from_slice(&value.to_le_bytes());
        invalid |= bad;
    }
    (invalid == 0).then_some(out)
}

/// Eight lowercase hex digits (the first in the lowest byte) to their four bytes (the first in the
/// lowest byte), and a mask that is nonzero if any is not one of `0-9a-f` (the value is then
/// meaningless): all eight at once, in a few dozen instructions, where a loop over them was a
/// tenth of applying an event.
#[cfg(any(test, not(target_feature = "sse2")))]
fn hex_word(text: u64) -> (u32, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // With every byte below 0x80, `byte + (0x80 - n)` sets that byte's high bit exactly when
    // `byte >= n`, and never carries into the next byte; a byte of 0x80 or more is caught by the
    // first term of `invalid`, whatever the sums do.
    let at_least = |n: u8| text.wrapping_add(ONES * u64::from(0x80 - n));
    let digit = at_least(b'0') & !at_least(b'9' + 1) & HIGH;
    let letter = at_least(b'a') & !at_least(b'f' + 1) & HIGH;
    let invalid = (text & HIGH) | ((digit | letter) ^ HIGH);
    // '0'-'9' are 0x30-0x39 and 'a'-'f' are 0x61-0x66: the low nibble, plus 9 for a letter.
    let nibbles = (text & (ONES * 0x0f)) + (letter >> 7) * 9;
    // Each pair of bytes to one, first digit high; then the four low bytes side by side.
    let pairs = ((nibbles & 0x000f_000f_000f_000f) << 4) | ((nibbles >> 8) & 0x000f_000f_000f_000f);
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    ((quads | (quads >> 16)) as u32, invalid)
}

/// `a == b` for the short names of events (client codes, zones, types): two word compares where
/// comparing slices calls `memcmp`, which was about 40% of finding an event's counter.
fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |text: &[u8], at: usize| {
        u64::from_le_bytes(text[at..at + 8].try_into().unwrap_or_default())
    };
    let half = |text: &[u8], at: usize| {
        u32::from_le_bytes(text[at..at + 4].try_into().unwrap_or_default())
    };
    match n {
        // Two words, overlapping when shorter than 16, cover every byte.
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => a == b,
    }
}

/// A permit's state in 12 bytes: its counter while live (`NOT_LIVE` once deleted), and the newest
/// applied revision (0 = none), split in two halves so the slot needs only 4-byte alignment. A
/// deleted permit stays as a tombstone only while it has a revision to guard; without one it is
/// forgotten, which rules 1-4 treat exactly like a deleted permit.
#[derive(Debug, Clone, Copy)]
struct PermitState {
    revision: [u32; 2],
    counter: CounterId,
}

const NOT_LIVE: CounterId = CounterId::MAX;

impl PermitState {
    fn new(revision: u64, counter: Option<CounterId>) -> Self {
        Self {
            revision: [revision as u32, (revision >> 32) as u32],
            counter: counter.unwrap_or(NOT_LIVE),
        }
    }

    fn revision(self) -> u64 {
        u64::from(self.revision[0]) | (u64::from(self.revision[1]) << 32)
    }

    fn live(self) -> Option<CounterId> {
        (self.counter != NOT_LIVE).then_some(self.counter)
    }
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

/// The live permits of one (client, zone, type).
#[derive(Debug)]
struct Counter {
    client: ClientId,
    zone: NameId,
    permit_type: NameId,
    total: u64,
}

/// One client's permits: UUID ids compacted, any other id as text.
#[derive(Default)]
struct ClientPermits {
    uuids: UuidTable,
    texts: FastMap<Box<str>, PermitState>,
}

/// One client's counters and publishing state.
#[derive(Default)]
struct ClientState {
    /// This client's counters, in creation order.
    counters: Vec<CounterId>,
    /// The answer order of `counters`; `None` after a counter was added, until the next publish.
    layout: Option<Arc<Layout>>,
    as_of_ms: Option<i64>,
    dirty: bool,
}

/// Everything an event may change besides its permit's own slot.
#[derive(Default)]
struct Tables {
    clients: Interner,
    zones: Interner,
    types: Interner,
    states: Vec<ClientState>,
    counters: Vec<Counter>,
    counter_ids: FastMap<(ClientId, NameId, NameId), CounterId>,
    /// The same counters, found by the names themselves (see `named_counter`); a counter enters
    /// here the first time a create looks it up by name.
    by_names: hashbrown::HashTable<CounterId>,
    names_hasher: Hasher,
    dirty: Vec<ClientId>,
    /// The client of the previous event: consecutive events of one client skip the name lookup.
    last_client: Option<ClientId>,
}

#[derive(Default)]
struct Writer {
    tables: Tables,
    /// Per client, indexed like `tables.states`.
    permits: Vec<ClientPermits>,
}

/// What an event does to its permit's slot.
enum Step {
    Skip(SkipReason),
    /// Store this state (`None`: forget the permit).
    Store(Option<PermitState>, Kind),
}

/// Events whose permit slots are touched together before any of them is applied: enough to keep
/// many cache misses in flight, few enough that the touched slots are still cached when used.
/// (32 beat 16 by 3-10% once the keys were hashed before the touch loop; before, the loop's
/// hashing filled the core's window and 32 gained nothing.)
const GROUP: usize = 32;

impl Writer {
    /// Applies events in order, counting what they did into `tally`.
    ///
    /// [`Self::key`], [`Self::apply`] and [`Tables::step`] are forced inline into this loop: as
    /// calls they cost ~100 instructions per mixed event (callgrind; the plain `#[inline]` hint
    /// was not taken), in prologues and in results passed through memory.
    fn apply_all(&mut self, events: &[EventRef<'_>], tally: &mut Tally) {
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
    fn key(&mut self, event: &EventRef<'_>) -> (ClientId, Option<Hashed>) {
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
    fn apply(&mut self, client: ClientId, uuid: Option<Hashed>, event: &EventRef<'_>) -> Outcome {
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
    fn publish(&mut self, views: &DashMap<Arc<str>, Arc<ClientView>, Hasher>) {
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
}

impl Tables {
    fn client(&mut self, name: &str) -> ClientId {
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

    fn counter(&mut self, client: ClientId, zone: NameId, permit_type: NameId) -> CounterId {
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

    fn mark_dirty(&mut self, client: ClientId) {
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

    proptest::proptest! {
        /// The parse (SSE2 where the target has it) and the word-at-a-time one both agree with a
        /// plain parse on canonical ids, on ids with one byte changed to anything, and on random
        /// text of about the right length.
        #[test]
        fn uuid_parse_agrees_with_a_plain_parse(
            bytes in proptest::array::uniform16(proptest::prelude::any::<u8>()),
            at in 0usize..36,
            // Any byte, or often one at the edge of a digit range.
            with in proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::sample::select(b"/09:`afgAFG-".to_vec()),
            ],
            noise in "[-0-9a-fA-Gé]{34,36}",
        ) {
            let plain = |id: &str| -> Option<[u8; 16]> {
                let dashes = id.len() == 36
                    && [8, 13, 18, 23].iter().all(|&i| id.as_bytes()[i] == b'-');
                let digits: String = id
                    .char_indices()
                    .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
                    .map(|(_, c)| c)
                    .collect();
                if !dashes
                    || !digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return None;
                }
                hex::decode(digits).ok()?.try_into().ok()
            };
            let canonical = format!(
                "{}-{}-{}-{}-{}",
                hex::encode(&bytes[0..4]),
                hex::encode(&bytes[4..6]),
                hex::encode(&bytes[6..8]),
                hex::encode(&bytes[8..10]),
                hex::encode(&bytes[10..16])
            );
            let swar = |id: &str| canonical_digits(id).and_then(hex_digits_swar);
            proptest::prop_assert_eq!(parse_canonical_uuid(&canonical).map(|u| u.0), Some(bytes));
            proptest::prop_assert_eq!(swar(&canonical), Some(bytes));
            let mut changed = canonical.into_bytes();
            changed[at] = with;
            if let Ok(changed) = String::from_utf8(changed) {
                proptest::prop_assert_eq!(
                    parse_canonical_uuid(&changed).map(|u| u.0),
                    plain(&changed)
                );
                proptest::prop_assert_eq!(swar(&changed), plain(&changed));
            }
            proptest::prop_assert_eq!(parse_canonical_uuid(&noise).map(|u| u.0), plain(&noise));
            proptest::prop_assert_eq!(swar(&noise), plain(&noise));
        }

        /// Every length it has a path for (0-3, 4-7, 8-16, longer), each byte changed in turn.
        #[test]
        fn same_text_is_equality(text in "[a-c0 é]{0,24}", at in 0usize..24, with in "[a-d é]") {
            proptest::prop_assert!(same_text(&text, &text.clone()));
            let mut changed = text.clone();
            if let Some((i, c)) = text.char_indices().nth(at) {
                changed.replace_range(i..i + c.len_utf8(), &with);
            } else {
                changed.push_str(&with);
            }
            proptest::prop_assert_eq!(same_text(&text, &changed), text == changed);
            proptest::prop_assert_eq!(same_text(&changed, &text), text == changed);
        }
    }

    #[test]
    fn uuid_ids_are_compacted_without_colliding_with_text() {
        let id = "1a9b5375-cb75-4c71-9939-eeae550b09ac";
        let uuid = parse_canonical_uuid(id).expect("canonical");
        assert_eq!(hex::encode(uuid.0), id.replace('-', ""));
        assert_eq!(parse_canonical_uuid(&id.to_uppercase()), None);
        assert_eq!(parse_canonical_uuid(&id.replace('-', "_")), None);
        assert_eq!(parse_canonical_uuid(&id[1..]), None);
        let p = Projection::new();
        p.apply(&created(id, "z", "t"));
        p.apply(&created(&id.to_uppercase(), "z", "t"));
        assert_eq!(counts(&p), vec![row("z", "t", 2)]);
    }

    #[test]
    fn a_view_keeps_rows_sorted_when_rows_are_added_later() {
        let p = Projection::new();
        p.apply(&created("1", "b", "temp"));
        p.apply(&created("2", "c", "temp"));
        p.apply(&created("3", "a", "x"));
        p.apply(&updated("3", Some("b"), Some("a")));
        assert_eq!(
            counts(&p),
            vec![row("b", "a", 1), row("b", "temp", 1), row("c", "temp", 1)]
        );
        let view = p.view("C").expect("view");
        assert_eq!(
            view.body(Some(&["c", "b"])),
            view.body(None),
            "runs joined in answer order"
        );
        assert_eq!(
            view.counters().len(),
            4,
            "the emptied (a, x) row stays at zero"
        );
    }

    #[test]
    fn as_of_is_rfc3339_text() {
        let p = Projection::new();
        let mut e = created("a", "z", "t");
        e.occurred_at_ms = Some(1_795_923_044_250);
        p.apply(&e);
        let view = p.view("C").expect("view");
        assert_eq!(
            view.as_of_rfc3339().as_deref(),
            Some(&b"2026-11-29T03:30:44.25Z"[..])
        );
        assert_eq!(Projection::new().view("C").map(|v| v.as_of_ms()), None);
    }
}
