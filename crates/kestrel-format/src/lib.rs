//! The `.kes` model file.
//!
//! This crate will own the format every Kestrel board reads: a versioned header,
//! CRC32-checked sections (graph, tensor quantisation parameters, weights packed for the
//! target's micro-kernel and aligned to 64 bytes, memory plan, preprocessing, labels,
//! metadata), a zero-copy parser of `&[u8]` that checks every offset, length and shape,
//! and a writer behind the `std` feature. It is `no_std` so it builds for bare metal.
#![no_std]
