//! A conv streamed into the max pooling after it, a band of pooled rows at a time (a
//! ResNet stem: conv1, then the 3×3 max pool). Only the conv rows one band of pooled rows
//! reads are ever held, so the conv's whole output never needs memory of its own: on
//! ResNet-18 at 224 that output (802,816 bytes) is the largest tensor of the network.
//!
//! Bands follow each other down a run of pooled rows; rows two bands share (the pool's
//! window overlaps when its kernel exceeds its stride) are moved to the band's front, not
//! recomputed, so within a run each conv row is computed once and the result is the
//! unstreamed ops' bits. Threads each stream their own run of rows in a band of their own
//! (only the rows where two runs meet are computed twice).

use core::ops::Range;

use crate::window::Window;

/// The two windows of a streamed stem: `conv` gives the map `pool` reads
/// (`conv.out_* == pool.in_*`), and `band_rows` pooled rows are made per band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamedPool {
    pub conv: Window,
    pub pool: Window,
    pub band_rows: usize,
}

/// One band: the pooled rows it gives and the conv rows they read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Band {
    pub pooled: Range<usize>,
    pub conv: Range<usize>,
}

impl StreamedPool {
    /// The bands of pooled rows `rows`, top to bottom (none when `band_rows` is zero).
    pub fn bands(&self, rows: Range<usize>) -> impl Iterator<Item = Band> + '_ {
        let p = &self.pool;
        let step = self.band_rows.max(1);
        let end = if self.band_rows == 0 {
            rows.start
        } else {
            rows.end.min(p.out_h)
        };
        (rows.start..end).step_by(step).map(move |r0| {
            let r1 = (r0 + step).min(end);
            let lo = (r0 * p.stride[0]).saturating_sub(p.pads[0]);
            let hi = ((r1 - 1) * p.stride[0] + p.kernel[0]).saturating_sub(p.pads[0]);
            Band {
                pooled: r0..r1,
                conv: lo.min(p.in_h)..hi.min(p.in_h),
            }
        })
    }

    /// The most conv rows a band holds, wherever its run of pooled rows starts.
    pub fn band_capacity_rows(&self) -> usize {
        match self.band_rows {
            0 => 0,
            n => ((n - 1) * self.pool.stride[0] + self.pool.kernel[0]).min(self.pool.in_h),
        }
    }

    /// Bytes of the band buffer [`StreamedPool::run`] takes (int8 conv rows).
    pub fn band_bytes(&self) -> usize {
        self.checked_band_bytes().unwrap_or(usize::MAX)
    }

    /// [`StreamedPool::band_bytes`], `None` where it overflows (a parser's check: the conv
    /// map is never stored, so no tensor size bounds it).
    pub fn checked_band_bytes(&self) -> Option<usize> {
        self.band_capacity_rows()
            .checked_mul(self.conv.out_w)?
            .checked_mul(self.conv.out_c)
    }

    fn row_bytes(&self) -> usize {
        self.conv.out_w * self.conv.out_c
    }

    /// The pool's window over one band's conv rows: the same taps as over the whole map,
    /// with the band's first row as row 0 and `pooled.len()` output rows.
    pub fn band_window(&self, band: &Band) -> Window {
        let p = self.pool;
        Window {
            in_h: band.conv.len(),
            out_h: band.pooled.len(),
            // Row 0 of the band is conv row `band.conv.start`; pooled row `r0` starts at
            // `r0·stride − pad`, so the pad over the band is what lies above its first row.
            pads: [
                p.pads[0] + band.conv.start - band.pooled.start * p.stride[0],
                p.pads[1],
                p.pads[2],
                p.pads[3],
            ],
            ..p
        }
    }

    /// Runs the stem's pooled rows `rows` into `output` (those rows' bytes) through `band`
    /// (at least [`StreamedPool::band_bytes`]): `conv(rows, out)` writes conv rows `rows`
    /// into `out` (their bytes), `pool(window, band, out)` pools a band's rows with the
    /// window of [`StreamedPool::band_window`] into that band's pooled rows.
    pub fn run(
        &self,
        rows: Range<usize>,
        band: &mut [i8],
        output: &mut [i8],
        mut conv: impl FnMut(Range<usize>, &mut [i8]),
        mut pool: impl FnMut(&Window, &[i8], &mut [i8]),
    ) {
        let row = self.row_bytes();
        let pooled_row = self.pool.out_w * self.pool.out_c;
        let first = rows.start;
        let mut held = 0..0;
        for b in self.bands(rows) {
            // Rows the last band computed that this one reads move to the front.
            let kept = b.conv.start.max(held.start)..held.end.min(b.conv.end);
            if !kept.is_empty() {
                let from = (kept.start - held.start) * row;
                band.copy_within(from..from + kept.len() * row, 0);
            }
            let fresh = kept.end.max(b.conv.start)..b.conv.end;
            let at = (fresh.start - b.conv.start) * row;
            conv(fresh.clone(), &mut band[at..at + fresh.len() * row]);
            let win = self.band_window(&b);
            let out =
                &mut output[(b.pooled.start - first) * pooled_row..][..b.pooled.len() * pooled_row];
            pool(&win, &band[..b.conv.len() * row], out);
            held = b.conv;
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::check::values;
    use crate::conv::contract::Conv;
    use crate::conv::params::to_bytes as param_bytes;
    use crate::quant::{OutQuant, Residual};
    use crate::scalar;
    use std::vec;
    use std::vec::Vec;

    fn window(h: usize, w: usize, c: usize, oc: usize, k: usize, s: usize, p: usize) -> Window {
        let out = |n: usize| (n + 2 * p - k) / s + 1;
        Window {
            in_h: h,
            in_w: w,
            in_c: c,
            out_h: out(h),
            out_w: out(w),
            out_c: oc,
            kernel: [k, k],
            stride: [s, s],
            pads: [p, p, p, p],
        }
    }

    /// Odd maps, pools that overlap (3×3 s2), that do not (2×2 s2), that overlap by two
    /// rows (3×3 s1), with and without padding, bands of one to more rows than the map.
    #[test]
    fn streamed_stems_give_the_unstreamed_bits() {
        let cases = [
            // (h, w, c, oc, conv k, s, p, pool k, s, p)
            (23, 19, 3, 8, 7, 2, 3, 3, 2, 1),
            (17, 13, 3, 5, 3, 1, 1, 2, 2, 0),
            (15, 11, 4, 6, 3, 2, 1, 3, 1, 1),
            (9, 9, 3, 16, 5, 1, 2, 3, 2, 0),
        ];
        let mut checked = 0;
        for (i, &(h, w, c, oc, ck, cs, cp, pk, ps, pp)) in cases.iter().enumerate() {
            let conv_win = window(h, w, c, oc, ck, cs, cp);
            let pool = window(conv_win.out_h, conv_win.out_w, oc, oc, pk, ps, pp);
            let input = values(h * w * c, i as u32 + 1);
            let weights = values(ck * ck * c * oc, i as u32 + 50);
            let params = param_bytes(
                &(0..oc as i32)
                    .map(|o| (o * 37 - 90, 1_500_000_000, -7))
                    .collect::<Vec<_>>(),
            );
            let conv = |first: usize| Conv {
                window: &conv_win,
                input: &input,
                zero_point: -3,
                weights: &weights,
                params: &params,
                out: OutQuant {
                    zero_point: -20,
                    min: -20,
                    max: 127,
                },
                residual: Residual::None,
                first,
            };
            let mut full = vec![0i8; conv_win.out_h * conv_win.out_w * oc];
            scalar::conv2d(&conv(0), &mut full);
            let mut want = vec![0i8; pool.out_h * pool.out_w * oc];
            scalar::max_pool_rows(&pool, &full, 0..pool.out_h, &mut want);
            assert!(
                want.iter().any(|&v| v > -20 && v < 127),
                "case {i} is trivial"
            );
            for band_rows in [1, 2, 3, pool.out_h + 1] {
                let s = StreamedPool {
                    conv: conv_win,
                    pool,
                    band_rows,
                };
                assert!(s.band_capacity_rows() <= conv_win.out_h);
                let pooled_row = pool.out_w * oc;
                // The whole map in one run, then in three runs (as three threads would).
                for runs in [1, 3] {
                    let mut got = vec![0i8; want.len()];
                    let mut computed = vec![0usize; conv_win.out_h];
                    let start = |t: usize| pool.out_h * t / runs;
                    for t in 0..runs {
                        let rows = start(t)..start(t + 1);
                        let mut band = vec![0i8; s.band_bytes()];
                        let out = &mut got[rows.start * pooled_row..rows.end * pooled_row];
                        s.run(
                            rows.clone(),
                            &mut band,
                            out,
                            |rows, out| {
                                rows.clone().for_each(|r| computed[r] += 1);
                                scalar::conv2d(&conv(rows.start * conv_win.out_w), out);
                            },
                            |win, band, out| scalar::max_pool_rows(win, band, 0..win.out_h, out),
                        );
                    }
                    let what = std::format!("case {i}, bands of {band_rows} rows, {runs} runs");
                    assert_eq!(got, want, "{what}");
                    // In one run each conv row the pool reads is computed once, and none
                    // it does not read.
                    let read = |r: usize| s.bands(0..pool.out_h).any(|b| b.conv.contains(&r));
                    for (r, &n) in computed.iter().enumerate() {
                        match runs {
                            1 => assert_eq!(n, read(r) as usize, "{what}, conv row {r}"),
                            _ => assert!(n <= 2 && (n > 0) == read(r), "{what}, conv row {r}"),
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 32);
    }

    #[test]
    fn a_resnet_stem_holds_five_conv_rows_for_two_pooled_rows() {
        // conv1 7×7 s2 p3 on 224 → 112, max pool 3×3 s2 p1 → 56.
        let conv = window(224, 224, 3, 64, 7, 2, 3);
        let pool = window(112, 112, 64, 64, 3, 2, 1);
        let s = StreamedPool {
            conv,
            pool,
            band_rows: 2,
        };
        assert_eq!(s.band_capacity_rows(), 5);
        assert_eq!(s.band_bytes(), 5 * 112 * 64);
        assert_eq!(s.bands(0..56).count(), 28);
        assert!(s.bands(0..56).all(|b| b.conv.len() <= 5));
        assert_eq!(s.bands(13..20).count(), 4);
        let none = StreamedPool { band_rows: 0, ..s };
        assert_eq!(none.bands(0..56).count(), 0);
        assert_eq!(none.band_bytes(), 0);
    }
}
