//! Kestrel's board-side runtime.
//!
//! This crate will own loading a `.kes` file, binding a caller-provided arena (the
//! interpreter owns no memory), and running the ops in order on `kestrel-kernels`, with no
//! allocation while running. Features: `std` (threads, mmap, timing). It is `no_std`.
#![no_std]
