//! The scalar reference kernels: the definition every SIMD path must match bit for bit.
//!
//! Tensors are NHWC int8 with a per-tensor zero point; conv weights are `[KH][KW][IC][OC]`
//! int8 (symmetric, per output channel), dense weights `[N][K]`. Each output channel
//! carries `(bias, multiplier, shift)`: the int32 bias already holds the input zero-point
//! correction (`b − z_in·Σw`), so padded taps read the input zero point and the
//! accumulator is `bias + Σ w·x`. Requantisation multiplies by a Q31 multiplier and a power
//! of two and rounds once ([`requantize`]).

use core::ops::Range;

/// Shapes of a 2-D window op (conv or pooling) on NHWC tensors with batch 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub out_c: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
}

/// Output quantisation of an op: zero point and clamp (a fused ReLU raises `min`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutQuant {
    pub zero_point: i32,
    pub min: i8,
    pub max: i8,
}

/// The residual operand of a fused conv (the block's Add, before its ReLU).
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    None,
    /// A separate tensor shaped like the output.
    Separate {
        data: &'a [i8],
        zero_point: i32,
        multiplier: i32,
        shift: i32,
    },
    /// The output buffer holds the residual on entry and is overwritten element by element.
    InPlace {
        zero_point: i32,
        multiplier: i32,
        shift: i32,
    },
}

impl<'a> Residual<'a> {
    /// The residual of the output elements `start .. start + len` (a run of pixels a
    /// thread computes): a separate tensor is sliced the same way.
    pub fn part(self, start: usize, len: usize) -> Residual<'a> {
        match self {
            Residual::Separate {
                data,
                zero_point,
                multiplier,
                shift,
            } => Residual::Separate {
                data: &data[start..][..len],
                zero_point,
                multiplier,
                shift,
            },
            other => other,
        }
    }
}

/// `x · multiplier · 2^(shift − 31)` rounded once, halves up; `shift` in `[-31, 30]`,
/// `multiplier ≥ 0` (the parser checks both). A positive shift first multiplies `x` by
/// `2^shift`, saturating in 32 bits.
///
/// One rounding, not gemmlowp's two (a rounded high multiply, then a rounded shift): the
/// second rounding of an already rounded value sends about one value in `2^right` one
/// step up, which is what made files of ONNX Runtime's QDQ models disagree with it (it
/// rounds `acc · scale` once). SIMD paths get the same result from a truncating high
/// multiply followed by a rounding shift: `⌊⌊v⌋ / 2^r + ½⌋ = ⌊v / 2^r + ½⌋`.
#[inline]
pub fn requantize(x: i32, multiplier: i32, shift: i32) -> i32 {
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    let x = x.saturating_mul(1 << left);
    let total = 31 + right;
    let product = x as i64 * multiplier as i64;
    // |product| < 2⁶², so adding 2^(total − 1) ≤ 2⁶¹ cannot overflow.
    ((product + (1i64 << (total - 1))) >> total).clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// `(multiplier, shift)` representing a positive real `m` for [`requantize`].
pub fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m <= 0.0 || !m.is_finite() {
        return (0, 0);
    }
    // m = q · 2^shift with q in [0.5, 1).
    let mut shift = 0i32;
    let mut q = m;
    while q >= 1.0 {
        q /= 2.0;
        shift += 1;
    }
    while q < 0.5 {
        q *= 2.0;
        shift -= 1;
    }
    // q > 0, so adding one half and truncating rounds to nearest (no f64::round in core).
    let mut fixed = (q * (1i64 << 31) as f64 + 0.5) as i64;
    if fixed == 1i64 << 31 {
        fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    (fixed as i32, shift.min(30))
}

/// Accumulation wraps on i32 overflow, as SIMD adds do, so every path agrees even on
/// hostile weights (a trained model stays far from the limits).
#[inline]
fn dot(x: &[i8], w: &[i8]) -> i32 {
    // Whole 16-byte chunks with the baseline SIMD of the target (SSE2 on x86-64, NEON on
    // AArch64); wrapping sums are associative, so the result is the plain sum.
    let n = x.len().min(w.len()) / 16 * 16;
    x[n..]
        .iter()
        .zip(&w[n..])
        .fold(simd_dot16(&x[..n], &w[..n]), |acc, (&a, &b)| {
            acc.wrapping_add(a as i32 * b as i32)
        })
}

/// `Σ x·w` over slices of equal length, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    #[cfg(feature = "std")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { dot16_avx2(x, w) };
    }
    dot16_sse2(x, w)
}

/// [`simd_dot16`] with AVX2: one sign extension and one multiply-add per 16 bytes.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn dot16_avx2(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    let mut acc = _mm256_setzero_si256();
    for i in (0..x.len()).step_by(16) {
        let a = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
        let b = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.as_ptr().add(i) as *const __m128i));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
    }
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    lanes.iter().fold(0i32, |t, &v| t.wrapping_add(v))
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn dot16_sse2(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::x86_64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    // SAFETY: SSE2 is part of x86-64; loads stay inside the slices (16 bytes at i < len).
    unsafe {
        let mut acc = _mm_setzero_si128();
        for i in (0..x.len()).step_by(16) {
            let a = _mm_loadu_si128(x.as_ptr().add(i) as *const __m128i);
            let b = _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i);
            // Sign-extend to 16 bits: interleave with self, shift right arithmetically.
            let (alo, ahi) = (
                _mm_srai_epi16::<8>(_mm_unpacklo_epi8(a, a)),
                _mm_srai_epi16::<8>(_mm_unpackhi_epi8(a, a)),
            );
            let (blo, bhi) = (
                _mm_srai_epi16::<8>(_mm_unpacklo_epi8(b, b)),
                _mm_srai_epi16::<8>(_mm_unpackhi_epi8(b, b)),
            );
            acc = _mm_add_epi32(acc, _mm_madd_epi16(alo, blo));
            acc = _mm_add_epi32(acc, _mm_madd_epi16(ahi, bhi));
        }
        let mut lanes = [0i32; 4];
        _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, acc);
        lanes.iter().fold(0i32, |t, &v| t.wrapping_add(v))
    }
}

/// `Σ x·w` over slices of equal length, a multiple of 16.
#[cfg(target_arch = "aarch64")]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    use core::arch::aarch64::*;
    debug_assert!(x.len() == w.len() && x.len().is_multiple_of(16));
    // SAFETY: NEON is part of AArch64; loads stay inside the slices.
    unsafe {
        let mut acc = vdupq_n_s32(0);
        for i in (0..x.len()).step_by(16) {
            let a = vld1q_s8(x.as_ptr().add(i));
            let b = vld1q_s8(w.as_ptr().add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
            acc = vpadalq_s16(acc, vmull_high_s8(a, b));
        }
        vaddvq_s32(acc)
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline]
fn simd_dot16(x: &[i8], w: &[i8]) -> i32 {
    x.iter()
        .zip(w)
        .fold(0i32, |acc, (&a, &b)| acc.wrapping_add(a as i32 * b as i32))
}

#[inline]
pub(crate) fn finish(acc: i32, multiplier: i32, shift: i32, residual: i32, out: OutQuant) -> i8 {
    let v = requantize(acc, multiplier, shift)
        .saturating_add(residual)
        .saturating_add(out.zero_point);
    v.clamp(out.min as i32, out.max as i32) as i8
}

/// The residual's contribution to output element `idx`, at the output scale.
#[inline]
pub(crate) fn residual_term(residual: &Residual<'_>, idx: usize, output: &[i8]) -> i32 {
    match *residual {
        Residual::None => 0,
        Residual::Separate {
            data,
            zero_point,
            multiplier,
            shift,
        } => requantize(data[idx] as i32 - zero_point, multiplier, shift),
        Residual::InPlace {
            zero_point,
            multiplier,
            shift,
        } => requantize(output[idx] as i32 - zero_point, multiplier, shift),
    }
}

/// Output channels accumulated together: a block of accumulators the compiler keeps in
/// vector registers, small enough for any stack.
const OC_BLOCK: usize = 64;

/// Convolution with bias, requantisation, optional fused residual add, and clamp.
///
/// Weights are `[KH][KW][IC][OC]`: for one input value the weights of consecutive output
/// channels are adjacent, so a block of accumulators updates with one vector
/// multiply-add. `params(c)` gives `(bias, multiplier, shift)` of output channel `c`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    s: &Window,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    residual: Residual<'_>,
    output: &mut [i8],
) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe {
            conv2d_avx2(
                s,
                input,
                input_zero_point,
                weights,
                &params,
                out,
                residual,
                output,
            )
        };
        return;
    }
    conv2d_body(
        s,
        input,
        input_zero_point,
        weights,
        &params,
        out,
        residual,
        output,
    );
}

/// The reference body compiled with AVX2 enabled: same integer operations, so the same
/// results, about three times faster on hosts (the calibration and accuracy runs).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn conv2d_avx2(
    s: &Window,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    params: &impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    residual: Residual<'_>,
    output: &mut [i8],
) {
    conv2d_body(
        s,
        input,
        input_zero_point,
        weights,
        params,
        out,
        residual,
        output,
    );
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn conv2d_body(
    s: &Window,
    input: &[i8],
    input_zero_point: i32,
    weights: &[i8],
    params: &impl Fn(usize) -> (i32, i32, i32),
    out: OutQuant,
    residual: Residual<'_>,
    output: &mut [i8],
) {
    let [kh, kw] = s.kernel;
    let (c, oc) = (s.in_c, s.out_c);
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let base = (oy * s.out_w + ox) * oc;
            for o0 in (0..oc).step_by(OC_BLOCK) {
                let n = OC_BLOCK.min(oc - o0);
                let mut acc = [0i32; OC_BLOCK];
                for (j, a) in acc[..n].iter_mut().enumerate() {
                    *a = params(o0 + j).0;
                }
                for ky in 0..kh {
                    let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
                    for kx in 0..kw {
                        let ix = (ox * s.stride[1] + kx) as isize - s.pads[1] as isize;
                        let inside =
                            iy >= 0 && ix >= 0 && iy < s.in_h as isize && ix < s.in_w as isize;
                        let taps = ((ky * kw + kx) * c) * oc;
                        for ci in 0..c {
                            // Padding reads the input zero point.
                            let x = if inside {
                                input[(iy as usize * s.in_w + ix as usize) * c + ci] as i32
                            } else {
                                input_zero_point
                            };
                            let w = &weights[taps + ci * oc + o0..][..n];
                            for (a, &wv) in acc[..n].iter_mut().zip(w) {
                                *a = a.wrapping_add(x * wv as i32);
                            }
                        }
                    }
                }
                for (j, &a) in acc[..n].iter().enumerate() {
                    let idx = base + o0 + j;
                    let (_, m, sh) = params(o0 + j);
                    let res = residual_term(&residual, idx, output);
                    output[idx] = finish(a, m, sh, res, out);
                }
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
    let k = input.len();
    for (n, o) in output.iter_mut().enumerate() {
        let (bias, m, sh) = params(n);
        *o = finish(
            bias.wrapping_add(dot(input, &weights[n * k..][..k])),
            m,
            sh,
            0,
            out,
        );
    }
}

/// Dense layer `[K] → [N]` whose int32 output is requantised to one common scale
/// (the logits, dequantised by the caller). `store(n, value)` receives each output, so the
/// caller decides the byte layout (arena bytes need not be 4-aligned).
pub fn dense_i32(
    input: &[i8],
    weights: &[i8],
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    mut store: impl FnMut(usize, i32),
) {
    let k = input.len();
    for n in 0..outputs {
        let (bias, m, sh) = params(n);
        store(
            n,
            requantize(bias.wrapping_add(dot(input, &weights[n * k..][..k])), m, sh),
        );
    }
}

/// Max pooling; padded cells are ignored. Output quantisation equals the input's.
pub fn max_pool(s: &Window, input: &[i8], output: &mut [i8]) {
    max_pool_rows(s, input, 0..s.out_h, output);
}

/// [`max_pool`] on output rows `rows` only, `output` holding just those rows (so threads
/// can each take some).
pub fn max_pool_rows(s: &Window, input: &[i8], rows: Range<usize>, output: &mut [i8]) {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { max_pool_avx2(s, input, rows, output) };
        return;
    }
    max_pool_body(s, input, rows, output);
}

/// [`max_pool_rows`] compiled with AVX2: signed byte maxima in one instruction (the
/// x86-64 baseline has none), same results.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2")]
unsafe fn max_pool_avx2(s: &Window, input: &[i8], rows: Range<usize>, output: &mut [i8]) {
    max_pool_body(s, input, rows, output);
}

#[inline(always)]
fn max_pool_body(s: &Window, input: &[i8], out_rows: Range<usize>, output: &mut [i8]) {
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

/// `a / b` rounded to nearest, ties away from zero (`b > 0`).
#[inline]
pub fn rounding_div(a: i32, b: i32) -> i32 {
    let (a, b) = (a as i64, b as i64);
    (if a >= 0 {
        (a + b / 2) / b
    } else {
        (a - b / 2) / b
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn simd_dot_equals_the_plain_sum_on_every_length() {
        let x: Vec<i8> = (0..300)
            .map(|i| ((i * 97 + 13) % 256) as u8 as i8)
            .collect();
        let w: Vec<i8> = (0..300)
            .map(|i| ((i * 61 + 200) % 256) as u8 as i8)
            .collect();
        let extremes = [-128i8; 40];
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 64, 150, 300] {
            let plain = x[..n]
                .iter()
                .zip(&w[..n])
                .fold(0i32, |t, (&a, &b)| t.wrapping_add(a as i32 * b as i32));
            assert_eq!(dot(&x[..n], &w[..n]), plain, "n = {n}");
        }
        assert_eq!(dot(&extremes, &extremes), 40 * 128 * 128);
    }

    #[test]
    fn requantize_rounds_halves_up() {
        // 0.5 as Q31 with shift 0: 1.5 → 2, −1.5 → −1, 2.5 → 3.
        let (m, s) = quantize_multiplier(0.5);
        assert_eq!((m, s), (1 << 30, 0));
        assert_eq!(requantize(3, m, s), 2);
        assert_eq!(requantize(-3, m, s), -1);
        assert_eq!(requantize(5, m, s), 3);
        // 0.25 needs a right shift; its halves go up as well (not away from zero).
        let (m, s) = quantize_multiplier(0.25);
        assert_eq!(s, -1);
        assert_eq!(requantize(6, m, s), 2);
        assert_eq!(requantize(-6, m, s), -1);
        assert_eq!(requantize(-2, m, s), 0);
        assert_eq!(requantize(2, m, s), 1);
        // Multipliers above one shift left.
        let (m, s) = quantize_multiplier(3.0);
        assert_eq!(requantize(7, m, s), 21);
    }

    #[test]
    fn requantize_rounds_once() {
        // From the first conv of ONNX Runtime's QDQ ResNet-20: 18875 · m · 2⁻³⁹ = 59.4985.
        // Rounding the high multiply first (15231.6 → 15232 = 59.5 · 2⁸) and then the shift
        // gave 60; ONNX Runtime and the real product say 59.
        assert_eq!(requantize(18_875, 1_732_961_865, -8), 59);
    }

    #[test]
    fn requantize_is_the_real_product_rounded() {
        for &real in &[0.0123, 0.37, 0.999_999, 1.7, 0.000_31, 0.003_152_3] {
            let (m, s) = quantize_multiplier(real);
            for x in [-100_000, -18_875, -777, -1, 0, 1, 555, 18_875, 98_765] {
                let want = x as f64 * real;
                let got = requantize(x, m, s) as f64;
                // Half a step, and the Q31 multiplier's own error (relative 2⁻³¹).
                assert!(
                    (got - want).abs() <= 0.5 + 1e-4,
                    "{x} × {real}: {got} vs {want}"
                );
            }
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
        conv2d(
            &s,
            &[z as i8, z as i8],
            z,
            &weights,
            |_| (bias, m, sh),
            oq,
            Residual::None,
            &mut out,
        );
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
        let params = |c: usize| (c as i32 * 10 - 5, m, sh);
        let mut separate = vec![0i8; 18];
        conv2d(
            &s,
            &input,
            1,
            &weights,
            params,
            oq,
            Residual::Separate {
                data: &residual,
                zero_point: 2,
                multiplier: rm,
                shift: rs,
            },
            &mut separate,
        );
        let mut in_place = residual.clone();
        conv2d(
            &s,
            &input,
            1,
            &weights,
            params,
            oq,
            Residual::InPlace {
                zero_point: 2,
                multiplier: rm,
                shift: rs,
            },
            &mut in_place,
        );
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
