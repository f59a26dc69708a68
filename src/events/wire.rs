//! A protobuf reader for `PermitEvent` alone, with prost's exact rules: varints of at most 10
//! bytes, keys that fit 32 bits with a known wire type and a tag above 0, a known field with the
//! wrong wire type refused, every string field (kept or not) valid UTF-8, the last of a repeated
//! scalar wins, a repeated message field merges into the earlier one (the oneof: only when it is
//! the same case, else it starts afresh), unknown fields and groups skipped under prost's
//! recursion limit of 100, and a nested message ending exactly at its length.
//!
//! Why by hand: prost's generated decoder allocates every string of the message, kept or not; this
//! one borrows the few the projection keeps and only checks the others. A property test holds it
//! to prost on generated, damaged and random input.

use super::validate::{WireChange, WireEvent};

/// The value is not a protobuf `PermitEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Malformed;

type Result<T> = std::result::Result<T, Malformed>;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;
/// prost's `RECURSION_LIMIT`.
const DEPTH: u32 = 100;

/// The unread rest of a message (or of a nested one).
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
    /// through [`Self::string`]: building the `&str` costs instructions for nothing.
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

/// Reads one `PermitEvent`. `#[inline]`: in its own file it is no longer inlined into
/// `decode_protobuf`, its one caller, without the hint (codegen units follow modules).
#[inline]
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;

    use crate::events::{Change, Encoding, InvalidEvent, PermitEvent, decode, pb, tests::created};

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
