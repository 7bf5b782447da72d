//! [`Packing::Lanes16`](crate::conv::contract::Packing): `[OC/16][K/4][16][4]` int8.
//! For each block of [`CHANNELS`] output channels, every four reduction steps: the
//! sixteen channels side by side, each channel's four weights in one 32-bit lane.

/// Output channels per block: one 512-bit vector of `i32`, four 128-bit ones.
pub const CHANNELS: usize = 16;
/// Reduction steps per 32-bit lane.
pub const LANE_K: usize = 4;
/// Bytes of one group of [`LANE_K`] steps of a block (one vector per four channels).
pub const GROUP_BYTES: usize = CHANNELS * LANE_K;
/// Bytes of one 16-deep step of a block (four groups).
pub const STEP_BYTES: usize = CHANNELS * crate::conv::contract::KC;

/// Where block `b` of channels starts (`K` padded to `k_pad`).
#[inline(always)]
pub const fn block_at(k_pad: usize, b: usize) -> usize {
    b * CHANNELS * k_pad
}

/// Where weight `(kk, o)` lives (`K` padded to `k_pad`).
#[inline]
pub const fn at(k_pad: usize, kk: usize, o: usize) -> usize {
    block_at(k_pad, o / CHANNELS)
        + (kk / LANE_K) * GROUP_BYTES
        + (o % CHANNELS) * LANE_K
        + kk % LANE_K
}
