//! The AVX2 epilogue on eight channels a vector. AVX2 has neither mask registers nor a
//! 64-bit arithmetic shift: the rounded product is shifted as unsigned with 2⁶³ added,
//! and the 2^(63 − shift) that leaves in the result taken back off, which is exact.

use core::arch::x86_64::*;

use crate::conv::contract::Conv;
use crate::conv::params;
use crate::quant::Residual;

/// Channels per vector.
pub const LANES: usize = 8;

/// [`crate::quant::requantize`] on eight lanes: multiplier, left shift, and per 64-bit
/// product the total right shift `31 + right`.
#[derive(Clone, Copy)]
pub struct Requant8 {
    multiplier: __m256i,
    left: __m256i,
    any_left: bool,
    /// The total shifts of lanes 0, 2, 4, 6 and of 1, 3, 5, 7, as 64-bit counts.
    shift_even: __m256i,
    shift_odd: __m256i,
    /// `2^(total − 1) + 2⁶³` per 64-bit product: the rounding half, and the offset that
    /// makes the product's unsigned shift an arithmetic one.
    round_even: __m256i,
    round_odd: __m256i,
    /// `2^(63 − total)` modulo 2³² per lane: what the offset adds to the shifted result.
    excess: __m256i,
}

impl Requant8 {
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    pub unsafe fn new(multiplier: __m256i, shift: __m256i) -> Self {
        let zero = _mm256_setzero_si256();
        let left = _mm256_max_epi32(shift, zero);
        let right = _mm256_sub_epi32(zero, _mm256_min_epi32(shift, zero));
        let total = _mm256_add_epi32(right, _mm256_set1_epi32(31));
        let shift_even = _mm256_and_si256(total, _mm256_set1_epi64x(0xFFFF_FFFF));
        let shift_odd = _mm256_srli_epi64::<32>(total);
        let one = _mm256_set1_epi64x(1);
        let top = _mm256_set1_epi64x(i64::MIN);
        let round = |s| _mm256_add_epi64(_mm256_sllv_epi64(one, _mm256_sub_epi64(s, one)), top);
        // 63 − total is 1 ..= 32; a shift by 32 gives 0, which is 2³² modulo 2³².
        let to_top = _mm256_sub_epi32(_mm256_set1_epi32(63), total);
        Requant8 {
            multiplier,
            left,
            any_left: _mm256_movemask_epi8(_mm256_cmpgt_epi32(left, zero)) != 0,
            shift_even,
            shift_odd,
            round_even: round(shift_even),
            round_odd: round(shift_odd),
            excess: _mm256_sllv_epi32(_mm256_set1_epi32(1), to_top),
        }
    }

    /// One multiplier and shift on every lane.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    pub unsafe fn uniform(multiplier: i32, shift: i32) -> Self {
        Self::new(_mm256_set1_epi32(multiplier), _mm256_set1_epi32(shift))
    }

    /// Same as [`crate::quant::requantize`] on every lane (multipliers are ≥ 0, so the
    /// results fit 32 bits).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    pub unsafe fn apply(&self, x: __m256i) -> __m256i {
        let x = if self.any_left {
            // x · 2^left, saturated as `i32::saturating_mul` does.
            let shifted = _mm256_sllv_epi32(x, self.left);
            let kept = _mm256_cmpeq_epi32(_mm256_srav_epi32(shifted, self.left), x);
            _mm256_blendv_epi8(saturated(x), shifted, kept)
        } else {
            x
        };
        // (x·m + 2^(total − 1)) >> total on 64-bit products: one rounding, halves up.
        let even = _mm256_srlv_epi64(
            _mm256_add_epi64(_mm256_mul_epi32(x, self.multiplier), self.round_even),
            self.shift_even,
        );
        let odd = _mm256_srlv_epi64(
            _mm256_add_epi64(
                _mm256_mul_epi32(
                    _mm256_srli_epi64::<32>(x),
                    _mm256_srli_epi64::<32>(self.multiplier),
                ),
                self.round_odd,
            ),
            self.shift_odd,
        );
        let both = _mm256_blend_epi32::<0b1010_1010>(even, _mm256_slli_epi64::<32>(odd));
        _mm256_sub_epi32(both, self.excess)
    }
}

/// `i32::MAX` where `x ≥ 0`, `i32::MIN` where it is negative.
#[inline(always)]
unsafe fn saturated(x: __m256i) -> __m256i {
    _mm256_xor_si256(_mm256_srai_epi32::<31>(x), _mm256_set1_epi32(i32::MAX))
}

/// `a + b` saturated, lane by lane.
#[inline(always)]
unsafe fn saturating_add(a: __m256i, b: __m256i) -> __m256i {
    let s = _mm256_add_epi32(a, b);
    let over = _mm256_and_si256(_mm256_xor_si256(a, s), _mm256_xor_si256(b, s));
    _mm256_blendv_epi8(s, saturated(a), _mm256_srai_epi32::<31>(over))
}

/// The residual operand of a conv, for the vector epilogue.
pub enum Residual8 {
    None,
    Separate(*const i8, __m256i, Requant8),
    InPlace(__m256i, Requant8),
}

impl Residual8 {
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    pub unsafe fn new(r: &Residual<'_>) -> Self {
        match *r {
            Residual::None => Residual8::None,
            Residual::Separate {
                data,
                zero_point,
                multiplier,
                shift,
            } => Residual8::Separate(
                data.as_ptr(),
                _mm256_set1_epi32(zero_point),
                Requant8::uniform(multiplier, shift),
            ),
            Residual::InPlace {
                zero_point,
                multiplier,
                shift,
            } => Residual8::InPlace(
                _mm256_set1_epi32(zero_point),
                Requant8::uniform(multiplier, shift),
            ),
        }
    }

    /// The residual's term of the eight output elements at `out + at`, at the output
    /// scale (zero without a residual).
    #[inline(always)]
    unsafe fn term(&self, at: usize, out: *const i8) -> Option<__m256i> {
        let (ptr, zp, q) = match *self {
            Residual8::None => return None,
            Residual8::Separate(data, zp, q) => (data.add(at), zp, q),
            Residual8::InPlace(zp, q) => (out.add(at), zp, q),
        };
        let bytes = _mm_loadl_epi64(ptr as *const __m128i);
        Some(q.apply(_mm256_sub_epi32(_mm256_cvtepi8_epi32(bytes), zp)))
    }
}

/// Requantisation constants of eight channels, in vector registers.
pub struct Quant8 {
    bias: __m256i,
    shift: Requant8,
    lo: __m256i,
    hi: __m256i,
    zero_point: __m256i,
}

impl Quant8 {
    /// Channels `o0 .. o0 + 8` of `c` (all of them exist), each bias less
    /// `offset(channel)` (VNNI's `128 · Σw`, or none).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline(always)]
    pub unsafe fn load(c: &Conv<'_>, o0: usize, offset: impl Fn(usize) -> i32) -> Self {
        debug_assert!(o0 + LANES <= c.window.out_c);
        let (mut bias, mut mult, mut shift) = ([0i32; LANES], [0i32; LANES], [0i32; LANES]);
        for j in 0..LANES {
            (bias[j], mult[j], shift[j]) = params::record(c.params, o0 + j);
            bias[j] = bias[j].wrapping_sub(offset(o0 + j));
        }
        let load = |v: &[i32; LANES]| _mm256_loadu_si256(v.as_ptr() as *const __m256i);
        let zp = c.out.zero_point;
        Quant8 {
            bias: load(&bias),
            shift: Requant8::new(load(&mult), load(&shift)),
            // Saturating add of the zero point then clamp = clamp to the range less the
            // zero point, then add (the bounds are int8, the zero point small).
            lo: _mm256_set1_epi32(c.out.min as i32 - zp),
            hi: _mm256_set1_epi32(c.out.max as i32 - zp),
            zero_point: _mm256_set1_epi32(zp),
        }
    }

    /// Bias, requantisation, residual, clamp and zero point of eight sums, the output
    /// elements `out + at ..` (the residual read there if in place): int8 values in
    /// 32-bit lanes.
    #[inline(always)]
    unsafe fn finish(&self, acc: __m256i, r: &Residual8, at: usize, out: *const i8) -> __m256i {
        let mut v = self.shift.apply(_mm256_add_epi32(acc, self.bias));
        if let Some(term) = r.term(at, out) {
            v = saturating_add(v, term);
        }
        let v = _mm256_min_epi32(_mm256_max_epi32(v, self.lo), self.hi);
        _mm256_add_epi32(v, self.zero_point)
    }
}

/// The epilogue of sixteen channels of one pixel (sums in channel order, eight a
/// vector), stored at `out + at`.
///
/// # Safety
/// The CPU has AVX2; `out + at ..+ 16` (and the residual's) are in bounds.
#[inline(always)]
pub unsafe fn store16(q: &[Quant8; 2], acc: [__m256i; 2], r: &Residual8, at: usize, out: *mut i8) {
    let a = q[0].finish(acc[0], r, at, out);
    let b = q[1].finish(acc[1], r, at + LANES, out);
    _mm_storeu_si128(out.add(at) as *mut __m128i, bytes(a, b));
}

/// The epilogue of eight channels of one pixel, stored at `out + at`.
///
/// # Safety
/// The CPU has AVX2; `out + at ..+ 8` (and the residual's) are in bounds.
#[inline(always)]
pub unsafe fn store8(q: &Quant8, acc: __m256i, r: &Residual8, at: usize, out: *mut i8) {
    let a = q.finish(acc, r, at, out);
    _mm_storel_epi64(out.add(at) as *mut __m128i, bytes(a, a));
}

/// The int8 values of `a`'s then `b`'s lanes, in order (`bytes(a, a)`: `a`'s twice).
#[inline(always)]
unsafe fn bytes(a: __m256i, b: __m256i) -> __m128i {
    // Packing works within 128-bit halves: a0-3 b0-3 | a4-7 b4-7, then a0-7 | b0-7.
    let words = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
    _mm_packs_epi16(
        _mm256_castsi256_si128(words),
        _mm256_extracti128_si256::<1>(words),
    )
}

/// Eight channels' sums from the `vpmaddwd` accumulators of two groups of four channels
/// (each channel's two partial sums side by side).
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
pub unsafe fn channel_sums(lo: __m256i, hi: __m256i) -> __m256i {
    // c0 c1 c4 c5 | c2 c3 c6 c7, then in order.
    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo, hi))
}
