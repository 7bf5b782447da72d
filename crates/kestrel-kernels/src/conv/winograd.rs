//! Winograd F(2×2, 3×3) in exact integers: which convs it applies to, and how its scratch
//! is laid out. The SIMD paths (`arch::x86_64::avx2_winograd_4x8` on AVX2,
//! `arch::aarch64::neon_winograd_4x4` on the Cortex-A72) compute each 2×2 block of outputs
//! ("tile") from its 4×4 input patch with 16 products per channel pair instead of 36, and
//! hand the same int32 sums to the same epilogue as the direct conv: the results are those
//! of [`crate::scalar::conv2d`], bit for bit.
//!
//! Why it is exact: with `G` scaled by 2 (`Ĝ = 2G`, integral), the transformed weights
//! `U = Ĝ g Ĝᵀ` are integers with `|U| ≤ 9 · 128`, the transformed inputs `V = Bᵀ d B`
//! sums and differences of four values, `|V| ≤ 4 · 128`: both fit int16, so `vpmaddwd`
//! (AVX2) and `SMLAL` (NEON) multiply them exactly. The output transform `Aᵀ (Σ U ⊙ V) A` then gives four times
//! the conv's sum. Every step is a ring operation modulo 2³², so that is exact modulo 2³²
//! whatever the intermediate sums do; the true value, `4 · Σ x·w` with at most
//! `9 · IC` products of at most 128 · 128, fits int32 for `IC ≤` [`MAX_IN_C`], so it is
//! the value itself, and an arithmetic shift by 2 leaves the sum exactly.

use core::ops::Range;

use crate::conv::contract::{round_up, KC};
use crate::window::Window;

/// Points of a tile's transform (4 × 4).
pub const POINTS: usize = 16;
/// Output channels whose transformed weights are held at once (one vector of `i32`).
pub const CHANNELS: usize = 8;
/// Tiles whose sums are computed together.
pub const GROUP: usize = 4;
/// Deepest input: `4 · 9 · IC · 128 · 128 < 2³¹`.
pub const MAX_IN_C: usize = 2048;
/// A Winograd kernel as the dispatch table names it: its name, the fewest tiles a run
/// must touch for it to beat its direct tile on its core (each run transforms every
/// weight once per chunk, which weighs more the fewer tiles share it), and the output
/// channels it computes a pass (a thread's share of the channels is whole passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Path {
    pub name: &'static str,
    pub min_tiles: usize,
    pub pass: usize,
}

impl Path {
    /// The output channels of share `t` of `shares` when threads split `out_c` channels
    /// in whole passes (fixed by the shape and the share count; the last ends at `out_c`).
    pub fn share(&self, out_c: usize, t: usize, shares: usize) -> Range<usize> {
        let passes = out_c.div_ceil(self.pass);
        let at = |t: usize| (self.pass * (passes * t / shares)).min(out_c);
        at(t)..at(t + 1)
    }

    /// Whether the path runs the conv on the run of `pixels` output pixels from `first` (a
    /// thread's share) in `scratch` bytes: it [`applies`], the run touches at least
    /// [`Path::min_tiles`] tiles (each run transforms all the weights), and a group of
    /// tiles fits next to a pass's weights (a smaller scratch, a microcontroller's file,
    /// runs the conv direct).
    pub fn runs(&self, w: &Window, first: usize, pixels: usize, scratch: usize) -> bool {
        applies(w, self.min_tiles)
            && run_tiles(w, first, pixels) >= self.min_tiles
            && tiles_in(w.in_c, self.pass, scratch) > 0
    }

    /// Scratch bytes the path uses at most on the conv: one pass's transformed weights and
    /// the whole map's tiles (up to a chunk of [`MAX_TILES`]), so each channel's weights
    /// are transformed once per chunk. Where it does not apply ([`applies`]), 0.
    pub fn scratch_len(&self, w: &Window) -> usize {
        if !applies(w, self.min_tiles) {
            return 0;
        }
        let tiles = (w.out_h.div_ceil(2) * w.out_w.div_ceil(2)).min(MAX_TILES);
        weights_bytes(w.in_c, self.pass) + round_up(tiles, GROUP) * tile_bytes(w.in_c)
    }

    /// Whether `channels` are whole passes inside `out_c` (the last may end at `out_c`).
    pub fn whole_passes(&self, channels: &Range<usize>, out_c: usize) -> bool {
        channels.start.is_multiple_of(self.pass)
            && (channels.end.is_multiple_of(self.pass) || channels.end == out_c)
            && channels.start <= channels.end
            && channels.end <= out_c
    }
}

/// Tiles transformed at once at most: a chunk's transformed input stays in L2, and the
/// weights are transformed again per chunk, so more tiles cost only cache.
pub const MAX_TILES: usize = 64;

/// Whether the Winograd kernels compute the conv exactly, on their layouts: 3×3, stride 1,
/// one pixel of padding all round (output the input's size), input channels in whole
/// chunks and few enough for int32 ([`MAX_IN_C`]), output channels in whole vectors.
pub fn fits(w: &Window) -> bool {
    w.kernel == [3, 3]
        && w.stride == [1, 1]
        && w.pads == [1; 4]
        && w.out_h == w.in_h
        && w.out_w == w.in_w
        && w.in_c > 0
        && w.in_c.is_multiple_of(KC)
        && w.in_c <= MAX_IN_C
        && w.out_c > 0
        && w.out_c.is_multiple_of(CHANNELS)
}

/// Whether a path that wants `min_tiles` tiles a run ([`Path::min_tiles`]) computes the
/// conv: it [`fits`], its map has that many tiles, and they take at most 3/4 of the direct
/// conv's products (16 a tile against 9 a pixel; a single row wastes half of each tile).
pub fn applies(w: &Window, min_tiles: usize) -> bool {
    let tiles = w.out_h.div_ceil(2) * w.out_w.div_ceil(2);
    fits(w) && tiles >= min_tiles && 4 * POINTS * tiles <= 3 * 9 * w.out_h * w.out_w
}

/// Tiles a run of `pixels` output pixels from `first` touches: every tile of each pair of
/// output rows it meets.
pub fn run_tiles(w: &Window, first: usize, pixels: usize) -> usize {
    if pixels == 0 || w.out_w == 0 {
        return 0;
    }
    let (top, bottom) = (first / w.out_w / 2, (first + pixels - 1) / w.out_w / 2);
    (bottom + 1 - top) * w.out_w.div_ceil(2)
}

/// Where thread `t` of `threads` starts on a map the path [`applies`] to: at a pair of
/// output rows, so no two threads compute the same tiles (the shares are fixed by the
/// shape and the thread count).
pub fn split_at(w: &Window, t: usize, threads: usize) -> usize {
    let pairs = w.out_h.div_ceil(2);
    (2 * (pairs * t / threads) * w.out_w).min(w.out_h * w.out_w)
}

/// Scratch bytes that hold the conv for every path ([`Path::scratch_len`] at one tile a
/// run and 16 channels a pass, the widest): for tests and benches that try them all.
pub fn most_scratch_len(w: &Window) -> usize {
    let widest = Path {
        name: "widest",
        min_tiles: 1,
        pass: 2 * CHANNELS,
    };
    widest.scratch_len(w)
}

/// Bytes of `pass` output channels' transformed weights (int16): what a path holds at once.
pub const fn weights_bytes(in_c: usize, pass: usize) -> usize {
    POINTS * in_c * pass * 2
}

/// Bytes of one tile's transformed input (int16).
pub const fn tile_bytes(in_c: usize) -> usize {
    POINTS * in_c * 2
}

/// Tiles per chunk in `scratch` bytes next to `pass` channels' weights (a multiple of
/// [`GROUP`]), or 0 where not even one group fits (the conv then runs direct).
pub fn tiles_in(in_c: usize, pass: usize, scratch: usize) -> usize {
    let room = scratch.saturating_sub(weights_bytes(in_c, pass)) / tile_bytes(in_c);
    (room / GROUP * GROUP).min(MAX_TILES)
}

/// Where, in `i16`s from the input chunk's start, the 16 transformed channels `16 · cb ..`
/// of point `xi` of the tile in slot `slot` of a chunk start: per group of [`GROUP`]
/// tiles, per point, per 16 channels, the group's tiles side by side.
#[inline(always)]
pub const fn input_at(in_c: usize, slot: usize, xi: usize, cb: usize) -> usize {
    (((slot / GROUP) * POINTS + xi) * (in_c / KC) + cb) * GROUP * KC + (slot % GROUP) * KC
}

/// Where, in `i16`s from the input chunk's start, the transformed input channels `8 · c8
/// .. 8 · c8 + 8` of point `xi` of group `g`'s tiles start (NEON's layout): per group,
/// per point, per 8 channels, four vectors of channel pairs `(k, k + 4)`, each channel's
/// [`GROUP`] tiles side by side.
#[inline(always)]
pub const fn tile_lanes_input_at(in_c: usize, g: usize, xi: usize, c8: usize) -> usize {
    ((g * POINTS + xi) * (in_c / 8) + c8) * GROUP * 8
}

/// Where, in `i16`s, the transformed weights of point `xi`, input channels `4 · cg ..
/// 4 · cg + 4`, start: the [`CHANNELS`] channels side by side, four inputs each.
#[inline(always)]
pub const fn weight_at(in_c: usize, xi: usize, cg: usize) -> usize {
    (xi * (in_c / 4) + cg) * CHANNELS * 4
}

/// Where, in `i16`s, the transformed weights of point `xi`, input channels `8 · c8 ..
/// 8 · c8 + 8`, of a 4-channel block start (NEON's layout): each channel's eight inputs
/// in a row, the block's 4 channels side by side.
#[inline(always)]
pub const fn block4_weight_at(in_c: usize, xi: usize, c8: usize) -> usize {
    (xi * (in_c / 8) + c8) * 4 * 8
}

/// Bytes of a 4-channel block's transformed weights (int16).
pub const fn block4_weights_bytes(in_c: usize) -> usize {
    POINTS * in_c * 4 * 2
}

/// The transforms' arithmetic, written once for every ISA's vectors: an arch kernel
/// expands it with its vector types and its lane-wise wrapping add, subtract and
/// arithmetic shift right by two, and gets
/// - `b_transpose`: `Bᵀ` on four int16 vectors, `d0 − d2, d1 + d2, d2 − d1, d1 − d3`;
/// - `g_scaled`: `Ĝ` (`2G`) on three int16 vectors, `2g0, g0 + g1 + g2, g0 − g1 + g2, 2g2`;
/// - `transform_output`: `Aᵀ M A / 4` of a tile's 16 int32 point sums, its four outputs
///   row by row (`Aᵀ` on four values: `m0 + m1 + m2, m1 − m2 − m3`).
///
/// (A macro rather than a trait over the vector types: the intrinsics need the kernel's
/// target features, which only the kernel's own functions carry.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! transforms {
    (
        i16: $v16:ty, $add16:path, $sub16:path;
        i32: $v32:ty, $add32:path, $sub32:path, $shr2:expr $(;)?
    ) => {
        #[inline(always)]
        unsafe fn b_transpose(d: [$v16; 4]) -> [$v16; 4] {
            [
                $sub16(d[0], d[2]),
                $add16(d[1], d[2]),
                $sub16(d[2], d[1]),
                $sub16(d[1], d[3]),
            ]
        }

        #[inline(always)]
        unsafe fn g_scaled(g: [$v16; 3]) -> [$v16; 4] {
            let outer = $add16(g[0], g[2]);
            [
                $add16(g[0], g[0]),
                $add16(outer, g[1]),
                $sub16(outer, g[1]),
                $add16(g[2], g[2]),
            ]
        }

        #[inline(always)]
        unsafe fn transform_output(m: &[$v32; $crate::conv::winograd::POINTS]) -> [$v32; 4] {
            let a = |v: [$v32; 4]| {
                let mid = $sub32(v[1], v[2]);
                [$add32($add32(v[0], v[1]), v[2]), $sub32(mid, v[3])]
            };
            let f: [[$v32; 2]; 4] =
                core::array::from_fn(|j| a([m[j], m[4 + j], m[8 + j], m[12 + j]]));
            let top = a([f[0][0], f[1][0], f[2][0], f[3][0]]);
            let bottom = a([f[0][1], f[1][1], f[2][1], f[3][1]]);
            [top[0], top[1], bottom[0], bottom[1]].map($shr2)
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use transforms;

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn window(h: usize, w: usize, in_c: usize, out_c: usize) -> Window {
        Window {
            in_h: h,
            in_w: w,
            in_c,
            out_h: h,
            out_w: w,
            out_c,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
        }
    }

    #[test]
    fn applies_to_same_size_3x3_convs_on_whole_chunks_only() {
        assert!(applies(&window(56, 56, 64, 64), 32));
        assert!(applies(&window(14, 14, 256, 256), 32));
        assert!(applies(&window(11, 13, 16, 8), 32));
        assert!(!applies(&window(7, 7, 512, 512), 32), "too few tiles");
        assert!(
            applies(&window(7, 7, 512, 512), GROUP),
            "enough for the path"
        );
        assert!(fits(&window(1, 200, 16, 8)));
        assert!(
            !applies(&window(1, 200, 16, 8), 1),
            "a row wastes half of each tile"
        );
        assert!(!fits(&window(16, 16, 24, 16)), "channels off the chunk");
        assert!(
            !fits(&window(16, 16, 16, 12)),
            "output channels off the vector"
        );
        assert!(!fits(&window(16, 16, 4096, 16)), "too deep for int32");
        let mut strided = window(16, 16, 16, 16);
        (strided.stride, strided.out_h, strided.out_w) = ([2, 2], 8, 8);
        assert!(!fits(&strided));
        let mut unpadded = window(16, 16, 16, 16);
        (unpadded.pads, unpadded.out_h, unpadded.out_w) = ([0; 4], 14, 14);
        assert!(!fits(&unpadded));
    }

    #[test]
    fn runs_count_their_tiles_and_threads_split_at_row_pairs() {
        let w = window(11, 11, 64, 64);
        assert_eq!(run_tiles(&w, 0, 121), 36);
        // Pixels 21 .. 23 lie on rows 1 and 2: two pairs of rows.
        assert_eq!(run_tiles(&w, 21, 2), 12);
        assert_eq!(run_tiles(&w, 21, 0), 0);
        let path = |min_tiles| Path {
            name: "test",
            min_tiles,
            pass: 16,
        };
        assert!(path(32).runs(&w, 0, 121, 1 << 20));
        assert!(
            !path(32).runs(&w, 0, 66, 1 << 20),
            "half the map: too few tiles"
        );
        assert!(path(GROUP).runs(&w, 0, 66, 1 << 20), "enough for the path");
        assert!(!path(32).runs(&w, 0, 121, 1000), "too little scratch");
        let splits: Vec<usize> = (0..=3).map(|t| split_at(&w, t, 3)).collect();
        assert_eq!(splits, [0, 44, 88, 121]);
        let starts: Vec<usize> = (0..=2)
            .map(|t| split_at(&window(14, 14, 64, 64), t, 2))
            .collect();
        assert_eq!(starts, [0, 84, 196]);
    }

    #[test]
    fn channel_shares_are_whole_passes_that_cover_the_channels_once() {
        let path = Path {
            name: "test",
            min_tiles: GROUP,
            pass: 8,
        };
        for (out_c, shares) in [(24, 2), (64, 4), (16, 3), (512, 4)] {
            let mut next = 0;
            for t in 0..shares {
                let s = path.share(out_c, t, shares);
                assert_eq!(s.start, next, "{out_c} in {shares}");
                assert!(path.whole_passes(&s, out_c), "{s:?}");
                next = s.end;
            }
            assert_eq!(next, out_c);
        }
        assert!(
            path.whole_passes(&(16..20), 20),
            "a last part pass ends at OC"
        );
        assert!(!path.whole_passes(&(4..16), 32));
        assert!(!path.whole_passes(&(8..12), 32));
        assert!(!path.whole_passes(&(16..40), 32));
    }

    #[test]
    fn the_int32_bound_holds_at_the_deepest_input() {
        let most = 4 * 9 * MAX_IN_C as i64 * 128 * 128;
        assert!(most < i32::MAX as i64);
    }

    #[test]
    fn chunks_fit_the_scratch_in_whole_groups() {
        for (in_c, pass) in [(16, 16), (64, 8), (512, 16), (512, 8)] {
            let least = weights_bytes(in_c, pass) + GROUP * tile_bytes(in_c);
            assert_eq!(tiles_in(in_c, pass, least - 1), 0);
            assert_eq!(tiles_in(in_c, pass, least), GROUP);
            let t = tiles_in(in_c, pass, 1 << 20);
            assert!(t.is_multiple_of(GROUP) && t <= MAX_TILES);
            assert!(weights_bytes(in_c, pass) + t * tile_bytes(in_c) <= 1 << 20);
        }
        // A path's scratch holds its pass's weights and the map's tiles, no more.
        let w = window(14, 14, 256, 256);
        for pass in [8, 16] {
            let path = Path {
                name: "test",
                min_tiles: GROUP,
                pass,
            };
            let len = path.scratch_len(&w);
            assert_eq!(tiles_in(256, pass, len), 52, "7 × 7 tiles, in whole groups");
            assert_eq!(tiles_in(256, pass, len - 1), 48);
        }
        // Slots never overlap: the last point of the last slot ends at the chunk's size.
        let in_c = 32;
        let end = input_at(in_c, 7, POINTS - 1, in_c / KC - 1) + KC;
        assert_eq!(end * 2, 8 * tile_bytes(in_c));
        assert_eq!(
            (weight_at(in_c, POINTS - 1, in_c / 4 - 1) + 32) * 2,
            weights_bytes(in_c, CHANNELS)
        );
        assert_eq!(
            (block4_weight_at(in_c, POINTS - 1, in_c / 8 - 1) + 32) * 2,
            block4_weights_bytes(in_c)
        );
        let end = tile_lanes_input_at(in_c, 1, POINTS - 1, in_c / 8 - 1) + GROUP * 8;
        assert_eq!(end * 2, 8 * tile_bytes(in_c));
        assert_eq!(2 * block4_weights_bytes(in_c), weights_bytes(in_c, 8));
    }
}
