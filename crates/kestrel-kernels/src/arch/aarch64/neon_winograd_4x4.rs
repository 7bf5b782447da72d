//! `smlal_winograd_4x4`: 3×3 stride-1 convs on the Cortex-A72 by exact integer Winograd
//! F(2×2, 3×3) ([`crate::conv::winograd`] says why it is exact), on weights packed as
//! [`Packing::Blocks4`](crate::conv::contract::Packing). Without the dot product the
//! A72's products cost the same per lane in int16 as in int8 (`SMLAL` against
//! `SMULL`/`SMLAL2`/`SADALP` on pairs), so 16 products per 2×2 outputs instead of 36 are
//! that many fewer instructions.
//!
//! The run goes as on AVX2 (`avx2_winograd_4x8`): a chunk of tiles' input transformed once
//! (int16, [`winograd::input_at`]); then per block of 4 output channels their weights
//! transformed ([`winograd::block4_weight_at`]) and, point by point, 4 tiles × 4 channels
//! summed at a time over the input channels, 4 lanes of partial sums each (as the direct
//! tile keeps them), reduced pairwise; then the output transform and the vector epilogue.

use core::arch::aarch64::*;

use crate::arch::aarch64::epilogue::{finish_pixels, residual_quads, QuadParams};
use crate::conv::contract::{round_up, Conv, KC};
use crate::conv::layout::blocks4;
use crate::conv::params;
use crate::conv::winograd::{self, GROUP, POINTS};

/// Output channels per block: one `Blocks4` block.
const NR: usize = blocks4::CHANNELS;

/// The conv on the pixels of `output`, Winograd in `scratch` ([`winograd::tiles_in`] ≥ 1
/// group).
///
/// # Safety
/// NEON is part of AArch64; [`winograd::applies`] to the conv's window; the weights are
/// packed as `Blocks4` and the shapes consistent (the parser checked them).
#[target_feature(enable = "neon")]
pub unsafe fn smlal_winograd_4x4(c: &Conv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    if c.shift_form().any_left() {
        run::<true>(c, output, scratch)
    } else {
        run::<false>(c, output, scratch)
    }
}

#[inline(always)]
unsafe fn run<const LEFT: bool>(c: &Conv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    let s = c.window;
    let (w, ic, oc) = (s.in_w, s.in_c, s.out_c);
    let per_chunk = winograd::tiles_in(ic, scratch.len());
    assert!(winograd::applies(s) && per_chunk > 0 && oc.is_multiple_of(NR));
    assert!(c.input.len() >= s.in_h * w * ic && output.len().is_multiple_of(oc));
    assert!(winograd::block4_weights_bytes(ic) <= winograd::weights_bytes(ic));
    let pixels = c.pixels(output);
    if pixels == 0 {
        return;
    }
    let (first, end) = (c.first, c.first + pixels);
    // The tile rows the run touches, every tile column of each.
    let columns = w.div_ceil(2);
    let row0 = first / w / 2;
    let tiles = ((end - 1) / w / 2 + 1 - row0) * columns;
    let (u, v) = scratch.split_at_mut(winograd::weights_bytes(ic));
    let (u, v) = (u.as_mut_ptr() as *mut i16, v.as_mut_ptr() as *mut i16);
    let out = output.as_mut_ptr();
    let residual = residual_quads(c, out, 0);
    let tile_at = |t: usize| (2 * (row0 + t / columns), 2 * (t % columns));
    // Each tile's 16 point sums of one block, read by the output transform once every
    // point is summed: each point's weights are read once per block and chunk.
    let mut sums = [[vdupq_n_s32(0); winograd::MAX_TILES]; POINTS];
    for start in (0..tiles).step_by(per_chunk) {
        let count = per_chunk.min(tiles - start);
        for slot in 0..count {
            let (y, x) = tile_at(start + slot);
            transform_input(c, y, x, slot, v);
        }
        for block in 0..oc / NR {
            transform_weights(c, block, u);
            for (xi, point) in sums.iter_mut().enumerate() {
                for g in (0..count).step_by(GROUP) {
                    let group = point_sums(ic, g, xi, u, v);
                    point[g..g + GROUP].copy_from_slice(&group);
                }
            }
            let o0 = block * NR;
            let q = QuadParams::load(c.params.as_ptr().add(params::offset(o0)));
            #[allow(clippy::needless_range_loop)] // a slot indexes every point's sums
            for slot in 0..count {
                let (y, x) = tile_at(start + slot);
                let outs = transform_output(&core::array::from_fn(|xi| sums[xi][slot]));
                // The tile's pixels row by row, where inside the map and the run.
                let at = core::array::from_fn(|i| {
                    let (py, px) = (y + i / 2, x + i % 2);
                    let p = py * w + px;
                    (px < w && p >= first && p < end).then(|| (p - first) * oc + o0)
                });
                finish_pixels::<LEFT>(&outs, &at, &q, residual, &c.out, out);
            }
        }
    }
}

/// `Bᵀ d B` of the 4×4 input patch whose top-left is input pixel `(y − 1, x − 1)`,
/// padding read as the zero point, into `slot` of the chunk at `v`.
#[inline(always)]
unsafe fn transform_input(c: &Conv<'_>, y: usize, x: usize, slot: usize, v: *mut i16) {
    let s = c.window;
    let (h, w, ic) = (s.in_h, s.in_w, s.in_c);
    let padding = vdupq_n_s8(c.zero_point);
    let inside = |i: usize, n: usize| (1..=n).contains(&i);
    // Input row and column `y − 1 + r` as `y + r`, inside when in 1 ..= h.
    let rows: [bool; 4] = core::array::from_fn(|r| inside(y + r, h));
    let cols: [bool; 4] = core::array::from_fn(|q| inside(x + q, w));
    let input = c.input.as_ptr();
    for cb in 0..ic / KC {
        let d: [[int8x16_t; 4]; 4] = core::array::from_fn(|r| {
            core::array::from_fn(|q| {
                if rows[r] && cols[q] {
                    vld1q_s8(input.add(((y + r - 1) * w + x + q - 1) * ic + cb * KC))
                } else {
                    padding
                }
            })
        });
        // Bᵀ down each column (widening to int16), then B along each row.
        let e: [[[int16x8_t; 2]; 4]; 4] =
            core::array::from_fn(|q| b_widening([d[0][q], d[1][q], d[2][q], d[3][q]]));
        #[allow(clippy::needless_range_loop)] // a transpose: `i` indexes the inner axis
        for i in 0..4 {
            for half in 0..2 {
                let row = b_transpose([e[0][i][half], e[1][i][half], e[2][i][half], e[3][i][half]]);
                for (j, &value) in row.iter().enumerate() {
                    let at = winograd::input_at(ic, slot, 4 * i + j, cb) + 8 * half;
                    vst1q_s16(v.add(at), value);
                }
            }
        }
    }
}

/// `Bᵀ` on four int8 vectors, widening: `d0 − d2, d1 + d2, d2 − d1, d1 − d3`, each as its
/// low and high eight lanes.
#[inline(always)]
unsafe fn b_widening(d: [int8x16_t; 4]) -> [[int16x8_t; 2]; 4] {
    let lo = |v: int8x16_t| vget_low_s8(v);
    [
        [vsubl_s8(lo(d[0]), lo(d[2])), vsubl_high_s8(d[0], d[2])],
        [vaddl_s8(lo(d[1]), lo(d[2])), vaddl_high_s8(d[1], d[2])],
        [vsubl_s8(lo(d[2]), lo(d[1])), vsubl_high_s8(d[2], d[1])],
        [vsubl_s8(lo(d[1]), lo(d[3])), vsubl_high_s8(d[1], d[3])],
    ]
}

/// `Bᵀ` on four int16 vectors.
#[inline(always)]
unsafe fn b_transpose(d: [int16x8_t; 4]) -> [int16x8_t; 4] {
    [
        vsubq_s16(d[0], d[2]),
        vaddq_s16(d[1], d[2]),
        vsubq_s16(d[2], d[1]),
        vsubq_s16(d[1], d[3]),
    ]
}

/// `Ĝ` (`2G`) on three int8 vectors, widening: `2g0, g0 + g1 + g2, g0 − g1 + g2, 2g2`,
/// each as its low and high eight lanes.
#[inline(always)]
unsafe fn g_widening(g: [int8x16_t; 3]) -> [[int16x8_t; 2]; 4] {
    let lo = |v: int8x16_t| vget_low_s8(v);
    let outer = [vaddl_s8(lo(g[0]), lo(g[2])), vaddl_high_s8(g[0], g[2])];
    [
        [vshll_n_s8::<1>(lo(g[0])), vshll_high_n_s8::<1>(g[0])],
        [vaddw_s8(outer[0], lo(g[1])), vaddw_high_s8(outer[1], g[1])],
        [vsubw_s8(outer[0], lo(g[1])), vsubw_high_s8(outer[1], g[1])],
        [vshll_n_s8::<1>(lo(g[2])), vshll_high_n_s8::<1>(g[2])],
    ]
}

/// `Ĝ` on three int16 vectors.
#[inline(always)]
unsafe fn g_scaled(g: [int16x8_t; 3]) -> [int16x8_t; 4] {
    let outer = vaddq_s16(g[0], g[2]);
    [
        vaddq_s16(g[0], g[0]),
        vaddq_s16(outer, g[1]),
        vsubq_s16(outer, g[1]),
        vaddq_s16(g[2], g[2]),
    ]
}

/// `Ĝ g Ĝᵀ` of block `block`'s 4 channels, every input channel, into `u`
/// ([`winograd::block4_weight_at`]). Each tap of a channel's 16 input channels is one
/// 16-byte row of the block.
#[inline(always)]
unsafe fn transform_weights(c: &Conv<'_>, block: usize, u: *mut i16) {
    let ic = c.window.in_c;
    let k_pad = round_up(9 * ic, KC);
    let base = c.weights.as_ptr().add(blocks4::block_at(k_pad, block));
    for cb in 0..ic / KC {
        for n in 0..NR {
            // `K` runs tap by tap, each tap's input channels in whole chunks.
            let tap =
                |t: usize| vld1q_s8(base.add((t * ic / KC + cb) * blocks4::STEP_BYTES + n * KC));
            let g: [[int8x16_t; 3]; 3] =
                core::array::from_fn(|ky| core::array::from_fn(|kx| tap(3 * ky + kx)));
            let a: [[[int16x8_t; 2]; 4]; 3] =
                core::array::from_fn(|kx| g_widening([g[0][kx], g[1][kx], g[2][kx]]));
            #[allow(clippy::needless_range_loop)] // a transpose: `r` indexes the inner axis
            for r in 0..4 {
                for half in 0..2 {
                    let row = g_scaled([a[0][r][half], a[1][r][half], a[2][r][half]]);
                    for (q, &value) in row.iter().enumerate() {
                        let at = winograd::block4_weight_at(ic, 4 * r + q, 2 * cb + half);
                        vst1q_s16(u.add(at + n * 8), value);
                    }
                }
            }
        }
    }
}

/// Point `xi`'s sums (the block's 4 channels each) of the tiles in slots `g .. g + 4`.
#[inline(always)]
unsafe fn point_sums(
    ic: usize,
    g: usize,
    xi: usize,
    u: *const i16,
    v: *const i16,
) -> [int32x4_t; GROUP] {
    let mut acc = [[vdupq_n_s32(0); NR]; GROUP];
    for cb in 0..ic / KC {
        // The 4 tiles' 16 channels: tile by tile, low eight then high eight.
        let x = v.add(winograd::input_at(ic, g, xi, cb));
        let (x01, x23) = (vld1q_s16_x4(x), vld1q_s16_x4(x.add(32)));
        let xs = [
            [x01.0, x01.1],
            [x01.2, x01.3],
            [x23.0, x23.1],
            [x23.2, x23.3],
        ];
        #[allow(clippy::needless_range_loop)] // `half` indexes each tile's inputs
        for half in 0..2 {
            let wp = u.add(winograd::block4_weight_at(ic, xi, 2 * cb + half));
            let wq = vld1q_s16_x4(wp);
            let ws = [wq.0, wq.1, wq.2, wq.3];
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let x = xs[t][half];
                for (n, acc) in acc_t.iter_mut().enumerate() {
                    *acc = vmlal_s16(*acc, vget_low_s16(x), vget_low_s16(ws[n]));
                    *acc = vmlal_high_s16(*acc, x, ws[n]);
                }
            }
        }
    }
    acc.map(|a| vpaddq_s32(vpaddq_s32(a[0], a[1]), vpaddq_s32(a[2], a[3])))
}

/// `Aᵀ M A / 4`: the four outputs (row by row) of a tile's 16 point sums.
#[inline(always)]
unsafe fn transform_output(m: &[int32x4_t; POINTS]) -> [int32x4_t; 4] {
    // Aᵀ on four values: m0 + m1 + m2, m1 − m2 − m3.
    let a = |v: [int32x4_t; 4]| {
        let mid = vsubq_s32(v[1], v[2]);
        [vaddq_s32(vaddq_s32(v[0], v[1]), v[2]), vsubq_s32(mid, v[3])]
    };
    let f: [[int32x4_t; 2]; 4] = core::array::from_fn(|j| a([m[j], m[4 + j], m[8 + j], m[12 + j]]));
    let top = a([f[0][0], f[1][0], f[2][0], f[3][0]]);
    let bottom = a([f[0][1], f[1][1], f[2][1], f[3][1]]);
    [top[0], top[1], bottom[0], bottom[1]].map(|v| vshrq_n_s32::<2>(v))
}
