//! The canonical UUID parse: a permit id shaped like `1a9b5375-cb75-4c71-9939-eeae550b09ac` (the
//! vendor's ids in practice) becomes its 16 bytes, the key of its client's permit table
//! (`table.rs`); any other id stays text.
//!
//! Every event's id goes through here on the apply path, so the 32 digits are checked and
//! converted sixteen at a time in SSE2 registers where the target has them, else eight at a time
//! in a general-purpose register; the tests hold both to a plain parse.

use std::hash::Hash;

/// A canonical lowercase UUID (the vendor's ids in practice), as its 16 bytes. Any other id is kept
/// as text; the two never collide, since only canonical text is compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Uuid(pub(super) [u8; 16]);

impl Hash for Uuid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // One 128-bit write instead of a length-prefixed slice.
        state.write_u128(u128::from_ne_bytes(self.0));
    }
}

/// The id's 16 bytes when it is a canonical lowercase UUID.
pub(super) fn parse_canonical_uuid(id: &str) -> Option<Uuid> {
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
/// digits per step in SSE2 registers ([`crate::text::simd`]), where `hex_digits_swar` had become
/// the largest part of applying an event (see BENCHMARKS.md, the SSE2 UUID row).
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
/// meaningless): all eight at once, without a loop over the digits, which cost too much of
/// applying an event.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{
        Projection,
        tests::{counts, created, row},
    };

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
}
