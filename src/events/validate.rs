//! The rules of `spec/events.md` a decoded event must pass, in one place for both decoders: the
//! protobuf reader (`wire.rs`) and serde's JSON mapping (through [`pb::PermitEvent`]) both hand
//! their fields to [`WireEvent`], whose checks pick the [`InvalidEvent`] reason.

use super::{
    Change, EventRef, InvalidEvent, MAX_CLIENT_CHARS, MAX_REFERENCE_ID_CHARS, MAX_TYPE_CHARS,
    MAX_ZONE_CHARS, PermitEvent, pb,
};
use crate::text;

/// A decoded `PermitEvent` that borrows its strings, before validation: what both decoders
/// validate, so the rules live in one place.
#[derive(Debug, Default)]
pub(super) struct WireEvent<'a> {
    pub(super) client: &'a str,
    pub(super) reference_id: &'a str,
    pub(super) revision: u64,
    /// `occurred_at` as (seconds, nanos).
    pub(super) occurred_at: Option<(i64, i32)>,
    pub(super) change: Option<WireChange<'a>>,
}

/// The change a decoded event carries, before validation.
#[derive(Debug)]
pub(super) enum WireChange<'a> {
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

    /// The checked event. `#[inline]`, like `wire::decode`: it was inlined into `decode_protobuf`
    /// while the three shared a file, and must stay so.
    #[inline]
    pub(super) fn validate(self) -> Result<EventRef<'a>, InvalidEvent> {
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

/// A protobuf `Timestamp` as milliseconds since the Unix epoch, saturating.
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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::events::{Encoding, decode, tests::created};

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
}
