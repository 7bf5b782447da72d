//! x86-64 micro-kernels for [`crate::gemm`]: AVX2 (`vpmaddwd` on sign-extended int16) and
//! AVX-512 VNNI (`vpdpbusd`, unsigned × signed: the driver stores inputs as `x + 128` and
//! removes `128 · Σw` afterwards, exactly).

use core::arch::x86_64::*;

use crate::gemm::{Tile, KC, MR, NR};

/// # Safety
/// `a` holds `steps · MR · KC` bytes, `b` `steps · NR · KC`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn tile_avx2(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m] lanes: [n0 n1 n2 n3] partial sums of the low 8 k, then of the high 8 k.
    let mut acc = [_mm256_setzero_si256(); MR];
    for s in 0..steps {
        let ap = a.add(s * MR * KC);
        let bp = b.add(s * NR * KC);
        let mut bv = [_mm256_setzero_si256(); NR];
        for (n, v) in bv.iter_mut().enumerate() {
            *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(n * KC) as *const __m128i));
        }
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(ap.add(m * KC) as *const __m128i));
            let p0 = _mm256_madd_epi16(x, bv[0]);
            let p1 = _mm256_madd_epi16(x, bv[1]);
            let p2 = _mm256_madd_epi16(x, bv[2]);
            let p3 = _mm256_madd_epi16(x, bv[3]);
            let h01 = _mm256_hadd_epi32(p0, p1);
            let h23 = _mm256_hadd_epi32(p2, p3);
            *acc_m = _mm256_add_epi32(*acc_m, _mm256_hadd_epi32(h01, h23));
        }
    }
    let mut out = [[0i32; NR]; MR];
    for (m, row) in out.iter_mut().enumerate() {
        let lo = _mm256_castsi256_si128(acc[m]);
        let hi = _mm256_extracti128_si256::<1>(acc[m]);
        _mm_storeu_si128(row.as_mut_ptr() as *mut __m128i, _mm_add_epi32(lo, hi));
    }
    out
}

/// # Safety
/// As [`tile_avx2`], with AVX-512 F/BW/VNNI; `a` holds inputs stored as `x ^ 0x80`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile_vnni(a: *const i8, b: *const i8, steps: usize) -> Tile {
    // acc[m]: 128-bit lane n holds four partial sums of output channel n.
    let mut acc = [_mm512_setzero_si512(); MR];
    for s in 0..steps {
        let w = _mm512_loadu_si512(b.add(s * NR * KC) as *const _);
        let ap = a.add(s * MR * KC);
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let x = _mm512_broadcast_i32x4(_mm_loadu_si128(ap.add(m * KC) as *const __m128i));
            *acc_m = _mm512_dpbusd_epi32(*acc_m, x, w);
        }
    }
    let mut out = [[0i32; NR]; MR];
    for (m, row) in out.iter_mut().enumerate() {
        let mut lanes = [0i32; 16];
        _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, acc[m]);
        for (n, v) in row.iter_mut().enumerate() {
            *v = lanes[4 * n..4 * n + 4]
                .iter()
                .fold(0i32, |t, &x| t.wrapping_add(x));
        }
    }
    out
}

// ---- The 16-channel lane layout (`crate::gemm16`) ----

use crate::gemm::{param, round_up, PackedConv};
use crate::gemm16::{panel_with_tiles, Panel, KG, MR as MR16, OCB};
use crate::scalar::Residual;

/// Pixels per VNNI tile.
const VNNI_MR: usize = 8;

/// The panel on AVX2: `vpmaddwd` on sign-extended pairs, an `MR × 16` tile at a time,
/// the scalar epilogue.
///
/// # Safety
/// The CPU has AVX2; `c`, `p` and `output` are consistent (the parser checked shapes).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn panel_avx2(c: &PackedConv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel_with_tiles(c, p, output, |_| 0, |m0, w| tile16_avx2(p, m0, w));
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn tile16_avx2(p: &Panel<'_>, m0: usize, w: &[i8]) -> [[i32; OCB]; MR16] {
    debug_assert!(w.len() >= OCB * p.k_pad && p.group == MR16);
    // acc[m][j]: channels 4j..4j+4 of pixel m, two partial sums per channel.
    let mut acc = [[_mm256_setzero_si256(); 4]; MR16];
    let (a, w) = (p.tile(m0, MR16).as_ptr(), w.as_ptr());
    for s in 0..p.steps() {
        for g in 0..KC / KG {
            let wp = w.add((s * KC / KG + g) * OCB * KG);
            let mut wv = [_mm256_setzero_si256(); 4];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(16 * j) as *const __m128i));
            }
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let at = a.add((s * MR16 + m) * KC + g * KG);
                let four = core::ptr::read_unaligned(at as *const i32);
                let x = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(four)));
                for (j, acc_mj) in acc_m.iter_mut().enumerate() {
                    *acc_mj = _mm256_add_epi32(*acc_mj, _mm256_madd_epi16(x, wv[j]));
                }
            }
        }
    }
    let mut out = [[0i32; OCB]; MR16];
    for (m, row) in out.iter_mut().enumerate() {
        for j in 0..4 {
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc[m][j]);
            for q in 0..4 {
                row[4 * j + q] = lanes[2 * q].wrapping_add(lanes[2 * q + 1]);
            }
        }
    }
    out
}

/// The panel on AVX-512 VNNI: tiles of 8 pixels × 32 (or 16) channels, four input bytes
/// broadcast against sixteen channels' four weights per `vpdpbusd`, and the epilogue in
/// vector registers.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI; the panel holds inputs stored as `x ^ 0x80`; `c`, `p`
/// and `output` are consistent (the parser checked shapes).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn panel_vnni(c: &PackedConv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    if p.chunk == 64 {
        blocks_vnni::<64>(c, p, output)
    } else {
        blocks_vnni::<KC>(c, p, output)
    }
}

/// Packs a panel in 64-byte chunks with AVX-512 copies (`crate::gemm::pack_input_64`).
///
/// # Safety
/// The CPU has AVX-512 F/BW; the conv's input channels are a multiple of 64; `a` holds
/// `count` (rounded up to 8) packed rows.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn pack_panel_64(c: &PackedConv<'_>, first: usize, count: usize, a: &mut [i8]) {
    crate::gemm::pack_input_64::<true>((c.window, c.input, c.zero_point, first, count, a), VNNI_MR)
}

#[inline(always)]
unsafe fn blocks_vnni<const CH: usize>(c: &PackedConv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let blocks = c.window.out_c.div_ceil(OCB);
    let mut b = 0;
    while b < blocks {
        if b + 2 <= blocks {
            block_vnni::<2, CH>(c, p, b, output);
            b += 2;
        } else {
            block_vnni::<1, CH>(c, p, b, output);
            b += 1;
        }
    }
}

#[inline(always)]
unsafe fn block_vnni<const NB: usize, const CH: usize>(
    c: &PackedConv<'_>,
    p: &Panel<'_>,
    b0: usize,
    output: &mut [i8],
) {
    let oc = c.window.out_c;
    let sums_at = round_up(oc, OCB) * p.k_pad;
    let quant: [Quant16; NB] = core::array::from_fn(|i| Quant16::load(c, b0 + i, sums_at));
    let residual = ResidualQuant::new(&c.residual);
    let w0 = c.packed.as_ptr().add(b0 * OCB * p.k_pad);
    let out = output.as_mut_ptr();
    assert!(output.len() >= (p.p0 + p.count) * oc && p.group == VNNI_MR);
    let t = VnniTile {
        c,
        p,
        quant: &quant,
        residual: &residual,
        w0,
        out,
    };
    // Whole 8-pixel tiles, then the rest in tiles of 4, 2 and 1 (a 7×7 map is 49
    // pixels: no tile computes pixels that do not exist).
    let whole = p.count / VNNI_MR * VNNI_MR;
    for m0 in (0..whole).step_by(VNNI_MR) {
        t.run::<CH, VNNI_MR>(m0);
    }
    let mut m0 = whole;
    if p.count - m0 >= 4 {
        t.run::<CH, 4>(m0);
        m0 += 4;
    }
    if p.count - m0 >= 2 {
        t.run::<CH, 2>(m0);
        m0 += 2;
    }
    if p.count - m0 >= 1 {
        t.run::<CH, 1>(m0);
    }
}

/// What every tile of a block of channels shares.
struct VnniTile<'a, 'c, const NB: usize> {
    c: &'a PackedConv<'c>,
    p: &'a Panel<'a>,
    quant: &'a [Quant16; NB],
    residual: &'a ResidualQuant,
    w0: *const i8,
    out: *mut i8,
}

impl<const NB: usize> VnniTile<'_, '_, NB> {
    /// `MR` pixels from pixel `m0` of the panel (inside one 8-pixel group) × 16·NB
    /// channels, accumulated and stored.
    #[inline(always)]
    unsafe fn run<const CH: usize, const MR: usize>(&self, m0: usize) {
        let (p, c) = (self.p, self.c);
        let oc = c.window.out_c;
        let mut acc = [[_mm512_setzero_si512(); MR]; NB];
        // The 8-pixel group holding m0, and m0's row in it.
        let group = p.tile(m0 / VNNI_MR * VNNI_MR, VNNI_MR).as_ptr();
        let tile = group.add(m0 % VNNI_MR * CH);
        let mut wp = self.w0;
        for s in 0..p.steps() {
            // 16 bytes of each pixel: step s lies in chunk s / (CH / 16).
            let (chunk, within) = (s / (CH / KC), s % (CH / KC));
            let ap = tile.add(chunk * VNNI_MR * CH + within * KC);
            for g in 0..KC / KG {
                let w: [__m512i; NB] = core::array::from_fn(|i| {
                    _mm512_loadu_si512(wp.add(i * OCB * p.k_pad + g * OCB * KG) as *const _)
                });
                #[allow(clippy::needless_range_loop)] // acc[i][m]: both indices
                for m in 0..MR {
                    let four = core::ptr::read_unaligned(ap.add(m * CH + g * KG) as *const i32);
                    let x = _mm512_set1_epi32(four);
                    for i in 0..NB {
                        acc[i][m] = _mm512_dpbusd_epi32(acc[i][m], x, w[i]);
                    }
                }
            }
            wp = wp.add(OCB * KC);
        }
        for (i, q) in self.quant.iter().enumerate() {
            for (m, &v) in acc[i].iter().enumerate() {
                let at = (p.p0 + m0 + m) * oc + q.o0;
                q.store(v, self.residual, at, self.out, c.out.zero_point);
            }
        }
    }
}

/// Requantisation constants of sixteen channels, in vector registers.
struct Quant16 {
    o0: usize,
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
struct Requant16 {
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

    /// Same as [`crate::scalar::requantize`] on every lane (multipliers are ≥ 0, so the
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
enum ResidualQuant {
    None,
    Separate(*const i8, i32, Requant16),
    InPlace(i32, Requant16),
}

impl ResidualQuant {
    #[inline(always)]
    unsafe fn new(r: &Residual<'_>) -> Self {
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
    unsafe fn load(c: &PackedConv<'_>, block: usize, sums_at: usize) -> Self {
        let oc = c.window.out_c;
        let o0 = block * OCB;
        let n = OCB.min(oc - o0);
        let (mut bias, mut mult, mut shift) = ([0i32; OCB], [0i32; OCB], [0i32; OCB]);
        for j in 0..n {
            let (b, m, s) = param(c.params, o0 + j);
            let sum = crate::gemm::channel_sum(c.packed, sums_at, o0 + j);
            // VNNI multiplied x + 128: take 128 · Σw back out (wrapping, exactly).
            bias[j] = b.wrapping_sub(sum.wrapping_mul(128));
            mult[j] = m;
            shift[j] = s;
        }
        let load = |v: &[i32; OCB]| _mm512_loadu_si512(v.as_ptr() as *const _);
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
    unsafe fn store(
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
