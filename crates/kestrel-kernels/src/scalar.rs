//! The scalar reference kernels: the definition every other path matches bit for bit,
//! one function per op, plain loops without SIMD. Each takes what the op's optimised path
//! takes ([`crate::conv::Packing::conv2d`] adds the CPU path and its scratch).
//!
//! Tensors are NHWC int8 with a per-tensor zero point; conv weights are `[KH][KW][IC][OC]`
//! int8 (symmetric, per output channel), dense weights `[N][K]`. Each output channel
//! carries `(bias, multiplier, shift)` ([`crate::quant`]).

use core::ops::Range;

use crate::conv::contract::Conv;
use crate::conv::params;
use crate::quant::{finish, requantize, residual_term, rounding_div, OutQuant};
use crate::window::Window;

/// `Σ x·w`, wrapping on i32 overflow as SIMD adds do, so every path agrees even on
/// hostile weights (a trained model stays far from the limits).
#[inline]
pub fn dot(x: &[i8], w: &[i8]) -> i32 {
    x.iter()
        .zip(w)
        .fold(0i32, |acc, (&a, &b)| acc.wrapping_add(a as i32 * b as i32))
}

/// Output channels accumulated together: a block of accumulators the compiler keeps in
/// vector registers, small enough for any stack.
const OC_BLOCK: usize = 64;

/// Convolution with bias, requantisation, optional fused residual add, and clamp, on the
/// pixels of `output` (from `c.first`).
///
/// Weights are `[KH][KW][IC][OC]`: for one input value the weights of consecutive output
/// channels are adjacent, so a block of accumulators updates with one vector
/// multiply-add. Inlined into its callers, so [`crate::conv::unpacked`] can compile it
/// for a wider ISA.
#[inline(always)]
pub fn conv2d(c: &Conv<'_>, output: &mut [i8]) {
    let s = c.window;
    let [kh, kw] = s.kernel;
    let (ic, oc) = (s.in_c, s.out_c);
    let input_zero_point = c.zero_point as i32;
    for p in 0..c.pixels(output) {
        let (oy, ox) = ((c.first + p) / s.out_w, (c.first + p) % s.out_w);
        let base = p * oc;
        for o0 in (0..oc).step_by(OC_BLOCK) {
            let n = OC_BLOCK.min(oc - o0);
            let mut acc = [0i32; OC_BLOCK];
            for (j, a) in acc[..n].iter_mut().enumerate() {
                *a = params::record(c.params, o0 + j).0;
            }
            for ky in 0..kh {
                let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
                for kx in 0..kw {
                    let ix = (ox * s.stride[1] + kx) as isize - s.pads[1] as isize;
                    let inside = iy >= 0 && ix >= 0 && iy < s.in_h as isize && ix < s.in_w as isize;
                    let taps = ((ky * kw + kx) * ic) * oc;
                    for ci in 0..ic {
                        // Padding reads the input zero point.
                        let x = if inside {
                            c.input[(iy as usize * s.in_w + ix as usize) * ic + ci] as i32
                        } else {
                            input_zero_point
                        };
                        let w = &c.weights[taps + ci * oc + o0..][..n];
                        for (a, &wv) in acc[..n].iter_mut().zip(w) {
                            *a = a.wrapping_add(x * wv as i32);
                        }
                    }
                }
            }
            for (j, &a) in acc[..n].iter().enumerate() {
                let idx = base + o0 + j;
                let (_, m, sh) = params::record(c.params, o0 + j);
                let res = residual_term(&c.residual, idx, output);
                output[idx] = finish(a, m, sh, res, c.out);
            }
        }
    }
}

/// Dense layer `[K] → [N]` with int8 output.
pub fn dense(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    output: &mut [i8],
) {
    dense_on(dot, input, weights, params, out, output)
}

/// Dense layer `[K] → [N]` whose int32 output is requantised to one common scale
/// (the logits, dequantised by the caller). `store(n, value)` receives each output, so the
/// caller decides the byte layout (arena bytes need not be 4-aligned).
pub fn dense_i32(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    store: impl FnMut(usize, i32),
) {
    dense_i32_on(dot, input, weights, params, outputs, store)
}

/// [`dense`] with the dot product `dot` (the one thing [`crate::dense`] changes).
#[inline(always)]
pub(crate) fn dense_on(
    dot: impl Fn(&[i8], &[i8]) -> i32,
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    output: &mut [i8],
) {
    let k = input.len();
    for (n, o) in output.iter_mut().enumerate() {
        let (bias, m, sh) = params(n);
        let acc = bias.wrapping_add(dot(input, &weights[n * k..][..k]));
        *o = finish(acc, m, sh, 0, out);
    }
}

/// [`dense_i32`] with the dot product `dot`.
#[inline(always)]
pub(crate) fn dense_i32_on(
    dot: impl Fn(&[i8], &[i8]) -> i32,
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    mut store: impl FnMut(usize, i32),
) {
    let k = input.len();
    for n in 0..outputs {
        let (bias, m, sh) = params(n);
        let acc = bias.wrapping_add(dot(input, &weights[n * k..][..k]));
        store(n, requantize(acc, m, sh));
    }
}

/// Max pooling; padded cells are ignored. Output quantisation equals the input's.
pub fn max_pool(s: &Window, input: &[i8], output: &mut [i8]) {
    max_pool_rows(s, input, 0..s.out_h, output);
}

/// [`max_pool`] on output rows `rows` only, `output` holding just those rows (so threads
/// can each take some). Inlined into its callers, so [`crate::pooling`] can compile it for a
/// wider ISA.
#[inline(always)]
pub fn max_pool_rows(s: &Window, input: &[i8], out_rows: Range<usize>, output: &mut [i8]) {
    // Whole channel rows at a time (NHWC), sixteen channels per step so the compiler
    // uses vector maxima. Padding is ignored, as a max over the valid cells: the valid
    // taps are worked out once per output pixel.
    let c = s.in_c;
    let valid = |o: usize, stride: usize, pad: usize, k: usize, size: usize| {
        let start = (o * stride) as isize - pad as isize;
        let lo = (-start).clamp(0, k as isize) as usize;
        let hi = (size as isize - start).clamp(lo as isize, k as isize) as usize;
        ((start + lo as isize).max(0) as usize, hi - lo)
    };
    for oy in out_rows.clone() {
        let (iy, rows) = valid(oy, s.stride[0], s.pads[0], s.kernel[0], s.in_h);
        for ox in 0..s.out_w {
            let (ix, cols) = valid(ox, s.stride[1], s.pads[1], s.kernel[1], s.in_w);
            let out = &mut output[((oy - out_rows.start) * s.out_w + ox) * c..][..c];
            let tap = |y: usize, x: usize| (y * s.in_w + x) * c;
            // Blocks of 64 channels kept in registers over the window, then the rest.
            let (blocks, rest) = out.as_chunks_mut::<64>();
            for (b, block) in blocks.iter_mut().enumerate() {
                let mut acc = [i8::MIN; 64];
                for y in iy..iy + rows {
                    for x in ix..ix + cols {
                        let row: &[i8; 64] = input[tap(y, x) + 64 * b..][..64]
                            .try_into()
                            .expect("64 channels");
                        for i in 0..64 {
                            acc[i] = acc[i].max(row[i]);
                        }
                    }
                }
                *block = acc;
            }
            let done = c - rest.len();
            rest.fill(i8::MIN);
            for y in iy..iy + rows {
                for x in ix..ix + cols {
                    max_into(rest, &input[tap(y, x) + done..][..c - done]);
                }
            }
        }
    }
}

/// `out[i] = max(out[i], row[i])`, sixteen lanes at a time.
#[inline(always)]
fn max_into(out: &mut [i8], row: &[i8]) {
    let (outs, out_rest) = out.as_chunks_mut::<16>();
    let (rows, row_rest) = row.as_chunks::<16>();
    for (o, r) in outs.iter_mut().zip(rows) {
        for i in 0..16 {
            o[i] = o[i].max(r[i]);
        }
    }
    for (o, &r) in out_rest.iter_mut().zip(row_rest) {
        *o = (*o).max(r);
    }
}

/// Average pooling; the divisor counts padded cells when `count_include_pad`.
/// Output quantisation equals the input's.
pub fn avg_pool(
    s: &Window,
    input: &[i8],
    zero_point: i32,
    count_include_pad: bool,
    output: &mut [i8],
) {
    let full = (s.kernel[0] * s.kernel[1]) as i32;
    window_reduce(s, input, output, |vals, window_cells| {
        let mut sum = 0i32;
        let mut n = 0i32;
        for v in vals {
            sum = sum.wrapping_add(v - zero_point);
            n += 1;
        }
        let divisor = if count_include_pad {
            window_cells.min(full)
        } else {
            n.max(1)
        };
        zero_point
            .saturating_add(rounding_div(sum, divisor))
            .clamp(-128, 127) as i8
    });
}

/// Calls `reduce(valid values, cells of the window inside input + padding)` per output.
fn window_reduce(
    s: &Window,
    input: &[i8],
    output: &mut [i8],
    reduce: impl Fn(&mut dyn Iterator<Item = i32>, i32) -> i8,
) {
    let c = s.in_c;
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let y0 = (oy * s.stride[0]) as isize - s.pads[0] as isize;
            let x0 = (ox * s.stride[1]) as isize - s.pads[1] as isize;
            let (h, w) = (s.in_h as isize, s.in_w as isize);
            // Cells inside the padded frame (ONNX's count_include_pad divisor).
            let rows = (y0 + s.kernel[0] as isize).min(h + s.pads[2] as isize) - y0;
            let cols = (x0 + s.kernel[1] as isize).min(w + s.pads[3] as isize) - x0;
            let cells = (rows * cols) as i32;
            for ch in 0..c {
                let mut vals = (0..s.kernel[0] as isize).flat_map(|ky| {
                    (0..s.kernel[1] as isize).filter_map(move |kx| {
                        let (y, x) = (y0 + ky, x0 + kx);
                        (y >= 0 && x >= 0 && y < h && x < w)
                            .then(|| input[(y as usize * s.in_w + x as usize) * c + ch] as i32)
                    })
                });
                output[(oy * s.out_w + ox) * c + ch] = reduce(&mut vals, cells);
            }
        }
    }
}

/// Each channel's sum over all pixels of `[pixels, C]`, starting from `start`, handed to
/// `finish(channel, sum)`. Pixel rows outer, a block of channel sums inner: contiguous,
/// vectorisable reads.
fn channel_sums(input: &[i8], channels: usize, start: i32, mut finish: impl FnMut(usize, i32)) {
    const BLOCK: usize = 64;
    let pixels = input.len() / channels.max(1);
    for c0 in (0..channels).step_by(BLOCK) {
        let n = BLOCK.min(channels - c0);
        let mut sums = [start; BLOCK];
        for p in 0..pixels {
            let row = &input[p * channels + c0..][..n];
            for (s, &x) in sums.iter_mut().zip(row) {
                *s = s.wrapping_add(x as i32);
            }
        }
        for (j, &sum) in sums[..n].iter().enumerate() {
            finish(c0 + j, sum);
        }
    }
}

/// Global average pooling `[H, W, C] → [C]`, same quantisation as the input.
pub fn global_avg_pool(input: &[i8], channels: usize, zero_point: i32, output: &mut [i8]) {
    let pixels = (input.len() / channels.max(1)).max(1) as i32;
    channel_sums(input, channels, -pixels * zero_point, |c, sum| {
        output[c] = zero_point
            .saturating_add(rounding_div(sum, pixels))
            .clamp(-128, 127) as i8;
    });
}

/// Global average pooling onto an output scale of its own (`params`: bias `−pixels·z_in`,
/// multiplier and shift of `s_in / (pixels · s_out)`), as a quantised model that states the
/// pooled tensor's scale (QDQ) computes it: the mean of a map has a narrower range than the
/// map, and keeping the input's scale would round it coarsely.
pub fn global_avg_pool_requantized(
    input: &[i8],
    channels: usize,
    (bias, multiplier, shift): (i32, i32, i32),
    out: OutQuant,
    output: &mut [i8],
) {
    channel_sums(input, channels, bias, |c, sum| {
        output[c] = finish(sum, multiplier, shift, 0, out);
    });
}

/// `x[start_h::step_h, start_w::step_w, :]`.
pub fn subsample(s: &Window, start: [usize; 2], input: &[i8], output: &mut [i8]) {
    let c = s.in_c;
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let (iy, ix) = (start[0] + oy * s.stride[0], start[1] + ox * s.stride[1]);
            output[(oy * s.out_w + ox) * c..][..c]
                .copy_from_slice(&input[(iy * s.in_w + ix) * c..][..c]);
        }
    }
}

/// Per-channel multiply-add over NHWC pixels, `y = requant(x · w[c] + bias[c])`: a
/// BatchNorm that no convolution before it can absorb (the pre-activation of ResNet v2).
/// `params(c)` gives `(bias, multiplier, shift)` with `−z_in · w[c]` folded into the bias.
pub fn channel_affine(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    output: &mut [i8],
) {
    let c = weights.len();
    for (src, dst) in input.chunks_exact(c).zip(output.chunks_exact_mut(c)) {
        for (ch, (&x, o)) in src.iter().zip(dst.iter_mut()).enumerate() {
            let (bias, m, sh) = params(ch);
            *o = finish(
                bias.wrapping_add(x as i32 * weights[ch] as i32),
                m,
                sh,
                0,
                out,
            );
        }
    }
}

/// One operand of [`add`]: its int8 data, zero point, and the Q31 multiplier and shift of
/// its scale over the output's.
#[derive(Clone, Copy, Debug)]
pub struct AddOperand<'a> {
    pub data: &'a [i8],
    pub zero_point: i32,
    pub multiplier: i32,
    pub shift: i32,
}

/// Elementwise sum of two int8 tensors onto the output scale, rounded **once** (ties away
/// from zero): a residual Add that a quantised model (QDQ) rounds on its own, after the
/// conv's output was rounded to that conv's stated scale. Each term is exact in i128
/// before the one rounding, so the result is the real sum's nearest integer as far as the
/// Q31 multipliers carry it.
pub fn add(a: AddOperand, b: AddOperand, out: OutQuant, output: &mut [i8]) {
    // Both terms over the common denominator 2^(31 − min shift).
    let low = a.shift.min(b.shift);
    let exponent = (31 - low) as u32;
    let half = 1i128 << (exponent - 1);
    for ((o, &x), &y) in output.iter_mut().zip(a.data).zip(b.data) {
        let ta = ((x as i32 - a.zero_point) as i128 * a.multiplier as i128) << (a.shift - low);
        let tb = ((y as i32 - b.zero_point) as i128 * b.multiplier as i128) << (b.shift - low);
        let sum = ta + tb;
        let rounded = if sum >= 0 {
            (sum + half) >> exponent
        } else {
            -((-sum + half) >> exponent)
        };
        let v = (rounded + out.zero_point as i128).clamp(out.min as i128, out.max as i128);
        *o = v as i8;
    }
}

/// Adds `before` and `after` channels holding the zero point (real 0) around each pixel.
pub fn pad_channels(
    input: &[i8],
    in_c: usize,
    before: usize,
    after: usize,
    zero_point: i32,
    output: &mut [i8],
) {
    let out_c = in_c + before + after;
    let z = zero_point as i8;
    for (src, dst) in input.chunks_exact(in_c).zip(output.chunks_exact_mut(out_c)) {
        dst[..before].fill(z);
        dst[before..before + in_c].copy_from_slice(src);
        dst[before + in_c..].fill(z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::params::to_bytes;
    use crate::quant::{quantize_multiplier, Residual};
    use std::vec;
    use std::vec::Vec;

    /// `channel_affine` against the real-number formula it stands for, on 7 channels × 5
    /// pixels, negative and zero weights among them.
    #[test]
    fn channel_affine_applies_each_channels_scale_and_offset() {
        let c = 7;
        let input: Vec<i8> = (0..5 * c)
            .map(|i| ((i * 37 + 11) % 256) as u8 as i8)
            .collect();
        let weights: Vec<i8> = vec![127, -127, 64, 0, 1, -3, 100];
        let (z_in, z_out) = (-5, 3);
        let bias: Vec<i32> = (0..c as i32).map(|ch| 40 * ch - 100).collect();
        let real = 0.0371; // s_in · s_w / s_out
        let (m, sh) = quantize_multiplier(real);
        // −z_in·w folded into the bias, as the lowering does.
        let params = |ch: usize| (bias[ch] - z_in * weights[ch] as i32, m, sh);
        let out = OutQuant {
            zero_point: z_out,
            min: -100,
            max: 127,
        };
        let mut got = vec![0i8; input.len()];
        channel_affine(&input, &weights, params, out, &mut got);
        for (i, (&x, &y)) in input.iter().zip(&got).enumerate() {
            let ch = i % c;
            let exact = ((x as i32 - z_in) * weights[ch] as i32 + bias[ch]) as f64 * real;
            let want = (exact.round() as i32 + z_out).clamp(-100, 127);
            assert!((y as i32 - want).abs() <= 1, "element {i}: {y} vs {want}");
        }
        // ReLU-style clamp at the output zero point holds.
        let relu = OutQuant {
            zero_point: z_out,
            min: z_out as i8,
            max: 127,
        };
        channel_affine(&input, &weights, params, relu, &mut got);
        assert!(got.iter().all(|&y| y as i32 >= z_out));
    }

    /// `add` against the real sum of the two dequantised operands, rounded once, over
    /// every pair of int8 values at scales above and below the output's.
    #[test]
    fn add_rounds_the_real_sum_once() {
        let (za, zb, zo) = (-7, 12, -128);
        for (ra, rb) in [(0.73, 1.9), (0.021, 0.4), (3.5, 0.0049)] {
            let (ma, sa) = quantize_multiplier(ra);
            let (mb, sb) = quantize_multiplier(rb);
            let a: Vec<i8> = (0..256 * 256).map(|i| (i % 256) as u8 as i8).collect();
            let b: Vec<i8> = (0..256 * 256).map(|i| (i / 256) as u8 as i8).collect();
            let mut out = vec![0i8; a.len()];
            let operand = |data, zero_point, multiplier, shift| AddOperand {
                data,
                zero_point,
                multiplier,
                shift,
            };
            let clamp = OutQuant {
                zero_point: zo,
                min: -128,
                max: 127,
            };
            add(
                operand(&a, za, ma, sa),
                operand(&b, zb, mb, sb),
                clamp,
                &mut out,
            );
            for ((&x, &y), &o) in a.iter().zip(&b).zip(&out) {
                let real = (x as i32 - za) as f64 * ra + (y as i32 - zb) as f64 * rb;
                let want =
                    ((real.abs() + 0.5).floor().copysign(real) as i64 + zo as i64).clamp(-128, 127);
                // The Q31 multipliers are exact to ~1e-9: only a sum within that of a tie
                // may round the other way.
                let near_tie = ((real.abs().fract()) - 0.5).abs() < 1e-6;
                let d = (o as i64 - want).abs();
                assert!(
                    d == 0 || near_tie && d == 1,
                    "{x} {y}: {o} vs {want} ({real})"
                );
            }
        }
    }

    /// With the same scale in and out and a power-of-two pixel count, the requantised
    /// pooling is exactly the plain one; with a finer output scale it keeps more digits.
    #[test]
    fn requantised_global_pooling_matches_the_plain_mean() {
        let c = 70; // a 64-channel block plus a rest
        let pixels = 4;
        let input: Vec<i8> = (0..pixels * c)
            .map(|i| ((i * 53 + 7) % 256) as u8 as i8)
            .collect();
        let z = 9;
        let mut plain = vec![0i8; c];
        global_avg_pool(&input, c, z, &mut plain);
        let (m, sh) = quantize_multiplier(1.0 / pixels as f64);
        let out = OutQuant {
            zero_point: z,
            min: -128,
            max: 127,
        };
        let mut requantised = vec![0i8; c];
        let bias = -(pixels as i32) * z;
        global_avg_pool_requantized(&input, c, (bias, m, sh), out, &mut requantised);
        assert_eq!(plain, requantised);
        // Output scale a quarter of the input's: four times the value, around zero point -20.
        let (m, sh) = quantize_multiplier(4.0 / pixels as f64);
        let fine = OutQuant {
            zero_point: -20,
            min: -128,
            max: 127,
        };
        global_avg_pool_requantized(&input, c, (bias, m, sh), fine, &mut requantised);
        for ch in 0..c {
            let sum: i32 = (0..pixels).map(|p| input[p * c + ch] as i32 - z).sum();
            let want = (sum - 20).clamp(-128, 127);
            assert_eq!(requantised[ch] as i32, want, "channel {ch}");
        }
    }

    #[test]
    fn padded_taps_read_the_input_zero_point() {
        // 1×1 input of value z with a 3×3 kernel and padding 1: every tap sees z.
        let s = Window {
            in_h: 1,
            in_w: 1,
            in_c: 2,
            out_h: 1,
            out_w: 1,
            out_c: 1,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let z = -5;
        let weights: Vec<i8> = (0..18).map(|i| (i as i8) - 9).collect();
        let wsum: i32 = weights.iter().map(|&w| w as i32).sum();
        // With the zero-point correction folded into the bias the accumulator is 0.
        let bias = -z * wsum;
        let (m, sh) = quantize_multiplier(1.0 / 64.0);
        let mut out = [0i8; 1];
        let oq = OutQuant {
            zero_point: 3,
            min: -128,
            max: 127,
        };
        let params = to_bytes(&[(bias, m, sh)]);
        let conv = Conv {
            window: &s,
            input: &[z as i8, z as i8],
            zero_point: z as i8,
            weights: &weights,
            params: &params,
            out: oq,
            residual: Residual::None,
            first: 0,
        };
        conv2d(&conv, &mut out);
        assert_eq!(out[0], 3);
    }

    #[test]
    fn in_place_residual_equals_separate_residual() {
        let s = Window {
            in_h: 3,
            in_w: 3,
            in_c: 3,
            out_h: 3,
            out_w: 3,
            out_c: 2,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
        };
        let input: Vec<i8> = (0..27).map(|i| (i * 7 % 23) as i8 - 11).collect();
        let weights: Vec<i8> = (0..54).map(|i| (i * 5 % 19) as i8 - 9).collect();
        let residual: Vec<i8> = (0..18).map(|i| (i * 11 % 29) as i8 - 14).collect();
        let (m, sh) = quantize_multiplier(0.01);
        let (rm, rs) = quantize_multiplier(0.8);
        let oq = OutQuant {
            zero_point: -128,
            min: -128,
            max: 127,
        };
        let params = to_bytes(&(0..2).map(|c| (c * 10 - 5, m, sh)).collect::<Vec<_>>());
        let conv = |residual| Conv {
            window: &s,
            input: &input,
            zero_point: 1,
            weights: &weights,
            params: &params,
            out: oq,
            residual,
            first: 0,
        };
        let mut separate = vec![0i8; 18];
        let apart = Residual::Separate {
            data: &residual,
            zero_point: 2,
            multiplier: rm,
            shift: rs,
        };
        conv2d(&conv(apart), &mut separate);
        let mut in_place = residual.clone();
        let inside = Residual::InPlace {
            zero_point: 2,
            multiplier: rm,
            shift: rs,
        };
        conv2d(&conv(inside), &mut in_place);
        // Pixel by pixel from `first`, as threads split it: the same bytes.
        let mut parts = vec![0i8; 18];
        for (p, part) in parts.chunks_mut(2).enumerate() {
            let one = Conv {
                first: p,
                ..conv(apart.part(2 * p, 2))
            };
            conv2d(&one, part);
        }
        assert_eq!(parts, separate);
        assert_eq!(separate, in_place);
        assert!(
            separate.iter().any(|&v| v != -128),
            "the test must exercise non-clamped values"
        );
    }

    #[test]
    fn max_pool_blocks_of_64_channels_and_the_rest_match_a_plain_max() {
        // 80 channels: one 64-channel block and 16 more; 3×3, stride 2, padding 1.
        let (h, w, c) = (5, 6, 80);
        let input: Vec<i8> = (0..h * w * c)
            .map(|i| ((i * 131 + 7) % 256) as u8 as i8)
            .collect();
        let s = Window {
            in_h: h,
            in_w: w,
            in_c: c,
            out_h: 3,
            out_w: 3,
            out_c: c,
            kernel: [3, 3],
            stride: [2, 2],
            pads: [1; 4],
        };
        let mut got = vec![0i8; 3 * 3 * c];
        max_pool(&s, &input, &mut got);
        for oy in 0..3usize {
            for ox in 0..3usize {
                for ch in 0..c {
                    let mut best = i8::MIN;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                            best = best.max(input[(iy * w + ix) * c + ch]);
                        }
                    }
                    assert_eq!(got[(oy * 3 + ox) * c + ch], best, "({oy}, {ox}, {ch})");
                }
            }
        }
        // Row by row, as threads split it: the same bytes.
        let mut rows = vec![0i8; 3 * 3 * c];
        for (oy, part) in rows.chunks_mut(3 * c).enumerate() {
            max_pool_rows(&s, &input, oy..oy + 1, part);
        }
        assert_eq!(rows, got);
    }

    #[test]
    fn max_pool_takes_the_max_of_valid_cells_and_global_pool_averages() {
        // 5×4×3 input, 3×3 window, stride 2, padding 1 on top/left only.
        let (h, w, c) = (5usize, 4usize, 3usize);
        let input: Vec<i8> = (0..h * w * c)
            .map(|i| ((i * 53) % 256) as u8 as i8)
            .collect();
        let s = Window {
            in_h: h,
            in_w: w,
            in_c: c,
            out_h: 3,
            out_w: 2,
            out_c: c,
            kernel: [3, 3],
            stride: [2, 2],
            pads: [1, 1, 0, 0],
        };
        let mut out = vec![0i8; 3 * 2 * c];
        max_pool(&s, &input, &mut out);
        for oy in 0..3usize {
            for ox in 0..2usize {
                for ch in 0..c {
                    let mut best = i8::MIN;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                            best = best.max(input[(iy * w + ix) * c + ch]);
                        }
                    }
                    assert_eq!(out[(oy * 2 + ox) * c + ch], best, "({oy},{ox},{ch})");
                }
            }
        }
        // 70 channels (more than one block of sums), 2 pixels: (a + b) / 2 rounded.
        let input: Vec<i8> = (0..140i32).map(|i| (i - 70) as i8).collect();
        let mut out = vec![0i8; 70];
        global_avg_pool(&input, 70, 0, &mut out);
        for ch in 0..70 {
            let sum = input[ch] as i32 + input[70 + ch] as i32;
            assert_eq!(out[ch] as i32, rounding_div(sum, 2), "channel {ch}");
        }
    }

    #[test]
    fn avg_pool_divisor_and_rounding() {
        let s = Window {
            in_h: 2,
            in_w: 2,
            in_c: 1,
            out_h: 2,
            out_w: 2,
            out_c: 1,
            kernel: [2, 2],
            stride: [1, 1],
            pads: [0, 0, 1, 1],
        };
        let input = [10i8, 20, 30, 41];
        let mut out = [0i8; 4];
        avg_pool(&s, &input, 0, false, &mut out);
        assert_eq!(out, [25, 31, 36, 41]); // (10+20+30+41)/4 = 25.25; (20+41)/2 = 30.5 → 31
        avg_pool(&s, &input, 0, true, &mut out);
        assert_eq!(out, [25, 15, 18, 10]); // padded cells count: 61/4 = 15.25, 71/4 = 17.75, 41/4 = 10.25
    }
}
