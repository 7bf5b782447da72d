//! `avx2_4x16c4`: AVX2 on [`Packing::Lanes16`](crate::conv::contract::Packing), 4 pixels
//! × 16 channels per tile, `vpmaddwd` on sign-extended pairs, the scalar epilogue.

use core::arch::x86_64::*;

use crate::conv::contract::{Conv, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::lanes16;
use crate::conv::tiles;

/// Pixels per tile.
pub const MR: usize = 4;

/// The panel tile by tile.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn avx2_4x16c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    // SAFETY: the CPU has AVX2 (this function's contract); the block holds the panel's K.
    tiles::lanes16::<MR>(c, p, output, |_| 0, |m0, w| unsafe { tile(p, m0, w) });
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile(p: &Panel<'_>, m0: usize, w: &[i8]) -> [[i32; lanes16::CHANNELS]; MR] {
    debug_assert!(w.len() >= lanes16::block_at(p.slots.k_pad, 1) && p.slots.group == MR);
    // acc[m][j]: channels 4j..4j+4 of pixel m, two partial sums per channel.
    let mut acc = [[_mm256_setzero_si256(); 4]; MR];
    let (a, w) = (p.tile(m0, MR).as_ptr(), w.as_ptr());
    for s in 0..p.steps() {
        for g in 0..KC / lanes16::LANE_K {
            let wp = w.add(s * lanes16::STEP_BYTES + g * lanes16::GROUP_BYTES);
            let mut wv = [_mm256_setzero_si256(); 4];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16 * j) as *const __m128i));
            }
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let at = a.add(p.slots.slot(m, s * KC + g * lanes16::LANE_K));
                let four = core::ptr::read_unaligned(at as *const i32);
                let x = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(four)));
                for (j, acc_mj) in acc_m.iter_mut().enumerate() {
                    *acc_mj = _mm256_add_epi32(*acc_mj, _mm256_madd_epi16(x, wv[j]));
                }
            }
        }
    }
    let mut out = [[0i32; lanes16::CHANNELS]; MR];
    for (m, row) in out.iter_mut().enumerate() {
        for j in 0..4 {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[m][j]);
            for q in 0..4 {
                row[4 * j + q] = lanes[2 * q].wrapping_add(lanes[2 * q + 1]);
            }
        }
    }
    out
}
