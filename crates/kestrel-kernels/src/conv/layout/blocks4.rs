//! [`Packing::Blocks4`](crate::conv::contract::Packing): `[OC/4][K/16][4][16]` int8.
//! For each block of [`CHANNELS`] output channels, `K` in chunks of 16: the chunk of each
//! of the four channels side by side.

use crate::conv::contract::KC;

/// Output channels per block.
pub const CHANNELS: usize = 4;
/// Bytes of one 16-deep step of a block (its four channels' chunks).
pub const STEP_BYTES: usize = CHANNELS * KC;

/// Where block `b` of channels starts (`K` padded to `k_pad`).
#[inline(always)]
pub const fn block_at(k_pad: usize, b: usize) -> usize {
    b * CHANNELS * k_pad
}

/// Where weight `(kk, o)` lives (`K` padded to `k_pad`).
#[inline]
pub const fn at(k_pad: usize, kk: usize, o: usize) -> usize {
    block_at(k_pad, o / CHANNELS) + (kk / KC) * STEP_BYTES + (o % CHANNELS) * KC + kk % KC
}
