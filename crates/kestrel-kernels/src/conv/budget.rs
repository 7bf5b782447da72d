//! How much the conv paths hold at once, and every tuning constant with it: the panel of
//! packed input in the scratch, the bands the direct path reads in place, and the stack
//! buffers of input packing. The file writer reserves [`Packing::scratch_len`] bytes of
//! scratch per conv, or less for a target with little memory (down to
//! [`Packing::min_scratch_len`], one panel of [`PANEL_STEP`] pixels), and the driver sizes
//! its panels to the scratch it is given: the file's plan decides, the results do not
//! depend on it.

use crate::conv::contract::{round_up, Packing, KC};
use crate::window::Window;

/// A panel holds about this many bytes of packed input (L2-sized on every target).
const PANEL_BYTES: usize = 256 * 1024;
/// Panels hold a multiple of every tile height (4 and 8 pixels), so tiles never cross
/// the panel's end.
pub const PANEL_STEP: usize = 24;
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

/// Scratch bytes a conv with reduction depth `k` uses at most: one panel (both layouts).
pub const fn scratch_len(k: usize) -> usize {
    panel_slots(k) * round_up(k, KC)
}

/// [`scratch_len`] on a map of `pixels` output pixels: its panel holds no more pixels
/// than the map (in whole [`PANEL_STEP`]s), so a small map is lent no more than it packs.
pub const fn map_scratch_len(k: usize, pixels: usize) -> usize {
    // `most` is whole steps, so the map's steps stay below it (and cannot overflow).
    let most = panel_slots(k);
    let slots = if pixels < most {
        round_up(pixels, PANEL_STEP)
    } else {
        most
    };
    slots * round_up(k, KC)
}

/// The least scratch a conv with reduction depth `k` runs in: a panel of [`PANEL_STEP`]
/// pixels.
pub const fn min_scratch_len(k: usize) -> usize {
    PANEL_STEP * round_up(k, KC)
}

/// Pixels per panel for reduction depth `k` in `scratch` bytes (at least
/// [`min_scratch_len`]): [`panel_slots`], or fewer whole steps where the scratch is smaller.
pub const fn panel_slots_in(k: usize, scratch: usize) -> usize {
    let fit = scratch / round_up(k, KC) / PANEL_STEP * PANEL_STEP;
    let most = panel_slots(k);
    if fit < most {
        fit
    } else {
        most
    }
}

/// Pixels per panel of int16 values ([`crate::conv::input::InputFormat::int16`]) in
/// `scratch` bytes: as many as fit at two bytes a value, in whole steps of half a
/// [`PANEL_STEP`] (so a minimal scratch still holds one panel), at most half of
/// [`panel_slots`].
pub const fn int16_panel_slots_in(k: usize, scratch: usize) -> usize {
    let step = PANEL_STEP / 2;
    let fit = scratch / (2 * round_up(k, KC)) / step * step;
    let most = panel_slots(k) / 2;
    if fit < most {
        fit
    } else {
        most
    }
}

impl Packing {
    /// Scratch bytes the conv paths of this layout use at most for reduction depth `k`.
    pub const fn scratch_len(self, k: usize) -> usize {
        match self {
            Packing::Blocks4 | Packing::Lanes16 | Packing::Pairs4 => scratch_len(k),
        }
    }

    /// The least scratch they run in (smaller panels, same results).
    pub const fn min_scratch_len(self, k: usize) -> usize {
        match self {
            Packing::Blocks4 | Packing::Lanes16 | Packing::Pairs4 => min_scratch_len(k),
        }
    }

    /// The scratch to plan for depth `k` on a map of `pixels` output pixels under a
    /// target's `limit` (bytes): as much as the paths use there ([`map_scratch_len`]), but
    /// no more than the limit unless a minimal panel needs it.
    pub const fn scratch_len_within(self, k: usize, pixels: usize, limit: Option<usize>) -> usize {
        let most = match self {
            Packing::Blocks4 | Packing::Lanes16 | Packing::Pairs4 => map_scratch_len(k, pixels),
        };
        match limit {
            Some(limit) if limit < most => {
                let least = self.min_scratch_len(k);
                if limit > least {
                    limit
                } else {
                    least
                }
            }
            _ => most,
        }
    }
}

// ---- The direct path: the input read in place, from a band with its padding written out ----

/// Kernels with at most this many taps read in place (3×3, 5×5; a 7×7 stem on RGB packs).
pub const DIRECT_TAPS: usize = 25;
/// Deeper inputs pack: their packing is shared by many channel blocks, so costs less
/// than the tiles' own per-tap work of reading in place.
pub const DIRECT_MAX_C: usize = 64;
/// Pixels whose offsets are worked out together: a block of channels reads its weights
/// once per this many.
pub const DIRECT_PIXELS: usize = 128;

/// Output rows per band when the padded input's rows must fit in `budget` bytes, or 0
/// where the direct path does not apply (channels off the chunk, large kernels, rows too
/// wide for even one output row).
pub fn band_rows(s: &Window, budget: usize) -> usize {
    let (kh, taps) = (s.kernel[0], s.kernel[0] * s.kernel[1]);
    if !s.in_c.is_multiple_of(KC) || taps > DIRECT_TAPS || s.in_c == 0 || s.in_c > DIRECT_MAX_C {
        return 0;
    }
    let fit = budget / s.padded_row();
    if fit < kh {
        return 0;
    }
    (fit - kh) / s.stride[0] + 1
}

// ---- Input packing's stack buffers ----

/// Deepest im2col row built on the stack (a 7×7 stem on RGB is 147).
pub const ROW_MAX: usize = 1024;
/// Bytes of the padded kernel rows built on the stack for shallow inputs (a 7×7 stem on
/// 224 RGB columns needs 7 · 690).
pub const PADDED_ROWS: usize = 8192;
/// Chunks of an im2col row planned at once for shallow inputs (a 7×7 stem on RGB has 10).
pub const PADDED_CHUNKS: usize = 16;
/// Bytes of the padded kernel rows the AArch64 table gather builds on the stack.
pub const GATHER_ROWS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_small_map_is_lent_no_more_than_it_packs() {
        // ResNet-18's 2×2 stage at 64 px: one step of pixels, not the deep minimum of 72.
        assert_eq!(map_scratch_len(4608, 4), PANEL_STEP * 4608);
        assert_eq!(map_scratch_len(576, 25), 2 * PANEL_STEP * 576);
        assert_eq!(map_scratch_len(576, 56 * 56), scratch_len(576));
        assert_eq!(map_scratch_len(147, usize::MAX), scratch_len(147));
        for (k, pixels) in [(27, 1), (147, 1024), (4608, 49), (1152, 64)] {
            let len = map_scratch_len(k, pixels);
            assert!(len >= min_scratch_len(k) && len <= scratch_len(k));
            assert!(
                panel_slots_in(k, len) >= pixels.min(panel_slots(k)),
                "{k} {pixels}"
            );
        }
        let lanes = Packing::Lanes16;
        assert_eq!(lanes.scratch_len_within(4608, 4, None), PANEL_STEP * 4608);
        assert_eq!(
            lanes.scratch_len_within(576, 3136, Some(16 * 1024)),
            16 * 1024
        );
        assert_eq!(
            lanes.scratch_len_within(576, 3136, Some(1)),
            min_scratch_len(576)
        );
    }
}
