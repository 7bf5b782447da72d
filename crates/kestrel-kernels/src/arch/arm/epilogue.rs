//! The conv epilogue on Armv7E-M: [`crate::quant::requantize`]'s one rounding as a single
//! `SMLAL` (the product plus the rounding half, in 64 bits) and a shift of its high word,
//! where the element-by-element definition ([`crate::conv::epilogue::TileStore`]) shifts
//! a 64-bit value by a variable amount, which takes a Cortex-M several instructions and
//! branches per element. Same results as the definition, for every shift the parser
//! accepts (the kernel check covers the limits).

use crate::conv::contract::Conv;
use crate::conv::params;
use crate::quant::Residual;

/// A requantisation `(multiplier, shift)` taken apart once for [`Requant::apply`].
#[derive(Clone, Copy)]
struct Requant {
    multiplier: i32,
    left: u32,
    right: u32,
    /// The rounding half, `2^(30 + right)`.
    round: i64,
}

impl Requant {
    fn of(multiplier: i32, shift: i32) -> Requant {
        let (left, right) = (shift.max(0) as u32, (-shift).max(0) as u32);
        Requant {
            multiplier,
            left,
            right,
            round: 1i64 << (30 + right),
        }
    }

    /// [`crate::quant::requantize`]: `⌊(x'·m + 2^(30+right)) / 2^(31+right)⌋` with `x'` the
    /// saturated `x·2^left`. The result always fits in 32 bits (`|x'·m| < 2⁶²`), so the
    /// definition's clamp never acts; for `right ≥ 1` the floor of the high word shifted
    /// again is the floor of the whole (floors compose).
    #[inline(always)]
    fn apply(self, x: i32) -> i32 {
        let x = if self.left > 0 {
            x.saturating_mul(1 << self.left)
        } else {
            x
        };
        let v = x as i64 * self.multiplier as i64 + self.round;
        if self.right == 0 {
            (v >> 31) as i32
        } else {
            ((v >> 32) as i32) >> (self.right - 1)
        }
    }
}

/// The residual operand.
#[derive(Clone, Copy)]
enum Operand<'a> {
    None,
    Separate(&'a [i8]),
    InPlace,
}

/// The epilogue of one block of up to `N` output channels from `o0`, worked out once
/// for every tile of a panel: each channel's bias and requantisation, the residual's,
/// the output's zero point and clamp.
pub struct Channels<'a, const N: usize> {
    o0: usize,
    channels: usize,
    oc: usize,
    bias: [i32; N],
    requant: [Requant; N],
    residual: Operand<'a>,
    residual_zero_point: i32,
    residual_requant: Requant,
    zero_point: i32,
    min: i32,
    max: i32,
}

impl<'a, const N: usize> Channels<'a, N> {
    /// Channels `o0 .. o0 + channels` (`channels ≤ N`) of conv `c`.
    pub fn of(c: &Conv<'a>, o0: usize, channels: usize) -> Self {
        let mut bias = [0; N];
        let mut requant = [Requant::of(0, 0); N];
        for n in 0..channels.min(N) {
            let (b, multiplier, shift) = params::record(c.params, o0 + n);
            bias[n] = b;
            requant[n] = Requant::of(multiplier, shift);
        }
        let (residual, residual_zero_point, residual_requant) = match c.residual {
            Residual::None => (Operand::None, 0, Requant::of(0, 0)),
            Residual::Separate {
                data,
                zero_point,
                multiplier,
                shift,
            } => (
                Operand::Separate(data),
                zero_point,
                Requant::of(multiplier, shift),
            ),
            Residual::InPlace {
                zero_point,
                multiplier,
                shift,
            } => (Operand::InPlace, zero_point, Requant::of(multiplier, shift)),
        };
        Channels {
            o0,
            channels: channels.min(N),
            oc: c.window.out_c,
            bias,
            requant,
            residual,
            residual_zero_point,
            residual_requant,
            zero_point: c.out.zero_point,
            min: c.out.min as i32,
            max: c.out.max as i32,
        }
    }

    /// Stores the sums `acc[m][n]` of pixels `p0 .. p0 + rows` (in the output slice):
    /// the same results as [`crate::conv::epilogue::TileStore::lanes`] with no offset.
    #[inline(always)]
    pub fn store<const M: usize>(
        &self,
        acc: &[[i32; N]; M],
        rows: usize,
        p0: usize,
        output: &mut [i8],
    ) {
        for (m, acc) in acc.iter().enumerate().take(rows) {
            let base = (p0 + m) * self.oc + self.o0;
            let out = &mut output[base..][..self.channels];
            let (zp, q) = (self.residual_zero_point, self.residual_requant);
            match self.residual {
                Operand::None => self.row(acc, out, |_, _| 0),
                Operand::Separate(data) => {
                    let r = &data[base..][..self.channels];
                    self.row(acc, out, |n, _| q.apply(r[n] as i32 - zp))
                }
                Operand::InPlace => self.row(acc, out, |_, current| q.apply(current as i32 - zp)),
            }
        }
    }

    /// One pixel's channels; `residual(n, current output)` is the residual term.
    #[inline(always)]
    fn row(&self, acc: &[i32; N], out: &mut [i8], residual: impl Fn(usize, i8) -> i32) {
        for (n, o) in out.iter_mut().enumerate().take(N) {
            let v = self.requant[n]
                .apply(self.bias[n].wrapping_add(acc[n]))
                .saturating_add(residual(n, *o))
                .saturating_add(self.zero_point);
            *o = v.max(self.min).min(self.max) as i8;
        }
    }
}
