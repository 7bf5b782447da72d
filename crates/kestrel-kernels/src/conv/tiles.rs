//! A panel run tile by tile for kernels whose tile hands its sums back (the portable
//! ones; AVX2 and VNNI on 4-channel blocks): the loops over pixels and blocks of channels,
//! and the element-by-element epilogue. On 4-channel blocks `offset(o)` is taken off
//! channel `o`'s bias (VNNI's `128 · Σw`, or none).

use crate::conv::contract::{Conv, Packing};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::Panel;
use crate::conv::layout::{blocks4, lanes16, Shape};

/// [`Packing::Blocks4`] (or [`Packing::Pairs4`], its int16 form, as `packing`): for every
/// tile of `M` pixels, `tile(input, block weights, steps)` against each block of 4
/// channels (the tile's input read once for all blocks).
#[inline(always)]
pub fn blocks4<const M: usize>(
    packing: Packing,
    c: &Conv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    offset: impl Fn(usize) -> i32,
    tile: impl Fn(&[i8], &[i8], usize) -> [[i32; blocks4::CHANNELS]; M],
) {
    let oc = c.window.out_c;
    debug_assert_eq!(packing.block_channels(), blocks4::CHANNELS);
    let shape = Shape::of(packing, c.k(), oc);
    let steps = p.steps();
    for m0 in (0..p.count).step_by(M) {
        let a = p.tile(m0, M);
        for block in 0..oc.div_ceil(blocks4::CHANNELS) {
            let b = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
            let acc = tile(a, b, steps);
            let o0 = block * blocks4::CHANNELS;
            let store = TileStore::of(c, M.min(p.count - m0), p.p0 + m0, o0);
            store.lanes(
                blocks4::CHANNELS.min(oc - o0),
                |m, n| acc[m][n],
                &offset,
                output,
            );
        }
    }
}

/// [`Packing::Lanes16`]: for every block of 16 channels,
/// `tile(m0, block weights)` on each tile of `M` pixels (the block's weights read once
/// per panel).
#[inline(always)]
pub fn lanes16<const M: usize>(
    c: &Conv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    tile: impl Fn(usize, &[i8]) -> [[i32; lanes16::CHANNELS]; M],
) {
    let oc = c.window.out_c;
    let shape = Shape::of(Packing::Lanes16, c.k(), oc);
    for block in 0..oc.div_ceil(lanes16::CHANNELS) {
        let weights = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
        for m0 in (0..p.count).step_by(M) {
            let acc = tile(m0, weights);
            let o0 = block * lanes16::CHANNELS;
            let store = TileStore::of(c, M.min(p.count - m0), p.p0 + m0, o0);
            store.lanes(
                lanes16::CHANNELS.min(oc - o0),
                |m, n| acc[m][n],
                |_| 0,
                output,
            );
        }
    }
}
