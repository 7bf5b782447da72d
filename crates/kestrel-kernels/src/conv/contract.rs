//! What every convolution path shares: the conv it is given, the packed weight layouts
//! (each the bytes of a file's packed op), and the reduction chunk they all pad to.
//!
//! A conv is `C[P][OC] = A[P][K] · B[OC][K]ᵀ` with `P = OH·OW` output pixels and
//! `K = KH·KW·IC` (the im2col order of the `[KH][KW][IC][OC]` weights).

use crate::conv::params;
use crate::quant::{OutQuant, Residual};
use crate::window::Window;

/// Bytes of one reduction chunk (one 128-bit vector of int8): every layout pads `K` to a
/// multiple of it, and packed input stores each pixel a chunk at a time.
pub const KC: usize = 16;

#[inline]
pub const fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// A conv over a run of output pixels, `first ..` as many as the output slice it is
/// given holds: the output and a separate residual cover that run only, so threads can
/// each own one.
#[derive(Clone, Copy)]
pub struct Conv<'a> {
    pub window: &'a Window,
    pub input: &'a [i8],
    pub zero_point: i8,
    /// `[KH][KW][IC][OC]` for the reference ([`crate::scalar::conv2d`]); packed, with
    /// the channel sums after them, for [`Packing::conv2d`].
    pub weights: &'a [i8],
    /// `(bias, multiplier, shift)` records ([`params`]).
    pub params: &'a [u8],
    pub out: OutQuant,
    /// Indexed like the output slice (relative to `first`).
    pub residual: Residual<'a>,
    /// The first output pixel of the run.
    pub first: usize,
}

impl Conv<'_> {
    /// Reduction depth `K = KH·KW·IC`.
    pub fn k(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1] * self.window.in_c
    }

    /// Output pixels in the run `output` covers.
    pub fn pixels(&self, output: &[i8]) -> usize {
        output.len() / self.window.out_c
    }

    /// Which way the channels' requantisation shifts go, worked out in one pass over
    /// them, so kernels can take the shortest form of their epilogue (the residual's one
    /// shift is a branch of its own).
    pub fn shifts(&self) -> Shifts {
        let most = params::shifts(self.params)
            .take(self.window.out_c)
            .max()
            .unwrap_or(-1);
        match most {
            1.. => Shifts::SomeLeft,
            0 => Shifts::NoLeft,
            _ => Shifts::AllRight,
        }
    }
}

/// The requantisation shifts of a conv's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shifts {
    /// Every channel divides by a power of two (the usual case: scales below one half).
    AllRight,
    /// None multiplies, some neither multiply nor divide.
    NoLeft,
    /// Some multiply (scales of one and above: rare).
    SomeLeft,
}

/// The packed weight layouts, each the bytes of a file's packed conv and each read by its
/// own family of micro-kernels; every ISA runs all of them (see [`crate::conv::dispatch`]).
/// Byte positions: [`crate::conv::layout`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// `[OC/4][K/16][4][16]`: blocks of 4 channels, 16 reduction bytes side by side
    /// (Cortex-A72 `SMLAL`, `sdot` without lane indexing).
    Blocks4,
    /// `[OC/16][K/4][16][4]`: 16 channels side by side, 4 reduction bytes per 32-bit
    /// lane (AVX-512 VNNI, AVX2, `sdot` by element).
    Lanes16,
    /// `[OC/4][K/16][4][16]` int16: the blocks of `Blocks4` with the weights widened and
    /// paired the way the Cortex-M DSP's `SMLAD` takes them (twice the bytes).
    Pairs4,
}

impl Packing {
    /// Every layout.
    pub const ALL: [Packing; 3] = [Packing::Blocks4, Packing::Lanes16, Packing::Pairs4];
}
