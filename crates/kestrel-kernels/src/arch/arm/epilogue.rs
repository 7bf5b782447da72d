//! The conv epilogue on Armv7E-M: [`crate::quant::requantize`]'s one rounding as a single
//! `SMLAL` (the product plus the rounding half, in 64 bits) and a shift of its high word,
//! where the element-by-element definition ([`crate::conv::epilogue::TileStore`]) shifts
//! a 64-bit value by a variable amount, which takes a Cortex-M several instructions and
//! branches per element. Same results as the definition, for every shift the parser
//! accepts (the kernel check covers the limits).
//!
//! Blocks of four channels that all shift right (every conv's usual case: a scale below
//! one half) and whose residual cannot overflow its shift are stored by [`Fast`], one
//! pixel's four channels as one block of assembly (13 instructions per output, 23 with a
//! residual): the compiler's own code kept the constants on the stack and branched on
//! each shift, about twice that.

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

/// [`Fast`]'s assembly for one channel's sum into `{x}`: the sum at `{acc} + c4`, the
/// channel's constants at `{c} + c` (bias, multiplier), `+ c8` (rounding half), `+ c16`
/// (shift): the bias added, `SMLAL` on the rounding half, the high word shifted.
macro_rules! requantised {
    ($c:literal, $c4:literal, $c8:literal, $c16:literal) => {
        concat!(
            "ldr {x}, [{acc}, #",
            $c4,
            "]\n",
            "ldrd {b}, {m}, [{c}, #",
            $c,
            "]\n",
            "add {x}, {x}, {b}\n",
            "ldrd {lo}, {hi}, [{c}, #",
            $c8,
            "]\n",
            "smlal {lo}, {hi}, {x}, {m}\n",
            "ldr {b}, [{c}, #",
            $c16,
            "]\n",
            "asr {x}, {hi}, {b}\n",
        )
    };
}

/// [`Fast`]'s assembly storing `{x}` as output byte `n`: plus the zero point `{zp}`
/// (saturating, as the definition), clamped to `[{min}, 127]`.
macro_rules! stored {
    ($n:literal) => {
        concat!(
            "qadd {x}, {x}, {zp}\n",
            "ssat {x}, #8, {x}\n",
            "cmp {x}, {min}\n",
            "it lt\n",
            "movlt {x}, {min}\n",
            "strb {x}, [{o}, #",
            $n,
            "]\n",
        )
    };
}

/// The constants of [`Fast`] for one channel, as its assembly reads them (offsets
/// 0, 4, 8, 12, 16): bias, multiplier, the rounding half's low and high words, and the
/// shift of the product's high word.
type FastChannel = [i32; 5];

/// A block of four channels whose requantisations all shift right (`right ≥ 1`, no left
/// shift), so each is `SMLAL` on the rounding half and an arithmetic shift of the high
/// word; with its residual's constants (zero point, left shift, multiplier, rounding
/// half, shift: offsets 0 … 20) when it has one. The residual is an int8 minus its zero
/// point (|x| ≤ 255), so its left shift never saturates up to 22 bits, and a right
/// shift of 0 is a right shift of 1 on the input doubled (`⌊(2x·m + 2³¹)/2³²⌋ =
/// ⌊(x·m + 2³⁰)/2³¹⌋`).
#[derive(Clone, Copy)]
struct Fast {
    channels: [FastChannel; 4],
    residual: [i32; 6],
}

impl Fast {
    /// The rounding half `2^(30 + right)` as (low, high) words and the high word's shift.
    fn rounding(right: u32) -> (i32, i32, i32) {
        let round = 1i64 << (30 + right);
        (round as i32, (round >> 32) as i32, right as i32 - 1)
    }

    fn of<const N: usize>(
        bias: &[i32; N],
        requant: &[Requant; N],
        residual: Requant,
        zp: i32,
    ) -> Option<Fast> {
        if N != 4 {
            return None;
        }
        let mut channels = [[0; 5]; 4];
        for (n, ch) in channels.iter_mut().enumerate() {
            let q = requant[n];
            if q.left > 0 || q.right == 0 {
                return None;
            }
            let (lo, hi, shift) = Fast::rounding(q.right);
            *ch = [bias[n], q.multiplier, lo, hi, shift];
        }
        let (left, right) = if residual.right == 0 {
            (residual.left + 1, 1)
        } else {
            (residual.left, residual.right)
        };
        if left > 22 {
            return None;
        }
        let (lo, hi, shift) = Fast::rounding(right);
        Some(Fast {
            channels,
            residual: [zp, left as i32, residual.multiplier, lo, hi, shift],
        })
    }

    /// One pixel's four sums `acc` into `out[0..4]`, clamped to `[min, 127]` after the
    /// output zero point `zp`.
    ///
    /// # Safety
    /// `acc .. acc + 4` is readable, `out .. out + 4` writable.
    #[inline(always)]
    unsafe fn row(&self, acc: *const i32, out: *mut i8, zp: i32, min: i32) {
        macro_rules! channel {
            ($n:literal, $c:literal, $c4:literal, $c8:literal, $c16:literal) => {
                concat!(requantised!($c, $c4, $c8, $c16), stored!($n))
            };
        }
        core::arch::asm!(
            channel!("0", "0", "0", "8", "16"),
            channel!("1", "20", "4", "28", "36"),
            channel!("2", "40", "8", "48", "56"),
            channel!("3", "60", "12", "68", "76"),
            c = in(reg) self.channels.as_ptr(),
            acc = in(reg) acc,
            o = in(reg) out,
            zp = in(reg) zp,
            min = in(reg) min,
            x = out(reg) _,
            b = out(reg) _,
            m = out(reg) _,
            lo = out(reg) _,
            hi = out(reg) _,
            options(nostack),
        );
    }

    /// As [`Fast::row`] with the residual `residual .. residual + 4` (which may be
    /// `out` itself: each byte is read before it is written) brought to the output's
    /// scale and added before the zero point.
    ///
    /// # Safety
    /// As [`Fast::row`], and `residual .. residual + 4` is readable.
    #[inline(always)]
    unsafe fn row_residual(
        &self,
        acc: *const i32,
        residual: *const i8,
        out: *mut i8,
        zp: i32,
        min: i32,
    ) {
        // The residual byte minus its zero point, shifted left, then requantised as
        // the sums are (`{q}`: its constants) and added with saturation.
        macro_rules! channel {
            ($n:literal, $c:literal, $c4:literal, $c8:literal, $c16:literal) => {
                concat!(
                    requantised!($c, $c4, $c8, $c16),
                    "ldrsb {b}, [{r}, #",
                    $n,
                    "]\n",
                    "ldrd {m}, {lo}, [{q}]\n",
                    "sub {b}, {b}, {m}\n",
                    "lsl {b}, {b}, {lo}\n",
                    "ldr {m}, [{q}, #8]\n",
                    "ldrd {lo}, {hi}, [{q}, #12]\n",
                    "smlal {lo}, {hi}, {b}, {m}\n",
                    "ldr {m}, [{q}, #20]\n",
                    "asr {hi}, {hi}, {m}\n",
                    "qadd {x}, {x}, {hi}\n",
                    stored!($n)
                )
            };
        }
        core::arch::asm!(
            channel!("0", "0", "0", "8", "16"),
            channel!("1", "20", "4", "28", "36"),
            channel!("2", "40", "8", "48", "56"),
            channel!("3", "60", "12", "68", "76"),
            c = in(reg) self.channels.as_ptr(),
            q = in(reg) self.residual.as_ptr(),
            acc = in(reg) acc,
            r = in(reg) residual,
            o = in(reg) out,
            zp = in(reg) zp,
            min = in(reg) min,
            x = out(reg) _,
            b = out(reg) _,
            m = out(reg) _,
            lo = out(reg) _,
            hi = out(reg) _,
            options(nostack),
        );
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
    /// The block in assembly, where it can be (four channels, right shifts, a clamp at
    /// the top of int8).
    fast: Option<Fast>,
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
        let fast = if channels >= 4 && c.out.max == i8::MAX {
            Fast::of(&bias, &requant, residual_requant, residual_zero_point)
        } else {
            None
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
            fast,
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
        if let Some(fast) = &self.fast {
            for (m, acc) in acc.iter().enumerate().take(rows) {
                let base = (p0 + m) * self.oc + self.o0;
                let out = &mut output[base..][..4];
                // SAFETY: `acc` holds N = 4 sums (`Fast` exists only then), `out` and
                // the residual's slice 4 bytes each (bounds checked by the slicing).
                unsafe {
                    match self.residual {
                        Operand::None => {
                            fast.row(acc.as_ptr(), out.as_mut_ptr(), self.zero_point, self.min)
                        }
                        Operand::Separate(data) => {
                            let r = &data[base..][..4];
                            fast.row_residual(
                                acc.as_ptr(),
                                r.as_ptr(),
                                out.as_mut_ptr(),
                                self.zero_point,
                                self.min,
                            )
                        }
                        Operand::InPlace => {
                            let o = out.as_mut_ptr();
                            fast.row_residual(acc.as_ptr(), o, o, self.zero_point, self.min)
                        }
                    }
                }
            }
            return;
        }
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
