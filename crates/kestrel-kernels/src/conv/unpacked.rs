//! Convolution on unpacked `[KH][KW][IC][OC]` weights (files compiled for no target):
//! the reference, compiled with AVX2 where the CPU runs it — same integer operations, so
//! the same results, about three times faster on hosts (calibration and accuracy runs).
//! Same signature as [`crate::scalar::conv2d`].

use crate::conv::contract::Conv;
use crate::scalar;

/// [`crate::scalar::conv2d`] on the widest ISA the CPU has.
pub fn conv2d(c: &Conv<'_>, output: &mut [i8]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { conv2d_avx2(c, output) };
        return;
    }
    scalar::conv2d(c, output);
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn conv2d_avx2(c: &Conv<'_>, output: &mut [i8]) {
    scalar::conv2d(c, output);
}
