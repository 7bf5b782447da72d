//! `avx2_f16_4x16`: sums of a conv on f16 weights (a layer kept wider), 4 pixels × 16
//! channels, on AVX2 with F16C.
//!
//! Each lane is one output channel and adds its products in the reference's order
//! (ky, kx, ci) with a separate `vmulps` and `vaddps`, so every sum has the scalar
//! reference's bits; `vcvtph2ps` widens f16 exactly. The inputs of a tap, `x − z` as f32,
//! are staged once per pixel for a run of channels and broadcast from there.

use core::arch::x86_64::*;

use crate::wide::contract::{tap_offsets, TileConv, TILE_CHANNELS, TILE_PIXELS};

/// Input channels staged at a time.
const RUN: usize = 64;

/// [`crate::wide::contract::F16Tile`] on AVX2 + F16C.
///
/// # Safety
/// As [`crate::wide::contract::F16Tile`]; the CPU has AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn avx2_f16_4x16(
    conv: &TileConv<'_>,
    oy: usize,
    ox0: usize,
    pixels: usize,
    o0: usize,
    bias: &[f32; TILE_CHANNELS],
    sums: &mut [[f32; TILE_CHANNELS]; TILE_PIXELS],
) {
    let s = conv.window;
    let (c, oc) = (s.in_c, s.out_c);
    let mut acc = [[_mm256_setzero_ps(); 2]; TILE_PIXELS];
    for a in acc.iter_mut() {
        a[0] = _mm256_loadu_ps(bias.as_ptr());
        a[1] = _mm256_loadu_ps(bias.as_ptr().add(8));
    }
    let mut staged = [[0f32; RUN]; TILE_PIXELS];
    for ky in 0..s.kernel[0] {
        for kx in 0..s.kernel[1] {
            let at = tap_offsets(s, oy, ox0, pixels, ky, kx);
            let taps = (ky * s.kernel[1] + kx) * c;
            for c0 in (0..c).step_by(RUN) {
                let n = RUN.min(c - c0);
                for (row, a) in staged.iter_mut().zip(at) {
                    stage(conv, a.map(|a| a + c0), n, row);
                }
                let mut w = conv.weights.as_ptr().add(2 * ((taps + c0) * oc + o0));
                for ci in 0..n {
                    let w0 = _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i));
                    let w1 = _mm256_cvtph_ps(_mm_loadu_si128(w.add(16) as *const __m128i));
                    for (a, row) in acc.iter_mut().zip(&staged) {
                        let x = _mm256_broadcast_ss(&row[ci]);
                        a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(x, w0));
                        a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(x, w1));
                    }
                    w = w.add(2 * oc);
                }
            }
        }
    }
    for (row, a) in sums.iter_mut().zip(&acc) {
        _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
    }
}

/// `x − z` as f32 for `n` channels from input index `at`; 0 for a padded tap (the
/// reference's `z − z`).
#[target_feature(enable = "avx2")]
unsafe fn stage(conv: &TileConv<'_>, at: Option<usize>, n: usize, row: &mut [f32; RUN]) {
    let Some(at) = at else {
        row[..n].fill(0.0);
        return;
    };
    let z = _mm256_set1_epi32(conv.zero_point);
    let bytes = conv.input.bytes.as_ptr();
    let mut i = 0;
    while i + 8 <= n {
        let x = if conv.input.wide {
            _mm256_cvtepi16_epi32(_mm_loadu_si128(bytes.add(2 * (at + i)) as *const __m128i))
        } else {
            _mm256_cvtepi8_epi32(_mm_loadl_epi64(bytes.add(at + i) as *const __m128i))
        };
        let x = _mm256_cvtepi32_ps(_mm256_sub_epi32(x, z));
        _mm256_storeu_ps(row.as_mut_ptr().add(i), x);
        i += 8;
    }
    for (j, v) in row[i..n].iter_mut().enumerate() {
        *v = (conv.input.get(at + i + j) - conv.zero_point) as f32;
    }
}
