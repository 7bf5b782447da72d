//! What the wide kernels share with the tiles that speed them up: the activation views
//! (int8 or int16), the output range, the residual and weight operands, and what a wide sum tile
//! (f16 or int8 weights) is given and must compute. Data only; the kernels are in [`crate::wide`] and
//! `crate::arch`.

use crate::window::Window;

/// An activation tensor: int8 or little-endian int16 values.
#[derive(Clone, Copy, Debug)]
pub struct Act<'a> {
    pub bytes: &'a [u8],
    pub wide: bool,
}

impl Act<'_> {
    #[inline]
    pub fn get(&self, i: usize) -> i32 {
        load(self.bytes, self.wide, i)
    }
    pub fn len(&self) -> usize {
        self.bytes.len() >> self.wide as usize
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// An activation tensor being written.
#[derive(Debug)]
pub struct ActMut<'a> {
    pub bytes: &'a mut [u8],
    pub wide: bool,
}

impl ActMut<'_> {
    #[inline]
    pub fn get(&self, i: usize) -> i32 {
        load(self.bytes, self.wide, i)
    }
    /// Stores `v`, already inside the type's range.
    #[inline]
    pub fn set(&mut self, i: usize, v: i32) {
        if self.wide {
            self.bytes[2 * i..2 * i + 2].copy_from_slice(&(v as i16).to_le_bytes());
        } else {
            self.bytes[i] = v as i8 as u8;
        }
    }
    pub fn len(&self) -> usize {
        self.bytes.len() >> self.wide as usize
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[inline]
fn load(bytes: &[u8], wide: bool, i: usize) -> i32 {
    if wide {
        i16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as i32
    } else {
        bytes[i] as i8 as i32
    }
}

/// Output zero point and clamp, in the output type's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutRange {
    pub zero_point: i32,
    pub min: i32,
    pub max: i32,
}

impl OutRange {
    /// From a `.kes` op's int8 clamp fields: on an int16 output `i8::MIN`/`i8::MAX` stand
    /// for the int16 limits (a fused ReLU's clamp is the zero point, 0).
    pub fn from_fields(wide: bool, zero_point: i32, min: i8, max: i8) -> OutRange {
        let widen = |v: i8, limit: i32| {
            if wide && (v == i8::MIN || v == i8::MAX) {
                limit
            } else {
                v as i32
            }
        };
        OutRange {
            zero_point,
            min: widen(min, i16::MIN as i32),
            max: widen(max, i16::MAX as i32),
        }
    }

    #[inline]
    pub(crate) fn finish(&self, scaled: i64, residual: i64) -> i32 {
        let v = scaled
            .saturating_add(residual)
            .saturating_add(self.zero_point as i64);
        v.clamp(self.min as i64, self.max as i64) as i32
    }
}

/// The residual operand of a fused conv.
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    None,
    Separate {
        data: Act<'a>,
        zero_point: i32,
        multiplier: i32,
        shift: i32,
    },
    /// The output buffer holds the residual (of the output's type) on entry.
    InPlace {
        zero_point: i32,
        multiplier: i32,
        shift: i32,
    },
}

impl Residual<'_> {
    /// The residual of output elements `start .. start + len` (a run of rows a thread
    /// takes): a separate operand cut to them; in place or none, as it is.
    pub fn part(&self, start: usize, len: usize) -> Self {
        match *self {
            Residual::Separate {
                data,
                zero_point,
                multiplier,
                shift,
            } => {
                let w = data.wide as usize;
                Residual::Separate {
                    data: Act {
                        bytes: &data.bytes[start << w..(start + len) << w],
                        wide: data.wide,
                    },
                    zero_point,
                    multiplier,
                    shift,
                }
            }
            other => other,
        }
    }
}

/// A wide layer's weights and what its channel records `(a, b, c)` mean.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    /// int8, as everywhere else: `(bias, multiplier, shift)`, the bias holding `−z_in·Σw`.
    Int8(&'a [i8]),
    /// Little-endian f16 bits: `(f32 bias / s_in, f32 s_in / s_out, 0)` as bit patterns;
    /// the sums run over `x − z_in`.
    F16(&'a [u8]),
}

/// Output pixels of a row a wide tile sums at once.
pub const TILE_PIXELS: usize = 4;
/// Output channels a wide tile sums at once.
pub const TILE_CHANNELS: usize = 16;

/// A wide conv as a tile reads it. The wrapper that builds it has checked that `input`
/// holds `in_h·in_w·in_c` values and `weights` `kh·kw·in_c·out_c` weights.
#[derive(Clone, Copy, Debug)]
pub struct TileConv<'a> {
    pub window: &'a Window,
    pub input: Act<'a>,
    pub zero_point: i32,
    /// `[KH][KW][IC][OC]`: little-endian f16 bits for an [`F16Tile`], int8 for an
    /// [`IntTile`].
    pub weights: &'a [u8],
}

/// Sums of one tile on f16 weights: for pixel `p < pixels` of output row `oy` (column
/// `ox0 + p`) and channel `o0 + j`, `sums[p][j]` starts at `bias[j]` and adds `(x − z) · w`
/// over the window in the order (ky, kx, ci), each product and each sum rounded to f32 (no
/// FMA), a padded tap adding `0 · w`: the scalar reference's arithmetic, so every tile gives
/// its bits.
///
/// # Safety
/// The CPU has the tile's features; `1 ≤ pixels ≤ TILE_PIXELS`, `ox0 + pixels ≤ out_w`,
/// `oy < out_h`, `o0 + TILE_CHANNELS ≤ out_c`, and `conv` is as [`TileConv`] says.
pub type F16Tile = unsafe fn(
    conv: &TileConv<'_>,
    oy: usize,
    ox0: usize,
    pixels: usize,
    o0: usize,
    bias: &[f32; TILE_CHANNELS],
    sums: &mut [[f32; TILE_CHANNELS]; TILE_PIXELS],
);

/// Products an [`IntTile`] may add in `i32` before it widens them: an int16 × int8 product
/// is at most 2^22 in magnitude, so 511 of them stay inside `i32`.
pub const INT_TILE_RUN: usize = 510;

/// Sums of one tile on int8 weights (16x8): `sums[p][j]` = Σ `x · w` over the window, `x`
/// the stored input value (a padded tap reads `zero_point`, as the reference does; the
/// bias record holds the zero point's share). Integer sums are exact in any order, so a
/// tile may add in `i32` runs of at most [`INT_TILE_RUN`] products before widening to `i64`.
///
/// # Safety
/// As [`F16Tile`].
pub type IntTile = unsafe fn(
    conv: &TileConv<'_>,
    oy: usize,
    ox0: usize,
    pixels: usize,
    o0: usize,
    sums: &mut [[i64; TILE_CHANNELS]; TILE_PIXELS],
);

/// Where each tap row starts for the pixels of a tile: the input index of `(iy, ix, 0)`, or
/// `None` where the tap reads padding.
#[inline]
pub fn tap_offsets(
    s: &Window,
    oy: usize,
    ox0: usize,
    pixels: usize,
    ky: usize,
    kx: usize,
) -> [Option<usize>; TILE_PIXELS] {
    let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
    let mut at = [None; TILE_PIXELS];
    if iy < 0 || iy >= s.in_h as isize {
        return at;
    }
    for (p, a) in at.iter_mut().enumerate().take(pixels) {
        let ix = ((ox0 + p) * s.stride[1] + kx) as isize - s.pads[1] as isize;
        if ix >= 0 && ix < s.in_w as isize {
            *a = Some((iy as usize * s.in_w + ix as usize) * s.in_c);
        }
    }
    at
}
