//! The AVX-512 vector epilogue: requantisation (64-bit products, one rounding, as
//! [`crate::quant::requantize`]), residual, zero point and clamp on sixteen channels.

use core::arch::x86_64::*;

use crate::conv::contract::Conv;
use crate::conv::layout::{lanes16, Shape};
use crate::conv::params;
use crate::quant::Residual;

/// Requantisation constants of sixteen channels, in vector registers.
#[derive(Clone, Copy)]
pub struct Quant16 {
    pub o0: usize,
    lanes: __mmask16,
    /// The bias minus VNNI's `128 · Σw`.
    bias: __m512i,
    shift: Requant16,
    lo: __m512i,
    hi: __m512i,
}

/// `requantize` on sixteen lanes: multiplier, left shift, and per 64-bit product the total
/// right shift `31 + right` with its rounding half.
#[derive(Clone, Copy)]
pub struct Requant16 {
    multiplier: __m512i,
    left: __m512i,
    any_left: bool,
    /// Lanes 0, 2, 4, … (the low halves of the 64-bit lanes) and 1, 3, 5, ….
    shift_even: __m512i,
    shift_odd: __m512i,
    half_even: __m512i,
    half_odd: __m512i,
}

impl Requant16 {
    #[inline(always)]
    unsafe fn new(multiplier: __m512i, shift: __m512i) -> Self {
        let zero = _mm512_setzero_si512();
        let left = _mm512_max_epi32(shift, zero);
        let right = _mm512_sub_epi32(zero, _mm512_min_epi32(shift, zero));
        let total = _mm512_add_epi32(right, _mm512_set1_epi32(31));
        let shift_even = _mm512_and_si512(total, _mm512_set1_epi64(0xFFFF_FFFF));
        let shift_odd = _mm512_srli_epi64::<32>(total);
        let one = _mm512_set1_epi64(1);
        Requant16 {
            multiplier,
            left,
            any_left: _mm512_cmpgt_epi32_mask(left, zero) != 0,
            shift_even,
            shift_odd,
            half_even: _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_even, one)),
            half_odd: _mm512_sllv_epi64(one, _mm512_sub_epi64(shift_odd, one)),
        }
    }

    /// Same as [`crate::quant::requantize`] on every lane (multipliers are ≥ 0, so the
    /// results fit 32 bits).
    #[inline(always)]
    unsafe fn apply(&self, x: __m512i) -> __m512i {
        let x = if self.any_left {
            // x · 2^left, saturated as `i32::saturating_mul` does.
            let shifted = _mm512_sllv_epi32(x, self.left);
            let lost = _mm512_cmpneq_epi32_mask(_mm512_srav_epi32(shifted, self.left), x);
            let sat = _mm512_xor_si512(_mm512_srai_epi32::<31>(x), _mm512_set1_epi32(i32::MAX));
            _mm512_mask_blend_epi32(lost, shifted, sat)
        } else {
            x
        };
        // (x·m + 2^(total − 1)) >> total on 64-bit products: one rounding, halves up.
        let even = _mm512_srav_epi64(
            _mm512_add_epi64(_mm512_mul_epi32(x, self.multiplier), self.half_even),
            self.shift_even,
        );
        let odd = _mm512_srav_epi64(
            _mm512_add_epi64(
                _mm512_mul_epi32(
                    _mm512_srli_epi64::<32>(x),
                    _mm512_srli_epi64::<32>(self.multiplier),
                ),
                self.half_odd,
            ),
            self.shift_odd,
        );
        _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64::<32>(odd))
    }
}

/// `a + b` saturated, lane by lane.
#[inline(always)]
unsafe fn saturating_add(a: __m512i, b: __m512i) -> __m512i {
    let s = _mm512_add_epi32(a, b);
    let both = _mm512_and_si512(_mm512_xor_si512(a, s), _mm512_xor_si512(b, s));
    let over = _mm512_cmplt_epi32_mask(both, _mm512_setzero_si512());
    let sat = _mm512_xor_si512(_mm512_srai_epi32::<31>(a), _mm512_set1_epi32(i32::MAX));
    _mm512_mask_blend_epi32(over, s, sat)
}

/// The residual operand of a conv, for the vector epilogue.
pub enum ResidualQuant {
    None,
    Separate(*const i8, i32, Requant16),
    InPlace(i32, Requant16),
}

impl ResidualQuant {
    #[inline(always)]
    pub unsafe fn new(r: &Residual<'_>) -> Self {
        let q = |m: i32, s: i32| Requant16::new(_mm512_set1_epi32(m), _mm512_set1_epi32(s));
        match *r {
            Residual::None => ResidualQuant::None,
            Residual::Separate {
                data,
                zero_point,
                multiplier,
                shift,
            } => ResidualQuant::Separate(data.as_ptr(), zero_point, q(multiplier, shift)),
            Residual::InPlace {
                zero_point,
                multiplier,
                shift,
            } => ResidualQuant::InPlace(zero_point, q(multiplier, shift)),
        }
    }
}

impl Quant16 {
    #[inline(always)]
    pub unsafe fn load(c: &Conv<'_>, block: usize, shape: &Shape) -> Self {
        let oc = c.window.out_c;
        let o0 = block * lanes16::CHANNELS;
        let n = lanes16::CHANNELS.min(oc - o0);
        let (mut bias, mut mult, mut shift) = (
            [0i32; lanes16::CHANNELS],
            [0i32; lanes16::CHANNELS],
            [0i32; lanes16::CHANNELS],
        );
        for j in 0..n {
            let (b, m, s) = params::record(c.params, o0 + j);
            let sum = shape.channel_sum(c.weights, o0 + j);
            // VNNI multiplied x + 128: take 128 · Σw back out (wrapping, exactly).
            bias[j] = b.wrapping_sub(sum.wrapping_mul(128));
            mult[j] = m;
            shift[j] = s;
        }
        let load = |v: &[i32; lanes16::CHANNELS]| _mm512_loadu_si512(v.as_ptr() as *const _);
        let zp = c.out.zero_point;
        Quant16 {
            o0,
            lanes: ((1u32 << n) - 1) as __mmask16,
            bias: load(&bias),
            shift: Requant16::new(load(&mult), load(&shift)),
            // Saturating add of the zero point then clamp = clamp to the range less the
            // zero point, then add (the bounds are int8, the zero point small).
            lo: _mm512_set1_epi32(c.out.min as i32 - zp),
            hi: _mm512_set1_epi32(c.out.max as i32 - zp),
        }
    }

    /// Bias, requantisation, residual, zero point, clamp, and the store of sixteen (or
    /// fewer) channels of one pixel at `out + at`.
    #[inline(always)]
    pub unsafe fn store(
        &self,
        acc: __m512i,
        residual: &ResidualQuant,
        at: usize,
        out: *mut i8,
        zero_point: i32,
    ) {
        let mut v = self.shift.apply(_mm512_add_epi32(acc, self.bias));
        let res = match *residual {
            ResidualQuant::None => None,
            ResidualQuant::Separate(data, zp, q) => Some((data.add(at), zp, q)),
            ResidualQuant::InPlace(zp, q) => Some((out.add(at) as *const i8, zp, q)),
        };
        if let Some((ptr, zp, q)) = res {
            let bytes = _mm512_maskz_loadu_epi8(self.lanes as u64, ptr);
            let wide = _mm512_cvtepi8_epi32(_mm512_castsi512_si128(bytes));
            let term = q.apply(_mm512_sub_epi32(wide, _mm512_set1_epi32(zp)));
            v = saturating_add(v, term);
        }
        let v = _mm512_min_epi32(_mm512_max_epi32(v, self.lo), self.hi);
        let v = _mm512_add_epi32(v, _mm512_set1_epi32(zero_point));
        _mm512_mask_cvtsepi32_storeu_epi8(out.add(at), self.lanes, v);
    }
}
