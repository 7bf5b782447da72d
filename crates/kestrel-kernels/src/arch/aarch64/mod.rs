//! AArch64 micro-kernels, one file per tile: `neon_4x4c16` (`smlal_4x4c16` for the
//! Cortex-A72, `sdot_4x4c16`) and `sdot_4x16c4` (A76/A78), with the vector epilogue and
//! loads they share; `neon_winograd_4x4` the A72's 3×3 stride-1 convs by Winograd; `neon_f16_4x16` sums the convs of layers kept at f16 and
//! `neon_16x8_4x16` the int8-weight convs next to them (int16 tensors).

pub(crate) mod epilogue;
pub mod neon_16x8_4x16;
pub mod neon_4x4c16;
pub mod neon_f16_4x16;
pub mod neon_winograd_4x4;
pub mod sdot_4x16c4;
pub(crate) mod vector;
