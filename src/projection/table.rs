//! The permit table: canonical-UUID permit ids to their 12-byte [`PermitState`], in one flat
//! array. (Other ids keep the same state in a map beside it, in `rules.rs`.)
//!
//! Why not `HashMap`: during a replay of millions of permits nearly every event is a miss in a
//! table far larger than the cache, and hashbrown pays two of them per lookup (its control bytes,
//! then the slot), one after the other; those two stalls were most of applying an event.
//! Here the key sits in its slot, so a lookup reads one place, and [`UuidTable::touch`] lets a
//! batch read the first slots of several events in a tight loop before applying any of them, so
//! that their misses overlap instead of queueing (an ordinary load: a prefetch instruction would
//! need `unsafe`).
//!
//! Open addressing with linear probing, at most 7/8 full (hashbrown's bound: a lower one moved a
//! replay's tables to the next power of two, and so their memory), and deletion by backward shift
//! (no tombstones, so probe lengths never degrade). A slot is 28 bytes, a hashbrown bucket without
//! its control byte, and a new table is allocated zeroed, so memory per permit is what it was.

use std::hash::BuildHasher;

use super::{names::CounterId, uuid::Uuid};

/// A permit's state in 12 bytes: its counter while live (`NOT_LIVE` once deleted), and the newest
/// applied revision (0 = none), split in two halves so the slot needs only 4-byte alignment. A
/// deleted permit stays as a tombstone only while it has a revision to guard; without one it is
/// forgotten, which rules 1-4 treat exactly like a deleted permit.
#[derive(Debug, Clone, Copy)]
pub(super) struct PermitState {
    revision: [u32; 2],
    counter: CounterId,
}

/// The counter id of a permit that is not live (a tombstone).
pub(super) const NOT_LIVE: CounterId = CounterId::MAX;

impl PermitState {
    pub(super) fn new(revision: u64, counter: Option<CounterId>) -> Self {
        Self {
            revision: [revision as u32, (revision >> 32) as u32],
            counter: counter.unwrap_or(NOT_LIVE),
        }
    }

    pub(super) fn revision(self) -> u64 {
        u64::from(self.revision[0]) | (u64::from(self.revision[1]) << 32)
    }

    pub(super) fn live(self) -> Option<CounterId> {
        (self.counter != NOT_LIVE).then_some(self.counter)
    }
}

/// A counter id that is never used (see `Tables::counter` in `rules.rs`): the table keeps its
/// slots as words where this id is stored as zero, so that a new table is all zeros, allocated as
/// such, and the pages of its empty slots cost no memory until a permit lands in them.
pub(super) const EMPTY: u32 = u32::MAX - 1;

/// A slot as seven words: the UUID (4), the revision (2) and the counter id plus 2 (1), so that
/// [`EMPTY`] is 0 and [`NOT_LIVE`] is 1.
type Slot = [u32; 7];

fn key_of(slot: &Slot) -> Uuid {
    let mut bytes = [0; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(&slot[..4]) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    Uuid(bytes)
}

fn pack(key: Uuid, state: PermitState) -> Slot {
    let word = |i: usize| u32::from_ne_bytes([key.0[i], key.0[i + 1], key.0[i + 2], key.0[i + 3]]);
    [
        word(0),
        word(4),
        word(8),
        word(12),
        state.revision[0],
        state.revision[1],
        state.counter.wrapping_add(2),
    ]
}

fn state_of(slot: &Slot) -> PermitState {
    PermitState {
        revision: [slot[4], slot[5]],
        counter: slot[6].wrapping_sub(2),
    }
}

fn is_empty(slot: &Slot) -> bool {
    slot[6] == 0
}

/// A key with its hash in one table, computed once per event: the batch's touch, the probe and an
/// insert that grows the table all use it (growing keeps the hasher, so the hash stays good).
#[derive(Clone, Copy)]
pub(super) struct Hashed {
    key: Uuid,
    hash: u64,
}

/// Where a key is, or where it would go.
pub(super) enum Probe {
    /// The key is at this slot.
    Found(usize),
    /// The key is absent; this is the empty slot that ends its probe.
    Absent(usize),
}

/// Cloned whole (one copy of the slot array) when a checkpoint is cut: see `snapshot.rs`.
#[derive(Default, Clone)]
pub(super) struct UuidTable {
    /// A power of two in length, or empty before the first insert.
    slots: Vec<Slot>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl UuidTable {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `key` with its hash in this table.
    pub(super) fn hashed(&self, key: Uuid) -> Hashed {
        Hashed {
            key,
            hash: self.hasher.hash_one(u128::from_ne_bytes(key.0)),
        }
    }

    /// The first slot a key with this hash may be in (the table is not empty).
    fn home(&self, hash: u64) -> usize {
        // The high bits: the ones a multiplicative hash mixes best.
        (hash >> (64 - self.slots.len().trailing_zeros())) as usize
    }

    /// Reads the key's first slots without waiting for them, so that a later [`Self::probe`]
    /// finds them in cache: a batch touches the slots of several events, then applies them.
    pub(super) fn touch(&self, key: Hashed) {
        if !self.slots.is_empty() {
            // The home slot and the next one, where a probe goes on whenever the home slot holds
            // another key: their 56 bytes lie in one or two cache lines, read here at both ends.
            let at = self.home(key.hash);
            let next = (at + 1) & (self.slots.len() - 1);
            std::hint::black_box(self.slots[at][0] ^ self.slots[next][6]);
        }
    }

    pub(super) fn probe(&self, key: Hashed) -> Probe {
        let slots = &self.slots;
        if slots.is_empty() {
            return Probe::Absent(usize::MAX);
        }
        let mask = slots.len() - 1;
        let (mut at, key) = (self.home(key.hash), key.key);
        loop {
            let slot = &slots[at];
            if is_empty(slot) {
                return Probe::Absent(at);
            }
            if key_of(slot) == key {
                return Probe::Found(at);
            }
            at = (at + 1) & mask;
        }
    }

    pub(super) fn get(&self, at: usize) -> PermitState {
        state_of(&self.slots[at])
    }

    pub(super) fn set(&mut self, at: usize, state: PermitState) {
        debug_assert!(state.counter != EMPTY);
        let slot = &mut self.slots[at];
        *slot = pack(key_of(slot), state);
    }

    /// Stores a key that [`Self::probe`] just found absent at `at`.
    pub(super) fn insert(&mut self, at: usize, key: Hashed, state: PermitState) {
        debug_assert!(state.counter != EMPTY);
        let at = if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
            let Probe::Absent(at) = self.probe(key) else {
                unreachable!("the key was absent before the table grew");
            };
            at
        } else {
            at
        };
        self.slots[at] = pack(key.key, state);
        self.len += 1;
    }

    /// Removes the key found at `at`, moving later keys of its run back so that every key stays
    /// reachable from its home slot without a gap.
    pub(super) fn remove(&mut self, mut at: usize) {
        let mask = self.slots.len() - 1;
        let mut next = at;
        loop {
            next = (next + 1) & mask;
            let slot = self.slots[next];
            if is_empty(&slot) {
                break;
            }
            // The key at `next` may fill the hole at `at` unless its home lies cyclically in
            // (at, next]: then it would move before its home.
            let home = self.home(self.hashed(key_of(&slot)).hash);
            let stays = if at <= next {
                at < home && home <= next
            } else {
                at < home || home <= next
            };
            if !stays {
                self.slots[at] = slot;
                at = next;
            }
        }
        self.slots[at] = [0; 7];
        self.len -= 1;
    }

    /// Every stored permit, in slot order.
    pub(super) fn entries(&self) -> impl Iterator<Item = (Uuid, PermitState)> + '_ {
        self.slots
            .iter()
            .filter(|slot| !is_empty(slot))
            .map(|slot| (key_of(slot), state_of(slot)))
    }

    /// Stores a key known to be absent; false when it is already there.
    pub(super) fn insert_new(&mut self, key: Uuid, state: PermitState) -> bool {
        let key = self.hashed(key);
        match self.probe(key) {
            Probe::Found(_) => false,
            Probe::Absent(at) => {
                self.insert(at, key, state);
                true
            }
        }
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(16);
        // Zeros: allocated zeroed, untouched until used.
        let old = std::mem::replace(&mut self.slots, vec![[0; 7]; capacity]);
        let mask = capacity - 1;
        for &slot in old.iter().filter(|slot| !is_empty(slot)) {
            let mut at = self.home(self.hashed(key_of(&slot)).hash);
            while !is_empty(&self.slots[at]) {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn state(n: u32) -> PermitState {
        PermitState {
            revision: [n, 0],
            counter: n % 1000,
        }
    }

    proptest! {
        /// Inserts, updates and removes agree with a `HashMap`, including keys that collide on
        /// their home slot (a few distinct keys in a small table) and removals that shift runs.
        #[test]
        fn behaves_like_a_map(ops in prop::collection::vec((0u8..40, 0u8..3), 0..600)) {
            let mut table = UuidTable::default();
            let mut model: HashMap<u8, u32> = HashMap::new();
            for (n, (key, op)) in ops.into_iter().enumerate() {
                let uuid = table.hashed(Uuid([key; 16]));
                let value = n as u32;
                match (op, table.probe(uuid)) {
                    (0 | 1, Probe::Found(at)) => table.set(at, state(value)),
                    (0 | 1, Probe::Absent(at)) => table.insert(at, uuid, state(value)),
                    (_, Probe::Found(at)) => table.remove(at),
                    (_, Probe::Absent(_)) => {}
                }
                if op < 2 {
                    model.insert(key, value);
                } else {
                    model.remove(&key);
                }
                prop_assert_eq!(table.len(), model.len());
                for probe_key in 0u8..40 {
                    let found = match table.probe(table.hashed(Uuid([probe_key; 16]))) {
                        Probe::Found(at) => Some(table.get(at).revision[0]),
                        Probe::Absent(_) => None,
                    };
                    prop_assert_eq!(found, model.get(&probe_key).copied());
                }
            }
        }
    }

    #[test]
    fn a_slot_stays_28_bytes_and_keeps_every_state() {
        // `pack` copies the state field by field: a field added to it would be lost silently.
        assert_eq!(
            size_of::<Uuid>() + size_of::<PermitState>(),
            size_of::<Slot>()
        );
        assert_eq!(size_of::<Slot>(), 28);
        let key = Uuid(*b"0123456789abcdef");
        for counter in [0, 1, 7, EMPTY - 1, NOT_LIVE] {
            let state = PermitState {
                revision: [3, 4],
                counter,
            };
            let slot = pack(key, state);
            assert!(!is_empty(&slot));
            assert_eq!(key_of(&slot), key);
            assert_eq!(state_of(&slot).counter, counter);
            assert_eq!(state_of(&slot).revision, [3, 4]);
        }
    }
}
