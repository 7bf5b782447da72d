//! `avx2_4x4c16`: AVX2 on [`Packing::Blocks4`](crate::conv::contract::Packing), 4 pixels ×
//! 4 channels per tile, `vpmaddwd` on sign-extended int16, the scalar epilogue.

use core::arch::x86_64::*;

use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::blocks4;
use crate::conv::tiles;

/// Pixels per tile.
pub const MR: usize = 4;
const NR: usize = blocks4::CHANNELS;

/// One `MR × NR` block of accumulators.
type Tile = [[i32; NR]; MR];

/// The panel tile by tile.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn avx2_4x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    assert!(p.slots.group == MR && p.slots.chunk == KC);
    // SAFETY: the tile and block slices hold `steps` chunks (the panel and the parser's
    // shapes); the CPU has AVX2 (this function's contract).
    tiles::blocks4::<MR>(
        Packing::Blocks4,
        c,
        p,
        output,
        |_| 0,
        |a, b, steps| unsafe { tile(a.as_ptr(), b.as_ptr(), steps) },
    );
}

/// # Safety
/// `a` holds `steps · MR · KC` bytes, `b` `steps · NR · KC`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn tile(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m] lanes: [n0 n1 n2 n3] partial sums of the low 8 k, then of the high 8 k.
    let mut acc = [_mm256_setzero_si256(); MR];
    for s in 0..steps {
        let ap = a.add(s * MR * KC);
        let bp = b.add(s * blocks4::STEP_BYTES);
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
