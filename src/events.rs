//! The permit events: the wire types generated from `proto/`, and the validated domain event the
//! projection applies.
//!
//! A Kafka record is decoded here (protobuf, or protobuf's canonical JSON mapping when its
//! `content-type` header says so) and checked against the rules of `spec/events.md`. Anything that
//! fails becomes an [`InvalidEvent`] whose [`InvalidEvent::reason`] is the metric label under which
//! the record is counted; nothing here panics on any input.
//!
//! This file holds the domain event, its errors and the two entry points; `events/wire.rs` is the
//! hand-written protobuf reader, and `events/validate.rs` the one set of rules both decoders'
//! output passes.

use std::fmt;

mod validate;
mod wire;

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
/// producers, tests and JSON; [`EventRef`] borrows them, from the record it was decoded from or
/// from a buffer they were packed into ([`PermitEvent::map_strings`]). That is how ingest takes
/// protobuf: decoded borrowing from the record, then its kept strings copied into its batch's one
/// buffer, from which the apply thread applies the batch; no `String` per event.
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
/// Ingest does not come this way for protobuf: it copies [`decode_protobuf`]'s borrowed strings
/// straight into its batch's buffer, so no `String` is allocated per event.
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
/// A reader of exactly this message (`events/wire.rs`) that accepts and refuses exactly what
/// prost's generated decoder does (a property test holds the two together), at a fraction of the
/// cost, and allocates nothing.
pub fn decode_protobuf(value: &[u8]) -> Result<EventRef<'_>, InvalidEvent> {
    wire::decode(value)
        .map_err(|wire::Malformed| InvalidEvent::MalformedProtobuf)?
        .validate()
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

    pub(super) fn created() -> pb::PermitEvent {
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
}
