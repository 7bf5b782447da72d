//! [`Packing::Pairs4`](crate::conv::contract::Packing): `[OC/4][K/16][4][16]` int16, the
//! blocks of [`super::blocks4`] with every weight widened to a little-endian `i16` and each
//! group of four reduction steps `k0 k1 k2 k3` stored as its even pair `(k0, k2)` then its
//! odd pair `(k1, k3)`: the two halves `SXTB16` and `SXTB16 ROR #8` make of an int8 word,
//! so a Cortex-M's `SMLAD` takes the weights as loaded (twice the bytes of `blocks4`).

use crate::conv::contract::KC;

/// Output channels per block.
pub const CHANNELS: usize = 4;
/// Bytes per weight.
pub const WEIGHT_BYTES: usize = 2;
/// Bytes of one 16-deep step of a block (its four channels' 16 weights).
pub const STEP_BYTES: usize = CHANNELS * KC * WEIGHT_BYTES;

/// Where block `b` of channels starts (`K` padded to `k_pad`).
#[inline(always)]
pub const fn block_at(k_pad: usize, b: usize) -> usize {
    b * CHANNELS * k_pad * WEIGHT_BYTES
}

/// Where weight `(kk, o)`'s first byte lives (`K` padded to `k_pad`).
#[inline]
pub const fn at(k_pad: usize, kk: usize, o: usize) -> usize {
    block_at(k_pad, o / CHANNELS) + (kk / KC) * STEP_BYTES + in_step(kk % KC, o % CHANNELS)
}

/// Where weight `j` (of [`KC`]) of a block's channel `n` lives inside its step.
#[inline(always)]
pub const fn in_step(j: usize, n: usize) -> usize {
    // Within a word of four: k0 → slot 0, k2 → 1, k1 → 2, k3 → 3.
    let within = j % 4;
    let slot = (within % 2) * 2 + within / 2;
    (n * KC + j / 4 * 4 + slot) * WEIGHT_BYTES
}
