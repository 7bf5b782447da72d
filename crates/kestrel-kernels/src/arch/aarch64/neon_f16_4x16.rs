//! `neon_f16_4x16`: sums of a conv on f16 weights (a layer kept wider), 4 pixels × 16
//! channels, on AArch64 Advanced SIMD (every Cortex-A: no FP16 arithmetic needed).
//!
//! Each lane is one output channel and adds its products in the reference's order
//! (ky, kx, ci) with a separate `fmul` and `fadd` (never `fmla`, which rounds once), so every
//! sum has the scalar reference's bits; `fcvtl` widens f16 exactly. The inputs of a tap,
//! `x − z` as f32, are staged once per pixel for a run of channels.

use core::arch::aarch64::*;
use core::arch::asm;

use crate::wide::contract::{tap_offsets, TileConv, TILE_CHANNELS, TILE_PIXELS};

/// Input channels staged at a time.
const RUN: usize = 64;

/// Eight f16 values at `p` as two f32 vectors (`fcvtl`, `fcvtl2`: exact).
#[inline(always)]
unsafe fn widen8(p: *const u8) -> (float32x4_t, float32x4_t) {
    let h = vld1q_u8(p);
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only conversions (Rust's f16 vector types are not stable yet).
    asm!(
        "fcvtl {lo:v}.4s, {h:v}.4h",
        "fcvtl2 {hi:v}.4s, {h:v}.8h",
        h = in(vreg) h,
        lo = out(vreg) lo,
        hi = out(vreg) hi,
        options(pure, nomem, nostack, preserves_flags)
    );
    (lo, hi)
}

/// [`crate::wide::contract::F16Tile`] on NEON.
///
/// # Safety
/// As [`crate::wide::contract::F16Tile`]; the CPU has NEON.
#[target_feature(enable = "neon")]
pub unsafe fn neon_f16_4x16(
    conv: &TileConv<'_>,
    oy: usize,
    ox0: usize,
    pixels: usize,
    o0: usize,
    bias: &[f32; TILE_CHANNELS],
    sums: &mut [[f32; TILE_CHANNELS]; TILE_PIXELS],
) {
    let s = conv.window;
    let (c, oc) = (s.in_c, s.out_c);
    let b = bias.as_ptr();
    let start = [
        vld1q_f32(b),
        vld1q_f32(b.add(4)),
        vld1q_f32(b.add(8)),
        vld1q_f32(b.add(12)),
    ];
    let mut acc = [start; TILE_PIXELS];
    let mut staged = [[0f32; RUN]; TILE_PIXELS];
    for ky in 0..s.kernel[0] {
        for kx in 0..s.kernel[1] {
            let at = tap_offsets(s, oy, ox0, pixels, ky, kx);
            let taps = (ky * s.kernel[1] + kx) * c;
            for c0 in (0..c).step_by(RUN) {
                let n = RUN.min(c - c0);
                for (row, a) in staged.iter_mut().zip(at) {
                    stage(conv, a.map(|a| a + c0), n, row);
                }
                let mut w = conv.weights.as_ptr().add(2 * ((taps + c0) * oc + o0));
                for ci in 0..n {
                    let (w0, w1) = widen8(w);
                    let (w2, w3) = widen8(w.add(16));
                    for (a, row) in acc.iter_mut().zip(&staged) {
                        let x = vld1q_dup_f32(&row[ci]);
                        a[0] = vaddq_f32(a[0], vmulq_f32(x, w0));
                        a[1] = vaddq_f32(a[1], vmulq_f32(x, w1));
                        a[2] = vaddq_f32(a[2], vmulq_f32(x, w2));
                        a[3] = vaddq_f32(a[3], vmulq_f32(x, w3));
                    }
                    w = w.add(2 * oc);
                }
            }
        }
    }
    for (row, a) in sums.iter_mut().zip(&acc) {
        for (q, &v) in a.iter().enumerate() {
            vst1q_f32(row.as_mut_ptr().add(4 * q), v);
        }
    }
}

/// `x − z` as f32 for `n` channels from input index `at`; 0 for a padded tap (the
/// reference's `z − z`).
#[target_feature(enable = "neon")]
unsafe fn stage(conv: &TileConv<'_>, at: Option<usize>, n: usize, row: &mut [f32; RUN]) {
    let Some(at) = at else {
        row[..n].fill(0.0);
        return;
    };
    let z = vdupq_n_s32(conv.zero_point);
    let bytes = conv.input.bytes.as_ptr();
    let out = row.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= n {
        let x = if conv.input.wide {
            vreinterpretq_s16_u8(vld1q_u8(bytes.add(2 * (at + i))))
        } else {
            vmovl_s8(vld1_s8(bytes.add(at + i) as *const i8))
        };
        let lo = vsubq_s32(vmovl_s16(vget_low_s16(x)), z);
        let hi = vsubq_s32(vmovl_high_s16(x), z);
        vst1q_f32(out.add(i), vcvtq_f32_s32(lo));
        vst1q_f32(out.add(i + 4), vcvtq_f32_s32(hi));
        i += 8;
    }
    for (j, v) in row[i..n].iter_mut().enumerate() {
        *v = (conv.input.get(at + i + j) - conv.zero_point) as f32;
    }
}
