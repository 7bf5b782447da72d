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

use crate::gemm::{pack_input, round_up, Layout, PackedConv, Shifts, TileStore, KC};
use crate::isa::Isa;
use crate::scalar::Window;

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
    /// [`PackedConv::channel_shifts`], worked out once per conv (the AArch64 epilogue
    /// takes its shortest form from it).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    pub shifts: Shifts,
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
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::NeonDot {
        let rows = band_rows(c.window, scratch_len(k));
        if rows > 0 {
            direct(c, output, &mut scratch[..scratch_len(k)], rows);
            return;
        }
    }
    let a = &mut scratch[..slots * k_pad];
    let shifts = c.channel_shifts();
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
            shifts,
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

// ---- Direct: the input read in place, from a band with its padding written out ----
//
// When every tap is whole 16-byte chunks (`IC % 16 == 0`), a tile can read each pixel's
// taps where they lie instead of from an im2col copy: the scratch holds a band of the
// input with the padding written out (the zero point), so every tap of every output pixel
// is inside it. That copies each input byte about once, where packing copies it once per
// tap (nine times for a 3×3 conv).

/// Kernels with at most this many taps read in place (3×3, 5×5; a 7×7 stem on RGB packs).
pub const DIRECT_TAPS: usize = 25;
/// Deeper inputs pack: their packing is shared by many channel blocks, so costs less
/// than the tiles' own per-tap work of reading in place.
pub const DIRECT_MAX_C: usize = 64;
#[cfg(target_arch = "aarch64")]
/// Pixels whose offsets are worked out together: a block of channels reads its weights
/// once per this many.
const DIRECT_PIXELS: usize = 128;

/// Bytes of one row of the padded input.
fn padded_row(s: &Window) -> usize {
    (s.pads[1] + s.in_w + s.pads[3]) * s.in_c
}

/// Output rows per band when the padded input's rows must fit in `budget` bytes, or 0
/// where the direct path does not apply (channels off the chunk, large kernels, rows too
/// wide for even one output row).
pub fn band_rows(s: &Window, budget: usize) -> usize {
    let (kh, taps) = (s.kernel[0], s.kernel[0] * s.kernel[1]);
    if !s.in_c.is_multiple_of(KC) || taps > DIRECT_TAPS || s.in_c == 0 || s.in_c > DIRECT_MAX_C {
        return 0;
    }
    let fit = budget / padded_row(s);
    if fit < kh {
        return 0;
    }
    (fit - kh) / s.stride[0] + 1
}

#[cfg(target_arch = "aarch64")]
/// Writes rows `r0 .. r0 + rows` of the padded input (input row `r - top pad`) to `band`,
/// the zero point wherever the padding is.
fn fill_band(s: &Window, input: &[i8], zero_point: i8, r0: usize, rows: usize, band: &mut [i8]) {
    let row = padded_row(s);
    let (left, inner) = (s.pads[1] * s.in_c, s.in_w * s.in_c);
    // Padding columns are a few 16-byte chunks (`IC % 16 == 0`): stores, not calls.
    let pad = |d: &mut [i8]| {
        for c in d.chunks_exact_mut(KC) {
            c.copy_from_slice(&[zero_point; KC]);
        }
    };
    for (i, dst) in band[..rows * row].chunks_exact_mut(row).enumerate() {
        match (r0 + i).checked_sub(s.pads[0]).filter(|&iy| iy < s.in_h) {
            Some(iy) => {
                pad(&mut dst[..left]);
                dst[left..left + inner].copy_from_slice(&input[iy * inner..][..inner]);
                pad(&mut dst[left + inner..]);
            }
            None => dst.fill(zero_point),
        }
    }
}

#[cfg(target_arch = "aarch64")]
/// Up to [`DIRECT_PIXELS`] output pixels of a band, for a kernel that reads them in place.
pub(crate) struct Direct<'a> {
    pub band: &'a [i8],
    /// Where each pixel's first tap starts in the band, per tile of `MR` (a last, short
    /// tile repeats its last pixel; those results are dropped).
    pub offsets: &'a [u32],
    /// Where each tap starts, from its pixel's first.
    pub taps: &'a [u32],
    pub in_c: usize,
    /// Pixels, and the first one relative to the output slice.
    pub count: usize,
    pub p0: usize,
    pub shifts: Shifts,
}

/// The conv by bands of `rows_per_band` output rows: each band's padded input copied to
/// `scratch` once, then read in place by the `sdot` tiles.
#[cfg(target_arch = "aarch64")]
fn direct(c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8], rows_per_band: usize) {
    let s = c.window;
    let row = padded_row(s);
    let (kh, kw, ic) = (s.kernel[0], s.kernel[1], s.in_c);
    let mut taps = [0u32; DIRECT_TAPS];
    for (t, tap) in taps.iter_mut().take(kh * kw).enumerate() {
        *tap = ((t / kw) * row + (t % kw) * ic) as u32;
    }
    let taps = &taps[..kh * kw];
    let shifts = c.channel_shifts();
    let end = c.first + c.pixels(output);
    let mut p = c.first;
    while p < end {
        let oy = p / s.out_w;
        let band_end = ((oy + rows_per_band) * s.out_w).min(end);
        let r0 = oy * s.stride[0];
        let rows = (band_end - 1) / s.out_w * s.stride[0] + kh - r0;
        fill_band(s, c.input, c.zero_point, r0, rows, scratch);
        let band = &scratch[..rows * row];
        let mut q = p;
        while q < band_end {
            let count = DIRECT_PIXELS.min(band_end - q);
            let mut offsets = [0u32; DIRECT_PIXELS];
            let slots = round_up(count, MR);
            // A run of pixels per output row: one step apart.
            let (mut y, mut x) = (q / s.out_w, q % s.out_w);
            let col_step = (s.stride[1] * ic) as u32;
            let mut done = 0;
            while done < count {
                let n = (count - done).min(s.out_w - x);
                let first = ((y * s.stride[0] - r0) * row + x * s.stride[1] * ic) as u32;
                for (i, o) in offsets[done..done + n].iter_mut().enumerate() {
                    *o = first + i as u32 * col_step;
                }
                (y, x, done) = (y + 1, 0, done + n);
            }
            let last = offsets[count - 1];
            offsets[count..slots].fill(last);
            let d = Direct {
                band,
                offsets: &offsets[..slots],
                taps,
                in_c: ic,
                count,
                p0: q - c.first,
                shifts,
            };
            // SAFETY: the session checked the CPU for the dot product; every offset plus
            // every tap plus `IC` bytes is inside the band (the rows cover the pixels'
            // taps, the padded width their columns), and the parser checked the shapes.
            unsafe { crate::neon::direct_sdot(c, &d, output) };
            q += count;
        }
        p = band_end;
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
    fn bands_fit_the_scratch_and_apply_to_whole_chunks_only() {
        let window = |in_w, in_c, kernel, stride| Window {
            in_h: 6,
            in_w,
            in_c,
            out_h: 6 / stride,
            out_w: in_w / stride,
            out_c: 16,
            kernel: [kernel; 2],
            stride: [stride; 2],
            pads: [kernel / 2; 4],
        };
        // The unit tests' wide case: 402 padded columns of 16 bytes, four rows fit.
        let wide = window(400, 16, 3, 1);
        assert_eq!(band_rows(&wide, scratch_len(144)), 2);
        assert_eq!(band_rows(&window(400, 16, 3, 2), scratch_len(144)), 1);
        assert_eq!(band_rows(&window(8, 16, 3, 1), 3 * 10 * 16), 1);
        assert_eq!(band_rows(&window(8, 16, 3, 1), 3 * 10 * 16 - 1), 0);
        // Shallow inputs and large kernels pack.
        assert_eq!(band_rows(&window(8, 3, 3, 1), 1 << 20), 0);
        assert_eq!(band_rows(&window(8, 24, 3, 1), 1 << 20), 0);
        assert_eq!(band_rows(&window(8, 16, 7, 1), 1 << 20), 0);
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
