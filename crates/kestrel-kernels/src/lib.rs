//! Int8 kernels for Kestrel's runtime.
//!
//! [`scalar`] is the reference every other path matches bit for bit. Convolutions run as
//! packed GEMMs on one of two weight layouts ([`gemm::Packing`]): [`gemm`] (4-channel
//! blocks, for the Cortex-A72 `SMLAL` kernel) and [`gemm16`] (16-channel lanes, for
//! AVX-512 VNNI, AVX2 and `sdot` by element), with the micro-kernels in `neon` and `x86`.
//! [`isa`] detects what the CPU runs. [`wide`] holds the reference kernels of layers kept
//! at int16 activations ("16x8"), which every path runs.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod gemm;
pub mod gemm16;
pub mod isa;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
pub mod wide;
#[cfg(target_arch = "x86_64")]
pub mod x86;
