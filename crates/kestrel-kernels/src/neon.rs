//! AArch64 micro-kernels for [`crate::gemm`]: Cortex-A72 (widening multiply-accumulate)
//! and Cortex-A76/A78 (`sdot`). Both compute the same `MR × NR` tile of dot products over
//! 16-byte chunks; each (pixel, channel) pair keeps four partial sums in one vector,
//! reduced once at the end of the tile.

use core::arch::aarch64::*;

use crate::gemm::{Tile, KC, MR, NR};

#[inline(always)]
unsafe fn load_rows<const R: usize>(p: *const i8) -> [int8x16_t; R] {
    let mut v = [vdupq_n_s8(0); R];
    for (r, reg) in v.iter_mut().enumerate() {
        *reg = vld1q_s8(p.add(r * KC));
    }
    v
}

#[inline(always)]
unsafe fn reduce(acc: [[int32x4_t; NR]; MR]) -> Tile {
    let mut out = [[0i32; NR]; MR];
    for m in 0..MR {
        for n in 0..NR {
            // Wrapping lane sum, like every other path.
            out[m][n] = vaddvq_s32(acc[m][n]);
        }
    }
    out
}

/// Cortex-A72: `SMULL` + `SMLAL2` give 16 products in eight int16 lanes (two products per
/// lane: |x·w| ≤ 128·127, so the pair fits, which is why weights stop at −127), and
/// `SADALP` adds the pairs into four int32 lanes.
///
/// # Safety
/// `a` holds `steps · MR · KC` bytes and `b` `steps · NR · KC`.
#[target_feature(enable = "neon")]
pub unsafe fn tile_smlal(a: *const i8, b: *const i8, steps: usize) -> Tile {
    let mut acc = [[vdupq_n_s32(0); NR]; MR];
    for s in 0..steps {
        let av: [int8x16_t; MR] = load_rows(a.add(s * MR * KC));
        let bv: [int8x16_t; NR] = load_rows(b.add(s * NR * KC));
        for m in 0..MR {
            for n in 0..NR {
                let p = vmull_s8(vget_low_s8(av[m]), vget_low_s8(bv[n]));
                let p = vmlal_high_s8(p, av[m], bv[n]);
                acc[m][n] = vpadalq_s16(acc[m][n], p);
            }
        }
    }
    reduce(acc)
}

/// Cortex-A76/A78: one `sdot` per (pixel, channel) pair and 16-byte chunk: 16 MACs into
/// four int32 lanes. Written with `asm!` because the dot-product intrinsics are unstable.
///
/// # Safety
/// As [`tile_smlal`], and the CPU has the dot product.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tile_sdot(a: *const i8, b: *const i8, steps: usize) -> Tile {
    let mut acc = [[vdupq_n_s32(0); NR]; MR];
    for s in 0..steps {
        let av: [int8x16_t; MR] = load_rows(a.add(s * MR * KC));
        let bv: [int8x16_t; NR] = load_rows(b.add(s * NR * KC));
        for m in 0..MR {
            for n in 0..NR {
                core::arch::asm!(
                    "sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
                    acc = inout(vreg) acc[m][n],
                    x = in(vreg) av[m],
                    w = in(vreg) bv[n],
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
        }
    }
    reduce(acc)
}
