//! `smlad_2x4c16`: the Cortex-M4/M7 conv tile on [`Packing::Blocks4`] — 2 pixels × 4
//! channels, 16 reduction bytes per step, two channels at a time so the four sums, both
//! pixels' extended input words and one channel's weights fit the registers the core
//! has. Per 4 bytes of 2 pixels × 2 channels: 4 loads, 8 `SXTB16`, 8 `SMLAD` (16 MACs).
//!
//! [`Packing::Blocks4`]: crate::conv::contract::Packing

use super::epilogue;
use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::{blocks4, Shape};

/// Pixels per tile.
pub const MR: usize = 2;

/// The sums of 2 pixels × 4 channels over `steps` 16-byte steps: `a` is the tile's
/// packed input (per step, each pixel's 16 bytes), `b` the block's weights (per step,
/// each channel's 16 bytes).
pub fn tile(a: &[i8], b: &[i8], steps: usize) -> [[i32; blocks4::CHANNELS]; MR] {
    assert!(a.len() >= steps * MR * KC && b.len() >= steps * blocks4::STEP_BYTES);
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for pair in 0..blocks4::CHANNELS / 2 {
        let mut sums = [0i32; 4];
        // SAFETY: the assert above bounds every load: step s reads a[s·32 ..][..32] and
        // b[s·64 + pair·32 ..][..32].
        unsafe {
            let pa = a.as_ptr();
            let pb = b.as_ptr().add(pair * 2 * KC);
            for s in 0..steps {
                step(
                    pa.add(s * MR * KC),
                    pb.add(s * blocks4::STEP_BYTES),
                    &mut sums,
                );
            }
        }
        let [s00, s01, s10, s11] = sums;
        acc[0][2 * pair] = s00;
        acc[0][2 * pair + 1] = s01;
        acc[1][2 * pair] = s10;
        acc[1][2 * pair + 1] = s11;
    }
    acc
}

/// One 16-byte step of 2 pixels (`pa`: pixel 0's 16 bytes, then pixel 1's) × 2 channels
/// (`pb`: channel 0's 16 bytes, then channel 1's) into `[p0c0, p0c1, p1c0, p1c1]`: per
/// word of 4 bytes, 4 loads, 8 `SXTB16`, 8 `SMLAD`. Written as one block so the compiler
/// cannot spread it over more registers than the core has (it spills otherwise).
///
/// # Safety
/// `pa .. pa + 32` and `pb .. pb + 32` are readable.
#[inline(always)]
unsafe fn step(pa: *const i8, pb: *const i8, sums: &mut [i32; 4]) {
    let [mut s00, mut s01, mut s10, mut s11] = *sums;
    macro_rules! word {
        ($j:literal) => {
            concat!(
                "ldr {x0}, [{pa}, #",
                $j,
                "]\n",
                "ldr {x1}, [{pa}, #16 + ",
                $j,
                "]\n",
                "sxtb16 {e0}, {x0}\n",
                "sxtb16 {x0}, {x0}, ror #8\n",
                "sxtb16 {e1}, {x1}\n",
                "sxtb16 {x1}, {x1}, ror #8\n",
                "ldr {w}, [{pb}, #",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s00}, {e0}, {t}, {s00}\n",
                "smlad {s10}, {e1}, {t}, {s10}\n",
                "smlad {s00}, {x0}, {w}, {s00}\n",
                "smlad {s10}, {x1}, {w}, {s10}\n",
                "ldr {w}, [{pb}, #16 + ",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s01}, {e0}, {t}, {s01}\n",
                "smlad {s11}, {e1}, {t}, {s11}\n",
                "smlad {s01}, {x0}, {w}, {s01}\n",
                "smlad {s11}, {x1}, {w}, {s11}\n",
            )
        };
    }
    core::arch::asm!(
        word!("0"),
        word!("4"),
        word!("8"),
        word!("12"),
        pa = in(reg) pa,
        pb = in(reg) pb,
        s00 = inout(reg) s00,
        s01 = inout(reg) s01,
        s10 = inout(reg) s10,
        s11 = inout(reg) s11,
        x0 = out(reg) _,
        x1 = out(reg) _,
        e0 = out(reg) _,
        e1 = out(reg) _,
        w = out(reg) _,
        t = out(reg) _,
        options(pure, readonly, nostack),
    );
    *sums = [s00, s01, s10, s11];
}

/// The panel on [`tile`], block of channels by block (each block's epilogue constants
/// worked out once per panel), every tile stored by the Armv7E-M [`epilogue`].
///
/// # Safety
/// The core has the DSP extension (the `dsp` feature promises it).
pub unsafe fn smlad_2x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let oc = c.window.out_c;
    let shape = Shape::of(Packing::Blocks4, c.k(), oc);
    let steps = p.steps();
    for block in 0..oc.div_ceil(blocks4::CHANNELS) {
        let b = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
        let o0 = block * blocks4::CHANNELS;
        let store = epilogue::Channels::<{ blocks4::CHANNELS }>::of(c, o0, oc - o0);
        for m0 in (0..p.count).step_by(MR) {
            let acc = tile(p.tile(m0, MR), b, steps);
            store.store(&acc, MR.min(p.count - m0), p.p0 + m0, output);
        }
    }
}
