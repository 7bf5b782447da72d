//! The DSP extension's sign extension and dual multiply-add, which stable Rust has no
//! intrinsics for. `SXTB16` splits a word of four int8 into two int16 pairs (bytes 0 and
//! 2, or with `ROR #8` bytes 1 and 3); `SMLAD` multiplies two int16 pairs and adds both
//! products to an accumulator, wrapping like the reference's sums. So four int8 products
//! cost two extensions of each operand and two `SMLAD`s, and the pairing needs no
//! reordering of the weights or the input.

use core::arch::asm;

/// Bytes 0 and 2 of `x`, sign-extended to the two halves of a word.
#[inline(always)]
pub fn sxtb16(x: u32) -> u32 {
    let r;
    // SAFETY: a register-only instruction of every Armv7E-M core (the `dsp` feature).
    unsafe {
        asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// Bytes 1 and 3 of `x`, sign-extended to the two halves of a word.
#[inline(always)]
pub fn sxtb16_ror8(x: u32) -> u32 {
    let r;
    // SAFETY: as [`sxtb16`].
    unsafe {
        asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// `acc + x.lo·y.lo + x.hi·y.hi` on int16 halves, wrapping at 32 bits (`SMLAD` sets the
/// sticky Q flag on overflow and keeps the wrapped sum, as the reference's wrapping adds).
#[inline(always)]
pub fn smlad(x: u32, y: u32, acc: i32) -> i32 {
    let r;
    // SAFETY: as [`sxtb16`]; Q is a sticky flag nothing here reads.
    unsafe {
        asm!("smlad {r}, {x}, {y}, {a}", r = lateout(reg) r, x = in(reg) x, y = in(reg) y, a = in(reg) acc, options(pure, nomem, nostack))
    };
    r
}

/// Four bytes at `p` as a word (Cortex-M4/M7 load words at any address).
///
/// # Safety
/// `p .. p + 4` is readable.
#[inline(always)]
pub unsafe fn load4(p: *const i8) -> u32 {
    core::ptr::read_unaligned(p as *const u32)
}

/// `acc + Σ x[i]·w[i]` over the four int8 of each word.
#[inline(always)]
pub fn dot4(x: u32, w: u32, acc: i32) -> i32 {
    smlad(
        sxtb16_ror8(x),
        sxtb16_ror8(w),
        smlad(sxtb16(x), sxtb16(w), acc),
    )
}

/// `Σ x·w` over slices of equal length, a multiple of 4: the dense layers' dot product.
#[inline]
pub fn dot(x: &[i8], w: &[i8]) -> i32 {
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(4));
    let mut acc = 0i32;
    for i in (0..x.len()).step_by(4) {
        // SAFETY: i + 4 ≤ len for both slices.
        let (a, b) = unsafe { (load4(x.as_ptr().add(i)), load4(w.as_ptr().add(i))) };
        acc = dot4(a, b, acc);
    }
    acc
}
