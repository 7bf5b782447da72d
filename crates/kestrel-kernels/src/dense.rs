//! Dense layers (the classifier head), with the dot product on the target's SIMD: SSE2
//! or AVX2 on x86-64, NEON on AArch64, the DSP extension on a Cortex-M4/M7. Same signatures and results as
//! [`crate::scalar::dense`] and [`crate::scalar::dense_i32`].

use crate::quant::OutQuant;
use crate::scalar;

/// Accumulation wraps on i32 overflow, as SIMD adds do, so every path agrees even on
/// hostile weights (a trained model stays far from the limits).
#[inline]
pub fn dot(x: &[i8], w: &[i8]) -> i32 {
    // Whole 16-byte chunks with the baseline SIMD of the target (SSE2 on x86-64, NEON on
    // AArch64); wrapping sums are associative, so the result is the plain sum.
    let n = x.len().min(w.len()) / 16 * 16;
    x[n..]
        .iter()
        .zip(&w[n..])
        .fold(simd_dot16(&x[..n], &w[..n]), |acc, (&a, &b)| {
            acc.wrapping_add(a as i32 * b as i32)
        })
}

/// `Σ x·w` over slices of equal length, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    #[cfg(feature = "std")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { dot16_avx2(x, w) };
    }
    dot16_sse2(x, w)
}

/// [`simd_dot16`] with AVX2: one sign extension and one multiply-add per 16 bytes.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn dot16_avx2(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    let mut acc = _mm256_setzero_si256();
    for i in (0..x.len()).step_by(16) {
        let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
        let b = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().add(i) as *const __m128i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    lanes.iter().fold(0i32, |t, &v| t.wrapping_add(v))
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn dot16_sse2(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    // SAFETY: SSE2 is part of x86-64; loads stay inside the slices (16 bytes at i < len).
    unsafe {
        let mut acc = _mm_setzero_si128();
        for i in (0..x.len()).step_by(16) {
            let a = _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i);
            let b = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
            // Sign-extend to 16 bits: interleave with self, shift right arithmetically.
            let (alo, ahi) = (
                _mm_srai_epi16::<8>(_mm_unpacklo_epi8(a, a)),
                _mm_srai_epi16::<8>(_mm_unpackhi_epi8(a, a)),
            );
            let (blo, bhi) = (
                _mm_srai_epi16::<8>(_mm_unpacklo_epi8(b, b)),
                _mm_srai_epi16::<8>(_mm_unpackhi_epi8(b, b)),
            );
            acc = _mm_add_epi32(acc, _mm_madd_epi16(alo, blo));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(ahi, bhi));
        }
        let mut lanes = [0i32; 4];
        _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, acc);
        lanes.iter().fold(0i32, |t, &v| t.wrapping_add(v))
    }
}

/// `Σ x·w` over slices of equal length, a multiple of 16.
#[cfg(target_arch = "aarch64")]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::aarch64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    // SAFETY: NEON is part of AArch64; loads stay inside the slices.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        for i in (0..x.len()).step_by(16) {
            let a = vld1q_s8(x.as_ptr().add(i));
            let b = vld1q_s8(w.as_ptr().add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            acc = vpadalq_s16(acc, vmull_high_s8(a, b));
        }
        vaddvq_s32(acc)
    }
}

/// `Σ x·w` over slices of equal length, a multiple of 16.
#[cfg(all(target_arch = "arm", feature = "dsp"))]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    crate::arch::arm::dsp::dot(x, w)
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    all(target_arch = "arm", feature = "dsp")
)))]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    x.iter()
        .zip(w)
        .fold(0i32, |acc, (&a, &b)| acc.wrapping_add(a as i32 * b as i32))
}

/// Dense layer `[K] → [N]` with int8 output: [`crate::scalar::dense`].
pub fn dense(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    output: &mut [i8],
) {
    scalar::dense_on(dot, input, weights, params, out, output)
}

/// [`crate::scalar::dense_i32`] on the SIMD dot product.
pub fn dense_i32(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    store: impl FnMut(usize, i32),
) {
    scalar::dense_i32_on(dot, input, weights, params, outputs, store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn simd_dot_equals_the_plain_sum_on_every_length() {
        let x: Vec<i8> = (0..300)
            .map(|i| ((i * 97 + 13) % 256) as u8 as i8)
            .collect();
        let w: Vec<i8> = (0..300)
            .map(|i| ((i * 61 + 200) % 256) as u8 as i8)
            .collect();
        let extremes = [-128i8; 40];
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 64, 150, 300] {
            let plain = x[..n]
                .iter()
                .zip(&w[..n])
                .fold(0i32, |t, (&a, &b)| t.wrapping_add(a as i32 * b as i32));
            assert_eq!(dot(&x[..n], &w[..n]), plain, "n = {n}");
            assert_eq!(scalar::dot(&x[..n], &w[..n]), plain, "n = {n}");
        }
        assert_eq!(dot(&extremes, &extremes), 40 * 128 * 128);
    }

    #[test]
    fn dense_layers_match_the_reference() {
        let (k, n) = (37, 11);
        let input: Vec<i8> = (0..k).map(|i| ((i * 71 + 3) % 256) as u8 as i8).collect();
        let weights: Vec<i8> = (0..k * n)
            .map(|i| ((i * 29 + 100) % 256) as u8 as i8)
            .collect();
        let params = |o: usize| {
            (
                o as i32 * 300 - 1000,
                1_500_000_000 + o as i32,
                -9 + (o % 3) as i32,
            )
        };
        let out = OutQuant {
            zero_point: -3,
            min: -128,
            max: 127,
        };
        let (mut got, mut want) = (vec![0i8; n], vec![0i8; n]);
        dense(&input, &weights, params, out, &mut got);
        scalar::dense(&input, &weights, params, out, &mut want);
        assert_eq!(got, want);
        assert!(want.iter().any(|&v| v > -128 && v < 127));
        let (mut got, mut want) = (vec![0i32; n], vec![0i32; n]);
        dense_i32(&input, &weights, params, n, |i, v| got[i] = v);
        scalar::dense_i32(&input, &weights, params, n, |i, v| want[i] = v);
        assert_eq!(got, want);
    }
}
