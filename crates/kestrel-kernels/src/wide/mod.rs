//! Reference kernels for layers kept wider than int8: int16 activations (symmetric, zero
//! point 0) with int8 weights, TFLite's "16x8". Any op whose input, output or residual is
//! int16 runs here, on every CPU, so results are the same on every path by construction.
//!
//! Accumulators are `i64` (an int16 × int8 dot product of a 3×3×512 window can pass
//! `i32`), and requantisation is [`crate::quant::requantize`]'s arithmetic carried out in 64 bits:
//! on int8 tensors whose sums fit `i32` these kernels give exactly what [`crate::scalar`] gives.
//! Tensors are byte slices (little-endian int16), so the arena needs no alignment. Their
//! convs run on SIMD tiles where the CPU has one (`arch::x86_64::avx2_16x8_4x16`,
//! `arch::aarch64::neon_16x8_4x16`): `i32` lanes over runs short enough not to wrap, then
//! `i64`, so the same exact sums.
//!
//! A wide layer may also keep its weights as IEEE half floats ([`Weights::F16`]): sums in
//! f32, in one fixed order (this file's loops; no FMA, no reassociation), so f16 layers
//! too give the same bits on every CPU. f16 is storage here: FP16 arithmetic (Cortex-A76
//! `FEAT_FP16`) would round differently and is not used. Their convs run on SIMD tiles
//! where the CPU has one (`arch::x86_64::avx2_f16_4x16`, `arch::aarch64::neon_f16_4x16`:
//! one lane per output channel, the same order and roundings, so the same bits); the tiles
//! read [`contract`].

pub mod contract;

use crate::isa::Isa;
use crate::window::Window;
pub use contract::{Act, ActMut, OutRange, Residual, Weights};
use contract::{F16Tile, IntTile, TileConv, TILE_CHANNELS, TILE_PIXELS};
use core::ops::Range;

/// One channel's sums over a window: int8 weights in `i64`, f16 weights in `f32`.
trait Sums {
    type Acc: Copy + Default;
    /// A weight, decoded once for every pixel of a tile.
    type W: Copy + Default;
    /// An input value, decoded once for every channel.
    type X: Copy;
    fn start(&self, channel: usize) -> Self::Acc;
    fn weight(&self, index: usize) -> Self::W;
    fn input(&self, x: i32) -> Self::X;
    fn mac(acc: &mut Self::Acc, x: Self::X, weight: Self::W);
    /// The sum at the output scale, rounded.
    fn scaled(&self, acc: Self::Acc, channel: usize) -> i64;
}

struct Int8Sums<'a, P> {
    weights: &'a [i8],
    params: P,
}

impl<P: Fn(usize) -> (i32, i32, i32)> Sums for Int8Sums<'_, P> {
    type Acc = i64;
    type W = i64;
    type X = i64;
    #[inline]
    fn start(&self, channel: usize) -> i64 {
        (self.params)(channel).0 as i64
    }
    #[inline]
    fn weight(&self, index: usize) -> i64 {
        self.weights[index] as i64
    }
    #[inline]
    fn input(&self, x: i32) -> i64 {
        x as i64
    }
    #[inline]
    fn mac(acc: &mut i64, x: i64, weight: i64) {
        *acc += x * weight;
    }
    #[inline]
    fn scaled(&self, acc: i64, channel: usize) -> i64 {
        let (_, m, sh) = (self.params)(channel);
        requantize(acc, m, sh)
    }
}

struct F16Sums<'a, P> {
    weights: &'a [u8],
    params: P,
    zero_point: i32,
}

impl<P: Fn(usize) -> (i32, i32, i32)> Sums for F16Sums<'_, P> {
    type Acc = f32;
    type W = f32;
    type X = f32;
    #[inline]
    fn start(&self, channel: usize) -> f32 {
        f32::from_bits((self.params)(channel).0 as u32)
    }
    #[inline]
    fn weight(&self, index: usize) -> f32 {
        let bits = u16::from_le_bytes([self.weights[2 * index], self.weights[2 * index + 1]]);
        half::f16::from_bits(bits).to_f32()
    }
    #[inline]
    fn input(&self, x: i32) -> f32 {
        (x - self.zero_point) as f32
    }
    #[inline]
    fn mac(acc: &mut f32, x: f32, weight: f32) {
        *acc += x * weight;
    }
    #[inline]
    fn scaled(&self, acc: f32, channel: usize) -> i64 {
        round_f32(acc * self.scale(channel))
    }
}

impl<P: Fn(usize) -> (i32, i32, i32)> F16Sums<'_, P> {
    /// `s_in / s_out` of a channel.
    #[inline]
    fn scale(&self, channel: usize) -> f32 {
        f32::from_bits((self.params)(channel).1 as u32)
    }
}

/// An f16 layer's scaled sum to an integer: half away from zero without libm; `as`
/// saturates (and takes NaN to 0).
#[inline]
fn round_f32(v: f32) -> i64 {
    (if v >= 0.0 { v + 0.5 } else { v - 0.5 }) as i64
}

/// [`crate::quant::requantize`] on a 64-bit accumulator: the same saturating left shift and
/// single rounding (halves up), in 128 bits.
#[inline]
pub fn requantize(x: i64, multiplier: i32, shift: i32) -> i64 {
    let left = shift.max(0) as u32;
    let right = (-shift).max(0) as u32;
    let x = x.saturating_mul(1i64 << left);
    let total = 31 + right;
    ((x as i128 * multiplier as i128 + (1i128 << (total - 1))) >> total) as i64
}

#[inline]
fn residual_term(residual: &Residual<'_>, idx: usize, output: &ActMut<'_>) -> i64 {
    match *residual {
        Residual::None => 0,
        Residual::Separate {
            data,
            zero_point,
            multiplier,
            shift,
        } => requantize((data.get(idx) - zero_point) as i64, multiplier, shift),
        Residual::InPlace {
            zero_point,
            multiplier,
            shift,
        } => requantize((output.get(idx) - zero_point) as i64, multiplier, shift),
    }
}

/// Convolution over NHWC, weights `[KH][KW][IC][OC]`, with bias, requantisation, optional
/// fused residual and clamp: [`crate::scalar::conv2d`] for int8 or int16 tensors. On f16
/// weights, the blocks of 16 channels run on `kernels`' f16 tile if it has one (the same
/// bits as this file's loops, which take the rest).
///
/// Computes output rows `rows` only: `output` (and a separate residual) hold just those
/// rows, so threads can each take a run of them.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernels: Isa,
    s: &Window,
    rows: Range<usize>,
    input: Act<'_>,
    input_zero_point: i32,
    weights: Weights<'_>,
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutRange,
    residual: Residual<'_>,
    output: &mut ActMut<'_>,
) {
    let conv = TileConv {
        window: s,
        input,
        zero_point: input_zero_point,
        weights: match weights {
            Weights::Int8(w) => as_bytes(w),
            Weights::F16(w) => w,
        },
    };
    match weights {
        Weights::Int8(weights) => {
            let sums = Int8Sums { weights, params };
            // The tiles stage inputs (and padding) as int16.
            let tiled = match int_tile(kernels) {
                Some((_, tile)) if i16::try_from(input_zero_point).is_ok() => tile_blocks(
                    &IntBlocks { tile, sums: &sums },
                    &conv,
                    rows.clone(),
                    out,
                    residual,
                    output,
                ),
                _ => 0,
            };
            conv_body(
                s,
                rows,
                input,
                input_zero_point,
                &sums,
                out,
                residual,
                output,
                tiled,
            )
        }
        Weights::F16(weights) => {
            let sums = F16Sums {
                weights,
                params,
                zero_point: input_zero_point,
            };
            let tiled = match f16_tile(kernels) {
                Some((_, tile)) => tile_blocks(
                    &F16Blocks { tile, sums: &sums },
                    &conv,
                    rows.clone(),
                    out,
                    residual,
                    output,
                ),
                None => 0,
            };
            conv_body(
                s,
                rows,
                input,
                input_zero_point,
                &sums,
                out,
                residual,
                output,
                tiled,
            );
        }
    }
}

fn as_bytes(v: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid.
    unsafe { core::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
}

/// The int8-weight (16x8) sum tile of `kernels` and its name, if it has one.
pub fn int_tile(kernels: Isa) -> Option<(&'static str, IntTile)> {
    #[cfg(target_arch = "x86_64")]
    if kernels.includes(Isa::Avx2) {
        return Some((
            "avx2_16x8_4x16",
            crate::arch::x86_64::avx2_16x8_4x16::avx2_16x8_4x16,
        ));
    }
    #[cfg(target_arch = "aarch64")]
    if kernels.includes(Isa::Neon) {
        return Some((
            "neon_16x8_4x16",
            crate::arch::aarch64::neon_16x8_4x16::neon_16x8_4x16,
        ));
    }
    let _ = kernels;
    None
}

/// The f16 sum tile of `kernels` and its name, if it has one.
pub fn f16_tile(kernels: Isa) -> Option<(&'static str, F16Tile)> {
    #[cfg(target_arch = "x86_64")]
    if kernels.includes(Isa::Avx2) {
        return Some((
            "avx2_f16_4x16",
            crate::arch::x86_64::avx2_f16_4x16::avx2_f16_4x16,
        ));
    }
    #[cfg(target_arch = "aarch64")]
    if kernels.includes(Isa::Neon) {
        return Some((
            "neon_f16_4x16",
            crate::arch::aarch64::neon_f16_4x16::neon_f16_4x16,
        ));
    }
    let _ = kernels;
    None
}

/// A kind of wide tile, as [`tile_blocks`] drives it: the sums of one tile, and how a
/// pixel's block of them becomes outputs.
trait Blocks {
    type Sum: Copy + Default;
    /// Bytes of one weight.
    const WEIGHT_BYTES: usize;
    /// A block's channel records, decoded once per conv.
    type Records;
    fn records(&self, o0: usize) -> Self::Records;
    /// # Safety
    /// As the tile's ([`F16Tile`], [`IntTile`]).
    unsafe fn sums(
        &self,
        conv: &TileConv<'_>,
        at: [usize; 3],
        records: &Self::Records,
        sums: &mut [[Self::Sum; TILE_CHANNELS]; TILE_PIXELS],
    );
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        sums: &[Self::Sum; TILE_CHANNELS],
        records: &Self::Records,
        out: OutRange,
        residual: &Residual<'_>,
        base: usize,
        output: &mut ActMut<'_>,
    );
}

struct F16Blocks<'a, 'b, P> {
    tile: F16Tile,
    sums: &'b F16Sums<'a, P>,
}

impl<P: Fn(usize) -> (i32, i32, i32)> Blocks for F16Blocks<'_, '_, P> {
    type Sum = f32;
    const WEIGHT_BYTES: usize = 2;
    /// Biases and scales.
    type Records = ([f32; TILE_CHANNELS], [f32; TILE_CHANNELS]);
    fn records(&self, o0: usize) -> Self::Records {
        (
            core::array::from_fn(|j| self.sums.start(o0 + j)),
            core::array::from_fn(|j| self.sums.scale(o0 + j)),
        )
    }
    unsafe fn sums(
        &self,
        conv: &TileConv<'_>,
        [oy, ox0, o0]: [usize; 3],
        records: &Self::Records,
        sums: &mut [[f32; TILE_CHANNELS]; TILE_PIXELS],
    ) {
        let pixels = TILE_PIXELS.min(conv.window.out_w - ox0);
        (self.tile)(conv, oy, ox0, pixels, o0, &records.0, sums)
    }
    fn finish(
        &self,
        sums: &[f32; TILE_CHANNELS],
        records: &Self::Records,
        out: OutRange,
        residual: &Residual<'_>,
        base: usize,
        output: &mut ActMut<'_>,
    ) {
        finish_block(sums, &records.1, out, residual, base, output)
    }
}

struct IntBlocks<'a, 'b, P> {
    tile: IntTile,
    sums: &'b Int8Sums<'a, P>,
}

impl<P: Fn(usize) -> (i32, i32, i32)> Blocks for IntBlocks<'_, '_, P> {
    type Sum = i64;
    const WEIGHT_BYTES: usize = 1;
    type Records = [IntRecord; TILE_CHANNELS];
    fn records(&self, o0: usize) -> Self::Records {
        core::array::from_fn(|j| IntRecord::new((self.sums.params)(o0 + j)))
    }
    unsafe fn sums(
        &self,
        conv: &TileConv<'_>,
        [oy, ox0, o0]: [usize; 3],
        _: &Self::Records,
        sums: &mut [[i64; TILE_CHANNELS]; TILE_PIXELS],
    ) {
        let pixels = TILE_PIXELS.min(conv.window.out_w - ox0);
        (self.tile)(conv, oy, ox0, pixels, o0, sums)
    }
    fn finish(
        &self,
        sums: &[i64; TILE_CHANNELS],
        records: &Self::Records,
        out: OutRange,
        residual: &Residual<'_>,
        base: usize,
        output: &mut ActMut<'_>,
    ) {
        let res = residual_block(residual, base, output);
        let v: [i32; TILE_CHANNELS] =
            core::array::from_fn(|j| out.finish(records[j].requantize(sums[j]), res[j]));
        store_block(&v, base, output);
    }
}

/// A 16x8 channel's record, decoded once per conv for [`IntBlocks::finish`].
#[derive(Clone, Copy)]
struct IntRecord {
    bias: i64,
    multiplier: i32,
    shift: i32,
    /// Sums below this in magnitude requantise in `i64`: `(x << left) · multiplier` stays
    /// under 2^62 and the rounding term under 2^61. Zero when the total shift passes 62.
    fast_below: u64,
}

impl IntRecord {
    fn new((bias, multiplier, shift): (i32, i32, i32)) -> IntRecord {
        let left = shift.max(0) as u32;
        let total = 31 + (-shift).max(0) as u32;
        IntRecord {
            bias: bias as i64,
            multiplier,
            shift,
            fast_below: if total <= 62 && left < 31 {
                1 << (31 - left)
            } else {
                0
            },
        }
    }

    /// [`requantize`] of `sum + bias`, in `i64` where the operands allow (the same value).
    #[inline]
    fn requantize(&self, sum: i64) -> i64 {
        let x = sum + self.bias;
        if x.unsigned_abs() < self.fast_below {
            let left = self.shift.max(0) as u32;
            let total = 31 + (-self.shift).max(0) as u32;
            ((x << left) * self.multiplier as i64 + (1i64 << (total - 1))) >> total
        } else {
            requantize(x, self.multiplier, self.shift)
        }
    }
}

/// Every whole block of [`TILE_CHANNELS`] output channels on `blocks`' tile, finished as
/// [`conv_body`] finishes; returns how many channels that was.
fn tile_blocks<B: Blocks>(
    blocks: &B,
    conv: &TileConv<'_>,
    rows: Range<usize>,
    out: OutRange,
    residual: Residual<'_>,
    output: &mut ActMut<'_>,
) -> usize {
    let s = conv.window;
    let (c, oc) = (s.in_c, s.out_c);
    let channels = oc / TILE_CHANNELS * TILE_CHANNELS;
    // What the tile reads unchecked.
    assert!(
        conv.input.len() >= s.in_h * s.in_w * c
            && conv.weights.len() >= B::WEIGHT_BYTES * s.kernel[0] * s.kernel[1] * c * oc
            && rows.end <= s.out_h
            && output.len() >= rows.len() * s.out_w * oc,
        "wide conv operands smaller than its window"
    );
    let mut acc = [[B::Sum::default(); TILE_CHANNELS]; TILE_PIXELS];
    // Block by block, so each channel's record is decoded once per conv.
    for o0 in (0..channels).step_by(TILE_CHANNELS) {
        let records = blocks.records(o0);
        for oy in rows.clone() {
            for ox0 in (0..s.out_w).step_by(TILE_PIXELS) {
                // SAFETY: the caller's `kernels` run on this CPU; the bounds hold by the
                // loops and the assertion above.
                unsafe { blocks.sums(conv, [oy, ox0, o0], &records, &mut acc) };
                let t = TILE_PIXELS.min(s.out_w - ox0);
                for (p, a) in acc[..t].iter().enumerate() {
                    let base = ((oy - rows.start) * s.out_w + ox0 + p) * oc + o0;
                    blocks.finish(a, &records, out, &residual, base, output);
                }
            }
        }
    }
    channels
}

/// `sum · scale` rounded half away from zero, as `i32` (saturating; NaN to 0): what
/// [`round_f32`] gives wherever that fits `i32`, branch-free so a block vectorises.
/// (`v + copysign(½, v)` differs from the reference's choice only on −0, which rounds to 0
/// either way.)
#[inline]
fn round_i32(sum: f32, scale: f32) -> i32 {
    let v = sum * scale;
    (v + 0.5f32.copysign(v)) as i32
}

/// One pixel's block of [`TILE_CHANNELS`] outputs from their f32 sums: [`OutRange::finish`]
/// of the rounded sums and the residual, branch-free where the values allow.
fn finish_block(
    sums: &[f32; TILE_CHANNELS],
    scale: &[f32; TILE_CHANNELS],
    out: OutRange,
    residual: &Residual<'_>,
    base: usize,
    output: &mut ActMut<'_>,
) {
    let rounded: [i32; TILE_CHANNELS] = core::array::from_fn(|j| round_i32(sums[j], scale[j]));
    let mut v = [0i32; TILE_CHANNELS];
    if let Residual::None = residual {
        // clamp(s + z, min, max) = clamp(s, min − z, max − z) + z for every integer s, so a
        // saturated `s` lands where the reference's 64-bit one does.
        let (lo, hi) = (out.min - out.zero_point, out.max - out.zero_point);
        for (v, &s) in v.iter_mut().zip(&rounded) {
            *v = s.clamp(lo, hi) + out.zero_point;
        }
    } else {
        finish_residual(sums, scale, &rounded, out, residual, base, output, &mut v);
    }
    store_block(&v, base, output);
}

/// A pixel's block of [`TILE_CHANNELS`] finished outputs, each already inside its type.
fn store_block(v: &[i32; TILE_CHANNELS], base: usize, output: &mut ActMut<'_>) {
    if output.wide {
        let bytes = &mut output.bytes[2 * base..2 * (base + TILE_CHANNELS)];
        for (b, &x) in bytes.chunks_exact_mut(2).zip(v) {
            b.copy_from_slice(&(x as i16).to_le_bytes());
        }
    } else {
        for (b, &x) in output.bytes[base..base + TILE_CHANNELS].iter_mut().zip(v) {
            *b = x as i8 as u8;
        }
    }
}

/// [`finish_block`]'s values with a residual.
#[allow(clippy::too_many_arguments)]
#[inline]
fn finish_residual(
    sums: &[f32; TILE_CHANNELS],
    scale: &[f32; TILE_CHANNELS],
    rounded: &[i32; TILE_CHANNELS],
    out: OutRange,
    residual: &Residual<'_>,
    base: usize,
    output: &ActMut<'_>,
    values: &mut [i32; TILE_CHANNELS],
) {
    let res = residual_block(residual, base, output);
    let z = out.zero_point as i64;
    for (j, v) in values.iter_mut().enumerate() {
        // A residual and zero point this small cannot bring a sum saturated at `i32` back
        // inside the clamp, so the `i32` rounding stands for the reference's 64-bit one.
        *v = if res[j].abs() + z.abs() < 1 << 30 {
            (rounded[j] as i64 + res[j] + z).clamp(out.min as i64, out.max as i64) as i32
        } else {
            out.finish(round_f32(sums[j] * scale[j]), res[j])
        };
    }
}

/// [`residual_term`] of a block of [`TILE_CHANNELS`] outputs from `base`: in `i64` where
/// the product cannot pass it (a shift left of at most 14 on values under 2^17, a total
/// shift of at most 62), else in [`requantize`]'s 128 bits; the same values either way.
fn residual_block(
    residual: &Residual<'_>,
    base: usize,
    output: &ActMut<'_>,
) -> [i64; TILE_CHANNELS] {
    let (data, zero_point, multiplier, shift) = match *residual {
        Residual::None => return [0; TILE_CHANNELS],
        Residual::Separate {
            data,
            zero_point,
            multiplier,
            shift,
        } => (data, zero_point, multiplier, shift),
        Residual::InPlace {
            zero_point,
            multiplier,
            shift,
        } => (
            Act {
                bytes: output.bytes,
                wide: output.wide,
            },
            zero_point,
            multiplier,
            shift,
        ),
    };
    let (left, right) = (shift.max(0) as u32, (-shift).max(0) as u32);
    let total = 31 + right;
    let fits = left <= 14 && total <= 62;
    let mut terms = [0i64; TILE_CHANNELS];
    for (j, term) in terms.iter_mut().enumerate() {
        let d = data.get(base + j) as i64 - zero_point as i64;
        *term = if fits && d.abs() < 1 << 17 {
            ((d << left) * multiplier as i64 + (1i64 << (total - 1))) >> total
        } else {
            requantize(d, multiplier, shift)
        };
    }
    terms
}

/// Output pixels of a row computed together, so each decoded weight serves all of them.
const TILE: usize = 8;
/// Output channels accumulated together.
const CHANNELS: usize = 32;

/// Output channels `first..` of the conv. Every output element sums its window in the order
/// (ky, kx, ci), whatever the tiling, so f32 sums round the same way on every CPU.
#[allow(clippy::too_many_arguments)]
fn conv_body<S: Sums>(
    s: &Window,
    rows: Range<usize>,
    input: Act<'_>,
    input_zero_point: i32,
    sums: &S,
    out: OutRange,
    residual: Residual<'_>,
    output: &mut ActMut<'_>,
    first: usize,
) {
    let [kh, kw] = s.kernel;
    let (c, oc) = (s.in_c, s.out_c);
    let mut acc = [[S::Acc::default(); CHANNELS]; TILE];
    let mut w = [S::W::default(); CHANNELS];
    for oy in rows.clone() {
        for ox0 in (0..s.out_w).step_by(TILE) {
            let t = TILE.min(s.out_w - ox0);
            for o0 in (first..oc).step_by(CHANNELS) {
                let n = CHANNELS.min(oc - o0);
                for a in acc[..t].iter_mut() {
                    for (j, v) in a[..n].iter_mut().enumerate() {
                        *v = sums.start(o0 + j);
                    }
                }
                for ky in 0..kh {
                    let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
                    let row_inside = iy >= 0 && iy < s.in_h as isize;
                    for kx in 0..kw {
                        let taps = (ky * kw + kx) * c * oc;
                        for ci in 0..c {
                            for (j, wv) in w[..n].iter_mut().enumerate() {
                                *wv = sums.weight(taps + ci * oc + o0 + j);
                            }
                            for (p, a) in acc[..t].iter_mut().enumerate() {
                                let ix =
                                    ((ox0 + p) * s.stride[1] + kx) as isize - s.pads[1] as isize;
                                // Padding reads the input zero point (real 0).
                                let x =
                                    sums.input(if row_inside && ix >= 0 && ix < s.in_w as isize {
                                        input.get((iy as usize * s.in_w + ix as usize) * c + ci)
                                    } else {
                                        input_zero_point
                                    });
                                for (v, &wv) in a[..n].iter_mut().zip(&w[..n]) {
                                    S::mac(v, x, wv);
                                }
                            }
                        }
                    }
                }
                for (p, a) in acc[..t].iter().enumerate() {
                    let base = ((oy - rows.start) * s.out_w + ox0 + p) * oc + o0;
                    for (j, &v) in a[..n].iter().enumerate() {
                        let res = residual_term(&residual, base + j, output);
                        output.set(base + j, out.finish(sums.scaled(v, o0 + j), res));
                    }
                }
            }
        }
    }
}

/// Output channel `n` of a dense layer `[K] → [N]`, at the output scale.
fn dense_channel<S: Sums>(input: Act<'_>, sums: &S, n: usize) -> i64 {
    let k = input.len();
    let mut acc = sums.start(n);
    for i in 0..k {
        S::mac(&mut acc, sums.input(input.get(i)), sums.weight(n * k + i));
    }
    sums.scaled(acc, n)
}

/// Every output of a dense layer, at the output scale, to `store(n, value)`.
fn dense_outputs(
    input: Act<'_>,
    input_zero_point: i32,
    weights: Weights<'_>,
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    mut store: impl FnMut(usize, i64),
) {
    match weights {
        Weights::Int8(weights) => {
            let sums = Int8Sums { weights, params };
            (0..outputs).for_each(|n| store(n, dense_channel(input, &sums, n)));
        }
        Weights::F16(weights) => {
            let sums = F16Sums {
                weights,
                params,
                zero_point: input_zero_point,
            };
            (0..outputs).for_each(|n| store(n, dense_channel(input, &sums, n)));
        }
    }
}

/// Dense layer `[K] → [N]` onto an int8 or int16 output.
pub fn dense(
    input: Act<'_>,
    input_zero_point: i32,
    weights: Weights<'_>,
    params: impl Fn(usize) -> (i32, i32, i32),
    out: OutRange,
    output: &mut ActMut<'_>,
) {
    let outputs = output.len();
    dense_outputs(input, input_zero_point, weights, params, outputs, |n, v| {
        output.set(n, out.finish(v, 0))
    });
}

/// Dense layer whose outputs are int32 at one common scale (the logits), as
/// [`crate::scalar::dense_i32`]; values beyond `i32` saturate.
pub fn dense_i32(
    input: Act<'_>,
    input_zero_point: i32,
    weights: Weights<'_>,
    params: impl Fn(usize) -> (i32, i32, i32),
    outputs: usize,
    mut store: impl FnMut(usize, i32),
) {
    dense_outputs(input, input_zero_point, weights, params, outputs, |n, v| {
        store(n, v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
    });
}

/// Global average pooling `[H, W, C] → [C]`. With `params` (bias `−pixels·z_in`,
/// multiplier and shift of `s_in / (pixels · s_out)`) onto the output's own scale,
/// otherwise at the input's quantisation (the mean rounded to nearest, ties away from zero).
pub fn global_avg_pool(
    input: Act<'_>,
    channels: usize,
    input_zero_point: i32,
    params: Option<(i32, i32, i32)>,
    out: OutRange,
    output: &mut ActMut<'_>,
) {
    let pixels = (input.len() / channels.max(1)).max(1);
    for c in 0..channels {
        let sum: i64 = (0..pixels)
            .map(|p| input.get(p * channels + c) as i64)
            .sum();
        let v = match params {
            Some((bias, m, sh)) => out.finish(requantize(sum + bias as i64, m, sh), 0),
            None => {
                let centred = sum - pixels as i64 * input_zero_point as i64;
                let (p, half) = (pixels as i64, pixels as i64 / 2);
                let mean = if centred >= 0 {
                    (centred + half) / p
                } else {
                    (centred - half) / p
                };
                out.finish(mean, 0)
            }
        };
        output.set(c, v);
    }
}

/// Max pooling; padded cells are ignored.
pub fn max_pool(s: &Window, input: Act<'_>, output: &mut ActMut<'_>) {
    let c = s.in_c;
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            for ch in 0..c {
                let mut best = i32::MIN;
                for ky in 0..s.kernel[0] {
                    let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
                    for kx in 0..s.kernel[1] {
                        let ix = (ox * s.stride[1] + kx) as isize - s.pads[1] as isize;
                        if iy >= 0 && ix >= 0 && iy < s.in_h as isize && ix < s.in_w as isize {
                            let i = (iy as usize * s.in_w + ix as usize) * c + ch;
                            best = best.max(input.get(i));
                        }
                    }
                }
                output.set((oy * s.out_w + ox) * c + ch, best);
            }
        }
    }
}

/// `x[start_h::step_h, start_w::step_w, :]`.
pub fn subsample(s: &Window, start: [usize; 2], input: Act<'_>, output: &mut ActMut<'_>) {
    let c = s.in_c;
    for oy in 0..s.out_h {
        for ox in 0..s.out_w {
            let (iy, ix) = (start[0] + oy * s.stride[0], start[1] + ox * s.stride[1]);
            for ch in 0..c {
                output.set(
                    (oy * s.out_w + ox) * c + ch,
                    input.get((iy * s.in_w + ix) * c + ch),
                );
            }
        }
    }
}

/// Adds `before` and `after` channels holding the zero point around each pixel.
pub fn pad_channels(
    input: Act<'_>,
    in_c: usize,
    before: usize,
    after: usize,
    zero_point: i32,
    output: &mut ActMut<'_>,
) {
    let out_c = in_c + before + after;
    for p in 0..input.len() / in_c.max(1) {
        for ch in 0..out_c {
            let v = if ch < before || ch >= before + in_c {
                zero_point
            } else {
                input.get(p * in_c + ch - before)
            };
            output.set(p * out_c + ch, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::contract::Conv;
    use crate::conv::params::to_bytes;
    use crate::quant::{self, OutQuant};
    use crate::scalar;
    use std::vec;
    use std::vec::Vec;

    /// A small deterministic generator (xorshift), so the tests need no crate.
    /// [`scalar::conv2d`] on tuples, as these tests hold the parameters.
    #[allow(clippy::too_many_arguments)]
    fn reference_conv(
        s: &Window,
        input: &[i8],
        zero_point: i32,
        weights: &[i8],
        params: &[(i32, i32, i32)],
        out: OutQuant,
        residual: quant::Residual<'_>,
        output: &mut [i8],
    ) {
        let raw = to_bytes(params);
        let conv = Conv {
            window: s,
            input,
            zero_point: zero_point as i8,
            weights,
            params: &raw,
            out,
            residual,
            first: 0,
        };
        scalar::conv2d(&conv, output);
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn i8(&mut self) -> i8 {
            self.next() as i8
        }
        fn range(&mut self, lo: i32, hi: i32) -> i32 {
            lo + (self.next() % (hi - lo + 1) as u64) as i32
        }
    }

    fn widen(v: &[i8], factor: i32) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| ((x as i32 * factor) as i16).to_le_bytes())
            .collect()
    }

    fn bytes(v: &[i8]) -> &[u8] {
        // SAFETY: i8 and u8 have the same size and alignment.
        unsafe { core::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }
    }

    /// Odd shapes: channel counts off every vector width and block, stride 2, asymmetric
    /// padding.
    /// An `h × w × c` input, `oc` output channels, a square `k` kernel and stride `st`.
    fn window(
        h: usize,
        w: usize,
        c: usize,
        oc: usize,
        k: usize,
        st: usize,
        pads: [usize; 4],
    ) -> Window {
        Window {
            in_h: h,
            in_w: w,
            in_c: c,
            out_h: (h + pads[0] + pads[2] - k) / st + 1,
            out_w: (w + pads[1] + pads[3] - k) / st + 1,
            out_c: oc,
            kernel: [k, k],
            stride: [st, st],
            pads,
        }
    }

    fn windows() -> Vec<Window> {
        let mut out = Vec::new();
        for &(h, w, c, oc, k, st, pads) in &[
            (5, 7, 3, 5, 3, 1, [1, 1, 1, 1]),
            (6, 5, 17, 70, 3, 2, [1, 0, 1, 1]),
            (4, 4, 9, 13, 1, 1, [0, 0, 0, 0]),
            (7, 3, 33, 3, 2, 2, [0, 1, 1, 0]),
            // Rows of several tiles and a tail, two channel blocks.
            (3, 19, 5, 37, 3, 1, [1, 1, 1, 1]),
        ] {
            out.push(window(h, w, c, oc, k, st, pads));
        }
        out
    }

    fn random_params(rng: &mut Rng, oc: usize) -> Vec<(i32, i32, i32)> {
        (0..oc)
            .map(|_| {
                (
                    rng.range(-5000, 5000),
                    rng.range(1 << 30, i32::MAX),
                    rng.range(-12, -6),
                )
            })
            .collect()
    }

    #[test]
    fn int8_tensors_give_the_int8_reference_bit_for_bit() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for s in windows() {
            let input: Vec<i8> = (0..s.in_h * s.in_w * s.in_c).map(|_| rng.i8()).collect();
            let weights: Vec<i8> = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
                .map(|_| rng.i8().max(-127))
                .collect();
            let residual: Vec<i8> = (0..s.out_h * s.out_w * s.out_c).map(|_| rng.i8()).collect();
            let params = random_params(&mut rng, s.out_c);
            let (zx, zy, zr) = (
                rng.range(-128, 127),
                rng.range(-128, 127),
                rng.range(-20, 20),
            );
            let (rm, rs) = (rng.range(1 << 30, i32::MAX), rng.range(-3, 1));
            for relu in [false, true] {
                let out = OutQuant {
                    zero_point: zy,
                    min: if relu { zy as i8 } else { i8::MIN },
                    max: i8::MAX,
                };
                let mut expected = vec![0i8; residual.len()];
                reference_conv(
                    &s,
                    &input,
                    zx,
                    &weights,
                    &params,
                    out,
                    quant::Residual::Separate {
                        data: &residual,
                        zero_point: zr,
                        multiplier: rm,
                        shift: rs,
                    },
                    &mut expected,
                );
                let mut got = vec![0u8; residual.len()];
                conv2d(
                    Isa::Scalar,
                    &s,
                    0..s.out_h,
                    Act {
                        bytes: bytes(&input),
                        wide: false,
                    },
                    zx,
                    Weights::Int8(&weights),
                    |c| params[c],
                    OutRange::from_fields(false, zy, out.min, out.max),
                    Residual::Separate {
                        data: Act {
                            bytes: bytes(&residual),
                            wide: false,
                        },
                        zero_point: zr,
                        multiplier: rm,
                        shift: rs,
                    },
                    &mut ActMut {
                        bytes: &mut got,
                        wide: false,
                    },
                );
                assert_eq!(bytes(&expected), &got[..], "{s:?} relu {relu}");
            }
        }
    }

    /// An int16 input holding the int8 values gives the int8 results exactly; holding them
    /// × 256, with bias × 256 and the shift lowered by 8, the same real computation, which
    /// only the rounding order can move, by at most one step.
    #[test]
    fn int16_input_gives_the_int8_results() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for s in windows() {
            let input: Vec<i8> = (0..s.in_h * s.in_w * s.in_c).map(|_| rng.i8()).collect();
            let weights: Vec<i8> = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
                .map(|_| rng.i8().max(-127))
                .collect();
            // Symmetric input (zero point 0), as int16 tensors are.
            let params = random_params(&mut rng, s.out_c);
            let out = OutQuant {
                zero_point: 3,
                min: i8::MIN,
                max: i8::MAX,
            };
            let n = s.out_h * s.out_w * s.out_c;
            let mut expected = vec![0i8; n];
            reference_conv(
                &s,
                &input,
                0,
                &weights,
                &params,
                out,
                quant::Residual::None,
                &mut expected,
            );
            for factor in [1, 256] {
                let lower = if factor == 1 { 0 } else { 8 };
                let wide_params: Vec<_> = params
                    .iter()
                    .map(|&(b, m, sh)| (b * factor, m, sh - lower))
                    .collect();
                let wide_input = widen(&input, factor);
                let mut got = vec![0u8; n];
                conv2d(
                    Isa::Scalar,
                    &s,
                    0..s.out_h,
                    Act {
                        bytes: &wide_input,
                        wide: true,
                    },
                    0,
                    Weights::Int8(&weights),
                    |c| wide_params[c],
                    OutRange::from_fields(false, 3, i8::MIN, i8::MAX),
                    Residual::None,
                    &mut ActMut {
                        bytes: &mut got,
                        wide: false,
                    },
                );
                if factor == 1 {
                    assert_eq!(bytes(&expected), &got[..], "{s:?}");
                } else {
                    for (i, (&e, &g)) in expected.iter().zip(&got).enumerate() {
                        assert!((e as i32 - g as i8 as i32).abs() <= 1, "{s:?} {i}");
                    }
                }
            }
        }
    }

    /// An int16 output with the shift raised by 8 is the int8 result × 256 up to rounding:
    /// within about half an int8 step of it, and it clamps to the int16 limits (or 0 under a ReLU).
    #[test]
    fn int16_output_refines_the_int8_one() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        for s in windows() {
            let input: Vec<i8> = (0..s.in_h * s.in_w * s.in_c).map(|_| rng.i8()).collect();
            let weights: Vec<i8> = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
                .map(|_| rng.i8().max(-127))
                .collect();
            let params = random_params(&mut rng, s.out_c);
            let wide_params: Vec<_> = params.iter().map(|&(b, m, sh)| (b, m, sh + 8)).collect();
            let n = s.out_h * s.out_w * s.out_c;
            for relu in [false, true] {
                let mut narrow = vec![0i8; n];
                reference_conv(
                    &s,
                    &input,
                    -5,
                    &weights,
                    &params,
                    OutQuant {
                        zero_point: 0,
                        min: if relu { 0 } else { -128 },
                        max: 127,
                    },
                    quant::Residual::None,
                    &mut narrow,
                );
                let mut got = vec![0u8; 2 * n];
                conv2d(
                    Isa::Scalar,
                    &s,
                    0..s.out_h,
                    Act {
                        bytes: bytes(&input),
                        wide: false,
                    },
                    -5,
                    Weights::Int8(&weights),
                    |c| wide_params[c],
                    OutRange::from_fields(true, 0, if relu { 0 } else { i8::MIN }, i8::MAX),
                    Residual::None,
                    &mut ActMut {
                        bytes: &mut got,
                        wide: true,
                    },
                );
                let wide = Act {
                    bytes: &got,
                    wide: true,
                };
                let mut finer = 0;
                for (i, &q) in narrow.iter().enumerate() {
                    let v = wide.get(i);
                    if relu {
                        assert!(v >= 0);
                    }
                    // Inside int8's range the two agree to within int8's rounding (which
                    // rounds twice, so a hair past half a step); outside, int8 clamped.
                    if q > -128 && q < 127 {
                        assert!((v - 256 * q as i32).abs() <= 136, "{s:?} {i}: {v} vs {q}");
                        finer += (v % 256 != 0) as usize;
                    }
                }
                assert!(finer > 0, "int16 outputs carry no finer steps");
            }
        }
    }

    /// f16 weights that are quarter-integers, and a power-of-two scale: every f32 sum is
    /// exact, so each output is the exactly rounded real value, here computed in integers.
    #[test]
    fn f16_weights_give_the_exactly_rounded_sums() {
        let mut rng = Rng(0xA076_1D64_78BD_642F);
        for s in windows() {
            let input: Vec<i8> = (0..s.in_h * s.in_w * s.in_c).map(|_| rng.i8()).collect();
            let quarters: Vec<i32> = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
                .map(|_| rng.range(-300, 300))
                .collect();
            let f16: Vec<u8> = quarters
                .iter()
                .flat_map(|&q| half::f16::from_f32(q as f32 / 4.0).to_bits().to_le_bytes())
                .collect();
            let biases: Vec<i32> = (0..s.out_c).map(|_| rng.range(-4000, 4000)).collect();
            let records: Vec<(i32, i32, i32)> = biases
                .iter()
                .map(|&b| (b as f32).to_bits() as i32)
                .map(|b| (b, (1.0f32 / 128.0).to_bits() as i32, 0))
                .collect();
            let zx = rng.range(-20, 20);
            let n = s.out_h * s.out_w * s.out_c;
            let mut got = vec![0u8; 2 * n];
            conv2d(
                Isa::Scalar,
                &s,
                0..s.out_h,
                Act {
                    bytes: bytes(&input),
                    wide: false,
                },
                zx,
                Weights::F16(&f16),
                |c| records[c],
                OutRange::from_fields(true, 0, i8::MIN, i8::MAX),
                Residual::None,
                &mut ActMut {
                    bytes: &mut got,
                    wide: true,
                },
            );
            let got = Act {
                bytes: &got,
                wide: true,
            };
            let [kh, kw] = s.kernel;
            for oy in 0..s.out_h {
                for ox in 0..s.out_w {
                    for o in 0..s.out_c {
                        // 4 × the real sum, in integers; the output is sum / 128 rounded.
                        let mut sum4 = 4 * biases[o] as i64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
                                let ix = (ox * s.stride[1] + kx) as isize - s.pads[1] as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= s.in_h as isize
                                    || ix >= s.in_w as isize
                                {
                                    continue;
                                }
                                for ci in 0..s.in_c {
                                    let x =
                                        input[(iy as usize * s.in_w + ix as usize) * s.in_c + ci];
                                    let w = quarters[((ky * kw + kx) * s.in_c + ci) * s.out_c + o];
                                    sum4 += (x as i64 - zx as i64) * w as i64;
                                }
                            }
                        }
                        let (d, half) = (512i64, 256i64);
                        let expected = if sum4 >= 0 {
                            (sum4 + half) / d
                        } else {
                            (sum4 - half) / d
                        };
                        let idx = (oy * s.out_w + ox) * s.out_c + o;
                        assert_eq!(
                            got.get(idx) as i64,
                            expected.clamp(-32768, 32767),
                            "{s:?} {idx}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn requantize_matches_the_32_bit_one_where_it_fits() {
        let mut rng = Rng(42);
        for _ in 0..20000 {
            let x = rng.next() as i32 >> rng.range(0, 24);
            let m = rng.range(1 << 30, i32::MAX);
            let sh = rng.range(-31, 30);
            let narrow = quant::requantize(x, m, sh) as i64;
            let wide = requantize(x as i64, m, sh);
            // The 32-bit one saturates the shifted value; clamped outputs agree.
            let fits = (x as i64) << sh.max(0) == ((x as i64) << sh.max(0)) as i32 as i64;
            if fits {
                assert_eq!(narrow, wide, "x {x} m {m} shift {sh}");
            }
        }
    }

    #[test]
    fn the_16x8_records_requantize_as_the_reference() {
        let mut rng = Rng(7);
        let edges = [
            0i64,
            1,
            -1,
            (1 << 31) - 1,
            -(1 << 31),
            1 << 31,
            1 << 40,
            -(1 << 40),
        ];
        for i in 0..40000 {
            let x = if i < 8000 {
                edges[i % edges.len()] >> (i / edges.len() % 32)
            } else {
                (rng.next() as i64) >> rng.range(2, 62)
            };
            let m = if i % 5 == 0 {
                i32::MAX
            } else {
                rng.range(1 << 30, i32::MAX)
            };
            let shift = rng.range(-40, 20);
            let bias = rng.range(-1 << 20, 1 << 20);
            let record = IntRecord::new((bias, m, shift));
            assert_eq!(
                record.requantize(x),
                requantize(x + bias as i64, m, shift),
                "sum {x} bias {bias} multiplier {m} shift {shift}"
            );
        }
    }

    #[test]
    fn int16_pass_through_ops_move_whole_values() {
        let data: Vec<i16> = (0..2 * 3 * 4).map(|i| (i as i16 - 7) * 1000).collect();
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let input = Act {
            bytes: &raw,
            wide: true,
        };
        // Pad two channels before, one after, with the zero point 0.
        let mut out = vec![0u8; 2 * 3 * 7 * 2];
        pad_channels(
            input,
            4,
            2,
            1,
            0,
            &mut ActMut {
                bytes: &mut out,
                wide: true,
            },
        );
        let padded = Act {
            bytes: &out,
            wide: true,
        };
        assert_eq!(padded.get(2), data[0] as i32);
        assert_eq!(padded.get(6), 0);
        assert_eq!(padded.get(7 + 5), data[4 + 3] as i32);
        // 2×2 max pool, stride 2, on the 2×3×4 map: one output row of one pixel.
        let s = Window {
            in_h: 2,
            in_w: 3,
            in_c: 4,
            out_h: 1,
            out_w: 1,
            out_c: 4,
            kernel: [2, 2],
            stride: [2, 2],
            pads: [0, 0, 0, 0],
        };
        let mut pooled = vec![0u8; 8];
        max_pool(
            &s,
            input,
            &mut ActMut {
                bytes: &mut pooled,
                wide: true,
            },
        );
        let pooled = Act {
            bytes: &pooled,
            wide: true,
        };
        for c in 0..4 {
            assert_eq!(pooled.get(c), data[(3 + 1) * 4 + c] as i32);
        }
    }

    /// f16 weights of every magnitude and sign (so the f32 sums round), shapes whose
    /// channels are off the tile's 16 and 8-value runs, deep inputs over several staged
    /// runs; int8 and int16 inputs, fused residuals.
    fn f16_case(rng: &mut Rng, s: &Window) -> (Vec<u8>, Vec<(i32, i32, i32)>) {
        let f16: Vec<u8> = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
            .flat_map(|_| {
                let mantissa = rng.range(-2047, 2047) as f32;
                let scale = [1.0 / 4096.0, 1.0 / 512.0, 1.0 / 64.0][rng.range(0, 2) as usize];
                half::f16::from_f32(mantissa * scale)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect();
        let records = (0..s.out_c)
            .map(|_| {
                let bias = rng.range(-4000, 4000) as f32 / 7.0;
                let m = rng.range(1, 1000) as f32 / 3000.0;
                (bias.to_bits() as i32, m.to_bits() as i32, 0)
            })
            .collect();
        (f16, records)
    }

    /// [`windows`] and shapes for the tiles: channels off their 16 and 8-value runs, deep
    /// inputs over several staged runs.
    fn tile_windows() -> Vec<Window> {
        let mut out = windows();
        for &(h, w, c, oc, k, st, pads) in &[
            (5, 6, 70, 33, 3, 1, [1, 1, 1, 1]),
            (4, 9, 16, 16, 3, 2, [1, 1, 0, 1]),
            (3, 5, 130, 48, 1, 1, [0, 0, 0, 0]),
            (9, 9, 3, 17, 7, 2, [3, 3, 3, 3]),
        ] {
            out.push(window(h, w, c, oc, k, st, pads));
        }
        out
    }

    fn supported() -> Vec<Isa> {
        let cpu = crate::isa::CpuFeatures::available();
        Isa::ALL.into_iter().filter(|&i| cpu.supports(i)).collect()
    }

    /// A wide conv's operands, run on any path with each kind of residual.
    struct Case<'a> {
        s: &'a Window,
        input: Act<'a>,
        zero_point: i32,
        weights: Weights<'a>,
        records: &'a [(i32, i32, i32)],
        /// int16 (else int8) output; the residual is of the output's type.
        wide_out: bool,
        residual: &'a [u8],
        residual_zero_point: i32,
        residual_scale: (i32, i32),
    }

    impl Case<'_> {
        /// `residual`: 0 none, 1 a separate operand, 2 in place.
        fn run(&self, isa: Isa, residual: usize) -> Vec<u8> {
            let s = self.s;
            let n = s.out_h * s.out_w * s.out_c;
            let mut got = if residual == 2 {
                self.residual.to_vec()
            } else {
                vec![0u8; n << self.wide_out as usize]
            };
            let (zero_point, (multiplier, shift)) = (self.residual_zero_point, self.residual_scale);
            let res = match residual {
                0 => Residual::None,
                1 => Residual::Separate {
                    data: Act {
                        bytes: self.residual,
                        wide: self.wide_out,
                    },
                    zero_point,
                    multiplier,
                    shift,
                },
                _ => Residual::InPlace {
                    zero_point,
                    multiplier,
                    shift,
                },
            };
            conv2d(
                isa,
                s,
                0..s.out_h,
                self.input,
                self.zero_point,
                self.weights,
                |c| self.records[c],
                OutRange::from_fields(self.wide_out, 0, i8::MIN, i8::MAX),
                res,
                &mut ActMut {
                    bytes: &mut got,
                    wide: self.wide_out,
                },
            );
            got
        }
    }

    /// Random int8 or (full-range) int16 values, as bytes.
    fn random_act(rng: &mut Rng, n: usize, wide: bool) -> Vec<u8> {
        if wide {
            (0..n)
                .flat_map(|_| (rng.range(-32768, 32767) as i16).to_le_bytes())
                .collect()
        } else {
            (0..n).map(|_| rng.i8() as u8).collect()
        }
    }

    /// Every ISA this CPU runs whose tile (`tile(isa)`) exists; prints which, or that the
    /// check is skipped.
    fn tiled_isas(kind: &str, tile: impl Fn(Isa) -> Option<&'static str>) -> Vec<Isa> {
        let isas: Vec<Isa> = supported()
            .into_iter()
            .filter(|&i| tile(i).is_some())
            .collect();
        let names: Vec<&str> = isas.iter().filter_map(|&i| tile(i)).collect();
        if isas.is_empty() {
            std::println!("skipped: this CPU has no {kind} tile (only the scalar loops run)");
        } else {
            std::println!("checking {isas:?} ({names:?}) against the scalar loops");
        }
        isas
    }

    /// Each tiled path against the scalar loops on `weights(window)`: int8 and int16
    /// inputs and outputs, every kind of residual.
    fn tiles_match_the_scalar_loops(
        isas: &[Isa],
        rng: &mut Rng,
        weights: impl Fn(&mut Rng, &Window) -> (Vec<u8>, Vec<(i32, i32, i32)>, bool),
    ) {
        let mut compared = 0usize;
        for s in tile_windows() {
            let (w, records, f16) = weights(rng, &s);
            let n = s.out_h * s.out_w * s.out_c;
            for wide_in in [false, true] {
                let input = random_act(rng, s.in_h * s.in_w * s.in_c, wide_in);
                for wide_out in [true, false] {
                    let residual = random_act(rng, n, wide_out);
                    let case = Case {
                        s: &s,
                        input: Act {
                            bytes: &input,
                            wide: wide_in,
                        },
                        // int16 tensors are symmetric.
                        zero_point: if wide_in { 0 } else { rng.range(-128, 127) },
                        weights: if f16 {
                            Weights::F16(&w)
                        } else {
                            Weights::Int8(bytes_i8(&w))
                        },
                        records: &records,
                        wide_out,
                        residual: &residual,
                        residual_zero_point: if wide_out { 0 } else { rng.range(-20, 20) },
                        residual_scale: (rng.range(1 << 30, i32::MAX), rng.range(-3, 1)),
                    };
                    for residual in 0..3 {
                        let expected = case.run(Isa::Scalar, residual);
                        // The outputs must move with the inputs, or equality proves nothing.
                        let first = &expected[..1 + wide_out as usize];
                        assert!(
                            expected.chunks(1 + wide_out as usize).any(|v| v != first),
                            "{s:?}: all outputs equal"
                        );
                        for &isa in isas {
                            assert_eq!(
                                case.run(isa, residual),
                                expected,
                                "{isa:?} {s:?} int16 input {wide_in} int16 output {wide_out} \
                                 residual {residual}"
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
        if !isas.is_empty() {
            assert!(compared > 0);
        }
    }

    fn bytes_i8(v: &[u8]) -> &[i8] {
        // SAFETY: as `as_bytes`, the other way.
        unsafe { core::slice::from_raw_parts(v.as_ptr() as *const i8, v.len()) }
    }

    #[test]
    fn f16_tiles_give_the_reference_bits() {
        let isas = tiled_isas("f16", |i| f16_tile(i).map(|t| t.0));
        let mut rng = Rng(0x5851_F42D_4C95_7F2D);
        tiles_match_the_scalar_loops(&isas, &mut rng, |rng, s| {
            let (w, records) = f16_case(rng, s);
            (w, records, true)
        });
    }

    #[test]
    fn int_tiles_give_the_reference_bits() {
        let isas = tiled_isas("16x8", |i| int_tile(i).map(|t| t.0));
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        tiles_match_the_scalar_loops(&isas, &mut rng, |rng, s| {
            let w = (0..s.kernel[0] * s.kernel[1] * s.in_c * s.out_c)
                .map(|_| rng.i8() as u8)
                .collect();
            (w, random_params(rng, s.out_c), false)
        });
    }

    /// The int tile's raw sums against exact `i64` sums, on random values and on the
    /// largest products (−32768 × −128) over windows deep enough to pass `i32` many times.
    #[test]
    fn int_tile_sums_are_exact() {
        let Some((name, tile)) = supported().into_iter().rev().find_map(int_tile) else {
            std::println!("skipped: this CPU has no 16x8 tile");
            return;
        };
        std::println!("checking {name}");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut windows = tile_windows();
        windows.push(window(2, 5, 1100, 16, 1, 1, [0, 0, 0, 0]));
        windows.push(window(4, 4, 257, 32, 3, 1, [1, 1, 1, 1]));
        for (s, extreme) in windows.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            if s.out_c < TILE_CHANNELS {
                continue;
            }
            let n_w = s.kernel[0] * s.kernel[1] * s.in_c * s.out_c;
            let (values, weights): (Vec<i32>, Vec<i8>) = if extreme {
                (vec![-32768; s.in_h * s.in_w * s.in_c], vec![-128; n_w])
            } else {
                (
                    (0..s.in_h * s.in_w * s.in_c)
                        .map(|_| rng.range(-32768, 32767))
                        .collect(),
                    (0..n_w).map(|_| rng.i8()).collect(),
                )
            };
            let input: Vec<u8> = values
                .iter()
                .flat_map(|&v| (v as i16).to_le_bytes())
                .collect();
            let zx = 0;
            let conv = TileConv {
                window: &s,
                input: Act {
                    bytes: &input,
                    wide: true,
                },
                zero_point: zx,
                weights: as_bytes(&weights),
            };
            let o0 = s.out_c / TILE_CHANNELS * TILE_CHANNELS - TILE_CHANNELS;
            for oy in 0..s.out_h {
                for ox0 in (0..s.out_w).step_by(TILE_PIXELS) {
                    let t = TILE_PIXELS.min(s.out_w - ox0);
                    let mut got = [[i64::MIN; TILE_CHANNELS]; TILE_PIXELS];
                    // SAFETY: the CPU has the tile's features; the indices are in range.
                    unsafe { tile(&conv, oy, ox0, t, o0, &mut got) };
                    for (p, row) in got.iter().enumerate().take(t) {
                        for (j, &sum) in row.iter().enumerate() {
                            let mut want = 0i64;
                            for ky in 0..s.kernel[0] {
                                for kx in 0..s.kernel[1] {
                                    let at = contract::tap_offsets(&s, oy, ox0, t, ky, kx)[p];
                                    for ci in 0..s.in_c {
                                        let x = at.map_or(zx, |a| values[a + ci]) as i64;
                                        let k = (ky * s.kernel[1] + kx) * s.in_c + ci;
                                        want += x * weights[k * s.out_c + o0 + j] as i64;
                                    }
                                }
                            }
                            assert_eq!(
                                sum,
                                want,
                                "{name} {s:?} extreme {extreme} ({oy}, {}) channel {}",
                                ox0 + p,
                                o0 + j
                            );
                        }
                    }
                }
            }
        }
    }

    /// The tile's raw f32 sums, bit for bit, against the order the contract states (the
    /// requantised outputs could hide a last-bit difference).
    #[test]
    fn f16_tile_sums_are_the_stated_order_bit_for_bit() {
        let Some((name, tile)) = supported().into_iter().rev().find_map(f16_tile) else {
            std::println!("skipped: this CPU has no f16 tile");
            return;
        };
        std::println!("checking {name}");
        let mut rng = Rng(0x1405_7B7E_F767_814F);
        // int16 inputs make the products inexact in f32, so a fused multiply-add would show.
        for (s, wide) in tile_windows()
            .into_iter()
            .filter(|s| s.out_c >= TILE_CHANNELS)
            .flat_map(|s| [(s, false), (s, true)])
        {
            let (f16, records) = f16_case(&mut rng, &s);
            let values: Vec<i32> = (0..s.in_h * s.in_w * s.in_c)
                .map(|_| {
                    if wide {
                        rng.range(-32768, 32767)
                    } else {
                        rng.i8() as i32
                    }
                })
                .collect();
            let input: Vec<u8> = if wide {
                values
                    .iter()
                    .flat_map(|&v| (v as i16).to_le_bytes())
                    .collect()
            } else {
                values.iter().map(|&v| v as i8 as u8).collect()
            };
            let zx = if wide { 0 } else { rng.range(-128, 127) };
            let conv = TileConv {
                window: &s,
                input: Act {
                    bytes: &input,
                    wide,
                },
                zero_point: zx,
                weights: &f16,
            };
            let weight = |i: usize| {
                half::f16::from_bits(u16::from_le_bytes([f16[2 * i], f16[2 * i + 1]])).to_f32()
            };
            let o0 = s.out_c / TILE_CHANNELS * TILE_CHANNELS - TILE_CHANNELS;
            let bias: [f32; TILE_CHANNELS] =
                core::array::from_fn(|j| f32::from_bits(records[o0 + j].0 as u32));
            for oy in 0..s.out_h {
                for ox0 in (0..s.out_w).step_by(TILE_PIXELS) {
                    let t = TILE_PIXELS.min(s.out_w - ox0);
                    let mut got = [[f32::NAN; TILE_CHANNELS]; TILE_PIXELS];
                    // SAFETY: the CPU has the tile's features; the indices are in range.
                    unsafe { tile(&conv, oy, ox0, t, o0, &bias, &mut got) };
                    for (p, row) in got.iter().enumerate().take(t) {
                        for (j, &sum) in row.iter().enumerate() {
                            let mut want = bias[j];
                            for ky in 0..s.kernel[0] {
                                for kx in 0..s.kernel[1] {
                                    let at = contract::tap_offsets(&s, oy, ox0, t, ky, kx)[p];
                                    for ci in 0..s.in_c {
                                        let x = at.map_or(0, |a| values[a + ci] - zx);
                                        let w = weight(
                                            ((ky * s.kernel[1] + kx) * s.in_c + ci) * s.out_c
                                                + o0
                                                + j,
                                        );
                                        want += x as f32 * w;
                                    }
                                }
                            }
                            assert_eq!(
                                sum.to_bits(),
                                want.to_bits(),
                                "{name} {s:?} int16 input {wide} ({oy}, {}) channel {}",
                                ox0 + p,
                                o0 + j
                            );
                        }
                    }
                }
            }
        }
    }

    /// Runs of output rows (as threads take them), each with its own part of the output and
    /// of a separate residual, give the whole conv's bytes on every path.
    #[test]
    fn row_runs_give_the_whole_conv() {
        let mut isas = vec![Isa::Scalar];
        isas.extend(
            supported()
                .into_iter()
                .filter(|&i| f16_tile(i).is_some() || int_tile(i).is_some()),
        );
        let mut rng = Rng(0x94D0_49BB_1331_11EB);
        let shapes = tile_windows().into_iter().filter(|s| s.out_h >= 3);
        for (s, f16) in shapes.flat_map(|s| [(s, true), (s, false)]) {
            let (w, records) = if f16 {
                f16_case(&mut rng, &s)
            } else {
                let n = s.kernel[0] * s.kernel[1] * s.in_c * s.out_c;
                let w = (0..n).map(|_| rng.i8() as u8).collect();
                (w, random_params(&mut rng, s.out_c))
            };
            let weights = if f16 {
                Weights::F16(&w)
            } else {
                Weights::Int8(bytes_i8(&w))
            };
            let input: Vec<u8> = (0..s.in_h * s.in_w * s.in_c)
                .map(|_| rng.i8() as u8)
                .collect();
            let n = s.out_h * s.out_w * s.out_c;
            let residual: Vec<u8> = (0..n)
                .flat_map(|_| (rng.range(-32768, 32767) as i16).to_le_bytes())
                .collect();
            let row = 2 * s.out_w * s.out_c;
            for &isa in &isas {
                for in_place in [false, true] {
                    let run = |rows: core::ops::Range<usize>, got: &mut [u8]| {
                        let res_part = &residual[rows.start * row..rows.end * row];
                        let res = if in_place {
                            got.copy_from_slice(res_part);
                            Residual::InPlace {
                                zero_point: 0,
                                multiplier: 1 << 30,
                                shift: 0,
                            }
                        } else {
                            Residual::Separate {
                                data: Act {
                                    bytes: res_part,
                                    wide: true,
                                },
                                zero_point: 0,
                                multiplier: 1 << 30,
                                shift: 0,
                            }
                        };
                        conv2d(
                            isa,
                            &s,
                            rows,
                            Act {
                                bytes: &input,
                                wide: false,
                            },
                            3,
                            weights,
                            |c| records[c],
                            OutRange::from_fields(true, 0, i8::MIN, i8::MAX),
                            res,
                            &mut ActMut {
                                bytes: got,
                                wide: true,
                            },
                        );
                    };
                    let mut whole = vec![0u8; 2 * n];
                    run(0..s.out_h, &mut whole);
                    let cut = [0, 1, s.out_h / 2 + 1, s.out_h];
                    let mut parts = vec![0u8; 2 * n];
                    for w in cut.windows(2) {
                        run(w[0]..w[1], &mut parts[w[0] * row..w[1] * row]);
                    }
                    assert_eq!(parts, whole, "{isa:?} {s:?} in place {in_place}");
                }
            }
        }
    }
}
