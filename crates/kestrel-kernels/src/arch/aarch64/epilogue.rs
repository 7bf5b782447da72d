//! The AArch64 vector epilogue: requantisation (the rounding of
//! [`crate::quant::requantize`]), residual, zero point and clamp in registers, for rows of
//! four channels ([`finish_rows`], or four pixels anywhere: [`finish_pixels`]) and pixels of sixteen ([`finish_pixel16`]).

use core::arch::aarch64::*;

use crate::conv::contract::Conv;
use crate::quant::{OutQuant, Residual};

/// The residual operand of a tile: element pointer base and its requantisation.
#[derive(Clone, Copy)]
pub struct ResidualQuads {
    pub data: *const i8,
    pub zero_point: i32,
    pub multiplier: i32,
    pub left: i32,
    pub right_neg: i32,
}

impl ResidualQuads {
    /// The same operand `elements` further on.
    #[inline(always)]
    pub unsafe fn offset(self, elements: usize) -> Self {
        ResidualQuads {
            data: self.data.add(elements),
            ..self
        }
    }
}

/// [`crate::quant::requantize`] on four lanes whose shifts all divide (`right_neg < 0`): a
/// truncating high multiply, then a rounding shift, one rounding in all.
#[inline(always)]
pub unsafe fn requantize_right(x: int32x4_t, mult: int32x4_t, right_neg: int32x4_t) -> int32x4_t {
    vrshlq_s32(vqdmulhq_s32(x, mult), right_neg)
}

/// [`crate::quant::requantize`] on four lanes with any shifts. `LEFT`: whether any shift is
/// positive (without, the saturating left shift is left out). A lane that does not divide
/// rounds in its high multiply instead.
#[inline(always)]
pub unsafe fn requantize<const LEFT: bool>(
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
pub struct QuadParams {
    pub bias: int32x4_t,
    pub multiplier: int32x4_t,
    pub left: int32x4_t,
    pub right_neg: int32x4_t,
}

impl QuadParams {
    /// Channels `o .. o + 4` of a `(bias, multiplier, shift)` little-endian record array:
    /// one de-interleaving load.
    #[inline(always)]
    pub unsafe fn load(params: *const u8) -> Self {
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

/// Rows `0 .. rows` of a tile of four pixels × four channels, pixel `m` at element `m ·
/// stride` from `out`: [`finish_pixels`] at those offsets.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn finish_rows<const LEFT: bool, const RIGHT: bool>(
    acc: &[int32x4_t; 4],
    rows: usize,
    q: &QuadParams,
    residual: Option<ResidualQuads>,
    zero_point: i32,
    min: i8,
    max: i8,
    out: *mut i8,
    stride: usize,
) {
    let at = core::array::from_fn(|m| (m < rows).then_some(m * stride));
    let out_q = OutQuant {
        zero_point,
        min,
        max,
    };
    finish_pixels::<LEFT, RIGHT>(acc, &at, q, residual, &out_q, out)
}

/// [`requantize`] of four channels in the form their shifts allow: `LEFT`, some shift
/// left; `RIGHT`, every shift divides (two instructions, [`requantize_right`]).
#[inline(always)]
pub unsafe fn requantize_channels<const LEFT: bool, const RIGHT: bool>(
    x: int32x4_t,
    q: &QuadParams,
) -> int32x4_t {
    if RIGHT {
        requantize_right(x, q.multiplier, q.right_neg)
    } else {
        requantize::<LEFT>(x, q.multiplier, q.left, q.right_neg)
    }
}

/// [`crate::quant::requantize`] of four residual lanes: one tensor, one shift, so the
/// branches go the same way every time (and leave the loops they sit in).
#[inline(always)]
pub unsafe fn requantize_residual(x: int32x4_t, r: &ResidualQuads) -> int32x4_t {
    let mult = vdupq_n_s32(r.multiplier);
    let x = if r.left > 0 {
        vqshlq_s32(x, vdupq_n_s32(r.left))
    } else {
        x
    };
    if r.right_neg < 0 {
        requantize_right(x, mult, vdupq_n_s32(r.right_neg))
    } else {
        vqrdmulhq_s32(x, mult)
    }
}

/// Four channels of four pixels, pixel `m` stored at element `at[m]` from `out` (the
/// residual read there too), or not at all where `None`: bias, requantisation
/// ([`requantize_channels`]), residual, zero point and clamp in registers, the rounding
/// of [`crate::quant::requantize`].
#[inline(always)]
pub unsafe fn finish_pixels<const LEFT: bool, const RIGHT: bool>(
    acc: &[int32x4_t; 4],
    at: &[Option<usize>; 4],
    q: &QuadParams,
    residual: Option<ResidualQuads>,
    out_q: &OutQuant,
    out: *mut i8,
) {
    let mut v = [vdupq_n_s32(0); 4];
    for ((v, &x), &at) in v.iter_mut().zip(acc).zip(at) {
        *v = requantize_channels::<LEFT, RIGHT>(vaddq_s32(x, q.bias), q);
        if let (Some(r), Some(at)) = (residual, at) {
            let bytes = core::ptr::read_unaligned(r.data.add(at) as *const i32);
            let wide = vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(
                bytes,
            )))));
            let centred = vsubq_s32(wide, vdupq_n_s32(r.zero_point));
            *v = vqaddq_s32(*v, requantize_residual(centred, &r));
        }
    }
    // All pixels at once: saturating narrows to int16, the zero point added there (with
    // saturation), to int8, then the clamp. The same as the scalar saturating add and
    // clamp, because the clamp bounds and the zero point are int8 (the parser checks).
    let zp = vdupq_n_s16(out_q.zero_point as i16);
    let r01 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[0]), v[1]), zp);
    let r23 = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(v[2]), v[3]), zp);
    let bytes = vqmovn_high_s16(vqmovn_s16(r01), r23);
    let bytes = vminq_s8(
        vmaxq_s8(bytes, vdupq_n_s8(out_q.min)),
        vdupq_n_s8(out_q.max),
    );
    let words = vreinterpretq_s32_s8(bytes);
    let lanes = [
        vgetq_lane_s32::<0>(words),
        vgetq_lane_s32::<1>(words),
        vgetq_lane_s32::<2>(words),
        vgetq_lane_s32::<3>(words),
    ];
    for (&word, &at) in lanes.iter().zip(at) {
        if let Some(at) = at {
            core::ptr::write_unaligned(out.add(at) as *mut i32, word);
        }
    }
}

/// Sixteen channels of one pixel: requantisation (the bias is in the sums already),
/// residual, zero point and clamp as [`finish_rows`] does them, one 16-byte store.
/// `RIGHT` (every channel divides): two instructions per four lanes ([`requantize_right`]).
#[inline(always)]
pub unsafe fn finish_pixel16<const LEFT: bool, const RIGHT: bool>(
    acc: &[int32x4_t; 4],
    quads: &[QuadParams; 4],
    residual: Option<ResidualQuads>,
    c: &Conv<'_>,
    out: *mut i8,
) {
    let mut v: [int32x4_t; 4] =
        core::array::from_fn(|j| requantize_channels::<LEFT, RIGHT>(acc[j], &quads[j]));
    if let Some(r) = residual {
        // `x - zero point` in int16 (both int8), then to int32.
        let bytes = vld1q_s8(r.data);
        let halves = [
            vsubl_s8(vget_low_s8(bytes), vdup_n_s8(r.zero_point as i8)),
            vsubl_high_s8(bytes, vdupq_n_s8(r.zero_point as i8)),
        ];
        for (j, v) in v.iter_mut().enumerate() {
            let h = halves[j / 2];
            let x = if j % 2 == 0 {
                vmovl_s16(vget_low_s16(h))
            } else {
                vmovl_high_s16(h)
            };
            *v = vqaddq_s32(*v, requantize_residual(x, &r));
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
pub unsafe fn residual_quads(
    c: &Conv<'_>,
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

fn quads(data: *const i8, zero_point: i32, multiplier: i32, shift: i32) -> ResidualQuads {
    ResidualQuads {
        data,
        zero_point,
        multiplier,
        left: shift.max(0),
        right_neg: shift.min(0),
    }
}
