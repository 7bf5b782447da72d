//! `sdot_4x16c4`: the AArch64 micro-kernel on [`Packing::Lanes16`](crate::conv::contract::Packing)
//! (Cortex-A76/A78, `sdot` by element): tiles of 4 pixels × 16 channels, sixteen
//! accumulators; per 16 reduction steps, four input vectors (one per pixel) and sixteen
//! weight vectors feed 64 `sdot`s. It reads a packed panel, or a band of the input in
//! place ([`Direct`]).

use core::arch::aarch64::*;

use crate::arch::aarch64::epilogue::{finish_pixel16, residual_quads, QuadParams};
use crate::arch::aarch64::vector::load_rows;
use crate::conv::contract::{round_up, Conv, Shifts, KC};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::{Direct, Panel};
use crate::conv::layout::lanes16::{self, GROUP_BYTES, STEP_BYTES};
use crate::conv::params;

/// Pixels per tile.
pub const MR: usize = 4;
const OCB: usize = lanes16::CHANNELS;

/// `acc += w · x.4b[LANE]`: four channels' four weights against one pixel's four inputs.
macro_rules! sdot_lane {
    ($acc:expr, $w:expr, $x:expr, $lane:literal) => {
        core::arch::asm!(
            concat!("sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[", $lane, "]"),
            acc = inout(vreg) $acc,
            w = in(vreg) $w,
            x = in(vreg) $x,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
}

/// The panel with `sdot` by element: tiles of 4 pixels × 16 channels, sixteen
/// accumulators; per 16 reduction steps, four input vectors (one per pixel) and sixteen
/// weight vectors feed 64 `sdot`s.
///
/// # Safety
/// The CPU has the dot product; `c`, `p` and `output` are consistent (the parser checked
/// the shapes).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn sdot_4x16c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    assert!(p.slots.group == MR && p.slots.chunk == KC);
    blocks16(c, p.p0, p.count, p.shifts, output, p)
}

/// The same tiles reading the input in place ([`Direct`]): per tap, each pixel's chunks
/// where they lie in the band, two at a time.
///
/// # Safety
/// The CPU has the dot product; `d`'s offsets plus taps plus `IC` bytes are inside its
/// band; `c` and `output` are consistent.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn sdot_4x16c4_direct(c: &Conv<'_>, d: &Direct<'_>, output: &mut [i8]) {
    assert!(d.offsets.len() >= d.count.div_ceil(MR) * MR && d.in_c.is_multiple_of(KC));
    blocks16(c, d.p0, d.count, d.shifts, output, d)
}

/// Where a tile's input comes from: `tile(m0, weights, init)` gives the sums of pixels
/// `m0 .. m0 + 4` against one block's weights, started from `init`. (A trait rather than
/// a closure: the tile must inline into the block loop, or its sixteen accumulators go
/// through memory.)
trait Tiles16 {
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR];
}

impl Tiles16 for Panel<'_> {
    #[inline(always)]
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR] {
        tile16_sdot(self.tile(m0, MR).as_ptr(), w, self.steps(), init)
    }
}

impl Tiles16 for Direct<'_> {
    #[inline(always)]
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR] {
        tile16_direct(self, m0, w, init)
    }
}

/// Every 16-channel block of pixels `p0 .. p0 + count` (of the output slice), a tile of
/// `MR` pixels at a time (`m0` counted from `p0`). Blocks the output has whole go
/// through the vector epilogue, the last partial one lane by lane.
#[inline(always)]
unsafe fn blocks16(
    c: &Conv<'_>,
    p0: usize,
    count: usize,
    shifts: Shifts,
    output: &mut [i8],
    tiles: &impl Tiles16,
) {
    match shifts {
        Shifts::AllRight => blocks16_with::<false, true>(c, p0, count, output, tiles),
        Shifts::NoLeft => blocks16_with::<false, false>(c, p0, count, output, tiles),
        Shifts::SomeLeft => blocks16_with::<true, false>(c, p0, count, output, tiles),
    }
}

/// [`blocks16`] for one form of the epilogue: `LEFT`, some channel shifts left; `RIGHT`,
/// all shift right.
#[inline(always)]
unsafe fn blocks16_with<const LEFT: bool, const RIGHT: bool>(
    c: &Conv<'_>,
    p0: usize,
    count: usize,
    output: &mut [i8],
    tiles: &impl Tiles16,
) {
    let oc = c.window.out_c;
    let whole = oc / OCB;
    let k_pad = round_up(c.k(), KC);
    assert!(output.len() >= (p0 + count) * oc);
    assert!(c.weights.len() >= lanes16::block_at(k_pad, oc.div_ceil(OCB)));
    let out_base = output.as_mut_ptr();
    for block in 0..whole {
        let o0 = block * OCB;
        let quads: [QuadParams; 4] = core::array::from_fn(|j| {
            QuadParams::load(c.params.as_ptr().add(params::offset(o0 + 4 * j)))
        });
        let w0 = c.weights.as_ptr().add(lanes16::block_at(k_pad, block));
        // The accumulators start from the bias, so the epilogue need not add it.
        let bias = quads.map(|q| q.bias);
        for m0 in (0..count).step_by(MR) {
            let acc = tiles.tile(m0, w0, bias);
            let first = (p0 + m0) * oc + o0;
            let finish = |m: usize, acc_m: &[int32x4_t; 4]| {
                let at = first + m * oc;
                let residual = residual_quads(c, out_base, at);
                finish_pixel16::<LEFT, RIGHT>(acc_m, &quads, residual, c, out_base.add(at));
            };
            if count - m0 >= MR {
                // A whole tile, unrolled: the sums stay in registers.
                for (m, acc_m) in acc.iter().enumerate() {
                    finish(m, acc_m);
                }
            } else {
                for (m, acc_m) in acc.iter().enumerate().take(count - m0) {
                    finish(m, acc_m);
                }
            }
        }
    }
    if whole * OCB < oc {
        // The last, partial block: the same sums, stored lane by lane.
        let o0 = whole * OCB;
        let w0 = c.weights.as_ptr().add(lanes16::block_at(k_pad, whole));
        for m0 in (0..count).step_by(MR) {
            let acc = tiles.tile(m0, w0, [vdupq_n_s32(0); 4]);
            let mut t = [[0i32; OCB]; MR];
            for (row, acc_m) in t.iter_mut().zip(&acc) {
                for (j, v) in acc_m.iter().enumerate() {
                    vst1q_s32(row[4 * j..].as_mut_ptr(), *v);
                }
            }
            let store = TileStore::of(c, MR.min(count - m0), p0 + m0, o0);
            store.lanes(oc - o0, |m, n| t[m][n], |_| 0, output);
        }
    }
}

/// One 16-deep step: per group of four `k`, the four weight vectors of sixteen channels
/// against lane `g` of each pixel's vector.
#[inline(always)]
unsafe fn dot_step(acc: &mut [[int32x4_t; 4]; MR], x: &[int8x16_t; MR], wp: *const i8) {
    macro_rules! group {
        ($g:literal) => {{
            let w: [int8x16_t; 4] = load_rows(wp.add($g * GROUP_BYTES));
            for m in 0..MR {
                for j in 0..4 {
                    sdot_lane!(acc[m][j], w[j], x[m], $g);
                }
            }
        }};
    }
    group!(0);
    group!(1);
    group!(2);
    group!(3);
}

#[inline(always)]
unsafe fn tile16_sdot(
    a: *const i8,
    w: *const i8,
    steps: usize,
    init: [int32x4_t; 4],
) -> [[int32x4_t; 4]; MR] {
    let mut acc = [init; MR];
    let (mut ap, mut wp) = (a, w);
    // Two steps per trip: the loop's own instructions count once per 128 `sdot`s.
    for _ in 0..steps / 2 {
        dot_step(&mut acc, &load_rows(ap), wp);
        dot_step(&mut acc, &load_rows(ap.add(MR * KC)), wp.add(STEP_BYTES));
        ap = ap.add(2 * MR * KC);
        wp = wp.add(2 * STEP_BYTES);
    }
    if steps % 2 == 1 {
        dot_step(&mut acc, &load_rows(ap), wp);
    }
    acc
}

/// [`tile16_sdot`] on pixels `m0 .. m0 + 4` of `d`, read in place: the weights stream in
/// tap order as packed (`[tap][IC]` is the im2col order).
#[inline(always)]
unsafe fn tile16_direct(
    d: &Direct<'_>,
    m0: usize,
    w: *const i8,
    init: [int32x4_t; 4],
) -> [[int32x4_t; 4]; MR] {
    let mut acc = [init; MR];
    let band = d.band.as_ptr();
    let bases: [*const i8; MR] =
        core::array::from_fn(|m| band.add(*d.offsets.get_unchecked(m0 + m) as usize));
    let (pairs, single) = (d.in_c / (2 * KC), !d.in_c.is_multiple_of(2 * KC));
    let mut wp = w;
    for &tap in d.taps {
        let mut xp = bases.map(|b| b.add(tap as usize));
        for _ in 0..pairs {
            let x: [int8x16x2_t; MR] = core::array::from_fn(|m| vld1q_s8_x2(xp[m]));
            dot_step(&mut acc, &x.map(|v| v.0), wp);
            dot_step(&mut acc, &x.map(|v| v.1), wp.add(STEP_BYTES));
            xp = xp.map(|p| p.add(2 * KC));
            wp = wp.add(2 * STEP_BYTES);
        }
        if single {
            dot_step(&mut acc, &xp.map(|p| vld1q_s8(p)), wp);
            wp = wp.add(STEP_BYTES);
        }
    }
    acc
}

/// The `sdot` tile alone (4 pixels × 16 channels, `steps` 16-deep steps, sums to `out`),
/// for `../shared/arm/mca.sh`: the conv inlines the same loop.
///
/// # Safety
/// The CPU has the dot product; `a` holds `steps · 64` bytes, `w` `steps · 256`, `out`
/// room for 64 `i32`.
#[doc(hidden)]
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn sdot_tile_4x16(a: *const i8, w: *const i8, steps: usize, out: *mut i32) {
    let acc = tile16_sdot(a, w, steps, [vdupq_n_s32(0); 4]);
    for (m, row) in acc.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            vst1q_s32(out.add(16 * m + 4 * j), *v);
        }
    }
}
