//! Int8 kernels for Kestrel's runtime.
//!
//! This crate will own convolution as packed GEMM, pooling, the residual add, the dense
//! layer and requantisation, one module per ISA: `scalar` (the reference every other
//! path must match bit for bit), `neon` (Cortex-A72 without dot product, and A76/A78
//! with `sdot`) and `x86` (AVX2, AVX-512 VNNI). Today it holds the reference
//! ([`scalar`]) and CPU feature detection ([`isa`]) for dispatch.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod gemm;
pub mod isa;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;
