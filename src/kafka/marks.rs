//! Where a state stands in the topic: per partition, the next offset to apply and the last
//! record taken. Written by ingest when it cuts a checkpoint, stored in the checkpoint's header,
//! and read back at start: the offsets say where to resume, and the last record (its offset and
//! timestamp, read again from the topic) proves that the topic is still the one the state was
//! built from, not a deleted and re-created topic of the same name.

use serde::{Deserialize, Serialize};

/// One partition's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMark {
    /// The partition.
    pub partition: i32,
    /// The next offset to apply: every record before it is reflected in the state.
    pub next_offset: i64,
    /// The last record taken (good or bad), if any was.
    pub last_record: Option<RecordMark>,
}

/// A record, as far as needed to recognise it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordMark {
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (create or log-append time), ms since the Unix epoch, if it has one.
    pub timestamp_ms: Option<i64>,
}
