//! Sixteen bytes at a time in SSE2 registers, for the checks of ids on the hot paths: the UUID
//! parse of [`crate::projection`] (`projection/uuid.rs`) and the `[A-Za-z0-9-]` check in
//! [`crate::text`]. SSE2 is part
//! of x86-64 and `safe_arch` wraps its intrinsics as safe functions; this module exists only where
//! the target has it, and each caller keeps a portable version that its tests compare with it.

pub(crate) use safe_arch::m128i;
use safe_arch::{bitand_m128i, cmp_gt_mask_i8_m128i, cmp_lt_mask_i8_m128i, set_splat_i8_m128i};

/// `byte` in every lane.
#[inline(always)]
pub(crate) fn splat(byte: u8) -> m128i {
    set_splat_i8_m128i(byte as i8)
}

/// All ones in each byte of `text` from `low` to `high` (ASCII bounds, `low` above 0), zero in the
/// others. The compares are signed, so a byte of 0x80 or more is in no such range.
#[inline(always)]
pub(crate) fn within(text: m128i, low: u8, high: u8) -> m128i {
    bitand_m128i(
        cmp_gt_mask_i8_m128i(text, splat(low - 1)),
        cmp_lt_mask_i8_m128i(text, splat(high + 1)),
    )
}
