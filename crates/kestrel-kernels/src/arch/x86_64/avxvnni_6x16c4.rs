//! `avxvnni_6x16c4`: 256-bit VNNI on [`Packing::Lanes16`](crate::conv::contract::Packing)
//! for CPUs with AVX2 and AVX-VNNI but no AVX-512 (Alder Lake and later Intel client
//! cores, the N100): tiles of 6 pixels × 16 channels, four input bytes broadcast against
//! eight channels' four weights per `vpdpbusd` (unsigned × signed: the input is packed as
//! `x + 128`, and `128 · Σw` taken back out of the bias), the AVX2 epilogue.
//!
//! The same tile is compiled twice: with AVX-VNNI's VEX `vpdpbusd` and with AVX-512
//! VNNI's EVEX one on `ymm`, which computes the same sums; a CPU with either runs it (the
//! tests run the EVEX form wherever AVX-512 VNNI is, and qemu has no AVX-VNNI).

use core::arch::x86_64::*;

use crate::arch::x86_64::epilogue::avx2::{self as epi, Quant8, Residual8};
use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::epilogue::TileStore;
use crate::conv::kernel::{Panel, PanelKernel};
use crate::conv::layout::{lanes16, Shape};

/// Pixels per tile: 12 accumulators, 2 weight vectors and the input fill 15 of the 16
/// `ymm` registers.
pub const MR: usize = 6;

/// The form of the tile this CPU runs: AVX-VNNI's where it has it, else AVX-512 VNNI's.
pub fn kernel() -> PanelKernel {
    #[cfg(feature = "std")]
    let vex = std::arch::is_x86_feature_detected!("avxvnni");
    #[cfg(not(feature = "std"))]
    let vex = cfg!(target_feature = "avxvnni");
    if vex {
        avxvnni_6x16c4
    } else {
        avx512vl_6x16c4
    }
}

/// The tile with AVX-VNNI's `vpdpbusd`.
///
/// # Safety
/// As [`crate::conv::kernel::PanelKernel`]: the CPU has AVX2 and AVX-VNNI; the panel holds
/// inputs stored as `x ^ 0x80`.
#[target_feature(enable = "avx2,avxvnni")]
pub unsafe fn avxvnni_6x16c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel::<Vex>(c, p, output)
}

/// The tile with AVX-512 VNNI's `vpdpbusd` on `ymm`.
///
/// # Safety
/// As [`avxvnni_6x16c4`], with AVX-512 VL and VNNI instead of AVX-VNNI.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
pub unsafe fn avx512vl_6x16c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    panel::<Evex>(c, p, output)
}

/// `acc + Σ` of four unsigned × signed byte products per 32-bit lane.
trait Dot {
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i;
}

struct Vex;
struct Evex;

impl Dot for Vex {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, x, w)
    }
}

impl Dot for Evex {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, x, w)
    }
}

#[inline(always)]
unsafe fn panel<D: Dot>(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let oc = c.window.out_c;
    assert!(output.len() >= (p.p0 + p.count) * oc && p.slots.group == MR);
    let shape = Shape::of(Packing::Lanes16, c.k(), oc);
    // VNNI multiplied x + 128: take 128 · Σw back out (wrapping, exactly).
    let offset = |o: usize| shape.channel_sum(c.weights, o).wrapping_mul(128);
    let residual = Residual8::new(&c.residual);
    let out = output.as_mut_ptr();
    for b in 0..oc.div_ceil(lanes16::CHANNELS) {
        let o0 = b * lanes16::CHANNELS;
        let w = c.weights.as_ptr().add(lanes16::block_at(p.slots.k_pad, b));
        let whole = oc - o0 >= lanes16::CHANNELS;
        // Not a closure: one that holds intrinsics compiles without this function's
        // target features, and its intrinsics become calls.
        let quant = match whole {
            true => Some([
                Quant8::load(c, o0, offset),
                Quant8::load(c, o0 + epi::LANES, offset),
            ]),
            false => None,
        };
        for m0 in (0..p.count).step_by(MR) {
            let sums = tile::<D>(p, m0, w);
            let rows = MR.min(p.count - m0);
            if let Some(q) = &quant {
                for (m, s) in sums.iter().enumerate().take(rows) {
                    epi::store16(q, *s, &residual, (p.p0 + m0 + m) * oc + o0, out);
                }
            } else {
                // The last block has fewer than 16 channels: element by element.
                let mut lanes = [[0i32; lanes16::CHANNELS]; MR];
                for (l, s) in lanes.iter_mut().zip(sums) {
                    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, s[0]);
                    _mm256_storeu_si256(l.as_mut_ptr().add(epi::LANES) as *mut __m256i, s[1]);
                }
                let store = TileStore::of(c, rows, p.p0 + m0, o0);
                store.lanes(oc - o0, |m, n| lanes[m][n], offset, output);
            }
        }
    }
}

/// The 16 channels' sums of the tile's pixels, eight a vector, in channel order.
#[inline(always)]
unsafe fn tile<D: Dot>(p: &Panel<'_>, m0: usize, w: *const i8) -> [[__m256i; 2]; MR] {
    let mut acc = [[_mm256_setzero_si256(); 2]; MR];
    let a = p.tile(m0, MR).as_ptr();
    for s in 0..p.steps() {
        // The tile's 16 bytes of step s, pixel by pixel.
        let step = a.add(s * MR * KC);
        for g in 0..KC / lanes16::LANE_K {
            let wp = w.add(s * lanes16::STEP_BYTES + g * lanes16::GROUP_BYTES);
            let w0 = _mm256_loadu_si256(wp as *const __m256i);
            let w1 = _mm256_loadu_si256(wp.add(32) as *const __m256i);
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let four = core::ptr::read_unaligned(step.add(m * KC + g * 4) as *const i32);
                let x = _mm256_set1_epi32(four);
                acc_m[0] = D::dot(acc_m[0], x, w0);
                acc_m[1] = D::dot(acc_m[1], x, w1);
            }
        }
    }
    acc
}
