//! `vnni_4x4c16`: AVX-512 VNNI on [`Packing::Blocks4`](crate::conv::contract::Packing),
//! 4 pixels × 4 channels per tile (`vpdpbusd`, unsigned × signed: the input is packed as
//! `x + 128` and `128 · Σw` taken back out of the bias, exactly), the scalar epilogue.

use core::arch::x86_64::*;

use crate::conv::contract::Packing;
use crate::conv::contract::{Conv, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::blocks4;
use crate::conv::layout::Shape;
use crate::conv::tiles;

/// Pixels per tile.
pub const MR: usize = 4;
const NR: usize = blocks4::CHANNELS;

/// One `MR × NR` block of accumulators.
type Tile = [[i32; NR]; MR];

/// The panel tile by tile.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has AVX-512 F/BW/VNNI; the panel holds
/// inputs stored as `x ^ 0x80`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn vnni_4x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    assert!(p.slots.group == MR && p.slots.chunk == KC);
    let shape = Shape::of(Packing::Blocks4, c.k(), c.window.out_c);
    // VNNI multiplied x + 128: take 128 · Σw back out (wrapping, exactly).
    let offset = |o| shape.channel_sum(c.weights, o).wrapping_mul(128);
    // SAFETY: as `avx2_4x4c16`, for AVX-512 VNNI.
    tiles::blocks4::<MR>(
        Packing::Blocks4,
        c,
        p,
        output,
        offset,
        |a, b, steps| unsafe { tile(a.as_ptr(), b.as_ptr(), steps) },
    );
}

/// # Safety
/// `a` holds `steps · MR · KC` bytes, `b` `steps · NR · KC`, with AVX-512 F/BW/VNNI; `a` holds inputs stored as `x ^ 0x80`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m]: 128-bit lane n holds four partial sums of output channel n.
    let mut acc = [_mm512_setzero_si512(); MR];
    for s in 0..steps {
        let w = _mm512_loadu_si512(b.add(s * blocks4::STEP_BYTES) as *const _);
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
