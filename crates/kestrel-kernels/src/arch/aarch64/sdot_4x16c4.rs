//! `sdot_4x16c4`: the AArch64 micro-kernel on [`Packing::Lanes16`](crate::conv::contract::Packing)
//! (Cortex-A76/A78, `sdot` by element): tiles of 4 pixels × 16 channels, sixteen
//! accumulators; per 16 reduction steps, four input vectors (one per pixel) and sixteen
//! weight vectors feed 64 `sdot`s. It reads a packed panel, or a band of the input in
//! place ([`Direct`]). The steps are inline assembly, so that each four weight vectors
//! (and a panel step's four input vectors) come in one `LD1` of four registers: 69
//! instructions a step where the intrinsics took 74, at the same cycles (`mca.sh`).

use core::arch::aarch64::*;

use crate::arch::aarch64::epilogue::{finish_pixel16, residual_quads, QuadParams};
use crate::conv::contract::{round_up, Conv, Shifts, KC};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::{Direct, Panel};
use crate::conv::layout::lanes16;
use crate::conv::params;

/// Pixels per tile.
pub const MR: usize = 4;
const OCB: usize = lanes16::CHANNELS;

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

/// One group of four `k` of a 16-deep step, as assembly text: the group's four weight
/// vectors (16 channels) loaded into v24–v27 in one `LD1` (the pointer `{wp}` moves on),
/// then each against lane `$g` of every pixel's input vector `$x0 .. $x3`, into the
/// accumulators `{aMJ}` (pixel `M`, channels `4J .. 4J + 4`). In assembly because LLVM
/// splits a four-register `LD1` into two `LDP`s: one load instruction instead of two
/// for the same 64 bytes.
#[rustfmt::skip] // one instruction a line
macro_rules! group {
    ($g:literal, $x0:literal, $x1:literal, $x2:literal, $x3:literal) => {
        concat!(
            "ld1 {{v24.16b, v25.16b, v26.16b, v27.16b}}, [{wp}], #64\n",
            pixel!("0", $x0, $g),
            pixel!("1", $x1, $g),
            pixel!("2", $x2, $g),
            pixel!("3", $x3, $g),
        )
    };
}

/// Pixel `$m`'s four `sdot`s of a group: v24–v27 against lane `$g` of its input `$x`.
#[rustfmt::skip] // one instruction a line
macro_rules! pixel {
    ($m:literal, $x:literal, $g:literal) => {
        concat!(
            "sdot {a", $m, "0:v}.4s, v24.16b, ", $x, ".4b[", $g, "]\n",
            "sdot {a", $m, "1:v}.4s, v25.16b, ", $x, ".4b[", $g, "]\n",
            "sdot {a", $m, "2:v}.4s, v26.16b, ", $x, ".4b[", $g, "]\n",
            "sdot {a", $m, "3:v}.4s, v27.16b, ", $x, ".4b[", $g, "]\n",
        )
    };
}

/// A whole 16-deep step: the four groups on inputs `$x0 .. $x3`.
macro_rules! step {
    ($x0:literal, $x1:literal, $x2:literal, $x3:literal) => {
        concat!(
            group!("0", $x0, $x1, $x2, $x3),
            group!("1", $x0, $x1, $x2, $x3),
            group!("2", $x0, $x1, $x2, $x3),
            group!("3", $x0, $x1, $x2, $x3),
        )
    };
}

/// `asm!` of `$text` with the sixteen accumulators of `$acc` in and out, the weight
/// pointer `$wp` moved on by the text, v24–v27 clobbered, and `$operands` besides.
macro_rules! step_asm {
    ($text:expr, $acc:ident, $wp:ident, $($operands:tt)*) => {
        core::arch::asm!(
            $text,
            a00 = inout(vreg) $acc[0][0], a01 = inout(vreg) $acc[0][1],
            a02 = inout(vreg) $acc[0][2], a03 = inout(vreg) $acc[0][3],
            a10 = inout(vreg) $acc[1][0], a11 = inout(vreg) $acc[1][1],
            a12 = inout(vreg) $acc[1][2], a13 = inout(vreg) $acc[1][3],
            a20 = inout(vreg) $acc[2][0], a21 = inout(vreg) $acc[2][1],
            a22 = inout(vreg) $acc[2][2], a23 = inout(vreg) $acc[2][3],
            a30 = inout(vreg) $acc[3][0], a31 = inout(vreg) $acc[3][1],
            a32 = inout(vreg) $acc[3][2], a33 = inout(vreg) $acc[3][3],
            wp = inout(reg) $wp,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _,
            $($operands)*
            options(nostack, preserves_flags, readonly),
        )
    };
}

/// One 16-deep step on the four pixels' input vectors `x`: per group of four `k`, the
/// four weight vectors of sixteen channels against lane `g` of each pixel's vector.
/// `wp` moves past the step's weights.
#[inline(always)]
unsafe fn dot_step(acc: &mut [[int32x4_t; 4]; MR], x: &[int8x16_t; MR], wp: &mut *const i8) {
    let mut w = *wp;
    step_asm!(
        step!("{x0:v}", "{x1:v}", "{x2:v}", "{x3:v}"),
        acc,
        w,
        x0 = in(vreg) x[0], x1 = in(vreg) x[1], x2 = in(vreg) x[2], x3 = in(vreg) x[3],
    );
    *wp = w;
}

/// [`dot_step`] on the panel's next four input vectors, loaded in one `LD1` into
/// v28–v31 (`ap` moves past them).
#[inline(always)]
unsafe fn panel_step(acc: &mut [[int32x4_t; 4]; MR], ap: &mut *const i8, wp: &mut *const i8) {
    let (mut a, mut w) = (*ap, *wp);
    step_asm!(
        concat!(
            "ld1 {{v28.16b, v29.16b, v30.16b, v31.16b}}, [{ap}], #64\n",
            step!("v28", "v29", "v30", "v31"),
        ),
        acc,
        w,
        ap = inout(reg) a,
        out("v28") _, out("v29") _, out("v30") _, out("v31") _,
    );
    (*ap, *wp) = (a, w);
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
        panel_step(&mut acc, &mut ap, &mut wp);
        panel_step(&mut acc, &mut ap, &mut wp);
    }
    if steps % 2 == 1 {
        panel_step(&mut acc, &mut ap, &mut wp);
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
    if pairs == 0 {
        // One chunk a pixel (16 channels): each load adds the tap to the pixel's base.
        let [b0, b1, b2, b3] = bases;
        for &tap in d.taps {
            step_asm!(
                concat!(
                    "ldr q16, [{b0}, {t}]\n",
                    "ldr q17, [{b1}, {t}]\n",
                    "ldr q18, [{b2}, {t}]\n",
                    "ldr q19, [{b3}, {t}]\n",
                    step!("v16", "v17", "v18", "v19"),
                ),
                acc,
                wp,
                b0 = in(reg) b0, b1 = in(reg) b1, b2 = in(reg) b2, b3 = in(reg) b3,
                t = in(reg) tap as usize,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
            );
        }
        return acc;
    }
    for &tap in d.taps {
        let [mut p0, mut p1, mut p2, mut p3] = bases.map(|b| b.add(tap as usize));
        for _ in 0..pairs {
            // Two chunks of each pixel, its pointer moved on past them.
            step_asm!(
                concat!(
                    "ld1 {{v16.16b, v17.16b}}, [{p0}], #32\n",
                    "ld1 {{v18.16b, v19.16b}}, [{p1}], #32\n",
                    "ld1 {{v20.16b, v21.16b}}, [{p2}], #32\n",
                    "ld1 {{v22.16b, v23.16b}}, [{p3}], #32\n",
                    step!("v16", "v18", "v20", "v22"),
                    step!("v17", "v19", "v21", "v23"),
                ),
                acc,
                wp,
                p0 = inout(reg) p0, p1 = inout(reg) p1, p2 = inout(reg) p2, p3 = inout(reg) p3,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            );
        }
        if single {
            dot_step(&mut acc, &[p0, p1, p2, p3].map(|p| vld1q_s8(p)), &mut wp);
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
