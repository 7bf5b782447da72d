//! The integer arithmetic every kernel shares: output quantisation, the fused residual,
//! and requantisation by a Q31 multiplier and a power of two, rounded once.
//!
//! Each output channel carries `(bias, multiplier, shift)`: the int32 bias already holds
//! the input zero-point correction (`b − z_in·Σw`), so padded taps read the input zero
//! point and the accumulator is `bias + Σ w·x`.

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

/// The epilogue of every int8 op, element by element: `acc` requantised, plus the
/// residual term and the zero point (both saturating), clamped.
#[inline]
pub fn finish(acc: i32, multiplier: i32, shift: i32, residual: i32, out: OutQuant) -> i8 {
    let v = requantize(acc, multiplier, shift)
        .saturating_add(residual)
        .saturating_add(out.zero_point);
    v.clamp(out.min as i32, out.max as i32) as i8
}

/// The residual's contribution to output element `idx`, at the output scale.
#[inline]
pub fn residual_term(residual: &Residual<'_>, idx: usize, output: &[i8]) -> i32 {
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
}
