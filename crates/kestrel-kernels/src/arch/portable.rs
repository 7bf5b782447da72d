//! The portable micro-kernels, one per layout: plain wrapping sums, the definition the
//! SIMD tiles of each layout match, and what runs where a CPU has no tile of its own.

use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::{blocks4, lanes16, pairs4};
use crate::conv::tiles;

/// Pixels per tile of both portable kernels.
pub const MR: usize = 4;

/// `scalar_4x4c16`: 4 pixels × 4 channels, 16 bytes per step, on
/// [`Packing::Blocks4`](crate::conv::contract::Packing).
pub fn tile_4x4c16(a: &[i8], b: &[i8], steps: usize) -> [[i32; blocks4::CHANNELS]; MR] {
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for s in 0..steps {
        let a = &a[s * MR * KC..][..MR * KC];
        let b = &b[s * blocks4::STEP_BYTES..][..blocks4::STEP_BYTES];
        for (m, row) in acc.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                let d = a[m * KC..][..KC]
                    .iter()
                    .zip(&b[n * KC..][..KC])
                    .fold(0i32, |t, (&x, &w)| t.wrapping_add(x as i32 * w as i32));
                *v = v.wrapping_add(d);
            }
        }
    }
    acc
}

/// `scalar_4x4p16`: 4 pixels × 4 channels, 16 reduction steps per step, on
/// [`Packing::Pairs4`]'s int16 weights.
pub fn tile_4x4p16(a: &[i8], b: &[i8], steps: usize) -> [[i32; pairs4::CHANNELS]; MR] {
    let mut acc = [[0i32; pairs4::CHANNELS]; MR];
    for s in 0..steps {
        let a = &a[s * MR * KC..][..MR * KC];
        let b = &b[s * pairs4::STEP_BYTES..][..pairs4::STEP_BYTES];
        for (m, row) in acc.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                let d = (0..KC).fold(0i32, |t, j| {
                    let at = pairs4::in_step(j, n);
                    let w = i16::from_le_bytes([b[at] as u8, b[at + 1] as u8]) as i32;
                    t.wrapping_add(a[m * KC + j] as i32 * w)
                });
                *v = v.wrapping_add(d);
            }
        }
    }
    acc
}

/// `scalar_4x16c4`: 4 pixels × 16 channels, 4 bytes per lane, on
/// [`Packing::Lanes16`](crate::conv::contract::Packing); `m0` is the tile's first pixel.
pub fn tile_4x16c4(p: &Panel<'_>, m0: usize, weights: &[i8]) -> [[i32; lanes16::CHANNELS]; MR] {
    assert_eq!(
        p.slots.group, MR,
        "the portable tile reads tiles of MR pixels"
    );
    let mut acc = [[0i32; lanes16::CHANNELS]; MR];
    let a = p.tile(m0, MR);
    let lane = lanes16::LANE_K;
    for kk in 0..p.steps() * KC {
        let w = &weights[(kk / lane) * lanes16::GROUP_BYTES..][..lanes16::GROUP_BYTES];
        for (m, row) in acc.iter_mut().enumerate() {
            let x = a[p.slots.slot(m, kk)] as i32;
            for (n, v) in row.iter_mut().enumerate() {
                *v = v.wrapping_add(x * w[n * lane + kk % lane] as i32);
            }
        }
    }
    acc
}

/// The panel on [`tile_4x4c16`].
///
/// # Safety
/// None needed (a [`crate::conv::kernel::PanelKernel`] is `unsafe` for the SIMD ones).
pub unsafe fn scalar_4x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    tiles::blocks4::<MR>(Packing::Blocks4, c, p, output, |_| 0, tile_4x4c16);
}

/// The panel on [`tile_4x4p16`].
///
/// # Safety
/// None needed, as [`scalar_4x4c16`].
pub unsafe fn scalar_4x4p16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    tiles::blocks4::<MR>(Packing::Pairs4, c, p, output, |_| 0, tile_4x4p16);
}

/// The panel on [`tile_4x16c4`].
///
/// # Safety
/// None needed, as [`scalar_4x4c16`].
pub unsafe fn scalar_4x16c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    tiles::lanes16::<MR>(c, p, output, |m0, w| tile_4x16c4(p, m0, w));
}
