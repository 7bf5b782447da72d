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

use crate::gemm::{KC, MR, NR};
use crate::scalar::{OutQuant, Residual, Window};

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

/// gemmlowp's `RoundingDivideByPOT` on four lanes (ties away from zero), `right_neg ≤ 0`.
#[inline(always)]
unsafe fn rounding_divide_by_pot(x: int32x4_t, right_neg: int32x4_t) -> int32x4_t {
    let fixup = vshrq_n_s32::<31>(vandq_s32(x, right_neg));
    vrshlq_s32(vqaddq_s32(x, fixup), right_neg)
}

#[inline(always)]
unsafe fn requantize(
    x: int32x4_t,
    mult: int32x4_t,
    left: int32x4_t,
    right_neg: int32x4_t,
) -> int32x4_t {
    rounding_divide_by_pot(vqrdmulhq_s32(vqshlq_s32(x, left), mult), right_neg)
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
unsafe fn finish_rows(
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
    let zp = vdupq_n_s32(zero_point);
    let (lo, hi) = (vdupq_n_s32(min as i32), vdupq_n_s32(max as i32));
    for (m, &x) in acc.iter().enumerate().take(rows) {
        let x = vaddq_s32(x, q.bias);
        let mut v = requantize(x, q.multiplier, q.left, q.right_neg);
        if let Some(r) = residual {
            let bytes = core::ptr::read_unaligned(r.data.add(m * stride) as *const i32);
            let wide = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(
                bytes,
            )))));
            let centred = vsubq_s32(wide, vdupq_n_s32(r.zero_point));
            let res = requantize(
                centred,
                vdupq_n_s32(r.multiplier),
                vdupq_n_s32(r.left),
                vdupq_n_s32(r.right_neg),
            );
            v = vqaddq_s32(v, res);
        }
        let v = vminq_s32(vmaxq_s32(vqaddq_s32(v, zp), lo), hi);
        let narrow = vmovn_s16(vcombine_s16(vmovn_s32(v), vdup_n_s16(0)));
        let word = vget_lane_s32::<0>(vreinterpret_s32_s8(narrow));
        core::ptr::write_unaligned(out.add(m * stride) as *mut i32, word);
    }
}

/// What [`conv_smlal`] and [`conv_sdot`] need besides the output and scratch.
pub struct PackedConv<'a> {
    pub window: &'a Window,
    pub input: &'a [i8],
    pub zero_point: i8,
    /// Packed weights (`crate::gemm` layout).
    pub packed: &'a [i8],
    /// `(bias, multiplier, shift)` little-endian records, 12 bytes per channel.
    pub params: &'a [u8],
    pub out: OutQuant,
    pub residual: Residual<'a>,
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
    let oc = s.out_c;
    let k = s.kernel[0] * s.kernel[1] * s.in_c;
    let k_pad = crate::gemm::round_up(k, KC);
    let steps = k_pad / KC;
    let pixels = s.out_h * s.out_w;
    let out_base = output.as_mut_ptr();
    let residual = |first: usize| match c.residual {
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
    };
    let a = &mut scratch[..MR * k_pad];
    for p0 in (0..pixels).step_by(MR) {
        let rows = MR.min(pixels - p0);
        crate::gemm::pack_input(s, c.input, c.zero_point, p0, k, false, a);
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
                finish_rows(
                    &r,
                    rows,
                    &q,
                    residual(first),
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
                let store = crate::gemm::TileStore {
                    rows,
                    p0,
                    o0,
                    oc,
                    params: c.params,
                    out: c.out,
                    residual: &c.residual,
                };
                store.lanes(&tile, oc - o0, |_| 0, output);
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
