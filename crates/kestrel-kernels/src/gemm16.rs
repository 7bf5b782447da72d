//! Convolution on the 16-channel packed layout, for the kernels that multiply one input
//! value group by many output channels at once: AVX-512 VNNI (`vpdpbusd` with four
//! input bytes broadcast), AArch64 `sdot` by element (Cortex-A76/A78) and AVX2.
//!
//! * Packed weights (written by `kestrel compile --target rpi5|jetson-orin|x86-64`):
//!   `[OC/16][K/4][16][4]` int8 — for every four reduction steps, sixteen channels side
//!   by side, each channel's four weights in one 32-bit lane — then one little-endian
//!   `i32` weight sum per (padded) channel. `K` is padded to a multiple of 16 and `OC`
//!   to a multiple of 16, with zeros.
//! * Packed input: a panel of [`panel_slots`] output pixels at a time, one contiguous
//!   `[K/16][tile pixels][16]` group per micro-kernel tile, so a block of channels reads
//!   its weights once per panel and each tile reads one stream of input.
//!
//! Every path computes the same wrapping `i32` dot products as the scalar reference, so
//! results agree bit for bit.

use crate::gemm::{pack_input, round_up, Layout, PackedConv, TileStore, KC};
use crate::isa::Isa;

/// Output channels per block: one 512-bit vector of `i32`, four 128-bit ones.
pub const OCB: usize = 16;
/// Reduction steps per 32-bit lane.
pub const KG: usize = 4;
/// Pixels per portable/AVX2/`sdot` tile.
pub const MR: usize = 4;

/// A panel holds about this many bytes of packed input (L2-sized on every target).
const PANEL_BYTES: usize = 256 * 1024;
/// Panels hold a multiple of every tile height (4 and 8 pixels), so tiles never cross
/// the panel's end.
const PANEL_STEP: usize = 24;
/// At least this many pixels, so the deepest convs (ResNet's last stage: 7×7 maps,
/// `K` = 4608) read their weights once per map, not once per few pixels.
const PANEL_MIN: usize = 72;
const PANEL_MAX: usize = 192;

/// Pixels per panel for a conv with reduction depth `k`.
pub const fn panel_slots(k: usize) -> usize {
    let fit = PANEL_BYTES / round_up(k, KC) / PANEL_STEP * PANEL_STEP;
    if fit < PANEL_MIN {
        PANEL_MIN
    } else if fit > PANEL_MAX {
        PANEL_MAX
    } else {
        fit
    }
}

/// Scratch bytes the driver needs for a conv with reduction depth `k`.
pub const fn scratch_len(k: usize) -> usize {
    panel_slots(k) * round_up(k, KC)
}

/// Bytes of packed weights (and channel sums) for a `K × OC` conv.
pub const fn packed_len(k: usize, oc: usize) -> usize {
    let oc_pad = round_up(oc, OCB);
    oc_pad * round_up(k, KC) + 4 * oc_pad
}

/// Where weight `(k, o)` lives in the packed layout.
#[inline]
fn at(k_pad: usize, kk: usize, o: usize) -> usize {
    (o / OCB) * OCB * k_pad + (kk / KG) * OCB * KG + (o % OCB) * KG + kk % KG
}

/// This layout's shape, for [`crate::gemm::Packing`]'s packing and checks.
pub(crate) fn layout(k: usize, oc: usize) -> Layout {
    Layout {
        k_pad: round_up(k, KC),
        oc_pad: round_up(oc, OCB),
        at,
    }
}

/// One packed panel of input pixels.
pub(crate) struct Panel<'a> {
    /// Groups of `group` pixels (one tile), each `[K/16][group][16]`
    /// (`crate::gemm::pack_input`), so a tile reads one stream of input.
    pub a: &'a [i8],
    pub group: usize,
    /// Bytes of a pixel side by side (`[K/chunk][group][chunk]`): 16, or 64 for VNNI.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub chunk: usize,
    /// Pixels packed (the rest of the slots hold stale bytes whose results are dropped).
    pub count: usize,
    /// The panel's first pixel, relative to the output slice.
    pub p0: usize,
    pub k_pad: usize,
    /// [`PackedConv::shifts_left`], worked out once per conv (the AArch64 epilogue
    /// leaves the left shift out without).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub shifts_left: bool,
}

impl Panel<'_> {
    pub fn steps(&self) -> usize {
        self.k_pad / KC
    }

    /// The packed input of the `height`-pixel tile starting at pixel `m0` (a multiple
    /// of `group`).
    pub fn tile(&self, m0: usize, height: usize) -> &[i8] {
        debug_assert!(m0.is_multiple_of(self.group));
        &self.a[m0 * self.k_pad..][..height * self.k_pad]
    }
}

/// Convolution on weights packed this way (`Packing::Lanes16`): same results as
/// [`crate::scalar::conv2d`] on the pixels of `output`. `scratch` holds at least
/// [`scratch_len`] bytes.
pub fn conv2d(isa: Isa, c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    let k = c.k();
    let k_pad = round_up(k, KC);
    let slots = panel_slots(k);
    let pixels = c.pixels(output);
    let flip = isa == Isa::Avx512Vnni;
    // Pixels per tile (VNNI's tiles are taller: 8 pixels × 32 channels).
    let group = if flip { 8 } else { MR };
    // VNNI reads four bytes of a pixel at a time, from any chunk size: where the
    // channels allow, 64-byte chunks, which pack with one AVX-512 copy each.
    let chunk = if flip && c.window.in_c.is_multiple_of(64) {
        64
    } else {
        KC
    };
    let a = &mut scratch[..slots * k_pad];
    let shifts_left = c.shifts_left();
    let mut p0 = 0;
    while p0 < pixels {
        let count = slots.min(pixels - p0);
        if chunk == 64 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: 64-byte chunks are chosen only for VNNI, which the session checked
            // (AVX-512 F/BW come with it).
            unsafe {
                crate::x86::pack_panel_64(c, c.first + p0, count, a)
            };
        } else {
            pack_input(
                c.window,
                c.input,
                c.zero_point,
                c.first + p0,
                count,
                group,
                k,
                flip,
                a,
            );
        }
        let panel = Panel {
            a,
            chunk,
            group,
            count,
            p0,
            k_pad,
            shifts_left,
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the session checked the CPU for AVX-512 VNNI; the parser checked the
            // shapes, so weights, params and output hold what the panel indexes.
            Isa::Avx512Vnni => unsafe { crate::x86::panel_vnni(c, &panel, output) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, for AVX2.
            Isa::Avx2 => unsafe { crate::x86::panel_avx2(c, &panel, output) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above, for the dot product.
            Isa::NeonDot => unsafe { crate::neon::panel_sdot(c, &panel, output) },
            _ => panel_scalar(c, &panel, output),
        }
        p0 += count;
    }
}

/// Sums of channels `o0 .. o0 + 16` over an `MR`-pixel tile (the definition every other
/// path matches).
pub(crate) fn tile_scalar(p: &Panel<'_>, m0: usize, weights: &[i8]) -> [[i32; OCB]; MR] {
    assert_eq!(p.group, MR, "the portable tile reads tiles of MR pixels");
    let mut acc = [[0i32; OCB]; MR];
    let a = p.tile(m0, MR);
    for kk in 0..p.steps() * KC {
        let w = &weights[(kk / KG) * OCB * KG..][..OCB * KG];
        for (m, row) in acc.iter_mut().enumerate() {
            let x = a[((kk / KC) * MR + m) * KC + kk % KC] as i32;
            for (n, v) in row.iter_mut().enumerate() {
                *v = v.wrapping_add(x * w[n * KG + kk % KG] as i32);
            }
        }
    }
    acc
}

/// Runs `tile` on every `MR × 16` tile of the panel and stores it with the scalar
/// epilogue; `offset(o)` is taken off channel `o`'s bias.
pub(crate) fn panel_with_tiles(
    c: &PackedConv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    offset: impl Fn(usize) -> i32,
    tile: impl Fn(usize, &[i8]) -> [[i32; OCB]; MR],
) {
    let oc = c.window.out_c;
    for block in 0..oc.div_ceil(OCB) {
        let weights = &c.packed[block * OCB * p.k_pad..][..OCB * p.k_pad];
        for m0 in (0..p.count).step_by(MR) {
            let acc = tile(m0, weights);
            let o0 = block * OCB;
            let store = TileStore::of(c, MR.min(p.count - m0), p.p0 + m0, o0);
            store.lanes(OCB.min(oc - o0), |m, n| acc[m][n], &offset, output);
        }
    }
}

fn panel_scalar(c: &PackedConv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel_with_tiles(c, p, output, |_| 0, |m0, w| tile_scalar(p, m0, w));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::tests::check_all_paths;
    use crate::gemm::Packing;
    use std::vec::Vec;

    #[test]
    fn every_supported_path_matches_the_reference_conv() {
        let cpu = crate::isa::CpuFeatures::available();
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|&i| cpu.supports(i)).collect();
        std::println!("checking {isas:?}");
        check_all_paths(Packing::Lanes16, &isas);
    }

    #[test]
    fn panels_hold_whole_tiles_and_fit_the_budget() {
        for k in [1, 27, 147, 576, 1152, 2304, 4608, 100_000] {
            let slots = panel_slots(k);
            assert_eq!(slots % 8, 0, "k = {k}");
            assert!((PANEL_MIN..=PANEL_MAX).contains(&slots));
            assert!(scratch_len(k) <= PANEL_BYTES.max(PANEL_MIN * round_up(k, KC)));
        }
    }
}
