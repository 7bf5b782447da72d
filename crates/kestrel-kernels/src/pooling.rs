//! Max pooling on the widest byte maxima the CPU has: the reference compiled with AVX2
//! where the CPU runs it (the x86-64 baseline has no signed byte maximum), elsewhere the
//! reference as the compiler vectorises it. Same signature and results as
//! [`crate::scalar::max_pool_rows`].

use core::ops::Range;

use crate::scalar;
use crate::window::Window;

/// [`crate::scalar::max_pool_rows`]: output rows `rows` into `output`.
pub fn max_pool_rows(s: &Window, input: &[i8], rows: Range<usize>, output: &mut [i8]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { max_pool_avx2(s, input, rows, output) };
        return;
    }
    scalar::max_pool_rows(s, input, rows, output);
}

/// [`crate::scalar::max_pool`].
pub fn max_pool(s: &Window, input: &[i8], output: &mut [i8]) {
    max_pool_rows(s, input, 0..s.out_h, output);
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_avx2(s: &Window, input: &[i8], rows: Range<usize>, output: &mut [i8]) {
    scalar::max_pool_rows(s, input, rows, output);
}
