//! Interned names and the counters they key: client, zone and type names become small ids once,
//! and a counter (the live permits of one client, zone and type) is found by its id, so the apply
//! path hashes and compares integers; [`same_text`] compares the names that still arrive as text.

use std::sync::Arc;

use super::FastMap;

/// A client's index among the interned client names.
pub(super) type ClientId = u32;
/// A zone's or type's index among the interned names of its kind.
pub(super) type NameId = u32;
/// A counter's index in the write side's counters.
pub(super) type CounterId = u32;

/// Names (of clients, zones or types) to small ids and back, so that the hot paths hash and
/// compare integers.
#[derive(Default)]
pub(super) struct Interner {
    ids: FastMap<Arc<str>, NameId>,
    names: Vec<Arc<str>>,
}

impl Interner {
    pub(super) fn intern(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = NameId::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        let name: Arc<str> = name.into();
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    pub(super) fn name(&self, id: NameId) -> &Arc<str> {
        &self.names[id as usize]
    }
}

/// The live permits of one (client, zone, type).
#[derive(Debug)]
pub(super) struct Counter {
    pub(super) client: ClientId,
    pub(super) zone: NameId,
    pub(super) permit_type: NameId,
    pub(super) total: u64,
}

/// `a == b` for the short names of events (client codes, zones, types): two word compares where
/// comparing slices calls `memcmp`, a large part of finding an event's counter.
pub(super) fn same_text(a: &str, b: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
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
}
