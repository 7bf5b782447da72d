//! `avx2_winograd_4x8`: 3×3 stride-1 convs on AVX2 by exact integer Winograd F(2×2, 3×3)
//! ([`crate::conv::winograd`] says why it is exact), on weights packed as
//! [`Packing::Lanes16`](crate::conv::contract::Packing). Per 2×2 outputs and channel pair it
//! multiplies 16 times instead of 36; `vpmaddwd` on int16 operands is the exact product
//! AVX2 has, so fewer products is the way to fewer instructions.
//!
//! A run of pixels goes by chunks of tiles: the chunk's input transformed once (int16,
//! [`winograd::input_at`]); then per 16 output channels their weights transformed
//! ([`winograd::weight_at`]), and per 8 of them, point by point, every tile's sums 4 tiles
//! at a time (the `avx2_4x8c4` loop on int16 weights: a point's weights stay in L1 over
//! the chunk), then the output transform and the vector epilogue.

use core::arch::x86_64::*;

use crate::arch::x86_64::epilogue::avx2::{self as epi, Quant8, Residual8};
use crate::conv::contract::{round_up, Conv, KC};
use crate::conv::layout::lanes16;
use crate::conv::winograd::{self, CHANNELS, GROUP, POINTS};

winograd::transforms! {
    i16: __m256i, _mm256_add_epi16, _mm256_sub_epi16;
    i32: __m256i, _mm256_add_epi32, _mm256_sub_epi32, |v| _mm256_srai_epi32::<2>(v);
}

/// Output channels `channels` of the conv on the `pixels` pixels of the run at `output`,
/// Winograd in `scratch` ([`winograd::tiles_in`] ≥ 1 group).
///
/// # Safety
/// The CPU has AVX2; as [`WholeKernel`](crate::conv::kernel::WholeKernel), the weights
/// packed as `Lanes16`.
#[target_feature(enable = "avx2")]
pub unsafe fn avx2_winograd_4x8(
    c: &Conv<'_>,
    output: *mut i8,
    pixels: usize,
    channels: core::ops::Range<usize>,
    scratch: &mut [i8],
) {
    let s = c.window;
    let (w, ic, oc) = (s.in_w, s.in_c, s.out_c);
    let pass = lanes16::CHANNELS;
    let per_chunk = winograd::tiles_in(ic, pass, scratch.len());
    assert!(winograd::fits(s) && per_chunk > 0 && channels.start.is_multiple_of(pass));
    assert!(channels.end <= oc && c.input.len() >= s.in_h * w * ic);
    assert!(channels.end.is_multiple_of(pass) || channels.end == oc);
    if pixels == 0 || channels.is_empty() {
        return;
    }
    let (first, end) = (c.first, c.first + pixels);
    // The tile rows the run touches, every tile column of each.
    let columns = w.div_ceil(2);
    let row0 = first / w / 2;
    let tiles = ((end - 1) / w / 2 + 1 - row0) * columns;
    let (u, v) = scratch.split_at_mut(winograd::weights_bytes(ic, pass));
    let (u, v) = (u.as_mut_ptr() as *mut i16, v.as_mut_ptr() as *mut i16);
    let half_len = winograd::weights_bytes(ic, CHANNELS) / 2;
    let residual = Residual8::new(&c.residual);
    let out = output;
    let tile_at = |t: usize| (2 * (row0 + t / columns), 2 * (t % columns));
    // Each tile's 16 point sums of one half block: the output transform reads them once
    // every point is summed, so each point's weights are read once per half block.
    let mut sums = [[_mm256_setzero_si256(); winograd::MAX_TILES]; POINTS];
    for start in (0..tiles).step_by(per_chunk) {
        let count = per_chunk.min(tiles - start);
        for slot in 0..count {
            let (y, x) = tile_at(start + slot);
            transform_input(c, y, x, slot, v);
        }
        for b0 in channels.clone().step_by(pass) {
            let halves = ((channels.end - b0) / CHANNELS).min(2);
            transform_weights(c, b0, halves, u, half_len);
            for half in 0..halves {
                let o0 = b0 + half * CHANNELS;
                let u = u.add(half * half_len) as *const i16;
                for (xi, point) in sums.iter_mut().enumerate() {
                    for g in (0..count).step_by(GROUP) {
                        let group = point_sums(ic, g, xi, u, v);
                        point[g..g + GROUP].copy_from_slice(&group);
                    }
                }
                let quant = Quant8::load(c, o0, |_| 0);
                #[allow(clippy::needless_range_loop)] // a slot indexes every point's sums
                for slot in 0..count {
                    let (y, x) = tile_at(start + slot);
                    let outs = transform_output(&core::array::from_fn(|xi| sums[xi][slot]));
                    for (i, &sum) in outs.iter().enumerate() {
                        let (py, px) = (y + i / 2, x + i % 2);
                        let p = py * w + px;
                        if px < w && p >= first && p < end {
                            let at = (p - first) * oc + o0;
                            epi::store8(&quant, sum, &residual, at, out);
                        }
                    }
                }
            }
        }
    }
}

/// `Bᵀ d B` of the 4×4 input patch whose top-left is input pixel `(y − 1, x − 1)`,
/// padding read as the zero point, into `slot` of the chunk at `v`.
#[inline(always)]
unsafe fn transform_input(c: &Conv<'_>, y: usize, x: usize, slot: usize, v: *mut i16) {
    let s = c.window;
    let (h, w, ic) = (s.in_h, s.in_w, s.in_c);
    let padding = _mm256_set1_epi16(c.zero_point as i16);
    let inside = |i: usize, n: usize| (1..=n).contains(&i);
    // Input row and column `y − 1 + r` as `y + r`, inside when in 1 ..= h.
    let rows: [bool; 4] = core::array::from_fn(|r| inside(y + r, h));
    let cols: [bool; 4] = core::array::from_fn(|q| inside(x + q, w));
    let input = c.input.as_ptr();
    for cb in 0..ic / KC {
        // Loops, not `array::from_fn`: a closure that holds intrinsics compiles without
        // this function's target features, and its intrinsics become calls.
        let mut d = [[padding; 4]; 4];
        for (r, d_r) in d.iter_mut().enumerate() {
            for (q, d_rq) in d_r.iter_mut().enumerate() {
                if rows[r] && cols[q] {
                    let at = ((y + r - 1) * w + x + q - 1) * ic + cb * KC;
                    *d_rq = _mm256_cvtepi8_epi16(_mm_loadu_si128(input.add(at) as *const __m128i));
                }
            }
        }
        // Bᵀ on the columns of rows, then B on the rows.
        let e: [[__m256i; 4]; 4] = core::array::from_fn(|q| {
            let col = [d[0][q], d[1][q], d[2][q], d[3][q]];
            b_transpose(col)
        });
        let rows: [[__m256i; 4]; 4] =
            core::array::from_fn(|i| b_transpose([e[0][i], e[1][i], e[2][i], e[3][i]]));
        for (i, row) in rows.iter().enumerate() {
            for (j, &value) in row.iter().enumerate() {
                let at = winograd::input_at(ic, slot, 4 * i + j, cb);
                _mm256_storeu_si256(v.add(at) as *mut __m256i, value);
            }
        }
    }
}

/// `Ĝ g Ĝᵀ` of the first `halves` halves (8 channels each) of the 16-channel block
/// starting at channel `b0`, every input channel: half `h` at `u + h · half_len` `i16`s.
/// One pass over the block's weights, which lie side by side for both halves.
#[inline(always)]
unsafe fn transform_weights(c: &Conv<'_>, b0: usize, halves: usize, u: *mut i16, half_len: usize) {
    let ic = c.window.in_c;
    let k_pad = round_up(9 * ic, KC);
    let block = c
        .weights
        .as_ptr()
        .add(lanes16::block_at(k_pad, b0 / lanes16::CHANNELS));
    for cg in 0..ic / 4 {
        // Each quarter: 4 channels × 4 inputs, widened.
        for quarter in 0..2 * halves {
            let tap = |t: usize| {
                let kk = t * ic + 4 * cg;
                let at = (kk / lanes16::LANE_K) * lanes16::GROUP_BYTES + 16 * quarter;
                _mm256_cvtepi8_epi16(_mm_loadu_si128(block.add(at) as *const __m128i))
            };
            let g: [[__m256i; 3]; 3] =
                core::array::from_fn(|ky| core::array::from_fn(|kx| tap(3 * ky + kx)));
            let a: [[__m256i; 4]; 3] =
                core::array::from_fn(|kx| g_scaled([g[0][kx], g[1][kx], g[2][kx]]));
            let u = u.add((quarter / 2) * half_len + 16 * (quarter % 2));
            let rows: [[__m256i; 4]; 4] =
                core::array::from_fn(|r| g_scaled([a[0][r], a[1][r], a[2][r]]));
            for (r, row) in rows.iter().enumerate() {
                for (q, &value) in row.iter().enumerate() {
                    let at = winograd::weight_at(ic, 4 * r + q, cg);
                    _mm256_storeu_si256(u.add(at) as *mut __m256i, value);
                }
            }
        }
    }
}

/// Point `xi`'s sums (8 channels each, in order) of the tiles in slots `g .. g + 4`.
#[inline(always)]
unsafe fn point_sums(
    ic: usize,
    g: usize,
    xi: usize,
    u: *const i16,
    v: *const i16,
) -> [__m256i; GROUP] {
    let mut acc = [[_mm256_setzero_si256(); 2]; GROUP];
    for cb in 0..ic / KC {
        let x = v.add(winograd::input_at(ic, g, xi, cb));
        for q in 0..KC / 4 {
            let wp = u.add(winograd::weight_at(ic, xi, 4 * cb + q));
            let wv = [
                _mm256_loadu_si256(wp as *const __m256i),
                _mm256_loadu_si256(wp.add(16) as *const __m256i),
            ];
            for (t, acc_t) in acc.iter_mut().enumerate() {
                let four = core::ptr::read_unaligned(x.add(t * KC + 4 * q) as *const i64);
                let xv = _mm256_set1_epi64x(four);
                acc_t[0] = _mm256_add_epi32(acc_t[0], _mm256_madd_epi16(xv, wv[0]));
                acc_t[1] = _mm256_add_epi32(acc_t[1], _mm256_madd_epi16(xv, wv[1]));
            }
        }
    }
    acc.map(|a| epi::channel_sums(a[0], a[1]))
}
