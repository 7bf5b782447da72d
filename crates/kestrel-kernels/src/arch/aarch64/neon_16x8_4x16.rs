//! `neon_16x8_4x16`: sums of a conv on int8 weights whose input or output is int16 (the
//! convs around a layer kept wider, "16x8"), 4 pixels × 16 channels, on AArch64 Advanced
//! SIMD (every Cortex-A: `sdot` takes no int16).
//!
//! Each 32-bit lane is one output channel. The weights of an input channel are widened to
//! int16 once (`sxtl`) and `smlal` (by element) multiplies them by that channel's value at
//! each of the four pixels: exact products of at most 2^22. The lanes take
//! [`INT_TILE_RUN`] products before the tile adds them into its `i64` sums, so no sum can
//! wrap and the result is the exact integer the reference computes.

use core::arch::aarch64::*;

use crate::wide::contract::{tap_offsets, TileConv, INT_TILE_RUN, TILE_CHANNELS, TILE_PIXELS};

/// Input channels staged at a time.
const RUN: usize = 128;

/// Four output pixels' `i32` lanes: 16 channels each.
type Lanes = [[int32x4_t; 4]; TILE_PIXELS];

/// [`crate::wide::contract::IntTile`] on NEON.
///
/// # Safety
/// As [`crate::wide::contract::IntTile`]; the CPU has NEON; `conv.zero_point` fits `i16`.
#[target_feature(enable = "neon")]
pub unsafe fn neon_16x8_4x16(
    conv: &TileConv<'_>,
    oy: usize,
    ox0: usize,
    pixels: usize,
    o0: usize,
    sums: &mut [[i64; TILE_CHANNELS]; TILE_PIXELS],
) {
    let s = conv.window;
    let (c, oc) = (s.in_c, s.out_c);
    *sums = [[0; TILE_CHANNELS]; TILE_PIXELS];
    let mut acc: Lanes = [[vdupq_n_s32(0); 4]; TILE_PIXELS];
    let mut pending = 0;
    // `[ci][pixel]`: one 8-byte load gives a channel's value at the four pixels.
    let mut staged = [[0i16; TILE_PIXELS]; RUN];
    for ky in 0..s.kernel[0] {
        for kx in 0..s.kernel[1] {
            let at = tap_offsets(s, oy, ox0, pixels, ky, kx);
            let taps = (ky * s.kernel[1] + kx) * c;
            for c0 in (0..c).step_by(RUN) {
                let n = RUN.min(c - c0);
                if pending + n > INT_TILE_RUN {
                    widen(&mut acc, sums);
                    pending = 0;
                }
                pending += n;
                stage(conv, &at, c0, n, &mut staged);
                let mut w = conv.weights.as_ptr().add((taps + c0) * oc + o0) as *const i8;
                for x in &staged[..n] {
                    let wv = vld1q_s8(w);
                    let (w0, w1) = (vmovl_s8(vget_low_s8(wv)), vmovl_high_s8(wv));
                    let x = vld1_s16(x.as_ptr());
                    mac::<0>(&mut acc[0], w0, w1, x);
                    mac::<1>(&mut acc[1], w0, w1, x);
                    mac::<2>(&mut acc[2], w0, w1, x);
                    mac::<3>(&mut acc[3], w0, w1, x);
                    w = w.add(oc);
                }
            }
        }
    }
    widen(&mut acc, sums);
}

/// Pixel `P`'s 16 lanes += weights `w0` (channels 0–7), `w1` (8–15) × `x[P]`.
#[inline(always)]
unsafe fn mac<const P: i32>(a: &mut [int32x4_t; 4], w0: int16x8_t, w1: int16x8_t, x: int16x4_t) {
    a[0] = vmlal_lane_s16::<P>(a[0], vget_low_s16(w0), x);
    a[1] = vmlal_high_lane_s16::<P>(a[1], w0, x);
    a[2] = vmlal_lane_s16::<P>(a[2], vget_low_s16(w1), x);
    a[3] = vmlal_high_lane_s16::<P>(a[3], w1, x);
}

/// Adds the `i32` lanes into the `i64` sums and clears them.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn widen(acc: &mut Lanes, sums: &mut [[i64; TILE_CHANNELS]; TILE_PIXELS]) {
    for (a, row) in acc.iter_mut().zip(sums.iter_mut()) {
        for (q, v) in a.iter_mut().enumerate() {
            let p = row.as_mut_ptr().add(4 * q);
            vst1q_s64(p, vaddw_s32(vld1q_s64(p), vget_low_s32(*v)));
            vst1q_s64(p.add(2), vaddw_high_s32(vld1q_s64(p.add(2)), *v));
            *v = vdupq_n_s32(0);
        }
    }
}

/// Channels `c0 .. c0 + n` of each pixel's tap `at` as int16, transposed to `[ci][pixel]`;
/// the zero point for a padded tap (and for pixels past the tile's, which nobody reads).
#[target_feature(enable = "neon")]
unsafe fn stage(
    conv: &TileConv<'_>,
    at: &[Option<usize>; TILE_PIXELS],
    c0: usize,
    n: usize,
    staged: &mut [[i16; TILE_PIXELS]; RUN],
) {
    let z = conv.zero_point as i16;
    let bytes = conv.input.bytes.as_ptr();
    let load = |a: Option<usize>, i: usize| match a {
        None => vdupq_n_s16(z),
        Some(a) if conv.input.wide => vld1q_s16(bytes.add(2 * (a + c0 + i)) as *const i16),
        Some(a) => vmovl_s8(vld1_s8(bytes.add(a + c0 + i) as *const i8)),
    };
    let mut i = 0;
    while i + 8 <= n {
        let v = int16x8x4_t(
            load(at[0], i),
            load(at[1], i),
            load(at[2], i),
            load(at[3], i),
        );
        vst4q_s16(staged[i].as_mut_ptr(), v);
        i += 8;
    }
    for (k, x) in staged[i..n].iter_mut().enumerate() {
        for (v, a) in x.iter_mut().zip(at) {
            *v = a.map_or(z, |a| conv.input.get(a + c0 + i + k) as i16);
        }
    }
}
