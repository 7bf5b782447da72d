//! The AArch64 micro-kernels on [`Packing::Blocks4`](crate::conv::contract::Packing):
//! `smlal_4x4c16` (Cortex-A72: widening multiply-accumulate, `SMULL`/`SMLAL2`/`SADALP`) and
//! `sdot_4x4c16` (A76/A78, `sdot` without lane indexing). Both compute a tile of 4 pixels ×
//! 4 channels over 16-byte chunks: each (pixel, channel) pair keeps four partial sums in
//! one vector, reduced pairwise at the end of the tile and requantised in registers.
//!
//! On the A72 kernel, two products share an int16 lane before `SADALP` widens them:
//! |x·w| ≤ 128·127, so the pair fits, which is why packed weights stop at −127 (the file
//! parser refuses −128).

use core::arch::aarch64::*;

use crate::arch::aarch64::epilogue::{finish_rows, residual_quads, QuadParams};
use crate::arch::aarch64::vector::load_rows;
use crate::conv::contract::{Conv, Shifts, KC};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::Panel;
use crate::conv::layout::blocks4;
use crate::conv::params;

/// Pixels per tile.
pub const MR: usize = 4;
/// Channels per tile: one block.
const NR: usize = blocks4::CHANNELS;

/// The panel on `SMLAL`, tile by tile: for every block of `NR` channels the dot products
/// accumulate in vector registers, are reduced pairwise and go through the vector
/// epilogue without touching memory in between.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`] (NEON is part of AArch64).
#[target_feature(enable = "neon")]
pub unsafe fn smlal_4x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel::<false>(c, p, output)
}

/// [`smlal_4x4c16`] with `sdot`.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has the dot product.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn sdot_4x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel::<true>(c, p, output)
}

#[inline(always)]
unsafe fn panel<const DOT: bool>(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    assert!(p.slots.group == MR && p.slots.chunk == KC);
    for t0 in (0..p.count).step_by(MR) {
        let (tile, rows) = (p.tile(t0, MR), MR.min(p.count - t0));
        let p0 = p.p0 + t0;
        match p.shifts {
            Shifts::AllRight => tile_blocks::<DOT, false, true>(c, tile, p0, rows, output),
            Shifts::NoLeft => tile_blocks::<DOT, false, false>(c, tile, p0, rows, output),
            Shifts::SomeLeft => tile_blocks::<DOT, true, false>(c, tile, p0, rows, output),
        }
    }
}

/// Every block of `NR` channels for the `MR`-pixel tile packed in `a` whose first pixel
/// is `p0` (`rows` of them real), the epilogue in the form `LEFT` and `RIGHT` name
/// ([`requantize_channels`](crate::arch::aarch64::epilogue::requantize_channels)).
#[inline(always)]
unsafe fn tile_blocks<const DOT: bool, const LEFT: bool, const RIGHT: bool>(
    c: &Conv<'_>,
    a: &[i8],
    p0: usize,
    rows: usize,
    output: &mut [i8],
) {
    let oc = c.window.out_c;
    let k_pad = a.len() / MR;
    let steps = k_pad / KC;
    let out_base = output.as_mut_ptr();
    {
        for block in 0..oc.div_ceil(NR) {
            let mut b = c.weights.as_ptr().add(blocks4::block_at(k_pad, block));
            let mut ap = a.as_ptr();
            let mut acc = [[vdupq_n_s32(0); NR]; MR];
            for _ in 0..steps {
                let x: [int8x16_t; MR] = load_rows(ap);
                let w: [int8x16_t; NR] = load_rows(b);
                ap = ap.add(MR * KC);
                b = b.add(blocks4::STEP_BYTES);
                for m in 0..MR {
                    for n in 0..NR {
                        if DOT {
                            core::arch::asm!(
                                "sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
                                acc = inout(vreg) acc[m][n],
                                x = in(vreg) x[m],
                                w = in(vreg) w[n],
                                options(pure, nomem, nostack, preserves_flags),
                            );
                        } else {
                            let prod = vmull_s8(vget_low_s8(x[m]), vget_low_s8(w[n]));
                            let prod = vmlal_high_s8(prod, x[m], w[n]);
                            acc[m][n] = vpadalq_s16(acc[m][n], prod);
                        }
                    }
                }
            }
            // Four partial sums per (pixel, channel) → one lane per channel.
            let mut r = [vdupq_n_s32(0); MR];
            for m in 0..MR {
                r[m] = vpaddq_s32(
                    vpaddq_s32(acc[m][0], acc[m][1]),
                    vpaddq_s32(acc[m][2], acc[m][3]),
                );
            }
            let o0 = block * NR;
            let first = p0 * oc + o0;
            if oc - o0 >= NR {
                let q = QuadParams::load(c.params.as_ptr().add(params::offset(o0)));
                finish_rows::<LEFT, RIGHT>(
                    &r,
                    rows,
                    &q,
                    residual_quads(c, out_base, first),
                    c.out.zero_point,
                    c.out.min,
                    c.out.max,
                    out_base.add(first),
                    oc,
                );
            } else {
                let mut tile = [[0i32; NR]; MR];
                for m in 0..MR {
                    vst1q_s32(tile[m].as_mut_ptr(), r[m]);
                }
                partial_block(c, &tile, rows, p0, o0, output);
            }
        }
    }
}

/// The last, partial block of channels, lane by lane. Kept out of line: inlined, its
/// bounds arithmetic is hoisted into every block's prologue (+16% instructions on the
/// A72 ResNet-8).
#[inline(never)]
#[cold]
fn partial_block(
    c: &Conv<'_>,
    tile: &[[i32; NR]; MR],
    rows: usize,
    p0: usize,
    o0: usize,
    output: &mut [i8],
) {
    let store = TileStore::of(c, rows, p0, o0);
    store.lanes(c.window.out_c - o0, |m, n| tile[m][n], |_| 0, output);
}
