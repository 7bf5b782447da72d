//! Int8 kernels for Kestrel's runtime.
//!
//! [`scalar`] is the reference every other path matches bit for bit, one plain function
//! per op. Convolutions run as packed GEMMs ([`conv`]) on one of two weight layouts, with
//! the micro-kernels per architecture in [`arch`]; dense layers and max pooling have their
//! SIMD paths in [`dense`] and [`pooling`]; [`stream`] runs a stem's conv into its max pool
//! a band of rows at a time. [`quant`] holds the integer arithmetic they all
//! share, [`isa`] detects what the CPU runs, and [`wide`] holds the reference kernels of
//! layers kept at int16 activations ("16x8"), which every path runs. `docs/kernels.md`
//! says which file to open for what.
#![no_std]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod arch;
#[cfg(feature = "alloc")]
pub mod check;
pub mod conv;
pub mod dense;
pub mod isa;
pub mod pooling;
pub mod quant;
pub mod scalar;
pub mod stream;
pub mod wide;
pub mod window;
