//! `avx2_4x8c4`: AVX2 on [`Packing::Lanes16`](crate::conv::contract::Packing), tiles of
//! 4 pixels × 8 channels (half a block: two per 16-channel block), the epilogue in vector registers.
//!
//! Exact products without VNNI: `vpmaddubsw` would saturate its int16 pair sums
//! (255 · 127 · 2 > 32767), so both operands are sign-extended to int16 and multiplied by
//! `vpmaddwd`, whose pair sums (at most 2 · 128 · 127) are exact in int32. The panel is
//! widened once when packed ([`InputFormat::int16`](crate::conv::input::InputFormat)), so
//! a pixel's four inputs are one 64-bit broadcast load; the weights are widened per use.

use core::arch::x86_64::*;

use crate::arch::x86_64::epilogue::avx2::{self as epi, Quant8, Residual8};
use crate::conv::contract::{Conv, KC};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::Panel;
use crate::conv::layout::lanes16;

/// Pixels per tile.
pub const MR: usize = 4;

/// Vectors of four channels' weights a tile reads per group of four steps.
const NW: usize = 2;

/// The panel tile by tile: for each half block of 8 channels, every tile of [`MR`]
/// pixels.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn avx2_4x8c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let oc = c.window.out_c;
    assert!(output.len() >= (p.p0 + p.count) * oc && p.slots.group == MR);
    assert!(p.a.len() >= 2 * p.slots.bytes(p.count), "an int16 panel");
    let residual = Residual8::new(&c.residual);
    let out = output.as_mut_ptr();
    for o0 in (0..oc).step_by(epi::LANES) {
        let block = lanes16::block_at(p.slots.k_pad, o0 / lanes16::CHANNELS);
        // The half's first weights: 4 bytes of each of its 8 channels per group.
        let w = c
            .weights
            .as_ptr()
            .add(block + (o0 % lanes16::CHANNELS) * lanes16::LANE_K);
        if o0 + epi::LANES <= oc {
            let quant = Quant8::load(c, o0, |_| 0);
            for m0 in (0..p.count).step_by(MR) {
                let sums = tile(p, m0, w);
                for (m, &s) in sums.iter().enumerate().take(p.count - m0) {
                    let at = (p.p0 + m0 + m) * oc + o0;
                    epi::store8(&quant, s, &residual, at, out);
                }
            }
        } else {
            // Fewer than 8 channels left: the element-by-element epilogue.
            for m0 in (0..p.count).step_by(MR) {
                let sums = tile(p, m0, w);
                let mut lanes = [[0i32; epi::LANES]; MR];
                for (l, s) in lanes.iter_mut().zip(sums) {
                    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s);
                }
                let store = TileStore::of(c, MR.min(p.count - m0), p.p0 + m0, o0);
                store.lanes(oc - o0, |m, n| lanes[m][n], |_| 0, output);
            }
        }
    }
}

/// The eight channels' sums of the tile's pixels, in channel order.
#[inline(always)]
unsafe fn tile(p: &Panel<'_>, m0: usize, w: *const i8) -> [__m256i; MR] {
    // acc[m][j]: channels 4j .. 4j + 4 of the half, two partial sums per channel.
    let mut acc = [[_mm256_setzero_si256(); NW]; MR];
    // The panel holds int16 values: the tile's group at twice its int8 offset.
    let a = p.a.as_ptr().add(2 * p.slots.group_at(m0)) as *const i16;
    for s in 0..p.steps() {
        // The tile's 16 values of step s, pixel by pixel.
        let step = a.add(s * MR * KC);
        for g in 0..KC / lanes16::LANE_K {
            let wp = w.add(s * lanes16::STEP_BYTES + g * lanes16::GROUP_BYTES);
            let wv: [__m256i; NW] = core::array::from_fn(|j| {
                _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16 * j) as *const __m128i))
            });
            for (m, acc_m) in acc.iter_mut().enumerate() {
                // The pixel's four inputs, once per 64-bit lane.
                let four = core::ptr::read_unaligned(step.add(m * KC + g * 4) as *const i64);
                let x = _mm256_set1_epi64x(four);
                for (acc_mj, &wj) in acc_m.iter_mut().zip(&wv) {
                    *acc_mj = _mm256_add_epi32(*acc_mj, _mm256_madd_epi16(x, wj));
                }
            }
        }
    }
    acc.map(|a| epi::channel_sums(a[0], a[1]))
}
