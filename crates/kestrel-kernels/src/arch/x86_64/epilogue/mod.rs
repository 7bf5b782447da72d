//! The vector epilogues of the x86-64 tiles: requantisation (64-bit products, one
//! rounding, as [`crate::quant::requantize`]), residual, zero point and clamp in
//! registers, the same results as [`crate::conv::epilogue::TileStore`] bit for bit.

pub mod avx2;
pub mod avx512;
