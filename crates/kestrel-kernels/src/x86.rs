//! x86-64 micro-kernels for [`crate::gemm`]: AVX2 (`vpmaddwd` on sign-extended int16) and
//! AVX-512 VNNI (`vpdpbusd`, unsigned × signed: the driver stores inputs as `x + 128` and
//! removes `128 · Σw` afterwards, exactly).

use core::arch::x86_64::*;

use crate::gemm::{Tile, KC, MR, NR};

/// # Safety
/// `a` holds `steps · MR · KC` bytes, `b` `steps · NR · KC`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn tile_avx2(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m] lanes: [n0 n1 n2 n3] partial sums of the low 8 k, then of the high 8 k.
    let mut acc = [_mm256_setzero_si256(); MR];
    for s in 0..steps {
        let ap = a.add(s * MR * KC);
        let bp = b.add(s * NR * KC);
        let mut bv = [_mm256_setzero_si256(); NR];
        for (n, v) in bv.iter_mut().enumerate() {
            *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(n * KC) as *const __m128i));
        }
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(ap.add(m * KC) as *const __m128i));
            let p0 = _mm256_madd_epi16(x, bv[0]);
            let p1 = _mm256_madd_epi16(x, bv[1]);
            let p2 = _mm256_madd_epi16(x, bv[2]);
            let p3 = _mm256_madd_epi16(x, bv[3]);
            let h01 = _mm256_hadd_epi32(p0, p1);
            let h23 = _mm256_hadd_epi32(p2, p3);
            *acc_m = _mm256_add_epi32(*acc_m, _mm256_hadd_epi32(h01, h23));
        }
    }
    let mut out = [[0i32; NR]; MR];
    for (m, row) in out.iter_mut().enumerate() {
        let lo = _mm256_castsi256_si128(acc[m]);
        let hi = _mm256_extracti128_si256::<1>(acc[m]);
        _mm_storeu_si128(row.as_mut_ptr() as *mut __m128i, _mm_add_epi32(lo, hi));
    }
    out
}

/// # Safety
/// As [`tile_avx2`], with AVX-512 F/BW/VNNI; `a` holds inputs stored as `x ^ 0x80`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile_vnni(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m]: 128-bit lane n holds four partial sums of output channel n.
    let mut acc = [_mm512_setzero_si512(); MR];
    for s in 0..steps {
        let w = _mm512_loadu_si512(b.add(s * NR * KC) as *const _);
        let ap = a.add(s * MR * KC);
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let x = _mm512_broadcast_i32x4(_mm_loadu_si128(ap.add(m * KC) as *const __m128i));
            *acc_m = _mm512_dpbusd_epi32(*acc_m, x, w);
        }
    }
    let mut out = [[0i32; NR]; MR];
    for (m, row) in out.iter_mut().enumerate() {
        let mut lanes = [0i32; 16];
        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, acc[m]);
        for (n, v) in row.iter_mut().enumerate() {
            *v = lanes[4 * n..4 * n + 4]
                .iter()
                .fold(0i32, |t, &x| t.wrapping_add(x));
        }
    }
    out
}
