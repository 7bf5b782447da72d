//! x86-64 micro-kernels, one file per tile: `avx2_4x4c16` and `vnni_4x4c16` on 4-channel
//! blocks, `avx2_4x8c4`, `avxvnni_6x16c4` and `vnni_8x32c4` on 16-channel lanes, with
//! their vector epilogues; `avx2_winograd_4x8` the 3×3 stride-1 convs of `avx2_4x8c4` files; `avx2_f16_4x16` sums the convs of layers kept at f16 and
//! `avx2_16x8_4x16` the int8-weight convs next to them (int16 tensors).

pub mod avx2_16x8_4x16;
pub mod avx2_4x4c16;
pub mod avx2_4x8c4;
pub mod avx2_f16_4x16;
pub mod avx2_winograd_4x8;
pub mod avxvnni_6x16c4;
pub(crate) mod epilogue;
pub mod vnni_4x4c16;
pub mod vnni_8x32c4;
