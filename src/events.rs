//! The permit events: the wire types generated from `proto/`, and the validated domain event the
//! projection applies.
//!
//! A Kafka record is decoded here (protobuf, or protobuf's canonical JSON mapping when its
//! `content-type` header says so) and checked against the rules of `spec/events.md`. Anything that
//! fails becomes an [`InvalidEvent`] whose [`InvalidEvent::reason`] is the metric label under which
//! the record is counted; nothing here panics on any input.

use std::fmt;

use crate::text;

/// The types generated from `proto/opscom/permits/v1/events.proto`, with serde implementations of
/// protobuf's canonical JSON mapping (camelCase names, 64-bit integers as strings; snake_case names
/// and numbers also accepted on input).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/opscom.permits.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/opscom.permits.v1.serde.rs"));
}

/// Longest client code, in characters.
pub const MAX_CLIENT_CHARS: usize = 50;
/// Longest reference id, in characters of `[A-Za-z0-9-]`.
pub const MAX_REFERENCE_ID_CHARS: usize = 50;
/// Longest zone name, in characters.
pub const MAX_ZONE_CHARS: usize = 100;
/// Longest permit type, in characters.
pub const MAX_TYPE_CHARS: usize = 50;

/// How a record's value is encoded, from its `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`, and the meaning of a record without the header.
    Protobuf,
    /// `application/json`: the canonical JSON mapping of the same message.
    Json,
}

impl Encoding {
    /// The encoding a `content-type` header value names; parameters such as `; charset=utf-8` are
    /// ignored and the media type is compared case-insensitively.
    pub fn from_content_type(value: Option<&[u8]>) -> Result<Self, InvalidEvent> {
        let Some(value) = value else {
            return Ok(Self::Protobuf);
        };
        let media = value
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if media.eq_ignore_ascii_case(b"application/x-protobuf")
            || media.eq_ignore_ascii_case(b"application/protobuf")
        {
            Ok(Self::Protobuf)
        } else if media.eq_ignore_ascii_case(b"application/json") {
            Ok(Self::Json)
        } else {
            Err(InvalidEvent::UnsupportedContentType)
        }
    }

    /// The header value producers should send for this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

/// A permit event that passed validation: what the projection applies.
///
/// Generic over how it holds its strings: [`PermitEvent`] (the default, `String`) owns them, for
/// producers, tests and JSON; [`EventRef`] borrows them from the record it was decoded from, which
/// is how ingest applies protobuf without copying a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PermitEvent<S = String> {
    /// The client code the permit belongs to.
    pub client: S,
    /// The permit's id within its client.
    pub reference_id: S,
    /// Grows with every change of one permit; `None` when the producer gave none.
    pub revision: Option<u64>,
    /// When the push API accepted the request, in milliseconds since the Unix epoch; ingest falls
    /// back to the Kafka record's timestamp when the event has none.
    pub occurred_at_ms: Option<i64>,
    /// What happened to the permit.
    pub change: Change<S>,
}

/// A validated event whose strings are borrowed.
pub type EventRef<'a> = PermitEvent<&'a str>;

/// The three changes a push API can make. Only the fields that decide a permit's counter (zone
/// and type) are kept: the vendor's other fields never change an answer, so holding them would
/// only cost memory per permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<S = String> {
    /// The permit becomes live with exactly this zone and type.
    Created {
        /// The zone the permit is for.
        zone: S,
        /// The permit type, e.g. `standard`.
        permit_type: S,
    },
    /// Present fields are merged; a changed zone or type moves the permit.
    Updated {
        /// The new zone, if the update carries one.
        zone: Option<S>,
        /// The new type, if the update carries one.
        permit_type: Option<S>,
    },
    /// The permit is gone.
    Deleted,
}

impl<S> Change<S> {
    /// The metric label of this kind of change.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Created { .. } => "created",
            Self::Updated { .. } => "updated",
            Self::Deleted => "deleted",
        }
    }
}

impl<S> PermitEvent<S> {
    /// The same event with each of its strings turned into a `T` by `f` (in the order client,
    /// reference id, zone, type): how an event is borrowed, owned or packed into a buffer.
    pub fn map_strings<'a, T>(&'a self, mut f: impl FnMut(&'a S) -> T) -> PermitEvent<T> {
        PermitEvent {
            client: f(&self.client),
            reference_id: f(&self.reference_id),
            revision: self.revision,
            occurred_at_ms: self.occurred_at_ms,
            change: match &self.change {
                Change::Created { zone, permit_type } => Change::Created {
                    zone: f(zone),
                    permit_type: f(permit_type),
                },
                Change::Updated { zone, permit_type } => Change::Updated {
                    zone: zone.as_ref().map(&mut f),
                    permit_type: permit_type.as_ref().map(&mut f),
                },
                Change::Deleted => Change::Deleted,
            },
        }
    }
}

impl PermitEvent {
    /// The same event, borrowing this one's strings.
    pub fn borrowed(&self) -> EventRef<'_> {
        self.map_strings(String::as_str)
    }
}

impl EventRef<'_> {
    /// The same event with its own copies of the strings.
    pub fn into_owned(self) -> PermitEvent {
        self.map_strings(|s| (*s).to_owned())
    }
}

/// Why a record was rejected. Every variant is a bad record: it changes nothing and is counted
/// under [`InvalidEvent::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum InvalidEvent {
    /// The `content-type` header names neither protobuf nor JSON.
    #[error("unsupported content-type header")]
    UnsupportedContentType,
    /// The value is not a protobuf `PermitEvent`.
    #[error("value is not a protobuf PermitEvent")]
    MalformedProtobuf,
    /// The value is not a JSON `PermitEvent`.
    #[error("value is not a JSON PermitEvent")]
    MalformedJson,
    /// `client` is empty.
    #[error("client is missing")]
    MissingClient,
    /// `client` is longer than 50 characters.
    #[error("client is longer than {MAX_CLIENT_CHARS} characters")]
    ClientTooLong,
    /// `reference_id` is empty.
    #[error("reference id is missing")]
    MissingReferenceId,
    /// `reference_id` is too long or has characters outside `[A-Za-z0-9-]`.
    #[error("reference id is not 1 to {MAX_REFERENCE_ID_CHARS} of [A-Za-z0-9-]")]
    InvalidReferenceId,
    /// None of `created`, `updated` or `deleted` is set.
    #[error("event carries no change")]
    MissingChange,
    /// A created event without a zone, or an update with an empty one.
    #[error("zone is missing")]
    MissingZone,
    /// A zone longer than 100 characters.
    #[error("zone is longer than {MAX_ZONE_CHARS} characters")]
    ZoneTooLong,
    /// A created event without a permit type, or an update with an empty one.
    #[error("permit type is missing")]
    MissingType,
    /// A permit type longer than 50 characters.
    #[error("permit type is longer than {MAX_TYPE_CHARS} characters")]
    TypeTooLong,
}

impl InvalidEvent {
    /// Every reason, for pre-registering metrics so that a zero is visible before the first one.
    pub const ALL: [Self; 12] = [
        Self::UnsupportedContentType,
        Self::MalformedProtobuf,
        Self::MalformedJson,
        Self::MissingClient,
        Self::ClientTooLong,
        Self::MissingReferenceId,
        Self::InvalidReferenceId,
        Self::MissingChange,
        Self::MissingZone,
        Self::ZoneTooLong,
        Self::MissingType,
        Self::TypeTooLong,
    ];

    /// The `reason` label of `permit_stats_records_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnsupportedContentType => "unsupported_content_type",
            Self::MalformedProtobuf => "malformed_protobuf",
            Self::MalformedJson => "malformed_json",
            Self::MissingClient => "missing_client",
            Self::ClientTooLong => "client_too_long",
            Self::MissingReferenceId => "missing_reference_id",
            Self::InvalidReferenceId => "invalid_reference_id",
            Self::MissingChange => "missing_change",
            Self::MissingZone => "missing_zone",
            Self::ZoneTooLong => "zone_too_long",
            Self::MissingType => "missing_type",
            Self::TypeTooLong => "type_too_long",
        }
    }
}

/// Decodes and validates one record value into an event that owns its strings.
///
/// Ingest does not come this way for protobuf: it applies [`decode_protobuf`]'s borrowed event
/// while the record is still held, so no string is copied.
pub fn decode(value: &[u8], encoding: Encoding) -> Result<PermitEvent, InvalidEvent> {
    match encoding {
        Encoding::Protobuf => decode_protobuf(value).map(EventRef::into_owned),
        Encoding::Json => {
            let wire: pb::PermitEvent =
                serde_json::from_slice(value).map_err(|_| InvalidEvent::MalformedJson)?;
            PermitEvent::try_from(wire)
        }
    }
}

/// Decodes and validates a protobuf record value, borrowing the strings the event keeps.
///
/// A reader of exactly this message (`wire::decode`) that accepts and refuses exactly what
/// prost's generated decoder does (a property test holds the two together), at a fraction of the
/// cost, and allocates nothing.
pub fn decode_protobuf(value: &[u8]) -> Result<EventRef<'_>, InvalidEvent> {
    wire::decode(value)
        .map_err(|wire::Malformed| InvalidEvent::MalformedProtobuf)?
        .validate()
}

/// A decoded `PermitEvent` that borrows its strings, before validation: what both decoders
/// validate, so the rules live in one place.
#[derive(Debug, Default)]
struct WireEvent<'a> {
    client: &'a str,
    reference_id: &'a str,
    revision: u64,
    /// `occurred_at` as (seconds, nanos).
    occurred_at: Option<(i64, i32)>,
    change: Option<WireChange<'a>>,
}

#[derive(Debug)]
enum WireChange<'a> {
    Created {
        zone: &'a str,
        permit_type: &'a str,
    },
    Updated {
        zone: Option<&'a str>,
        permit_type: Option<&'a str>,
    },
    Deleted,
}

impl<'a> WireEvent<'a> {
    /// The rules a decoded event must pass, in the order their reasons are reported.
    fn check(&self) -> Result<(), InvalidEvent> {
        if self.client.is_empty() {
            return Err(InvalidEvent::MissingClient);
        }
        if self.client.len() > MAX_CLIENT_CHARS && self.client.chars().count() > MAX_CLIENT_CHARS {
            return Err(InvalidEvent::ClientTooLong);
        }
        if self.reference_id.is_empty() {
            return Err(InvalidEvent::MissingReferenceId);
        }
        if self.reference_id.len() > MAX_REFERENCE_ID_CHARS
            || !text::is_alphanumeric_or_dash(self.reference_id)
        {
            return Err(InvalidEvent::InvalidReferenceId);
        }
        match self.change.as_ref().ok_or(InvalidEvent::MissingChange)? {
            WireChange::Created { zone, permit_type } => {
                check_zone(Some(zone))?;
                check_type(Some(permit_type))?;
            }
            WireChange::Updated { zone, permit_type } => {
                check_zone(*zone)?;
                check_type(*permit_type)?;
            }
            WireChange::Deleted => {}
        }
        Ok(())
    }

    /// The checked event.
    fn validate(self) -> Result<EventRef<'a>, InvalidEvent> {
        self.check()?;
        let change = match self.change {
            Some(WireChange::Created { zone, permit_type }) => {
                Change::Created { zone, permit_type }
            }
            Some(WireChange::Updated { zone, permit_type }) => {
                Change::Updated { zone, permit_type }
            }
            Some(WireChange::Deleted) | None => Change::Deleted,
        };
        Ok(PermitEvent {
            client: self.client,
            reference_id: self.reference_id,
            revision: (self.revision != 0).then_some(self.revision),
            occurred_at_ms: self.occurred_at.map(occurred_at_ms),
            change,
        })
    }
}

fn occurred_at_ms((seconds, nanos): (i64, i32)) -> i64 {
    seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(nanos) / 1_000_000)
}

impl TryFrom<pb::PermitEvent> for PermitEvent {
    type Error = InvalidEvent;

    /// The same rules as the protobuf path (`WireEvent::check`); the strings are moved, not
    /// copied.
    fn try_from(wire: pb::PermitEvent) -> Result<Self, Self::Error> {
        use pb::permit_event::Change as Wire;

        WireEvent {
            client: &wire.client,
            reference_id: &wire.reference_id,
            revision: wire.revision,
            occurred_at: None,
            change: wire.change.as_ref().map(|change| match change {
                Wire::Created(created) => WireChange::Created {
                    zone: &created.zone,
                    permit_type: &created.permit_type,
                },
                Wire::Updated(updated) => WireChange::Updated {
                    zone: updated.zone.as_deref(),
                    permit_type: updated.permit_type.as_deref(),
                },
                Wire::Deleted(_) => WireChange::Deleted,
            }),
        }
        .check()?;
        Ok(Self {
            client: wire.client,
            reference_id: wire.reference_id,
            revision: (wire.revision != 0).then_some(wire.revision),
            occurred_at_ms: wire
                .occurred_at
                .map(|t| occurred_at_ms((t.seconds, t.nanos))),
            change: match wire.change {
                Some(Wire::Created(created)) => Change::Created {
                    zone: created.zone,
                    permit_type: created.permit_type,
                },
                Some(Wire::Updated(updated)) => Change::Updated {
                    zone: updated.zone,
                    permit_type: updated.permit_type,
                },
                Some(Wire::Deleted(_)) | None => Change::Deleted,
            },
        })
    }
}

/// A protobuf reader for `PermitEvent` alone, with prost's exact rules: varints of at most 10
/// bytes, keys that fit 32 bits with a known wire type and a tag above 0, a known field with the
/// wrong wire type refused, every string field (kept or not) valid UTF-8, the last of a repeated
/// scalar wins, a repeated message field merges into the earlier one (the oneof: only when it is
/// the same case, else it starts afresh), unknown fields and groups skipped under prost's
/// recursion limit of 100, and a nested message ending exactly at its length.
mod wire {
    use super::{WireChange, WireEvent};

    /// The value is not a protobuf `PermitEvent`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Malformed;

    type Result<T> = std::result::Result<T, Malformed>;

    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LEN: u8 = 2;
    const START_GROUP: u8 = 3;
    const END_GROUP: u8 = 4;
    const FIXED32: u8 = 5;
    /// prost's `RECURSION_LIMIT`.
    const DEPTH: u32 = 100;

    struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        /// Inlined for its one-byte case (keys and short lengths), nearly every varint here.
        #[inline(always)]
        fn varint(&mut self) -> Result<u64> {
            if let Some((&byte, rest)) = self.buf.split_first()
                && byte < 0x80
            {
                self.buf = rest;
                return Ok(u64::from(byte));
            }
            self.long_varint()
        }

        #[inline(never)]
        fn long_varint(&mut self) -> Result<u64> {
            let mut value = 0u64;
            for (i, &byte) in self.buf.iter().take(10).enumerate() {
                // The tenth byte may only carry the top bit of a u64.
                if i == 9 && byte >= 0x02 {
                    return Err(Malformed);
                }
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte < 0x80 {
                    self.buf = &self.buf[i + 1..];
                    return Ok(value);
                }
            }
            Err(Malformed)
        }

        /// (tag, wire type).
        #[inline(always)]
        fn key(&mut self) -> Result<(u32, u8)> {
            let key = u32::try_from(self.varint()?).map_err(|_| Malformed)?;
            let wire_type = (key & 7) as u8;
            let tag = key >> 3;
            if wire_type > FIXED32 || tag == 0 {
                return Err(Malformed);
            }
            Ok((tag, wire_type))
        }

        #[inline(always)]
        fn bytes(&mut self, wire_type: u8) -> Result<&'a [u8]> {
            if wire_type != LEN {
                return Err(Malformed);
            }
            let len = self.varint()?;
            if len > self.buf.len() as u64 {
                return Err(Malformed);
            }
            let (bytes, rest) = self.buf.split_at(len as usize);
            self.buf = rest;
            Ok(bytes)
        }

        /// A string field: ASCII (nearly every one) is checked a word at a time, where the UTF-8
        /// check of `std` goes byte by byte through strings this short.
        #[inline(always)]
        fn string(&mut self, wire_type: u8) -> Result<&'a str> {
            let bytes = self.bytes(wire_type)?;
            match ascii::AsciiStr::from_ascii(bytes) {
                Ok(text) => Ok(text.as_str()),
                Err(_) => std::str::from_utf8(bytes).map_err(|_| Malformed),
            }
        }

        /// A string field that is not kept: only checked (ASCII first, the common case). Not
        /// through [`Self::string`]: building the `&str` cost 34 more instructions per record.
        fn skip_string(&mut self, wire_type: u8) -> Result<()> {
            let bytes = self.bytes(wire_type)?;
            if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
                Ok(())
            } else {
                Err(Malformed)
            }
        }

        #[inline(always)]
        fn scalar(&mut self, wire_type: u8) -> Result<u64> {
            if wire_type != VARINT {
                return Err(Malformed);
            }
            self.varint()
        }

        /// The body of a nested message field, entered one level deeper.
        fn message(&mut self, wire_type: u8, depth: u32) -> Result<(Reader<'a>, u32)> {
            if depth == 0 {
                return Err(Malformed);
            }
            Ok((
                Reader {
                    buf: self.bytes(wire_type)?,
                },
                depth - 1,
            ))
        }

        fn skip(&mut self, tag: u32, wire_type: u8, depth: u32) -> Result<()> {
            if depth == 0 {
                return Err(Malformed);
            }
            let len = match wire_type {
                VARINT => {
                    self.varint()?;
                    0
                }
                FIXED32 => 4,
                FIXED64 => 8,
                LEN => self.varint()?,
                START_GROUP => loop {
                    let (inner, inner_type) = self.key()?;
                    if inner_type == END_GROUP {
                        if inner != tag {
                            return Err(Malformed);
                        }
                        break 0;
                    }
                    self.skip(inner, inner_type, depth - 1)?;
                },
                _ => return Err(Malformed),
            };
            if len > self.buf.len() as u64 {
                return Err(Malformed);
            }
            self.buf = &self.buf[len as usize..];
            Ok(())
        }
    }

    pub(super) fn decode(value: &[u8]) -> Result<WireEvent<'_>> {
        let mut event = WireEvent::default();
        let mut r = Reader { buf: value };
        while !r.buf.is_empty() {
            let (tag, wire_type) = r.key()?;
            match tag {
                1 => r.skip_string(wire_type)?, // event_id
                2 => event.client = r.string(wire_type)?,
                3 => event.reference_id = r.string(wire_type)?,
                4 => event.revision = r.scalar(wire_type)?,
                5 => {
                    let (mut m, depth) = r.message(wire_type, DEPTH)?;
                    let (seconds, nanos) = event.occurred_at.get_or_insert((0, 0));
                    while !m.buf.is_empty() {
                        let (tag, wire_type) = m.key()?;
                        match tag {
                            1 => *seconds = m.scalar(wire_type)? as i64,
                            2 => *nanos = m.scalar(wire_type)? as i32,
                            _ => m.skip(tag, wire_type, depth)?,
                        }
                    }
                }
                10 => {
                    let (mut m, depth) = r.message(wire_type, DEPTH)?;
                    let (mut zone, mut permit_type) = match &event.change {
                        Some(WireChange::Created { zone, permit_type }) => (*zone, *permit_type),
                        _ => ("", ""),
                    };
                    while !m.buf.is_empty() {
                        let (tag, wire_type) = m.key()?;
                        match tag {
                            1 => zone = m.string(wire_type)?,
                            2 => permit_type = m.string(wire_type)?,
                            3..=8 => m.skip_string(wire_type)?,
                            _ => m.skip(tag, wire_type, depth)?,
                        }
                    }
                    event.change = Some(WireChange::Created { zone, permit_type });
                }
                11 => {
                    let (mut m, depth) = r.message(wire_type, DEPTH)?;
                    let (mut zone, mut permit_type) = match &event.change {
                        Some(WireChange::Updated { zone, permit_type }) => (*zone, *permit_type),
                        _ => (None, None),
                    };
                    while !m.buf.is_empty() {
                        let (tag, wire_type) = m.key()?;
                        match tag {
                            1 => zone = Some(m.string(wire_type)?),
                            2 => permit_type = Some(m.string(wire_type)?),
                            3..=8 => m.skip_string(wire_type)?,
                            _ => m.skip(tag, wire_type, depth)?,
                        }
                    }
                    event.change = Some(WireChange::Updated { zone, permit_type });
                }
                12 => {
                    let (mut m, depth) = r.message(wire_type, DEPTH)?;
                    while !m.buf.is_empty() {
                        let (tag, wire_type) = m.key()?;
                        m.skip(tag, wire_type, depth)?;
                    }
                    event.change = Some(WireChange::Deleted);
                }
                _ => r.skip(tag, wire_type, DEPTH)?,
            }
        }
        Ok(event)
    }
}

/// A present zone must be 1 to 100 characters (a created event's is always present).
fn check_zone(value: Option<&str>) -> Result<(), InvalidEvent> {
    match value {
        Some("") => Err(InvalidEvent::MissingZone),
        Some(z) if z.len() > MAX_ZONE_CHARS && z.chars().count() > MAX_ZONE_CHARS => {
            Err(InvalidEvent::ZoneTooLong)
        }
        _ => Ok(()),
    }
}

/// A present permit type must be 1 to 50 characters (a created event's is always present).
fn check_type(value: Option<&str>) -> Result<(), InvalidEvent> {
    match value {
        Some("") => Err(InvalidEvent::MissingType),
        Some(t) if t.len() > MAX_TYPE_CHARS && t.chars().count() > MAX_TYPE_CHARS => {
            Err(InvalidEvent::TypeTooLong)
        }
        _ => Ok(()),
    }
}

impl From<&PermitEvent> for pb::PermitEvent {
    /// The wire form of a domain event, for producers and tests.
    fn from(event: &PermitEvent) -> Self {
        use pb::permit_event::Change as Wire;
        let change = match &event.change {
            Change::Created { zone, permit_type } => Wire::Created(pb::PermitCreated {
                zone: zone.clone(),
                permit_type: permit_type.clone(),
                ..Default::default()
            }),
            Change::Updated { zone, permit_type } => Wire::Updated(pb::PermitUpdated {
                zone: zone.clone(),
                permit_type: permit_type.clone(),
                ..Default::default()
            }),
            Change::Deleted => Wire::Deleted(pb::PermitDeleted {}),
        };
        Self {
            event_id: String::new(),
            client: event.client.clone(),
            reference_id: event.reference_id.clone(),
            revision: event.revision.unwrap_or(0),
            occurred_at: event.occurred_at_ms.map(|ms| pbjson_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            change: Some(change),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.content_type())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn created() -> pb::PermitEvent {
        pb::PermitEvent {
            client: "OC-TOMA".into(),
            reference_id: "1a9b5375-cb75-4c71-9939-eeae550b09ac".into(),
            revision: 1,
            change: Some(pb::permit_event::Change::Created(pb::PermitCreated {
                zone: "Lot 4".into(),
                permit_type: "temp".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn the_spec_json_example_decodes_like_its_protobuf_twin() {
        let json = br#"{"client":"OC-TOMA","referenceId":"1a9b5375-cb75-4c71-9939-eeae550b09ac","revision":"1",
"created":{"zone":"Lot 4","permitType":"temp","permitNo":"L4-1138","licencePlate":"PL8RDR",
"startTime":"2018-07-02T09:00:00","endTime":"2018-07-02T09:30:00","amount":"14.50","currency":"CAD"}}"#;
        let from_json = decode(json, Encoding::Json).expect("spec example is valid");
        let from_proto =
            decode(&created().encode_to_vec(), Encoding::Protobuf).expect("valid protobuf");
        assert_eq!(from_json, from_proto);
    }

    #[test]
    fn json_accepts_snake_case_names_numbers_and_timestamps() {
        let json = br#"{"client":"C","reference_id":"r-1","revision":7,"occurredAt":"2026-11-29T03:30:44.250Z","updated":{"zone":"Z"}}"#;
        let event = decode(json, Encoding::Json).expect("valid");
        assert_eq!(event.revision, Some(7));
        assert_eq!(event.occurred_at_ms, Some(1_795_923_044_250));
        assert_eq!(
            event.change,
            Change::Updated {
                zone: Some("Z".into()),
                permit_type: None
            }
        );
    }

    #[test]
    fn json_from_a_newer_producer_with_unknown_fields_still_decodes() {
        let json =
            br#"{"client":"C","referenceId":"r-1","futureField":{"x":1},"deleted":{"why":"n/a"}}"#;
        let event = decode(json, Encoding::Json).expect("unknown fields are ignored");
        assert_eq!(event.change, Change::Deleted);
    }

    #[test]
    fn bad_records_are_rejected_with_their_reason() {
        let truncated = &created().encode_to_vec()[..10];
        assert_eq!(
            decode(truncated, Encoding::Protobuf),
            Err(InvalidEvent::MalformedProtobuf)
        );
        assert_eq!(
            decode(b"{not json", Encoding::Json),
            Err(InvalidEvent::MalformedJson)
        );
        let mut e = created();
        e.client.clear();
        assert_eq!(PermitEvent::try_from(e), Err(InvalidEvent::MissingClient));
        let mut e = created();
        e.reference_id = "has space".into();
        assert_eq!(
            PermitEvent::try_from(e),
            Err(InvalidEvent::InvalidReferenceId)
        );
        let mut e = created();
        e.change = Some(pb::permit_event::Change::Created(pb::PermitCreated {
            zone: "z".repeat(101),
            permit_type: "temp".into(),
            ..Default::default()
        }));
        assert_eq!(PermitEvent::try_from(e), Err(InvalidEvent::ZoneTooLong));
        let mut e = created();
        e.change = None;
        assert_eq!(PermitEvent::try_from(e), Err(InvalidEvent::MissingChange));
        let mut e = created();
        e.change = Some(pb::permit_event::Change::Updated(pb::PermitUpdated {
            permit_type: Some(String::new()),
            ..Default::default()
        }));
        assert_eq!(PermitEvent::try_from(e), Err(InvalidEvent::MissingType));
    }

    #[test]
    fn content_type_header_picks_the_decoder() {
        assert_eq!(Encoding::from_content_type(None), Ok(Encoding::Protobuf));
        assert_eq!(
            Encoding::from_content_type(Some(b"Application/JSON; charset=utf-8")),
            Ok(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(Some(b"text/plain")),
            Err(InvalidEvent::UnsupportedContentType)
        );
    }

    mod fast_protobuf_matches_prost {
        use proptest::prelude::*;

        use super::*;

        /// What prost's generated decoder and the validation make of `bytes`.
        fn reference(bytes: &[u8]) -> Result<PermitEvent, InvalidEvent> {
            pb::PermitEvent::decode(bytes)
                .map_err(|_| InvalidEvent::MalformedProtobuf)
                .and_then(PermitEvent::try_from)
        }

        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }

        /// One field: mostly well-formed (known tags, right wire types), sometimes not.
        fn field(depth: u32) -> BoxedStrategy<Vec<u8>> {
            let text = prop_oneof![
                4 => "[a-zA-Z0-9 -]{0,12}".prop_map(String::into_bytes),
                1 => proptest::collection::vec(any::<u8>(), 0..6),
                1 => Just("z".repeat(101).into_bytes()),
            ];
            let leaf = prop_oneof![
                // A length-delimited field: strings and the messages' tags.
                4 => (prop_oneof![1u32..=12, 13u32..=40, Just(536_870_911u32)], text.clone())
                    .prop_map(|(tag, body)| {
                        let mut out = Vec::new();
                        varint(u64::from(tag) << 3 | 2, &mut out);
                        varint(body.len() as u64, &mut out);
                        out.extend(body);
                        out
                    }),
                // A varint field, any tag, sometimes an overlong or overflowing varint.
                2 => (0u32..=14, any::<u64>(), any::<bool>()).prop_map(|(tag, v, long)| {
                    let mut out = Vec::new();
                    varint(u64::from(tag) << 3, &mut out);
                    if long {
                        out.extend([0xff; 9]);
                        out.push((v % 4) as u8);
                    } else {
                        varint(v, &mut out);
                    }
                    out
                }),
                // Any key with any wire type, then a few raw bytes.
                1 => (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..10)).prop_map(
                    |(key, raw)| {
                        let mut out = Vec::new();
                        varint(u64::from(key % 200), &mut out);
                        out.extend(raw);
                        out
                    }
                ),
            ];
            if depth == 0 {
                return leaf.boxed();
            }
            let nested = (
                prop_oneof![Just(5u32), Just(10), Just(11), Just(12), 13u32..=20],
                proptest::collection::vec(field(depth - 1), 0..5),
                -2i64..=2,
            )
                .prop_map(|(tag, fields, skew)| {
                    let body: Vec<u8> = fields.concat();
                    let mut out = Vec::new();
                    varint(u64::from(tag) << 3 | 2, &mut out);
                    varint((body.len() as i64 + skew).max(0) as u64, &mut out);
                    out.extend(body);
                    out
                });
            let group = (
                13u32..=20,
                proptest::collection::vec(field(depth - 1), 0..3),
                any::<bool>(),
            )
                .prop_map(|(tag, fields, matched)| {
                    let mut out = Vec::new();
                    varint(u64::from(tag) << 3 | 3, &mut out);
                    out.extend(fields.concat());
                    varint(
                        u64::from(if matched { tag } else { tag + 1 }) << 3 | 4,
                        &mut out,
                    );
                    out
                });
            prop_oneof![5 => leaf, 3 => nested, 1 => group].boxed()
        }

        fn message() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(field(2), 0..8).prop_map(|fields| fields.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4_000))]

            #[test]
            fn on_generated_messages(bytes in message()) {
                prop_assert_eq!(decode(&bytes, Encoding::Protobuf), reference(&bytes));
            }

            #[test]
            fn on_valid_events_with_fields_added(
                kind in 0u8..3,
                zone in proptest::option::of("[a-z ]{0,3}"),
                before in message(),
                after in message(),
            ) {
                let mut event = created();
                event.change = Some(match kind {
                    0 => pb::permit_event::Change::Created(pb::PermitCreated {
                        zone: zone.clone().unwrap_or_default(),
                        permit_type: "temp".into(),
                        ..Default::default()
                    }),
                    1 => pb::permit_event::Change::Updated(pb::PermitUpdated {
                        zone,
                        ..Default::default()
                    }),
                    _ => pb::permit_event::Change::Deleted(pb::PermitDeleted {}),
                });
                let bytes = [before, event.encode_to_vec(), after].concat();
                prop_assert_eq!(decode(&bytes, Encoding::Protobuf), reference(&bytes));
            }

            #[test]
            fn on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                prop_assert_eq!(decode(&bytes, Encoding::Protobuf), reference(&bytes));
            }

            #[test]
            fn on_damaged_valid_events(cut in 0usize..200, flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..3)) {
                let mut bytes = created().encode_to_vec();
                for (at, value) in flips {
                    let at = at % bytes.len();
                    bytes[at] = value;
                }
                bytes.truncate(cut.max(1).min(bytes.len()));
                prop_assert_eq!(decode(&bytes, Encoding::Protobuf), reference(&bytes));
            }
        }

        #[test]
        fn on_deep_groups_and_merged_fields() {
            // 100 nested unknown groups are prost's limit; one more is refused by both.
            for depth in [99, 100, 101] {
                let mut bytes = created().encode_to_vec();
                bytes.extend(std::iter::repeat_n(0xab, depth)); // tag 21, start group
                bytes.extend(std::iter::repeat_n(0xac, depth)); // tag 21, end group
                assert_eq!(
                    decode(&bytes, Encoding::Protobuf),
                    reference(&bytes),
                    "depth {depth}"
                );
            }
            // A second `created` merges into the first; an `updated` in between starts afresh.
            let first = pb::PermitEvent {
                change: Some(pb::permit_event::Change::Created(pb::PermitCreated {
                    zone: "A".into(),
                    ..Default::default()
                })),
                ..created()
            };
            let second = pb::PermitEvent {
                client: String::new(),
                reference_id: String::new(),
                revision: 0,
                change: Some(pb::permit_event::Change::Created(pb::PermitCreated {
                    permit_type: "t".into(),
                    ..Default::default()
                })),
                ..Default::default()
            };
            let bytes = [first.encode_to_vec(), second.encode_to_vec()].concat();
            let event = decode(&bytes, Encoding::Protobuf).expect("valid");
            assert_eq!(Ok(event.clone()), reference(&bytes));
            assert_eq!(
                event.change,
                Change::Created {
                    zone: "A".into(),
                    permit_type: "t".into()
                }
            );
        }
    }
}
