//! `smlad_2x4c16`: the Cortex-M4/M7 conv tile on [`Packing::Blocks4`] — 2 pixels × 4
//! channels, 16 reduction bytes per step, two channels at a time so the four sums, both
//! pixels' extended input words and one channel pair's weights fit the 13 registers.
//! Per 4 bytes of 2 pixels × 2 channels: 4 loads, 8 `SXTB16`, 8 `SMLAD` (16 MACs).
//!
//! [`Packing::Blocks4`]: crate::conv::contract::Packing

use super::dsp::{load4, smlad, sxtb16, sxtb16_ror8};
use crate::conv::contract::{Conv, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::blocks4;
use crate::conv::tiles;

/// Pixels per tile.
pub const MR: usize = 2;

/// The sums of 2 pixels × 4 channels over `steps` 16-byte steps: `a` is the tile's
/// packed input (per step, each pixel's 16 bytes), `b` the block's weights (per step,
/// each channel's 16 bytes).
pub fn tile(a: &[i8], b: &[i8], steps: usize) -> [[i32; blocks4::CHANNELS]; MR] {
    assert!(a.len() >= steps * MR * KC && b.len() >= steps * blocks4::STEP_BYTES);
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for pair in 0..blocks4::CHANNELS / 2 {
        let (mut s00, mut s01, mut s10, mut s11) = (0i32, 0i32, 0i32, 0i32);
        let mut pa = a.as_ptr();
        // SAFETY: the assert above bounds every load: step s reads a[s·32 ..][..32] and
        // b[s·64 + pair·32 ..][..32].
        unsafe {
            let mut pb = b.as_ptr().add(pair * 2 * KC);
            for _ in 0..steps {
                for j in (0..KC).step_by(4) {
                    let (x0, x1) = (load4(pa.add(j)), load4(pa.add(KC + j)));
                    let (w0, w1) = (load4(pb.add(j)), load4(pb.add(KC + j)));
                    let (x0e, x1e) = (sxtb16(x0), sxtb16(x1));
                    let (w0e, w1e) = (sxtb16(w0), sxtb16(w1));
                    s00 = smlad(x0e, w0e, s00);
                    s01 = smlad(x0e, w1e, s01);
                    s10 = smlad(x1e, w0e, s10);
                    s11 = smlad(x1e, w1e, s11);
                    let (x0o, x1o) = (sxtb16_ror8(x0), sxtb16_ror8(x1));
                    let (w0o, w1o) = (sxtb16_ror8(w0), sxtb16_ror8(w1));
                    s00 = smlad(x0o, w0o, s00);
                    s01 = smlad(x0o, w1o, s01);
                    s10 = smlad(x1o, w0o, s10);
                    s11 = smlad(x1o, w1o, s11);
                }
                pa = pa.add(MR * KC);
                pb = pb.add(blocks4::STEP_BYTES);
            }
        }
        acc[0][2 * pair] = s00;
        acc[0][2 * pair + 1] = s01;
        acc[1][2 * pair] = s10;
        acc[1][2 * pair + 1] = s11;
    }
    acc
}

/// The panel on [`tile`].
///
/// # Safety
/// The core has the DSP extension (the `dsp` feature promises it).
pub unsafe fn smlad_2x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    tiles::blocks4::<MR>(c, p, output, |_| 0, tile);
}
