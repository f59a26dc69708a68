//! Byte-class checks shared by the event decoder and the API: reference ids and tokens are
//! `[A-Za-z0-9-]`, checked sixteen bytes at a time where the target has SSE2 (`text/simd.rs`).

#[cfg(target_feature = "sse2")]
pub(crate) mod simd;

/// True when every byte is one of `[A-Za-z0-9-]` (reference ids, and the API's tokens), without a
/// branch per byte: a UUID mixes digits and letters at random, so a branching test of each byte
/// mispredicts often (see BENCHMARKS.md).
pub fn is_alphanumeric_or_dash(text: &str) -> bool {
    #[cfg(target_feature = "sse2")]
    return alphanumeric_or_dash_sse2(text.as_bytes());
    #[cfg(not(target_feature = "sse2"))]
    return alphanumeric_or_dash_table(text.as_bytes());
}

/// Sixteen bytes per step in SSE2 registers ([`simd`]): fewer instructions per decoded record
/// than the table (a byte per step) for a UUID.
#[cfg(target_feature = "sse2")]
fn alphanumeric_or_dash_sse2(bytes: &[u8]) -> bool {
    use safe_arch::{bitor_m128i, cmp_eq_mask_i8_m128i, move_mask_i8_m128i};
    use simd::{m128i, splat, within};
    let allowed = |chunk: [u8; 16]| {
        let text = m128i::from(chunk);
        let ok = bitor_m128i(
            bitor_m128i(within(text, b'0', b'9'), within(text, b'A', b'Z')),
            bitor_m128i(
                within(text, b'a', b'z'),
                cmp_eq_mask_i8_m128i(text, splat(b'-')),
            ),
        );
        move_mask_i8_m128i(ok) == 0xffff
    };
    let chunks = bytes.chunks_exact(16);
    // The tail padded with an allowed byte.
    let rest = chunks.remainder();
    let mut last = [b'a'; 16];
    last[..rest.len()].copy_from_slice(rest);
    chunks.fold(allowed(last), |ok, chunk| {
        ok & <[u8; 16]>::try_from(chunk).is_ok_and(allowed)
    })
}

/// [`is_alphanumeric_or_dash`] a byte at a time, by table.
#[cfg(any(test, not(target_feature = "sse2")))]
fn alphanumeric_or_dash_table(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |ok, &byte| {
        ok & ALPHANUMERIC_OR_DASH[usize::from(byte)]
    })
}

/// The bytes of `[A-Za-z0-9-]`.
#[cfg(any(test, not(target_feature = "sse2")))]
const ALPHANUMERIC_OR_DASH: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'-';
        byte += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Both ways of checking `[A-Za-z0-9-]` agree with the plain definition, at every length
        /// around the 16-byte steps: allowed text with one character put in, often one at the
        /// edge of a range.
        #[test]
        fn alphanumeric_or_dash_agrees_with_a_plain_check(
            allowed in "[-0-9A-Za-z]{0,40}",
            at in 0usize..41,
            with in proptest::prop_oneof![
                proptest::sample::select(vec!['/', '0', '9', ':', '@', 'A', 'Z', '[', '`', 'a', 'z', '{', '-', ',', '.', 'é']),
                proptest::prelude::any::<char>(),
            ],
        ) {
            let mut text = allowed.clone();
            text.insert(at.min(text.len()), with);
            for text in [&allowed, &text] {
                let plain = text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                proptest::prop_assert_eq!(is_alphanumeric_or_dash(text), plain);
                proptest::prop_assert_eq!(alphanumeric_or_dash_table(text.as_bytes()), plain);
            }
        }
    }
}
