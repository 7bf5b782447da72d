//! x86-64 micro-kernels, one file per tile: `avx2_4x4c16` and `vnni_4x4c16` on 4-channel
//! blocks, `avx2_4x8c4` and `vnni_8x32c4` on 16-channel lanes, with the AVX-512 epilogue.

pub mod avx2_4x8c4;
pub mod avx2_4x4c16;
pub(crate) mod epilogue;
pub mod vnni_4x4c16;
pub mod vnni_8x32c4;
