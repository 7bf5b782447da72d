//! Loads shared by the AArch64 micro-kernels.

use core::arch::aarch64::*;

use crate::conv::contract::KC;

/// `R` consecutive 16-byte rows from `p`.
#[inline(always)]
pub unsafe fn load_rows<const R: usize>(p: *const i8) -> [int8x16_t; R] {
    let mut v = [vdupq_n_s8(0); R];
    for (r, reg) in v.iter_mut().enumerate() {
        *reg = vld1q_s8(p.add(r * KC));
    }
    v
}
