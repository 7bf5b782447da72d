//! AArch64 convolution for [`crate::gemm`]'s packed layout: Cortex-A72 (widening
//! multiply-accumulate, `SMULL`/`SMLAL2`/`SADALP`) and Cortex-A76/A78 (`sdot`). Both
//! compute the same `MR × NR` tile of dot products over 16-byte chunks: each (pixel,
//! channel) pair keeps four partial sums in one vector, reduced pairwise at the end of
//! the tile and requantised in registers.
//!
//! On the A72 kernel, two products share an int16 lane before `SADALP` widens them:
//! |x·w| ≤ 128·127, so the pair fits, which is why packed weights stop at −127 (the file
//! parser refuses −128).

use core::arch::aarch64::*;

use crate::gemm::{round_up, PackedConv, Shifts, KC, MR, NR};
use crate::scalar::Residual;

#[inline(always)]
unsafe fn load_rows<const R: usize>(p: *const i8) -> [int8x16_t; R] {
    let mut v = [vdupq_n_s8(0); R];
    for (r, reg) in v.iter_mut().enumerate() {
        *reg = vld1q_s8(p.add(r * KC));
    }
    v
}

/// The residual operand of a tile: element pointer base and its requantisation.
#[derive(Clone, Copy)]
pub struct ResidualQuads {
    pub data: *const i8,
    pub zero_point: i32,
    pub multiplier: i32,
    pub left: i32,
    pub right_neg: i32,
}

/// [`crate::scalar::requantize`] on four lanes whose shifts all divide (`right_neg < 0`): a
/// truncating high multiply, then a rounding shift, one rounding in all.
#[inline(always)]
unsafe fn requantize_right(x: int32x4_t, mult: int32x4_t, right_neg: int32x4_t) -> int32x4_t {
    vrshlq_s32(vqdmulhq_s32(x, mult), right_neg)
}

/// [`crate::scalar::requantize`] on four lanes with any shifts. `LEFT`: whether any shift is
/// positive (without, the saturating left shift is left out). A lane that does not divide
/// rounds in its high multiply instead.
#[inline(always)]
unsafe fn requantize<const LEFT: bool>(
    x: int32x4_t,
    mult: int32x4_t,
    left: int32x4_t,
    right_neg: int32x4_t,
) -> int32x4_t {
    let x = if LEFT { vqshlq_s32(x, left) } else { x };
    vbslq_s32(
        vceqzq_s32(right_neg),
        vqrdmulhq_s32(x, mult),
        requantize_right(x, mult, right_neg),
    )
}

/// Requantisation constants of four consecutive output channels, in registers.
#[derive(Clone, Copy)]
struct QuadParams {
    bias: int32x4_t,
    multiplier: int32x4_t,
    left: int32x4_t,
    right_neg: int32x4_t,
}

impl QuadParams {
    /// Channels `o .. o + 4` of a `(bias, multiplier, shift)` little-endian record array:
    /// one de-interleaving load.
    #[inline(always)]
    unsafe fn load(params: *const u8) -> Self {
        let p = vld3q_s32(params as *const i32);
        let zero = vdupq_n_s32(0);
        QuadParams {
            bias: p.0,
            multiplier: p.1,
            left: vmaxq_s32(p.2, zero),
            right_neg: vminq_s32(p.2, zero),
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_rows<const LEFT: bool>(
    acc: &[int32x4_t; MR],
    rows: usize,
    q: &QuadParams,
    residual: Option<ResidualQuads>,
    zero_point: i32,
    min: i8,
    max: i8,
    out: *mut i8,
    stride: usize,
) {
    let mut v = [vdupq_n_s32(0); MR];
    for (m, (v, &x)) in v.iter_mut().zip(acc).enumerate() {
        *v = requantize::<LEFT>(vaddq_s32(x, q.bias), q.multiplier, q.left, q.right_neg);
        if let (Some(r), true) = (residual, m < rows) {
            let bytes = core::ptr::read_unaligned(r.data.add(m * stride) as *const i32);
            let wide = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(
                bytes,
            )))));
            let centred = vsubq_s32(wide, vdupq_n_s32(r.zero_point));
            let res = requantize::<LEFT>(
                centred,
                vdupq_n_s32(r.multiplier),
                vdupq_n_s32(r.left),
                vdupq_n_s32(r.right_neg),
            );
            *v = vqaddq_s32(*v, res);
        }
    }
    // All rows at once: saturating narrows to int16, the zero point added there (with
    // saturation), to int8, then the clamp. The same as the scalar saturating add and
    // clamp, because the clamp bounds and the zero point are int8 (the parser checks).
    let zp = vdupq_n_s16(zero_point as i16);
    let r01 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[0]), v[1]), zp);
    let r23 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[2]), v[3]), zp);
    let bytes = vqmovn_high_s16(vqmovn_s16(r01), r23);
    let bytes = vminq_s8(vmaxq_s8(bytes, vdupq_n_s8(min)), vdupq_n_s8(max));
    let words = vreinterpretq_s32_s8(bytes);
    let lanes = [
        vgetq_lane_s32::<0>(words),
        vgetq_lane_s32::<1>(words),
        vgetq_lane_s32::<2>(words),
        vgetq_lane_s32::<3>(words),
    ];
    for (m, &word) in lanes.iter().enumerate().take(rows) {
        core::ptr::write_unaligned(out.add(m * stride) as *mut i32, word);
    }
}

/// Convolution on packed weights with the whole tile in registers: each `MR`-pixel tile
/// of the input is packed once into `scratch`, then for every block of `NR` channels the
/// dot products accumulate in vector registers, are reduced pairwise and go through the
/// vector epilogue without touching memory in between. Same results as the scalar
/// reference.
///
/// # Safety
/// Shapes are consistent (the file parser checked them); `scratch` holds
/// `crate::gemm::scratch_len(K)` bytes.
#[target_feature(enable = "neon")]
pub unsafe fn conv_smlal(c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    conv_tiles::<false>(c, output, scratch)
}

/// [`conv_smlal`] with `sdot`.
///
/// # Safety
/// As [`conv_smlal`], and the CPU has the dot product.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn conv_sdot(c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    conv_tiles::<true>(c, output, scratch)
}

#[inline(always)]
unsafe fn conv_tiles<const DOT: bool>(c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    let s = c.window;
    let k = c.k();
    let k_pad = round_up(k, KC);
    let pixels = c.pixels(output);
    let shifts_left = c.shifts_left();
    // A panel of pixels packed at once (tiles of MR side by side), then tile by tile.
    let slots = crate::gemm16::panel_slots(k);
    let mut start = 0;
    while start < pixels {
        let count = slots.min(pixels - start);
        let a = &mut scratch[..round_up(count, MR) * k_pad];
        crate::gemm::pack_input(
            s,
            c.input,
            c.zero_point,
            c.first + start,
            count,
            MR,
            k,
            false,
            a,
        );
        for t0 in (0..count).step_by(MR) {
            let (tile, rows) = (&a[t0 * k_pad..][..MR * k_pad], MR.min(count - t0));
            if shifts_left {
                tile_blocks::<DOT, true>(c, tile, start + t0, rows, output);
            } else {
                tile_blocks::<DOT, false>(c, tile, start + t0, rows, output);
            }
        }
        start += count;
    }
}

/// Every block of `NR` channels for the `MR`-pixel tile packed in `a` whose first pixel
/// is `p0` (`rows` of them real).
#[inline(always)]
unsafe fn tile_blocks<const DOT: bool, const LEFT: bool>(
    c: &PackedConv<'_>,
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
            let mut b = c.packed.as_ptr().add(block * k_pad * NR);
            let mut ap = a.as_ptr();
            let mut acc = [[vdupq_n_s32(0); NR]; MR];
            for _ in 0..steps {
                let x: [int8x16_t; MR] = load_rows(ap);
                let w: [int8x16_t; NR] = load_rows(b);
                ap = ap.add(MR * KC);
                b = b.add(NR * KC);
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
                let q = QuadParams::load(c.params.as_ptr().add(o0 * 12));
                finish_rows::<LEFT>(
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
                // The last, partial block of channels: lane by lane.
                let mut tile = [[0i32; NR]; MR];
                for m in 0..MR {
                    vst1q_s32(tile[m].as_mut_ptr(), r[m]);
                }
                let tile = &tile;
                let store = crate::gemm::TileStore::of(c, rows, p0, o0);
                store.lanes(oc - o0, |m, n| tile[m][n], |_| 0, output);
            }
        }
    }
}

fn quads(data: *const i8, zero_point: i32, multiplier: i32, shift: i32) -> ResidualQuads {
    ResidualQuads {
        data,
        zero_point,
        multiplier,
        left: shift.max(0),
        right_neg: shift.min(0),
    }
}

// ---- The 16-channel lane layout (`crate::gemm16`) on `sdot` by element ----

use crate::gemm16::{Direct, Panel, KG, MR as MR16, OCB};

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
pub(crate) unsafe fn panel_sdot(c: &PackedConv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    assert!(p.group == MR16);
    blocks16(c, p.p0, p.count, p.shifts, output, p)
}

/// The same tiles reading the input in place ([`Direct`]): per tap, each pixel's chunks
/// where they lie in the band, two at a time.
///
/// # Safety
/// The CPU has the dot product; `d`'s offsets plus taps plus `IC` bytes are inside its
/// band; `c` and `output` are consistent.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn direct_sdot(c: &PackedConv<'_>, d: &Direct<'_>, output: &mut [i8]) {
    assert!(d.offsets.len() >= d.count.div_ceil(MR16) * MR16 && d.in_c.is_multiple_of(KC));
    blocks16(c, d.p0, d.count, d.shifts, output, d)
}

/// Where a tile's input comes from: `tile(m0, weights, init)` gives the sums of pixels
/// `m0 .. m0 + 4` against one block's weights, started from `init`. (A trait rather than
/// a closure: the tile must inline into the block loop, or its sixteen accumulators go
/// through memory.)
trait Tiles16 {
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR16];
}

impl Tiles16 for Panel<'_> {
    #[inline(always)]
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR16] {
        tile16_sdot(self.tile(m0, MR16).as_ptr(), w, self.steps(), init)
    }
}

impl Tiles16 for Direct<'_> {
    #[inline(always)]
    unsafe fn tile(&self, m0: usize, w: *const i8, init: [int32x4_t; 4]) -> [[int32x4_t; 4]; MR16] {
        tile16_direct(self, m0, w, init)
    }
}

/// Every 16-channel block of pixels `p0 .. p0 + count` (of the output slice), a tile of
/// `MR16` pixels at a time (`m0` counted from `p0`). Blocks the output has whole go
/// through the vector epilogue, the last partial one lane by lane.
#[inline(always)]
unsafe fn blocks16(
    c: &PackedConv<'_>,
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
    c: &PackedConv<'_>,
    p0: usize,
    count: usize,
    output: &mut [i8],
    tiles: &impl Tiles16,
) {
    let oc = c.window.out_c;
    let whole = oc / OCB;
    let k_pad = round_up(c.k(), KC);
    assert!(output.len() >= (p0 + count) * oc);
    assert!(c.packed.len() >= oc.div_ceil(OCB) * OCB * k_pad);
    let out_base = output.as_mut_ptr();
    for block in 0..whole {
        let o0 = block * OCB;
        let quads: [QuadParams; 4] =
            core::array::from_fn(|j| QuadParams::load(c.params.as_ptr().add((o0 + 4 * j) * 12)));
        let w0 = c.packed.as_ptr().add(block * OCB * k_pad);
        // The accumulators start from the bias, so the epilogue need not add it.
        let bias = quads.map(|q| q.bias);
        for m0 in (0..count).step_by(MR16) {
            let acc = tiles.tile(m0, w0, bias);
            let first = (p0 + m0) * oc + o0;
            let finish = |m: usize, acc_m: &[int32x4_t; 4]| {
                let at = first + m * oc;
                let residual = residual_quads(c, out_base, at);
                finish_pixel16::<LEFT, RIGHT>(acc_m, &quads, residual, c, out_base.add(at));
            };
            if count - m0 >= MR16 {
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
        let w0 = c.packed.as_ptr().add(whole * OCB * k_pad);
        for m0 in (0..count).step_by(MR16) {
            let acc = tiles.tile(m0, w0, [vdupq_n_s32(0); 4]);
            let mut t = [[0i32; OCB]; MR16];
            for (row, acc_m) in t.iter_mut().zip(&acc) {
                for (j, v) in acc_m.iter().enumerate() {
                    vst1q_s32(row[4 * j..].as_mut_ptr(), *v);
                }
            }
            let store = crate::gemm::TileStore::of(c, MR16.min(count - m0), p0 + m0, o0);
            store.lanes(oc - o0, |m, n| t[m][n], |_| 0, output);
        }
    }
}

/// One 16-deep step: per group of four `k`, the four weight vectors of sixteen channels
/// against lane `g` of each pixel's vector.
#[inline(always)]
unsafe fn dot_step(acc: &mut [[int32x4_t; 4]; MR16], x: &[int8x16_t; MR16], wp: *const i8) {
    macro_rules! group {
        ($g:literal) => {{
            let w: [int8x16_t; 4] = load_rows(wp.add($g * OCB * KG));
            for m in 0..MR16 {
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
) -> [[int32x4_t; 4]; MR16] {
    let mut acc = [init; MR16];
    let (mut ap, mut wp) = (a, w);
    // Two steps per trip: the loop's own instructions count once per 128 `sdot`s.
    for _ in 0..steps / 2 {
        dot_step(&mut acc, &load_rows(ap), wp);
        dot_step(&mut acc, &load_rows(ap.add(MR16 * KC)), wp.add(OCB * KC));
        ap = ap.add(2 * MR16 * KC);
        wp = wp.add(2 * OCB * KC);
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
) -> [[int32x4_t; 4]; MR16] {
    let mut acc = [init; MR16];
    let band = d.band.as_ptr();
    let bases: [*const i8; MR16] =
        core::array::from_fn(|m| band.add(*d.offsets.get_unchecked(m0 + m) as usize));
    let (pairs, single) = (d.in_c / (2 * KC), !d.in_c.is_multiple_of(2 * KC));
    let mut wp = w;
    for &tap in d.taps {
        let mut xp = bases.map(|b| b.add(tap as usize));
        for _ in 0..pairs {
            let x: [int8x16x2_t; MR16] = core::array::from_fn(|m| vld1q_s8_x2(xp[m]));
            dot_step(&mut acc, &x.map(|v| v.0), wp);
            dot_step(&mut acc, &x.map(|v| v.1), wp.add(OCB * KC));
            xp = xp.map(|p| p.add(2 * KC));
            wp = wp.add(2 * OCB * KC);
        }
        if single {
            dot_step(&mut acc, &xp.map(|p| vld1q_s8(p)), wp);
            wp = wp.add(OCB * KC);
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

/// Sixteen channels of one pixel: requantisation (the bias is in the sums already),
/// residual, zero point and clamp as [`finish_rows`] does them, one 16-byte store.
/// `RIGHT` (every channel divides): two instructions per four lanes ([`requantize_right`]).
#[inline(always)]
unsafe fn finish_pixel16<const LEFT: bool, const RIGHT: bool>(
    acc: &[int32x4_t; 4],
    quads: &[QuadParams; 4],
    residual: Option<ResidualQuads>,
    c: &PackedConv<'_>,
    out: *mut i8,
) {
    let mut v: [int32x4_t; 4] = core::array::from_fn(|j| {
        let q = &quads[j];
        if RIGHT {
            requantize_right(acc[j], q.multiplier, q.right_neg)
        } else {
            requantize::<LEFT>(acc[j], q.multiplier, q.left, q.right_neg)
        }
    });
    if let Some(r) = residual {
        // `x - zero point` in int16 (both int8), then to int32; the residual's own
        // shift decided here (one tensor, so the branches always go the same way).
        let bytes = vld1q_s8(r.data);
        let zp = vdup_n_s8(r.zero_point as i8);
        let halves = [
            vsubl_s8(vget_low_s8(bytes), zp),
            vsubl_high_s8(bytes, vdupq_n_s8(r.zero_point as i8)),
        ];
        let mult = vdupq_n_s32(r.multiplier);
        let (left, right) = (vdupq_n_s32(r.left), vdupq_n_s32(r.right_neg));
        for (j, v) in v.iter_mut().enumerate() {
            let h = halves[j / 2];
            let mut x = if j % 2 == 0 {
                vmovl_s16(vget_low_s16(h))
            } else {
                vmovl_high_s16(h)
            };
            if r.left > 0 {
                x = vqshlq_s32(x, left);
            }
            x = if r.right_neg < 0 {
                requantize_right(x, mult, right)
            } else {
                vqrdmulhq_s32(x, mult)
            };
            *v = vqaddq_s32(*v, x);
        }
    }
    // As in `finish_rows`: narrow with saturation, zero point at int16, clamp at int8.
    let zp = vdupq_n_s16(c.out.zero_point as i16);
    let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[0]), v[1]), zp);
    let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[2]), v[3]), zp);
    let bytes = vqmovn_high_s16(vqmovn_s16(lo), hi);
    let bytes = vminq_s8(
        vmaxq_s8(bytes, vdupq_n_s8(c.out.min)),
        vdupq_n_s8(c.out.max),
    );
    vst1q_s8(out, bytes);
}

/// The residual operand for the tile whose first output element is `first`.
#[inline(always)]
unsafe fn residual_quads(
    c: &PackedConv<'_>,
    out_base: *mut i8,
    first: usize,
) -> Option<ResidualQuads> {
    match c.residual {
        Residual::None => None,
        Residual::Separate {
            data,
            zero_point,
            multiplier,
            shift,
        } => Some(quads(
            data.as_ptr().add(first),
            zero_point,
            multiplier,
            shift,
        )),
        Residual::InPlace {
            zero_point,
            multiplier,
            shift,
        } => Some(quads(out_base.add(first), zero_point, multiplier, shift)),
    }
}

/// One pixel's im2col row gathered from its kernel rows by table lookups, for shallow
/// inputs whose kernel row is at most 16 bytes (a 3×3 stem on RGB: 9) and whole row at
/// most 64 (27): each kernel row one 16-byte load, each 16-byte chunk of the im2col row
/// one `tbl` over those loads (indices past `K` give the zero padding).
pub(crate) struct RowGather {
    kh: usize,
    chunks: usize,
    index: [uint8x16_t; 4],
}

impl RowGather {
    /// `None` where the shape does not fit (`KH ≤ 4`, `KW·IC ≤ 16`, `K ≤ 64`).
    pub fn new(s: &crate::scalar::Window) -> Option<Self> {
        let (kh, run) = (s.kernel[0], s.kernel[1] * s.in_c);
        let k = kh * run;
        if kh > 4 || run > KC || k > 4 * KC || k == 0 {
            return None;
        }
        let mut bytes = [[0xffu8; KC]; 4];
        for (b, slot) in bytes.iter_mut().flatten().enumerate().take(k) {
            *slot = ((b / run) * KC + b % run) as u8;
        }
        // SAFETY: plain loads of 16 bytes from each array.
        let index = bytes.map(|b| unsafe { vld1q_u8(b.as_ptr()) });
        Some(RowGather {
            kh,
            chunks: k.div_ceil(KC),
            index,
        })
    }

    pub fn rows(&self) -> usize {
        self.kh
    }

    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Gathers the row whose kernel rows start at `src`, `stride` bytes apart, into
    /// chunk slots `slot_step` bytes apart from `dst`. `KH` and `CHUNKS` are this
    /// gather's rows and chunks, or 0 to read them from it.
    ///
    /// # Safety
    /// 16 bytes are readable at each kernel row's start, `chunks` slots writable.
    #[inline(always)]
    pub unsafe fn row<const KH: usize, const CHUNKS: usize>(
        &self,
        src: *const i8,
        stride: usize,
        dst: *mut i8,
        slot_step: usize,
    ) {
        let kh = if KH > 0 { KH } else { self.kh };
        let chunks = if CHUNKS > 0 { CHUNKS } else { self.chunks };
        let load = |r: usize| {
            if r < kh {
                vld1q_s8(src.add(r * stride))
            } else {
                vdupq_n_s8(0)
            }
        };
        let table = int8x16x4_t(load(0), load(1), load(2), load(3));
        for c in 0..chunks {
            vst1q_s8(dst.add(c * slot_step), vqtbl4q_s8(table, self.index[c]));
        }
    }
}

/// `n` gathers: pixel `m0 + i`'s kernel rows start at `src + i · step` (`stride` apart),
/// its chunks go to its slots in groups of `group` pixels of `k_pad` bytes.
///
/// # Safety
/// As [`RowGather::row`] for every pixel; the slots are inside `a`.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(crate) unsafe fn gather_run<const KH: usize, const CHUNKS: usize>(
    gather: &RowGather,
    mut src: *const i8,
    step: usize,
    stride: usize,
    n: usize,
    a: *mut i8,
    m0: usize,
    group: usize,
    k_pad: usize,
) {
    let mut in_group = m0 % group;
    let mut dst = a.add((m0 / group) * group * k_pad + in_group * KC);
    for _ in 0..n {
        gather.row::<KH, CHUNKS>(src, stride, dst, group * KC);
        src = src.add(step);
        in_group += 1;
        dst = dst.add(KC);
        if in_group == group {
            in_group = 0;
            dst = dst.add(group * (k_pad - KC));
        }
    }
}
