//! `smlal_winograd_4x4`: 3×3 stride-1 convs on the Cortex-A72 by exact integer Winograd
//! F(2×2, 3×3) ([`crate::conv::winograd`] says why it is exact), on weights packed as
//! [`Packing::Blocks4`](crate::conv::contract::Packing). Without the dot product the
//! A72's products cost the same per lane in int16 as in int8 (`SMLAL` against
//! `SMULL`/`SMLAL2`/`SADALP` on pairs), so 16 products per 2×2 outputs instead of 36 are
//! that many fewer instructions.
//!
//! A chunk of tiles' input is transformed once, in groups of 4 tiles whose lanes sit side
//! by side ([`winograd::tile_lanes_input_at`]); then per 8 output channels (two blocks)
//! their weights are transformed ([`winograd::block4_weight_at`]) and, point by point,
//! each group's sums of the 8 channels accumulate by element: `SMLAL` of a vector of the 4
//! tiles' inputs by one weight lane, so each sum is one lane from the start and nothing
//! is reduced. The output transform runs on those vectors, a 4×4 transpose turns them
//! into each tile's channels, and the vector epilogue finishes them.

use core::arch::aarch64::*;
use core::ops::Range;

use crate::arch::aarch64::epilogue::{finish_pixels, residual_quads, QuadParams};
use crate::conv::contract::{round_up, Conv, Shifts, KC};
use crate::conv::layout::blocks4;
use crate::conv::params;
use crate::conv::winograd::{self, GROUP, POINTS};

winograd::transforms! {
    i16: int16x8_t, vaddq_s16, vsubq_s16;
    i32: int32x4_t, vaddq_s32, vsubq_s32, |v| vshrq_n_s32::<2>(v);
}

/// Output channels per pass: two `Blocks4` blocks.
const NR: usize = 2 * blocks4::CHANNELS;

/// Output channels `channels` of the conv on the `pixels` pixels of the run at `output`,
/// Winograd in `scratch` ([`winograd::tiles_in`] ≥ 1 group).
///
/// # Safety
/// As [`WholeKernel`](crate::conv::kernel::WholeKernel) (NEON is part of AArch64), the
/// weights packed as `Blocks4`.
#[target_feature(enable = "neon")]
pub unsafe fn smlal_winograd_4x4(
    c: &Conv<'_>,
    output: *mut i8,
    pixels: usize,
    channels: Range<usize>,
    scratch: &mut [i8],
) {
    let run = match c.shifts() {
        Shifts::AllRight => run::<false, true>,
        Shifts::NoLeft => run::<false, false>,
        Shifts::SomeLeft => run::<true, false>,
    };
    run(c, output, pixels, channels, scratch)
}

/// The run with the epilogue in the form `LEFT` and `RIGHT` name
/// ([`requantize_channels`](crate::arch::aarch64::epilogue::requantize_channels)).
#[inline(always)]
unsafe fn run<const LEFT: bool, const RIGHT: bool>(
    c: &Conv<'_>,
    out: *mut i8,
    pixels: usize,
    channels: Range<usize>,
    scratch: &mut [i8],
) {
    let s = c.window;
    let (w, ic, oc) = (s.in_w, s.in_c, s.out_c);
    let per_chunk = winograd::tiles_in(ic, NR, scratch.len());
    assert!(winograd::fits(s) && per_chunk > 0 && oc.is_multiple_of(NR));
    assert!(channels.start.is_multiple_of(NR) && channels.end.is_multiple_of(NR));
    assert!(channels.end <= oc && c.input.len() >= s.in_h * w * ic);
    if pixels == 0 || channels.is_empty() {
        return;
    }
    let (first, end) = (c.first, c.first + pixels);
    // The tile rows the run touches, every tile column of each.
    let columns = w.div_ceil(2);
    let row0 = first / w / 2;
    let tiles = ((end - 1) / w / 2 + 1 - row0) * columns;
    let (u, v) = scratch.split_at_mut(winograd::weights_bytes(ic, NR));
    let (u, v) = (u.as_mut_ptr() as *mut i16, v.as_mut_ptr() as *mut i16);
    // The second block's transformed weights follow the first's.
    let u_second = u.add(winograd::block4_weights_bytes(ic) / 2);
    let residual = residual_quads(c, out, 0);
    let tile_at = |t: usize| (2 * (row0 + t / columns), 2 * (t % columns));
    let mut padding = [0i8; winograd::MAX_IN_C];
    padding[..ic].fill(c.zero_point);
    // A group's 16 point sums of the 8 channels, a vector of its 4 tiles each.
    let mut sums = [[vdupq_n_s32(0); NR]; POINTS];
    for start in (0..tiles).step_by(per_chunk) {
        let count = per_chunk.min(tiles - start);
        let groups = count.div_ceil(GROUP);
        // Each tile's pixels row by row, where inside the map and the run: element
        // offsets from the block's first channel, the same for every block.
        let mut pixels_at = [[None; 4]; winograd::MAX_TILES];
        for (slot, at) in pixels_at.iter_mut().enumerate().take(count) {
            let (y, x) = tile_at(start + slot);
            *at = core::array::from_fn(|i| {
                let (py, px) = (y + i / 2, x + i % 2);
                let p = py * w + px;
                (px < w && p >= first && p < end).then(|| (p - first) * oc)
            });
        }
        for g in 0..groups {
            // A group's missing tiles (past the run's last) read padding.
            let patches = core::array::from_fn(|t| {
                let slot = g * GROUP + t;
                (slot < count).then(|| tile_at(start + slot))
            });
            transform_group(c, &patches, g, v, padding.as_ptr());
        }
        for pass in channels.start / NR..channels.end / NR {
            transform_weights(c, 2 * pass, u);
            transform_weights(c, 2 * pass + 1, u_second);
            let o0 = pass * NR;
            let quads = [0, blocks4::CHANNELS]
                .map(|n| QuadParams::load(c.params.as_ptr().add(params::offset(o0 + n))));
            let (out, residual) = (out.add(o0), residual.map(|r| r.offset(o0)));
            for g in 0..groups {
                for (xi, sums) in sums.iter_mut().enumerate() {
                    *sums = point_sums(ic, g, xi, u, u_second, v);
                }
                for (half, q) in quads.iter().enumerate() {
                    let n = half * blocks4::CHANNELS;
                    let (out, residual) = (out.add(n), residual.map(|r| r.offset(n)));
                    let outs = group_outputs(&sums, half);
                    for (t, outs) in outs.iter().enumerate().take(count - g * GROUP) {
                        let at = &pixels_at[g * GROUP + t];
                        finish_pixels::<LEFT, RIGHT>(outs, at, q, residual, &c.out, out);
                    }
                }
            }
        }
    }
}

/// `Bᵀ d B` of the 4×4 input patches of a group's tiles (top-left input pixel `(y − 1,
/// x − 1)` each; `None`, a slot without a tile, reads padding), padding read as the zero
/// point (from `padding`, `IC` bytes of it), into group `g` of the chunk at `v`: each
/// tile's transform to a stack buffer, then 4 × 8 transposes put the tiles side by side.
#[inline(always)]
unsafe fn transform_group(
    c: &Conv<'_>,
    patches: &[Option<(usize, usize)>; GROUP],
    g: usize,
    v: *mut i16,
    padding: *const i8,
) {
    let s = c.window;
    let (h, w, ic) = (s.in_h, s.in_w, s.in_c);
    let input = c.input.as_ptr();
    // Input row and column `y − 1 + r` as `y + r`, inside when in 1 ..= h.
    let inside = |i: usize, n: usize| (1..=n).contains(&i);
    let mut at = [[[padding; 4]; 4]; GROUP];
    for (patch, at) in patches.iter().zip(at.iter_mut()) {
        let Some((y, x)) = *patch else { continue };
        for (r, row) in at.iter_mut().enumerate() {
            for (q, at) in row.iter_mut().enumerate() {
                if inside(y + r, h) && inside(x + q, w) {
                    *at = input.add(((y + r - 1) * w + x + q - 1) * ic);
                }
            }
        }
    }
    for cb in 0..ic / KC {
        let mut points = [[[vdupq_n_s16(0); 2]; POINTS]; GROUP];
        for (points, at) in points.iter_mut().zip(&at) {
            transform_patch(at, cb, points);
        }
        #[allow(clippy::needless_range_loop)] // a transpose: `xi` and `half` index the tiles'
        for xi in 0..POINTS {
            for half in 0..2 {
                let lanes = tiles_side_by_side(core::array::from_fn(|t| points[t][xi][half]));
                let at = winograd::tile_lanes_input_at(ic, g, xi, 2 * cb + half);
                vst1q_s16_x4(v.add(at), lanes);
            }
        }
    }
}

/// A patch's 16 transformed points into `points` (low and high eight of channels `16 ·
/// cb ..`), its pixel `(r, q)` starting at `pixel[r][q]`.
#[inline(always)]
unsafe fn transform_patch(
    pixel: &[[*const i8; 4]; 4],
    cb: usize,
    points: &mut [[int16x8_t; 2]; POINTS],
) {
    let mut d = [[vdupq_n_s8(0); 4]; 4];
    for (r, row) in d.iter_mut().enumerate() {
        for (q, d) in row.iter_mut().enumerate() {
            *d = vld1q_s8(pixel[r][q].add(cb * KC));
        }
    }
    // Bᵀ down each column (widening to int16), then B along each row.
    let e: [[[int16x8_t; 2]; 4]; 4] =
        core::array::from_fn(|q| b_widening([d[0][q], d[1][q], d[2][q], d[3][q]]));
    #[allow(clippy::needless_range_loop)] // a transpose: `i` indexes the inner axis
    for i in 0..4 {
        for half in 0..2 {
            let row = b_transpose([e[0][i][half], e[1][i][half], e[2][i][half], e[3][i][half]]);
            for (j, &value) in row.iter().enumerate() {
                points[4 * i + j][half] = value;
            }
        }
    }
}

/// Four tiles' eight channels (one vector each) as four vectors of channel pairs `(k, k
/// + 4)`, each channel's 4 tiles side by side: `(0, 4), (1, 5), (2, 6), (3, 7)`.
#[inline(always)]
unsafe fn tiles_side_by_side(t: [int16x8_t; GROUP]) -> int16x8x4_t {
    let (ab0, ab1) = (vtrn1q_s16(t[0], t[1]), vtrn2q_s16(t[0], t[1]));
    let (cd0, cd1) = (vtrn1q_s16(t[2], t[3]), vtrn2q_s16(t[2], t[3]));
    let pairs = |x: int16x8_t, y: int16x8_t| {
        let (x, y) = (vreinterpretq_s32_s16(x), vreinterpretq_s32_s16(y));
        (
            vreinterpretq_s16_s32(vtrn1q_s32(x, y)),
            vreinterpretq_s16_s32(vtrn2q_s32(x, y)),
        )
    };
    let (p04, p26) = pairs(ab0, cd0);
    let (p15, p37) = pairs(ab1, cd1);
    int16x8x4_t(p04, p15, p26, p37)
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

/// `Ĝ g Ĝᵀ` of block `block`'s 4 channels, every input channel, into `u`
/// ([`winograd::block4_weight_at`]). Each tap of a channel's 16 input channels is one
/// 16-byte row of the block.
#[inline(always)]
unsafe fn transform_weights(c: &Conv<'_>, block: usize, u: *mut i16) {
    let ic = c.window.in_c;
    let k_pad = round_up(9 * ic, KC);
    let base = c.weights.as_ptr().add(blocks4::block_at(k_pad, block));
    for cb in 0..ic / KC {
        for n in 0..blocks4::CHANNELS {
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

/// Point `xi`'s sums of the 8 channels (the blocks' weights at `first` and `second`),
/// each a vector of group `g`'s 4 tiles: per 8 input channels, 64 `SMLAL`s by element.
#[inline(always)]
unsafe fn point_sums(
    ic: usize,
    g: usize,
    xi: usize,
    first: *const i16,
    second: *const i16,
    v: *const i16,
) -> [int32x4_t; NR] {
    let mut acc = [vdupq_n_s32(0); NR];
    let x = v.add(winograd::tile_lanes_input_at(ic, g, xi, 0));
    let at = winograd::block4_weight_at(ic, xi, 0);
    let (first, second) = (first.add(at), second.add(at));
    for c8 in 0..ic / 8 {
        // Input channels (k, k + 4) of the 4 tiles, k = 0 .. 4; each of the 8 output
        // channels' 8 weights.
        let x = vld1q_s16_x4(x.add(c8 * GROUP * 8));
        let (a, b) = (
            vld1q_s16_x4(first.add(c8 * 32)),
            vld1q_s16_x4(second.add(c8 * 32)),
        );
        let w = [a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3];
        by_element::<0, 4>(&mut acc, x.0, &w);
        by_element::<1, 5>(&mut acc, x.1, &w);
        by_element::<2, 6>(&mut acc, x.2, &w);
        by_element::<3, 7>(&mut acc, x.3, &w);
    }
    acc
}

/// `acc[n] += x_low · w[n][LOW] + x_high · w[n][HIGH]`: input channels `LOW` and `HIGH`
/// (the low and high four lanes of `x`, 4 tiles each) by their weights.
#[inline(always)]
unsafe fn by_element<const LOW: i32, const HIGH: i32>(
    acc: &mut [int32x4_t; NR],
    x: int16x8_t,
    w: &[int16x8_t; NR],
) {
    for (acc, &w) in acc.iter_mut().zip(w) {
        *acc = vmlal_laneq_s16::<LOW>(*acc, vget_low_s16(x), w);
        *acc = vmlal_high_laneq_s16::<HIGH>(*acc, x, w);
    }
}

/// A group's outputs of block `half` of the pass (its 4 channels) from its point sums,
/// tile by tile, each tile's four pixels (row by row) a vector of the 4 channels: the
/// output transform on vectors of 4 tiles, then a 4 × 4 transpose per pixel.
#[inline(always)]
unsafe fn group_outputs(sums: &[[int32x4_t; NR]; POINTS], half: usize) -> [[int32x4_t; 4]; GROUP] {
    let channels: [[int32x4_t; 4]; 4] = core::array::from_fn(|n| {
        let o = half * blocks4::CHANNELS + n;
        transform_output(&core::array::from_fn(|xi| sums[xi][o]))
    });
    let mut tiles = [[vdupq_n_s32(0); 4]; GROUP];
    for pixel in 0..4 {
        let t = transpose4([
            channels[0][pixel],
            channels[1][pixel],
            channels[2][pixel],
            channels[3][pixel],
        ]);
        for (tile, t) in tiles.iter_mut().zip(t) {
            tile[pixel] = t;
        }
    }
    tiles
}

/// The 4 × 4 transpose of `rows` (rows become columns).
#[inline(always)]
unsafe fn transpose4(rows: [int32x4_t; 4]) -> [int32x4_t; 4] {
    let (ab0, ab1) = (vtrn1q_s32(rows[0], rows[1]), vtrn2q_s32(rows[0], rows[1]));
    let (cd0, cd1) = (vtrn1q_s32(rows[2], rows[3]), vtrn2q_s32(rows[2], rows[3]));
    let wide = |v: int32x4_t| vreinterpretq_s64_s32(v);
    let narrow = |v: int64x2_t| vreinterpretq_s32_s64(v);
    [
        narrow(vtrn1q_s64(wide(ab0), wide(cd0))),
        narrow(vtrn1q_s64(wide(ab1), wide(cd1))),
        narrow(vtrn2q_s64(wide(ab0), wide(cd0))),
        narrow(vtrn2q_s64(wide(ab1), wide(cd1))),
    ]
}
