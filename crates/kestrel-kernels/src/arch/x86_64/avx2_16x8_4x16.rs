//! `avx2_16x8_4x16`: sums of a conv on int8 weights whose input or output is int16 (the
//! convs around a layer kept wider, "16x8"), 4 pixels × 16 channels, on AVX2.
//!
//! Each 32-bit lane is one output channel. `vpmaddwd` multiplies two input channels of a
//! pixel (int16, broadcast as a pair) by the same two channels' weights (widened to int16)
//! and adds the pair: exact, at most 2^23. The lanes take [`INT_TILE_RUN`] products before
//! the tile adds them into its `i64` sums, so no sum can wrap and the result is the exact
//! integer the reference computes.

use core::arch::x86_64::*;

use crate::wide::contract::{tap_offsets, TileConv, INT_TILE_RUN, TILE_CHANNELS, TILE_PIXELS};

/// Input channels staged at a time (even, so pairs never straddle two runs).
const RUN: usize = 128;

/// [`crate::wide::contract::IntTile`] on AVX2.
///
/// # Safety
/// As [`crate::wide::contract::IntTile`]; the CPU has AVX2; `conv.zero_point` fits `i16`.
#[target_feature(enable = "avx2")]
pub unsafe fn avx2_16x8_4x16(
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
    let mut acc = [[_mm256_setzero_si256(); 2]; TILE_PIXELS];
    let mut pending = 0;
    let mut staged = [[0i16; RUN]; TILE_PIXELS];
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
                pending += n + n % 2;
                for (row, a) in staged.iter_mut().zip(at) {
                    stage(conv, a.map(|a| a + c0), n, row);
                }
                let w = conv.weights.as_ptr().add((taps + c0) * oc + o0);
                for k in 0..n / 2 {
                    let r0 = _mm_loadu_si128(w.add(2 * k * oc) as *const __m128i);
                    let r1 = _mm_loadu_si128(w.add((2 * k + 1) * oc) as *const __m128i);
                    pair(&mut acc, &staged, 2 * k, r0, r1);
                }
                if n % 2 == 1 {
                    // The last channel alone: its partner's weights are 0.
                    let r0 = _mm_loadu_si128(w.add((n - 1) * oc) as *const __m128i);
                    pair(&mut acc, &staged, n - 1, r0, _mm_setzero_si128());
                }
            }
        }
    }
    widen(&mut acc, sums);
}

/// Adds channels `ci` and `ci + 1` of every pixel times weight rows `r0` and `r1` (16 int8
/// each, one per output channel).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn pair(
    acc: &mut [[__m256i; 2]; TILE_PIXELS],
    staged: &[[i16; RUN]; TILE_PIXELS],
    ci: usize,
    r0: __m128i,
    r1: __m128i,
) {
    // Lane j: (w[ci][j], w[ci + 1][j]) as two int16.
    let lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1));
    let hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1));
    for (a, row) in acc.iter_mut().zip(staged) {
        // (x[ci], x[ci + 1]); past an odd run's end the value is stale but meets weight 0.
        let x = _mm256_set1_epi32((row.as_ptr().add(ci) as *const i32).read_unaligned());
        a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x, lo));
        a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x, hi));
    }
}

/// Adds the `i32` lanes into the `i64` sums and clears them.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen(
    acc: &mut [[__m256i; 2]; TILE_PIXELS],
    sums: &mut [[i64; TILE_CHANNELS]; TILE_PIXELS],
) {
    for (a, row) in acc.iter_mut().zip(sums.iter_mut()) {
        for (half, v) in a.iter_mut().enumerate() {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, *v);
            for (s, l) in row[8 * half..8 * half + 8].iter_mut().zip(lanes) {
                *s += l as i64;
            }
            *v = _mm256_setzero_si256();
        }
    }
}

/// The stored values of `n` channels from input index `at` as int16; the zero point for a
/// padded tap. The slot after an odd run keeps whatever it held (it meets weight 0).
#[target_feature(enable = "avx2")]
unsafe fn stage(conv: &TileConv<'_>, at: Option<usize>, n: usize, row: &mut [i16; RUN]) {
    let Some(at) = at else {
        row[..n].fill(conv.zero_point as i16);
        return;
    };
    let bytes = conv.input.bytes.as_ptr();
    if conv.input.wide {
        core::ptr::copy_nonoverlapping(bytes.add(2 * at), row.as_mut_ptr() as *mut u8, 2 * n);
        return;
    }
    let mut i = 0;
    while i + 16 <= n {
        let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(bytes.add(at + i) as *const __m128i));
        _mm256_storeu_si256(row.as_mut_ptr().add(i) as *mut __m256i, x);
        i += 16;
    }
    for (j, v) in row[i..n].iter_mut().enumerate() {
        *v = conv.input.get(at + i + j) as i16;
    }
}
