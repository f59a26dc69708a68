//! The checkpoint object: self-describing, versioned, checksummed, and canonical (the same state
//! at the same offsets is always the same bytes, whoever writes it).
//!
//! ```text
//! PERMIT-STATS CHECKPOINT\n        magic line: what this is, for a human with `head -2`
//! {"format":1,"topic":...}\n        header: one line of JSON (see [`Header`])
//! <body_bytes of protobuf>          the state: proto/permit_stats/checkpoint/v1/checkpoint.proto
//! <32 bytes>                        SHA-256 of everything before
//! ```
//!
//! Reading checks, in order: the magic, the format version (before anything else of the header
//! is trusted, so that another version is named as such rather than as corruption), the length,
//! the checksum, then the header and the body. A checkpoint that fails any of them is never used.
//!
//! Its name in the store is `<topic>/<covered>-<digest>.checkpoint`: `covered` (records below the
//! partitions' offsets, 20 digits) sorts the newest last, and `digest` (the trailer's first 16
//! hex digits) tells two states at the same offsets apart, so that identical checkpoints from two
//! replicas land on the same name with the same bytes.

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    kafka::PartitionMark,
    projection::{ClientSnapshot, CounterName, Snapshot, SnapshotError, TextPermit},
};

mod wire {
    #![allow(missing_docs, missing_debug_implementations, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/permit_stats.checkpoint.v1.rs"));
}

/// The first line of every checkpoint.
pub const MAGIC: &[u8] = b"PERMIT-STATS CHECKPOINT\n";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The extension of a checkpoint object's name.
pub const EXTENSION: &str = ".checkpoint";
const DIGEST_BYTES: usize = 32;

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT_VERSION`] of the build that wrote it.
    pub format: u32,
    /// `permit-stats <version>` (for people; readers go by `format`).
    pub written_by: String,
    /// The topic the state was read from.
    pub topic: String,
    /// Per partition, sorted: where the state stands.
    pub partitions: Vec<PartitionMark>,
    /// Records the state never saw because the topic had deleted them (served with
    /// `--allow-missing-history`); carried over so that a restart does not forget them.
    pub history_missing_records: u64,
    /// Clients in the body.
    pub clients: usize,
    /// Permits in the body, tombstones included.
    pub permits: usize,
    /// Live permits in the body.
    pub live_permits: usize,
    /// Length of the body.
    pub body_bytes: usize,
}

impl Header {
    /// Records below the partitions' offsets: the checkpoint's place in the order of names.
    pub fn covered(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.next_offset.max(0) as u64)
            .sum()
    }
}

/// A checkpoint read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Its header.
    pub header: Header,
    /// The state.
    pub snapshot: Snapshot,
}

/// Why bytes are not a usable checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not a checkpoint at all.
    #[error("not a permit-stats checkpoint (no magic line)")]
    NotACheckpoint,
    /// Written in another format version.
    #[error("written in format version {found}; this build reads version {FORMAT_VERSION}")]
    OtherVersion {
        /// The version found.
        found: String,
    },
    /// Shorter than it says.
    #[error("truncated: {found} bytes where the header says {expected}")]
    Truncated {
        /// Bytes present.
        found: usize,
        /// Bytes the header implies.
        expected: usize,
    },
    /// Bytes changed since it was written.
    #[error("corrupt: the SHA-256 does not match the content")]
    Checksum,
    /// The header is not what this version writes.
    #[error("corrupt header: {0}")]
    Header(String),
    /// The body does not decode.
    #[error("corrupt body: {0}")]
    Body(#[from] prost::DecodeError),
    /// The body is not a state a projection could have.
    #[error("inconsistent state: {0}")]
    State(#[from] SnapshotError),
}

/// Encodes a checkpoint; returns its name (`<topic>/<covered>-<digest>.checkpoint`) and bytes.
pub fn encode(
    topic: &str,
    mut partitions: Vec<PartitionMark>,
    history_missing_records: u64,
    snapshot: Snapshot,
) -> (String, Bytes) {
    partitions.sort_unstable_by_key(|p| p.partition);
    let (clients, permits, live_permits) = (
        snapshot.clients.len(),
        snapshot.permits(),
        snapshot.live_permits(),
    );
    let body = to_wire(snapshot).encode_to_vec();
    let header = Header {
        format: FORMAT_VERSION,
        written_by: concat!("permit-stats ", env!("CARGO_PKG_VERSION")).to_owned(),
        topic: topic.to_owned(),
        partitions,
        history_missing_records,
        clients,
        permits,
        live_permits,
        body_bytes: body.len(),
    };
    let header_line = serde_json::to_vec(&header).expect("a header always serializes");
    let mut out =
        Vec::with_capacity(MAGIC.len() + header_line.len() + 1 + body.len() + DIGEST_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&header_line);
    out.push(b'\n');
    out.extend_from_slice(&body);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    let name = format!(
        "{topic}/{:020}-{}{EXTENSION}",
        header.covered(),
        hex::encode(&digest[..8])
    );
    (name, Bytes::from(out))
}

/// Reads a checkpoint's header alone (magic and version checked, nothing else): enough to
/// choose among checkpoints before the whole one is checked by [`decode`].
pub fn header(bytes: &[u8]) -> Result<Header, FormatError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or(FormatError::NotACheckpoint)?;
    let end = rest
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(FormatError::Truncated {
            found: bytes.len(),
            expected: bytes.len() + 1,
        })?;
    let line = &rest[..end];
    // The version first, from a header read loosely: another version may have other fields.
    let loose: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| FormatError::Header(e.to_string()))?;
    match loose.get("format") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(FORMAT_VERSION)) => {}
        Some(found) => {
            return Err(FormatError::OtherVersion {
                found: found.to_string(),
            });
        }
        None => return Err(FormatError::Header("no format version".into())),
    }
    serde_json::from_value(loose).map_err(|e| FormatError::Header(e.to_string()))
}

/// Reads and checks a whole checkpoint.
pub fn decode(bytes: &[u8]) -> Result<Decoded, FormatError> {
    let header = header(bytes)?;
    let header_end = MAGIC.len()
        + bytes[MAGIC.len()..]
            .iter()
            .position(|&b| b == b'\n')
            .expect("header() found the line's end")
        + 1;
    let expected = header_end + header.body_bytes + DIGEST_BYTES;
    if bytes.len() != expected {
        return Err(FormatError::Truncated {
            found: bytes.len(),
            expected,
        });
    }
    let (content, digest) = bytes.split_at(bytes.len() - DIGEST_BYTES);
    if Sha256::digest(content).as_slice() != digest {
        return Err(FormatError::Checksum);
    }
    let body = &content[header_end..];
    let snapshot = from_wire(wire::State::decode(body)?);
    if (snapshot.clients.len(), snapshot.permits()) != (header.clients, header.permits) {
        return Err(FormatError::Header(
            "its counts disagree with the body".into(),
        ));
    }
    Ok(Decoded { header, snapshot })
}

/// The covered count of a checkpoint's name (`<topic>/<covered>-<digest>.checkpoint`), or
/// `None` for a name this build does not write.
pub fn covered_of(name: &str) -> Option<u64> {
    let file = name.rsplit('/').next()?.strip_suffix(EXTENSION)?;
    let (covered, digest) = file.split_once('-')?;
    (covered.len() == 20 && digest.len() == 16).then_some(())?;
    covered.parse().ok()
}

fn to_wire(snapshot: Snapshot) -> wire::State {
    wire::State {
        clients: snapshot
            .clients
            .into_iter()
            .map(|c| wire::Client {
                code: c.code,
                as_of_ms: c.as_of_ms,
                counters: c
                    .counters
                    .into_iter()
                    .map(|n| wire::Counter {
                        zone: n.zone,
                        permit_type: n.permit_type,
                    })
                    .collect(),
                uuid_ids: c.uuid_ids,
                uuid_revisions: c.uuid_revisions,
                uuid_counters: c.uuid_counters,
                text_permits: c
                    .text_permits
                    .into_iter()
                    .map(|p| wire::TextPermit {
                        id: p.id,
                        revision: p.revision,
                        counter: p.counter,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn from_wire(state: wire::State) -> Snapshot {
    Snapshot {
        clients: state
            .clients
            .into_iter()
            .map(|c| ClientSnapshot {
                code: c.code,
                as_of_ms: c.as_of_ms,
                counters: c
                    .counters
                    .into_iter()
                    .map(|n| CounterName {
                        zone: n.zone,
                        permit_type: n.permit_type,
                    })
                    .collect(),
                uuid_ids: c.uuid_ids,
                uuid_revisions: c.uuid_revisions,
                uuid_counters: c.uuid_counters,
                text_permits: c
                    .text_permits
                    .into_iter()
                    .map(|p| TextPermit {
                        id: p.id,
                        revision: p.revision,
                        counter: p.counter,
                    })
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        events::{Change, PermitEvent},
        kafka::RecordMark,
        projection::Projection,
    };

    fn event(client: &str, id: &str, revision: Option<u64>, change: Change) -> PermitEvent {
        PermitEvent {
            client: client.into(),
            reference_id: id.into(),
            revision,
            occurred_at_ms: Some(1_700_000_000_000),
            change,
        }
    }

    fn created(client: &str, id: &str, zone: &str) -> PermitEvent {
        event(
            client,
            id,
            Some(1),
            Change::Created {
                zone: zone.into(),
                permit_type: "temp".into(),
            },
        )
    }

    fn marks() -> Vec<PartitionMark> {
        vec![
            PartitionMark {
                partition: 1,
                next_offset: 7,
                last_record: Some(RecordMark {
                    offset: 6,
                    timestamp_ms: Some(5),
                }),
            },
            PartitionMark {
                partition: 0,
                next_offset: 3,
                last_record: None,
            },
        ]
    }

    fn sample() -> Projection {
        let p = Projection::new();
        p.apply(&created(
            "B",
            "1a9b5375-cb75-4c71-9939-eeae550b09ac",
            "Lot 1",
        ));
        p.apply(&created("A", "r-1", "Lot 2"));
        p.apply(&created(
            "A",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "Lot 1",
        ));
        p.apply(&event(
            "A",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            Some(3),
            Change::Deleted,
        ));
        p
    }

    #[test]
    fn a_checkpoint_round_trips_and_restores_the_same_answers() {
        let p = sample();
        let (name, bytes) = encode("permits", marks(), 4, p.copy_state().snapshot());
        assert!(name.starts_with("permits/00000000000000000010-"), "{name}");
        assert_eq!(covered_of(&name), Some(10));
        assert!(bytes.starts_with(MAGIC));
        let decoded = decode(&bytes).expect("decodes");
        assert_eq!(decoded.header.topic, "permits");
        assert_eq!(decoded.header.history_missing_records, 4);
        assert_eq!(decoded.header.partitions[0].partition, 0, "sorted");
        assert_eq!(
            (decoded.header.permits, decoded.header.live_permits),
            (3, 2)
        );
        let restored = Projection::new();
        restored.restore(&decoded.snapshot).expect("restores");
        for client in ["A", "B"] {
            let (a, b) = (p.view(client), restored.view(client));
            let (a, b) = (a.expect("view"), b.expect("view"));
            assert_eq!(a.body(None), b.body(None));
            assert_eq!(a.counters(), b.counters());
            assert_eq!(a.as_of_rfc3339(), b.as_of_rfc3339());
        }
        // The tombstone keeps its revision: an older create stays stale.
        let late = event(
            "A",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            Some(2),
            Change::Created {
                zone: "Lot 1".into(),
                permit_type: "temp".into(),
            },
        );
        assert_eq!(restored.apply(&late), p.apply(&late));
        assert_eq!(
            restored.view("A").expect("view").body(None),
            p.view("A").expect("view").body(None)
        );
    }

    #[test]
    fn the_same_state_reached_in_another_order_is_the_same_bytes() {
        let a = sample();
        let b = Projection::new();
        // Other clients first, other interning order, a permit that came and went.
        b.apply(&created(
            "A",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "Lot 1",
        ));
        b.apply(&created("A", "r-1", "Lot 2"));
        // Without a revision: forgotten once deleted, as if it never was.
        b.apply(&event(
            "A",
            "r-2",
            None,
            Change::Created {
                zone: "Lot 1".into(),
                permit_type: "temp".into(),
            },
        ));
        b.apply(&event("A", "r-2", None, Change::Deleted));
        b.apply(&created(
            "B",
            "1a9b5375-cb75-4c71-9939-eeae550b09ac",
            "Lot 1",
        ));
        b.apply(&event(
            "A",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            Some(3),
            Change::Deleted,
        ));
        let one = encode("permits", marks(), 0, a.copy_state().snapshot());
        let two = encode("permits", marks(), 0, b.copy_state().snapshot());
        assert_eq!(one, two);
    }

    #[test]
    fn damaged_or_foreign_bytes_are_refused_with_the_reason() {
        let (_, bytes) = encode("permits", marks(), 0, sample().copy_state().snapshot());
        assert!(matches!(decode(b"hello"), Err(FormatError::NotACheckpoint)));
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(FormatError::Truncated { .. })
        ));
        let mut flipped = bytes.to_vec();
        let at = flipped.len() - 40;
        flipped[at] ^= 1;
        assert!(matches!(decode(&flipped), Err(FormatError::Checksum)));
        // A digit of an offset in the header: the checksum covers the header too.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let at = text.find("\"next_offset\":7").expect("in the header") + 14;
        let mut edited = bytes.to_vec();
        edited[at] = b'8';
        assert!(matches!(decode(&edited), Err(FormatError::Checksum)));
        let other = text.replacen("{\"format\":1", "{\"format\":2", 1);
        let err = decode(other.as_bytes()).expect_err("another version");
        assert!(matches!(err, FormatError::OtherVersion { .. }), "{err}");
        assert!(err.to_string().contains("version 2"), "{err}");
    }
}
