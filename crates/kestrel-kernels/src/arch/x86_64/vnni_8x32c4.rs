//! `vnni_8x32c4`: AVX-512 VNNI on [`Packing::Lanes16`](crate::conv::contract::Packing):
//! tiles of 8 pixels × 32 (or 16) channels, four input bytes broadcast against sixteen
//! channels' four weights per `vpdpbusd` (unsigned × signed: the input is packed as
//! `x + 128`, and `128 · Σw` taken back out of the bias), and the epilogue in vector
//! registers.

use core::arch::x86_64::*;

use crate::arch::x86_64::epilogue::avx512::{Quant16, ResidualQuant};
use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::{lanes16, Shape};

/// Pixels per tile.
pub const MR: usize = 8;

/// The panel on AVX-512 VNNI: tiles of 8 pixels × 32 (or 16) channels, four input bytes
/// broadcast against sixteen channels' four weights per `vpdpbusd`, and the epilogue in
/// vector registers.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VNNI; the panel holds inputs stored as `x ^ 0x80`; `c`, `p`
/// and `output` are consistent (the parser checked shapes).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn vnni_8x32c4(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    if p.slots.chunk == 64 {
        blocks_vnni::<64>(c, p, output)
    } else {
        blocks_vnni::<KC>(c, p, output)
    }
}

#[inline(always)]
unsafe fn blocks_vnni<const CH: usize>(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let blocks = c.window.out_c.div_ceil(lanes16::CHANNELS);
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
    c: &Conv<'_>,
    p: &Panel<'_>,
    b0: usize,
    output: &mut [i8],
) {
    let oc = c.window.out_c;
    let shape = Shape::of(Packing::Lanes16, c.k(), oc);
    // A loop, not `array::from_fn`: a closure that holds intrinsics compiles without this
    // function's target features, and its intrinsics become calls.
    let mut quant = [Quant16::load(c, b0, &shape); NB];
    for (i, q) in quant.iter_mut().enumerate().skip(1) {
        *q = Quant16::load(c, b0 + i, &shape);
    }
    let residual = ResidualQuant::new(&c.residual);
    let w0 = c.weights.as_ptr().add(lanes16::block_at(p.slots.k_pad, b0));
    let out = output.as_mut_ptr();
    assert!(output.len() >= (p.p0 + p.count) * oc && p.slots.group == MR && p.slots.chunk == CH);
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
    let whole = p.count / MR * MR;
    for m0 in (0..whole).step_by(MR) {
        t.run::<CH, MR>(m0);
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
    c: &'a Conv<'c>,
    p: &'a Panel<'a>,
    quant: &'a [Quant16; NB],
    residual: &'a ResidualQuant,
    w0: *const i8,
    out: *mut i8,
}

impl<const NB: usize> VnniTile<'_, '_, NB> {
    /// `H` pixels from pixel `m0` of the panel (inside one 8-pixel group) × 16·NB
    /// channels, accumulated and stored.
    #[inline(always)]
    unsafe fn run<const CH: usize, const H: usize>(&self, m0: usize) {
        let (p, c) = (self.p, self.c);
        let oc = c.window.out_c;
        let mut acc = [[_mm512_setzero_si512(); H]; NB];
        // m0's first chunk, inside its 8-pixel group; then one pixel and one chunk apart.
        let tile = p.a.as_ptr().add(p.slots.slot(m0, 0));
        let (pixel_step, chunk_step) = (p.slots.pixel_step(), p.slots.chunk_step());
        let block_bytes = lanes16::block_at(p.slots.k_pad, 1);
        let mut wp = self.w0;
        for s in 0..p.steps() {
            // 16 bytes of each pixel: step s lies in chunk s / (CH / 16).
            let (chunk, within) = (s / (CH / KC), s % (CH / KC));
            let ap = tile.add(chunk * chunk_step + within * KC);
            for g in 0..KC / lanes16::LANE_K {
                let w: [__m512i; NB] = core::array::from_fn(|i| {
                    _mm512_loadu_si512(
                        wp.add(i * block_bytes + g * lanes16::GROUP_BYTES) as *const _
                    )
                });
                #[allow(clippy::needless_range_loop)] // acc[i][m]: both indices
                for m in 0..H {
                    let at = ap.add(m * pixel_step + g * lanes16::LANE_K);
                    let x = _mm512_set1_epi32(core::ptr::read_unaligned(at as *const i32));
                    for i in 0..NB {
                        acc[i][m] = _mm512_dpbusd_epi32(acc[i][m], x, w[i]);
                    }
                }
            }
            wp = wp.add(lanes16::STEP_BYTES);
        }
        for (i, q) in self.quant.iter().enumerate() {
            for (m, &v) in acc[i].iter().enumerate() {
                let at = (p.p0 + m0 + m) * oc + q.o0;
                q.store(v, self.residual, at, self.out, c.out.zero_point);
            }
        }
    }
}
