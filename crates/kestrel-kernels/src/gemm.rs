//! Convolution as a packed GEMM: the layout every SIMD micro-kernel reads, the host-side
//! weight packing, and the driver that runs a micro-kernel tile by tile.
//!
//! A conv is `C[P][OC] = A[P][K] · B[OC][K]ᵀ` with `P = OH·OW` output pixels and
//! `K = KH·KW·IC` (the im2col order of the `[KH][KW][IC][OC]` weights). `K` is padded
//! with zeros to a multiple of [`KC`], `OC` to a multiple of [`NR`].
//!
//! * Packed weights (written by `kestrel compile --target`, never by the runtime):
//!   `[OC/NR][K/KC][NR][KC]` int8, then one little-endian `i32` per (padded) output
//!   channel: the sum of its weights, which the VNNI kernel needs to undo its `+128`
//!   input offset.
//! * Packed input, built in a scratch buffer of [`scratch_len`] bytes, [`MR`] pixels at a
//!   time (no full im2col of a feature map): `[K/KC][MR][KC]`. Padding taps hold the input
//!   zero point, padded `k` hold zero.
//!
//! Every micro-kernel computes the same `MR × NR` block of wrapping `i32` dot products, so
//! all paths agree bit for bit with [`crate::scalar::conv2d`]; the epilogue (bias,
//! requantisation, residual, clamp) is the scalar one.

use crate::isa::Isa;
use crate::scalar::{finish, residual_term, OutQuant, Residual, Window};

/// Output pixels per tile.
pub const MR: usize = 4;
/// Output channels per tile.
pub const NR: usize = 4;
/// Reduction depth per micro-kernel step (one 128-bit vector of int8).
pub const KC: usize = 16;

/// One `MR × NR` block of accumulators.
pub type Tile = [[i32; NR]; MR];

#[inline]
pub const fn round_up(v: usize, to: usize) -> usize {
    v.div_ceil(to) * to
}

/// Bytes of packed weights (and channel sums) for a `K × OC` conv.
pub const fn packed_len(k: usize, oc: usize) -> usize {
    let oc_pad = round_up(oc, NR);
    oc_pad * round_up(k, KC) + 4 * oc_pad
}

/// Scratch bytes the driver needs for a conv with reduction depth `k`: a panel of
/// pixels as [`crate::gemm16`] sizes it (the AArch64 kernels pack a panel at once).
pub const fn scratch_len(k: usize) -> usize {
    crate::gemm16::scratch_len(k)
}

/// Where weight `(k, o)` lives in this module's layout (`K` padded to `k_pad`).
#[inline]
pub(crate) fn at(k_pad: usize, kk: usize, o: usize) -> usize {
    (o / NR) * k_pad * NR + (kk / KC) * NR * KC + (o % NR) * KC + kk % KC
}

/// A packed layout's shape: padded sizes and where each weight goes.
#[derive(Clone, Copy)]
pub(crate) struct Layout {
    pub k_pad: usize,
    pub oc_pad: usize,
    pub at: fn(usize, usize, usize) -> usize,
}

impl Layout {
    fn len(&self) -> usize {
        self.oc_pad * self.k_pad + 4 * self.oc_pad
    }

    /// Packs `[K][OC]` weights (the portable `[KH][KW][IC][OC]` layout), then one
    /// little-endian `i32` weight sum per (padded) channel.
    #[cfg(feature = "std")]
    fn pack(&self, weights: &[i8], k: usize, oc: usize) -> std::vec::Vec<i8> {
        assert_eq!(weights.len(), k * oc, "weights are K × OC");
        let mut out = std::vec![0i8; self.len()];
        let mut sums = std::vec![0i32; self.oc_pad];
        for kk in 0..k {
            for o in 0..oc {
                let w = weights[kk * oc + o];
                out[(self.at)(self.k_pad, kk, o)] = w;
                sums[o] = sums[o].wrapping_add(w as i32);
            }
        }
        let base = self.oc_pad * self.k_pad;
        for (o, s) in sums.iter().enumerate() {
            for (j, b) in s.to_le_bytes().iter().enumerate() {
                out[base + 4 * o + j] = *b as i8;
            }
        }
        out
    }

    /// Whether packed weights can be trusted by every micro-kernel: no `-128` (the A72
    /// kernel's int16 pair sums need |w| ≤ 127; one rule for every layout), zero
    /// padding, and the stored channel sums equal to the weights' (VNNI relies on them).
    /// The file parser checks this.
    fn is_consistent(&self, packed: &[i8], k: usize, oc: usize) -> bool {
        if packed.len() != self.len() {
            return false;
        }
        let base = self.oc_pad * self.k_pad;
        (0..self.oc_pad).all(|o| {
            let mut sum = 0i32;
            for kk in 0..self.k_pad {
                let w = packed[(self.at)(self.k_pad, kk, o)];
                let real = o < oc && kk < k;
                if (real && w == -128) || (!real && w != 0) {
                    return false;
                }
                sum = sum.wrapping_add(w as i32);
            }
            channel_sum(packed, base, o) == sum
        })
    }
}

/// `(bias, multiplier, shift)` of channel `o` in little-endian 12-byte records.
#[inline]
pub fn param(params: &[u8], o: usize) -> (i32, i32, i32) {
    let at = |i: usize| {
        let b = &params[12 * o + 4 * i..12 * o + 4 * i + 4];
        i32::from_le_bytes([b[0], b[1], b[2], b[3]])
    };
    (at(0), at(1), at(2))
}

/// Channel parameters as the records [`param`] reads (for callers holding tuples).
#[cfg(feature = "std")]
pub fn param_bytes(params: &[(i32, i32, i32)]) -> std::vec::Vec<u8> {
    params
        .iter()
        .flat_map(|&(b, m, s)| [b, m, s])
        .flat_map(i32::to_le_bytes)
        .collect()
}

/// The sum of output channel `o`'s weights, stored after the packed weights.
#[inline]
pub(crate) fn channel_sum(packed: &[i8], base: usize, o: usize) -> i32 {
    let b = &packed[base + 4 * o..base + 4 * o + 4];
    i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

/// Fills the scratch with the im2col rows of pixels `p0 .. p0 + count`, in groups of
/// `group` pixels (one micro-kernel tile each, contiguous so a tile reads one stream):
/// group `g` is `[K/KC][group][KC]` at `g · group · K'` (`K'` = `K` padded to `KC`).
/// The scratch holds `count` rounded up to `group`, times `K'` bytes.
/// With `flip` every value is stored `x ^ 0x80` (`x + 128` as u8, for VNNI).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_input(
    s: &Window,
    input: &[i8],
    zero_point: i8,
    p0: usize,
    count: usize,
    group: usize,
    k: usize,
    flip: bool,
    a: &mut [i8],
) {
    debug_assert!(p0 + count <= s.out_h * s.out_w);
    let k_pad = round_up(k, KC);
    let ic = s.in_c;
    let x = if flip { 0x80u8 as i8 } else { 0 };
    let flip = u128::from_ne_bytes([x as u8; KC]);
    if ic.is_multiple_of(KC) {
        // Copies of the loop for what the kernels use (a plain copy without the flip;
        // constant steps between a pixel's chunks), one for anything else.
        let args = (s, input, zero_point, p0, count, a);
        match (flip != 0, group) {
            (false, 4) => pack_input_chunks::<false, 4>(args),
            (true, 8) => pack_input_chunks::<true, 8>(args),
            (false, _) => pack_input_chunks_any::<false, KC>(args, group),
            (true, _) => pack_input_chunks_any::<true, KC>(args, group),
        }
        return;
    }
    if k_pad <= ROW_MAX {
        let args = (s, input, zero_point, p0, count, a);
        if flip == 0 {
            pack_input_rows::<false>(args, group);
        } else {
            pack_input_rows::<true>(args, group);
        }
        return;
    }
    // Padded k (and rows past the last pixel) multiply zero weights: any value will do,
    // zero keeps the tile deterministic.
    a[..round_up(count, group) * k_pad].fill(x);
    let kw = s.kernel[1];
    let at = Slots { group, k_pad };
    for m in 0..count {
        let (oy, ox) = ((p0 + m) / s.out_w, (p0 + m) % s.out_w);
        // For one kernel row, consecutive taps read consecutive input pixels: copy the
        // valid ones as one run and write the zero point for the padded ones.
        let ix0 = (ox * s.stride[1]) as isize - s.pads[1] as isize;
        let kx_lo = (-ix0).clamp(0, kw as isize) as usize;
        let kx_hi = (s.in_w as isize - ix0).clamp(kx_lo as isize, kw as isize) as usize;
        for ky in 0..s.kernel[0] {
            let iy = (oy * s.stride[0] + ky) as isize - s.pads[0] as isize;
            let k_row = ky * kw * ic;
            if iy < 0 || iy >= s.in_h as isize || kx_lo == kx_hi {
                at.set_run(a, m, k_row, kw * ic, zero_point ^ x);
                continue;
            }
            at.set_run(a, m, k_row, kx_lo * ic, zero_point ^ x);
            let start = (iy as usize * s.in_w + (ix0 + kx_lo as isize) as usize) * ic;
            let run = &input[start..][..(kx_hi - kx_lo) * ic];
            at.copy_run(a, m, k_row + kx_lo * ic, run, x);
            at.set_run(a, m, k_row + kx_hi * ic, (kw - kx_hi) * ic, zero_point ^ x);
        }
    }
}

/// Deepest im2col row [`pack_input_rows`] builds on the stack (a 7×7 stem on RGB is 147).
const ROW_MAX: usize = 1024;

/// [`pack_input`] for shallow inputs (`IC` off the chunk size, as a stem's three
/// colours) in groups of several pixels: each pixel's im2col row is built on the stack,
/// then stored a chunk at a time.
fn pack_input_rows<const FLIP: bool>(
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let k_pad = round_up(s.kernel[0] * s.kernel[1] * s.in_c, KC);
    assert!(a.len() >= round_up(count, group) * k_pad);
    #[cfg(target_arch = "aarch64")]
    if !FLIP {
        if let Some(gather) = crate::neon::RowGather::new(s) {
            pack_input_gathered(&gather, (s, input, zero_point, p0, count, a), group);
            return;
        }
    }
    let width = (s.pads[1] + s.in_w + s.pads[3]) * s.in_c;
    let run = s.kernel[1] * s.in_c;
    if s.kernel[0] * width <= PADDED_ROWS && run >= KC && k_pad / KC <= PADDED_CHUNKS {
        return pack_input_rows_padded::<FLIP>((s, input, zero_point, p0, count, a), group);
    }
    pack_input_rows_on_stack::<FLIP>((s, input, zero_point, p0, count, a), group)
}

/// The kernel rows of output row `oy` into `rows` (one padded input row each, the
/// padding columns already holding the zero point): each row's input bytes, or the zero
/// point for a row outside the map; with `FLIP` every byte `^ 0x80`.
fn kernel_rows<const FLIP: bool>(
    s: &Window,
    input: &[i8],
    zero_point: i8,
    oy: usize,
    rows: &mut [i8],
) {
    let width = (s.pads[1] + s.in_w + s.pads[3]) * s.in_c;
    let (left, inner) = (s.pads[1] * s.in_c, s.in_w * s.in_c);
    let x = if FLIP { i8::MIN } else { 0 };
    for (ky, r) in rows.chunks_exact_mut(width).enumerate() {
        let dst = &mut r[left..left + inner];
        match (oy * s.stride[0] + ky)
            .checked_sub(s.pads[0])
            .filter(|&iy| iy < s.in_h)
        {
            Some(iy) if FLIP => {
                for (d, &v) in dst.iter_mut().zip(&input[iy * inner..][..inner]) {
                    *d = v ^ x;
                }
            }
            Some(iy) => dst.copy_from_slice(&input[iy * inner..][..inner]),
            None => dst.fill(zero_point ^ x),
        }
    }
}

/// Bytes of the padded kernel rows [`pack_input_rows_padded`] builds on the stack (a 7×7
/// stem on 224 RGB columns needs 7 · 690).
const PADDED_ROWS: usize = 8192;
/// Chunks of an im2col row [`pack_input_rows_padded`] plans (a 7×7 stem on RGB has 10).
const PADDED_CHUNKS: usize = 16;

/// [`pack_input_rows`] with each output row's kernel rows first copied to the stack with
/// their padding written out (the zero point, and the flip applied once per input byte).
/// A pixel's im2col row is then its kernel rows' runs side by side, and with runs of 16
/// bytes or more each 16-byte chunk of it is one piece of a run, or the end of one run and
/// the start of the next: two loads and a byte blend, stored straight to its slot.
fn pack_input_rows_padded<const FLIP: bool>(
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let (kh, kw, ic) = (s.kernel[0], s.kernel[1], s.in_c);
    let (run, k) = (kw * ic, kh * kw * ic);
    let k_pad = round_up(k, KC);
    let sx = s.stride[1];
    let width = (s.pads[1] + s.in_w + s.pads[3]) * ic;
    let x = if FLIP { i8::MIN } else { 0 };
    assert!(run >= KC && kh * width <= PADDED_ROWS && k_pad / KC <= PADDED_CHUNKS);
    assert!(a.len() >= round_up(count, group) * k_pad);
    // Chunk c: bytes from `first[c]` (offsets from a pixel's start in the rows), the
    // ones at and past `split[c]` from `second[c]`, loaded so they land in place.
    let (mut first, mut second, mut split) = (
        [0usize; PADDED_CHUNKS],
        [0; PADDED_CHUNKS],
        [0; PADDED_CHUNKS],
    );
    for c in 0..k_pad / KC {
        let b = c * KC;
        let (ky, j) = (b / run, b % run);
        let len = (run - j).min(KC);
        first[c] = ky * width + j;
        // Past K (the padded k multiply zero weights) or inside one run: one piece.
        (second[c], split[c]) = if len == KC || b + len >= k {
            (first[c], KC)
        } else {
            ((ky + 1) * width - len, len)
        };
    }
    // Slack after the rows: a chunk's load reads up to 15 bytes past its run.
    let mut rows = [zero_point ^ x; PADDED_ROWS + KC];
    let at = Slots { group, k_pad };
    let mut m = 0;
    while m < count {
        let (oy, ox0) = ((p0 + m) / s.out_w, (p0 + m) % s.out_w);
        let pixels = (count - m).min(s.out_w - ox0);
        kernel_rows::<FLIP>(s, input, zero_point, oy, &mut rows[..kh * width]);
        let mut slot = at.slot(m, 0);
        let mut in_group = m % group;
        for i in 0..pixels {
            let src = (ox0 + i) * sx * ic;
            // SAFETY: every load starts inside the rows (a pixel's kernel rows start
            // inside its padded row; `second` points at most 16 bytes before a row's
            // start, never before the first row) and ends at most 15 bytes past a run,
            // inside `rows` with its slack; the slots are inside `a` (asserted above).
            unsafe {
                let from = rows.as_ptr().add(src);
                let to = a.as_mut_ptr().add(slot);
                for c in 0..k_pad / KC {
                    chunk::blend(
                        from.add(first[c]),
                        from.add(second[c]),
                        split[c],
                        to.add(c * group * KC),
                    );
                }
            }
            in_group += 1;
            slot += KC;
            if in_group == group {
                in_group = 0;
                slot += group * (k_pad - KC);
            }
        }
        m += pixels;
    }
}

/// [`pack_input_rows`] one pixel at a time: its im2col row built on the stack, then
/// stored a chunk at a time.
fn pack_input_rows_on_stack<const FLIP: bool>(
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let k_pad = round_up(s.kernel[0] * s.kernel[1] * s.in_c, KC);
    assert!(a.len() >= round_up(count, group) * k_pad);
    let mut row = [0i8; ROW_MAX + KC];
    let row = &mut row[..k_pad + KC];
    for m in 0..count {
        im2col_row(
            s,
            input,
            zero_point,
            [(p0 + m) / s.out_w, (p0 + m) % s.out_w],
            row,
        );
        // Chunk c of pixel m at base + c · group · KC (the division once per pixel).
        let base = Slots { group, k_pad }.slot(m, 0);
        // SAFETY: chunk c of the row is inside it (c < k_pad / KC); its slot is inside
        // `a` (asserted above: the group of pixel m < count holds k_pad bytes per pixel).
        unsafe {
            let dst = a.as_mut_ptr().add(base);
            for c in 0..k_pad / KC {
                chunk::copy::<FLIP>(row.as_ptr().add(c * KC), dst.add(c * group * KC));
            }
        }
    }
}

/// [`pack_input_rows`] with the pixels inside the map gathered straight from the input
/// rows by table lookups ([`crate::neon::RowGather`]); those at the border build their row
/// on the stack as before.
#[cfg(target_arch = "aarch64")]
fn pack_input_gathered(gather: &crate::neon::RowGather, args: PackArgs<'_>, group: usize) {
    let s = args.0;
    if s.kernel[0] * (s.pads[1] + s.in_w + s.pads[3]) * s.in_c > GATHER_ROWS {
        return pack_input_rows_on_stack::<false>(args, group);
    }
    // The usual shape (a 3×3 stem on RGB: three rows, two chunks) with its loops unrolled.
    match (gather.rows(), gather.chunks()) {
        (3, 2) => gathered::<3, 2>(gather, args, group),
        _ => gathered::<0, 0>(gather, args, group),
    }
}

/// Bytes of the padded kernel rows [`gathered`] builds on the stack.
#[cfg(target_arch = "aarch64")]
const GATHER_ROWS: usize = 4096;

/// [`pack_input_gathered`] for `KH` kernel rows and `CHUNKS` chunks (0: as `gather` says):
/// for each output row, its kernel rows are copied to the stack with their padding
/// written out (the zero point), then every pixel of the row is gathered from there.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn gathered<const KH: usize, const CHUNKS: usize>(
    gather: &crate::neon::RowGather,
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let (kh, kw, ic) = (s.kernel[0], s.kernel[1], s.in_c);
    let k_pad = round_up(kh * kw * ic, KC);
    let sx = s.stride[1];
    let width = (s.pads[1] + s.in_w + s.pads[3]) * ic;
    // The gathers read 16 bytes from each kernel row's start: slack after the last row.
    let mut rows = [zero_point; GATHER_ROWS + KC];
    assert!(kh * width <= GATHER_ROWS);
    let last_slot = Slots { group, k_pad }.slot(count.max(1) - 1, k_pad - KC);
    assert!(a.len() >= last_slot + KC);
    let mut m = 0;
    while m < count {
        let (oy, ox) = ((p0 + m) / s.out_w, (p0 + m) % s.out_w);
        let run = (count - m).min(s.out_w - ox);
        kernel_rows::<false>(s, input, zero_point, oy, &mut rows[..kh * width]);
        // SAFETY: pixel `ox + i`'s kernel rows start at `(ox + i) · sx · ic` in each padded
        // row (its taps end inside the row: the output width fits the padded one), so
        // every 16-byte read is inside `rows` with its slack; its slots are inside `a`
        // (asserted above for the last pixel).
        unsafe {
            crate::neon::gather_run::<KH, CHUNKS>(
                gather,
                rows.as_ptr().add(ox * sx * ic),
                sx * ic,
                width,
                run,
                a.as_mut_ptr(),
                m,
                group,
                k_pad,
            )
        };
        m += run;
    }
}

/// The im2col row of output pixel `[oy, ox]` into `row` (`K` rounded up to 16 bytes, and
/// 16 more the copies may run into): padding taps hold the zero point, the padded `k`
/// zero.
#[inline(always)]
fn im2col_row(s: &Window, input: &[i8], zero_point: i8, [oy, ox]: [usize; 2], row: &mut [i8]) {
    let (ic, kw) = (s.in_c, s.kernel[1]);
    let k = s.kernel[0] * kw * ic;
    let ix0 = (ox * s.stride[1]) as isize - s.pads[1] as isize;
    let kx_lo = (-ix0).clamp(0, kw as isize) as usize;
    let kx_hi = (s.in_w as isize - ix0).clamp(kx_lo as isize, kw as isize) as usize;
    let (kh, run) = (s.kernel[0], kw * ic);
    let iy0 = (oy * s.stride[0]) as isize - s.pads[0] as isize;
    let whole = round_up(run, KC);
    if kx_lo == 0 && kx_hi == kw && iy0 >= 0 && iy0 + kh as isize <= s.in_h as isize {
        let src = (iy0 as usize * s.in_w + ix0 as usize) * ic;
        let stride = s.in_w * ic;
        if src + (kh - 1) * stride + whole <= input.len() && (kh - 1) * run + whole <= row.len() {
            // Inside the map (most pixels): each kernel row one run, moved in whole
            // 16-byte chunks (the bytes past a run land where the next row, or the k
            // padding, is written after).
            // SAFETY: every read is inside the input and every write inside the row
            // (both checked just above for the last, furthest row).
            unsafe {
                let (from, to) = (input.as_ptr().add(src), row.as_mut_ptr());
                for ky in 0..kh {
                    let (from, to) = (from.add(ky * stride), to.add(ky * run));
                    // Spelled out for the usual one or two chunks: as a loop, the
                    // compiler turns it into a call to memcpy per row.
                    chunk::copy::<false>(from, to);
                    if whole > KC {
                        chunk::copy::<false>(from.add(KC), to.add(KC));
                    }
                    for c in (2 * KC..whole).step_by(KC) {
                        chunk::copy::<false>(from.add(c), to.add(c));
                    }
                }
            }
            write16(&mut row[k..], 0);
            return;
        }
    }
    for ky in 0..kh {
        let iy = iy0 + ky as isize;
        let r0 = ky * kw * ic;
        if iy < 0 || iy >= s.in_h as isize || kx_lo == kx_hi {
            row[r0..r0 + kw * ic].fill(zero_point);
            continue;
        }
        if kx_lo > 0 {
            row[r0..r0 + kx_lo * ic].fill(zero_point);
        }
        // The valid taps of a kernel row are one run of the input. Short runs are the
        // rule (21 bytes for a 7×7 stem on RGB) and a call to memcpy per run costs more
        // than the run: whole 16-byte copies, whose bytes past the run land where the
        // rest of this row, the next row or the k padding is written after.
        let start = (iy as usize * s.in_w + (ix0 + kx_lo as isize) as usize) * ic;
        let len = (kx_hi - kx_lo) * ic;
        let dst = r0 + kx_lo * ic;
        let whole = round_up(len, KC);
        if start + whole <= input.len() && dst + whole <= row.len() {
            for c in (0..whole).step_by(KC) {
                write16(&mut row[dst + c..], read16(&input[start + c..]));
            }
        } else {
            row[dst..dst + len].copy_from_slice(&input[start..][..len]);
        }
        if kx_hi < kw {
            row[r0 + kx_hi * ic..r0 + kw * ic].fill(zero_point);
        }
    }
    // Padded k multiply zero weights; zero keeps the tile deterministic.
    write16(&mut row[k..], 0);
}

/// The first 16 bytes of `s` (which holds at least that many).
#[inline(always)]
fn read16(s: &[i8]) -> u128 {
    let s = &s[..KC];
    // SAFETY: `s` is 16 bytes long (sliced above); unaligned reads are allowed.
    unsafe { core::ptr::read_unaligned(s.as_ptr() as *const u128) }
}

/// Writes 16 bytes at the start of `d` (which holds at least that many).
#[inline(always)]
fn write16(d: &mut [i8], v: u128) {
    let d = &mut d[..KC];
    // SAFETY: `d` is 16 bytes long (sliced above).
    unsafe { core::ptr::write_unaligned(d.as_mut_ptr() as *mut u128, v) }
}

/// Addressing of a packed input in groups of `group` pixels.
#[derive(Clone, Copy)]
struct Slots {
    group: usize,
    k_pad: usize,
}

impl Slots {
    #[inline(always)]
    fn slot(&self, m: usize, k: usize) -> usize {
        let g = self.group;
        (m / g) * g * self.k_pad + (k / KC) * g * KC + (m % g) * KC + k % KC
    }

    /// Writes `value` to k positions `k0 .. k0 + len` of pixel `m`.
    #[inline(always)]
    fn set_run(&self, a: &mut [i8], m: usize, k0: usize, len: usize, value: i8) {
        let mut kk = k0;
        let end = k0 + len;
        while kk < end {
            let n = (KC - kk % KC).min(end - kk);
            a[self.slot(m, kk)..][..n].fill(value);
            kk += n;
        }
    }

    /// Copies `row` (each value `^ x`) to k positions `k0..` of pixel `m`.
    #[inline(always)]
    fn copy_run(&self, a: &mut [i8], m: usize, k0: usize, row: &[i8], x: i8) {
        let mut kk = k0;
        let mut rest = row;
        while !rest.is_empty() {
            let n = (KC - kk % KC).min(rest.len());
            let dst = &mut a[self.slot(m, kk)..][..n];
            for (d, &v) in dst.iter_mut().zip(&rest[..n]) {
                *d = v ^ x;
            }
            kk += n;
            rest = &rest[n..];
        }
    }
}

/// [`pack_input`] when every tap is whole 16-byte chunks (`IC % KC == 0`, so `K` needs no
/// padding): chunk copies only (each byte `^ 0x80` with `FLIP`). Slots past the last
/// pixel keep whatever the scratch held; their results are never stored.
fn pack_input_chunks<const FLIP: bool, const GROUP: usize>(args: PackArgs<'_>) {
    pack_input_chunks_any::<FLIP, KC>(args, GROUP)
}

/// [`pack_input`] in 64-byte chunks (`IC % 64 == 0`): group `g` is
/// `[K/64][group][64]`, so a chunk is one contiguous 64-byte copy — one instruction
/// each way when the caller is compiled for AVX-512.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn pack_input_64<const FLIP: bool>(args: PackArgs<'_>, group: usize) {
    debug_assert!(args.0.in_c.is_multiple_of(64));
    pack_input_chunks_any::<FLIP, 64>(args, group)
}

/// What [`pack_input`] passes on to its variants: window, input, zero point, first
/// pixel, pixel count, scratch.
pub(crate) type PackArgs<'a> = (&'a Window, &'a [i8], i8, usize, usize, &'a mut [i8]);

/// Chunks of `CH` bytes (16 or 64; `IC % CH == 0`).
#[inline(always)]
fn pack_input_chunks_any<const FLIP: bool, const CH: usize>(
    (s, input, zero_point, p0, rows, a): PackArgs<'_>,
    group: usize,
) {
    let ic = s.in_c;
    let chunks = ic / CH;
    let k_pad = chunks * CH * s.kernel[0] * s.kernel[1];
    assert!(a.len() >= round_up(rows, group) * k_pad && input.len() >= s.in_h * s.in_w * ic);
    let pad = [zero_point; 64];
    let dst0 = a.as_mut_ptr();
    let kw = s.kernel[1];
    let step = group * CH;
    let (mut oy, mut ox) = (p0 / s.out_w, p0 % s.out_w);
    for m in 0..rows {
        let iy0 = (oy * s.stride[0]) as isize - s.pads[0] as isize;
        let ix0 = (ox * s.stride[1]) as isize - s.pads[1] as isize;
        // The taps kx_lo .. kx_hi of a kernel row read consecutive input pixels.
        let kx_lo = (-ix0).clamp(0, kw as isize) as usize;
        let kx_hi = (s.in_w as isize - ix0).clamp(kx_lo as isize, kw as isize) as usize;
        // SAFETY: `dst` visits chunk `t · chunks + c` of pixel `m` for every tap t and
        // chunk c, all inside `a` (asserted above); `src` reads the valid taps' `IC`
        // bytes each, inside the input (rows and columns checked), or the 16-byte pad.
        unsafe {
            let mut dst = dst0.add((m / group) * group * k_pad + (m % group) * CH);
            // One chunk: CH / 16 copies of 16 bytes side by side.
            let one = |src: *const i8, dst: *mut i8| {
                for b in (0..CH).step_by(KC) {
                    chunk::copy::<FLIP>(src.add(b), dst.add(b));
                }
            };
            // `n` chunks from `src` on (CH bytes apart, or the same one when `src_step` is
            // 0), each to the pixel's next chunk slot.
            let mut copy = |mut src: *const i8, n: usize, src_step: usize| {
                // Four chunks per trip (runs of 64+ channels are whole fours of 16): the
                // loop's own instructions once per four.
                if CH == KC {
                    for _ in 0..n / 4 {
                        for i in 0..4 {
                            one(src.add(i * src_step), dst.add(i * step));
                        }
                        src = src.add(4 * src_step);
                        dst = dst.add(4 * step);
                    }
                }
                for _ in 0..if CH == KC { n % 4 } else { n } {
                    one(src, dst);
                    src = src.add(src_step);
                    dst = dst.add(step);
                }
            };
            let kh = s.kernel[0];
            if kx_lo == 0 && kx_hi == kw && iy0 >= 0 && iy0 + kh as isize <= s.in_h as isize {
                // Inside the map (most pixels): every kernel row is one run.
                let mut src = input
                    .as_ptr()
                    .add((iy0 as usize * s.in_w + ix0 as usize) * ic);
                for _ in 0..kh {
                    copy(src, kw * chunks, CH);
                    src = src.add(s.in_w * ic);
                }
            } else {
                for ky in 0..kh {
                    let iy = iy0 + ky as isize;
                    if iy < 0 || iy >= s.in_h as isize {
                        copy(pad.as_ptr(), kw * chunks, 0);
                        continue;
                    }
                    copy(pad.as_ptr(), kx_lo * chunks, 0);
                    let at = (iy as usize * s.in_w) as isize + ix0 + kx_lo as isize;
                    copy(
                        input.as_ptr().add(at as usize * ic),
                        (kx_hi - kx_lo) * chunks,
                        CH,
                    );
                    copy(pad.as_ptr(), (kw - kx_hi) * chunks, 0);
                }
            }
        }
        ox += 1;
        if ox == s.out_w {
            (oy, ox) = (oy + 1, 0);
        }
    }
}

/// One 16-byte chunk moved with the target's vector registers (`FLIP`: `^ 0x80`).
mod chunk {
    /// # Safety
    /// 16 bytes are readable at `src` and writable at `dst`.
    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    pub unsafe fn copy<const FLIP: bool>(src: *const i8, dst: *mut i8) {
        use core::arch::aarch64::*;
        let v = vld1q_s8(src);
        let v = if FLIP {
            veorq_s8(v, vdupq_n_s8(0x80u8 as i8))
        } else {
            v
        };
        vst1q_s8(dst, v);
    }

    /// # Safety
    /// 16 bytes are readable at `src` and writable at `dst`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn copy<const FLIP: bool>(src: *const i8, dst: *mut i8) {
        // SSE2 (baseline): as plain `u128`, the compiler moves and flips 8 bytes at a time.
        use core::arch::x86_64::*;
        let v = _mm_loadu_si128(src as *const __m128i);
        let v = if FLIP {
            _mm_xor_si128(v, _mm_set1_epi8(0x80u8 as i8))
        } else {
            v
        };
        _mm_storeu_si128(dst as *mut __m128i, v);
    }

    /// Bytes `0 .. split` from `a`, `split .. 16` from `b`, stored at `dst`.
    ///
    /// # Safety
    /// 16 bytes are readable at `a` and `b` and writable at `dst`; `split ≤ 16`.
    #[inline(always)]
    pub unsafe fn blend(a: *const i8, b: *const i8, split: usize, dst: *mut i8) {
        // A mask of `split` low bytes: the top of a window into 0xff… then 0….
        const ONES: [i8; 32] = {
            let mut m = [0i8; 32];
            let mut i = 0;
            while i < 16 {
                m[i] = -1;
                i += 1;
            }
            m
        };
        let mask = ONES.as_ptr().add(16 - split);
        #[cfg(target_arch = "aarch64")]
        {
            use core::arch::aarch64::*;
            let m = vreinterpretq_u8_s8(vld1q_s8(mask));
            vst1q_s8(dst, vbslq_s8(m, vld1q_s8(a), vld1q_s8(b)));
        }
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::*;
            let m = _mm_loadu_si128(mask as *const __m128i);
            let a = _mm_loadu_si128(a as *const __m128i);
            let b = _mm_loadu_si128(b as *const __m128i);
            let v = _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b));
            _mm_storeu_si128(dst as *mut __m128i, v);
        }
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        {
            let m = core::ptr::read_unaligned(mask as *const u128);
            let (a, b) = (
                core::ptr::read_unaligned(a as *const u128),
                core::ptr::read_unaligned(b as *const u128),
            );
            core::ptr::write_unaligned(dst as *mut u128, (a & m) | (b & !m));
        }
    }

    /// # Safety
    /// 16 bytes are readable at `src` and writable at `dst`.
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    #[inline(always)]
    pub unsafe fn copy<const FLIP: bool>(src: *const i8, dst: *mut i8) {
        let v = core::ptr::read_unaligned(src as *const u128);
        let v = if FLIP {
            v ^ u128::from_ne_bytes([0x80; 16])
        } else {
            v
        };
        core::ptr::write_unaligned(dst as *mut u128, v);
    }
}

/// The portable micro-kernel (and the definition of the others).
pub fn tile_scalar(a: &[i8], b: &[i8], steps: usize) -> Tile {
    let mut acc = [[0i32; NR]; MR];
    for s in 0..steps {
        let a = &a[s * MR * KC..][..MR * KC];
        let b = &b[s * NR * KC..][..NR * KC];
        for (m, row) in acc.iter_mut().enumerate() {
            for (n, v) in row.iter_mut().enumerate() {
                let d = a[m * KC..][..KC]
                    .iter()
                    .zip(&b[n * KC..][..KC])
                    .fold(0i32, |t, (&x, &w)| t.wrapping_add(x as i32 * w as i32));
                *v = v.wrapping_add(d);
            }
        }
    }
    acc
}

/// Runs the micro-kernel of `isa` on one tile. The caller checked that the CPU has it.
#[inline]
fn tile(isa: Isa, a: &[i8], b: &[i8], steps: usize) -> Tile {
    debug_assert!(a.len() >= steps * MR * KC && b.len() >= steps * NR * KC);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: slices hold `steps` chunks (checked by the driver); the session checked AVX2.
        Isa::Avx2 => unsafe { crate::x86::tile_avx2(a.as_ptr(), b.as_ptr(), steps) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; the session checked AVX-512 VNNI.
        Isa::Avx512Vnni => unsafe { crate::x86::tile_vnni(a.as_ptr(), b.as_ptr(), steps) },
        _ => tile_scalar(a, b, steps),
    }
}

/// A conv on packed weights over a run of output pixels, `first ..` as many as the
/// output slice it is given holds: the output and a separate residual cover that run
/// only, so threads can each own one.
#[derive(Clone, Copy)]
pub struct PackedConv<'a> {
    pub window: &'a Window,
    pub input: &'a [i8],
    pub zero_point: i8,
    /// Packed weights and channel sums.
    pub packed: &'a [i8],
    /// `(bias, multiplier, shift)` little-endian records, 12 bytes per channel.
    pub params: &'a [u8],
    pub out: OutQuant,
    /// Indexed like the output slice (relative to `first`).
    pub residual: Residual<'a>,
    /// The first output pixel of the run.
    pub first: usize,
}

impl PackedConv<'_> {
    /// Reduction depth `K = KH·KW·IC`.
    pub fn k(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1] * self.window.in_c
    }

    /// Whether any requantisation shifts left (multipliers above one: rare), so kernels
    /// can leave the saturating left shift out of their epilogue.
    pub fn shifts_left(&self) -> bool {
        let residual = match self.residual {
            Residual::Separate { shift, .. } | Residual::InPlace { shift, .. } => shift > 0,
            Residual::None => false,
        };
        residual || (0..self.window.out_c).any(|o| param(self.params, o).2 > 0)
    }

    /// How the channels' requantisation shifts go (the residual's aside), so the
    /// 16-channel AArch64 epilogue can take its shortest form.
    pub fn channel_shifts(&self) -> Shifts {
        // One pass: the largest shift decides.
        let shifts = self.params.chunks_exact(12).take(self.window.out_c);
        let most = shifts
            .map(|r| i32::from_le_bytes([r[8], r[9], r[10], r[11]]))
            .max()
            .unwrap_or(-1);
        match most {
            1.. => Shifts::SomeLeft,
            0 => Shifts::NoLeft,
            _ => Shifts::AllRight,
        }
    }

    /// Output pixels in the run `output` covers.
    pub fn pixels(&self, output: &[i8]) -> usize {
        output.len() / self.window.out_c
    }
}

/// The requantisation shifts of a conv's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shifts {
    /// Every channel divides by a power of two (the usual case: scales below one half).
    AllRight,
    /// None multiplies, some neither multiply nor divide.
    NoLeft,
    /// Some multiply (scales of one and above: rare).
    SomeLeft,
}

/// Convolution on weights packed by [`pack_weights`]: same results as
/// [`crate::scalar::conv2d`] on the pixels of `output`. `scratch` holds at least
/// [`scratch_len`] bytes.
pub fn conv2d(isa: Isa, c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    #[cfg(target_arch = "aarch64")]
    if matches!(isa, Isa::Neon | Isa::NeonDot) {
        // SAFETY: shapes were checked by the parser and scratch holds one packed tile; the
        // session checked the CPU for the dot product before choosing NeonDot.
        unsafe {
            if isa == Isa::NeonDot {
                crate::neon::conv_sdot(c, output, scratch)
            } else {
                crate::neon::conv_smlal(c, output, scratch)
            }
        }
        return;
    }
    let k = c.k();
    let (k_pad, oc) = (round_up(k, KC), c.window.out_c);
    let steps = k_pad / KC;
    let sums = round_up(oc, NR) * k_pad;
    let flip = isa == Isa::Avx512Vnni;
    let pixels = c.pixels(output);
    let a = &mut scratch[..MR * k_pad];
    for p0 in (0..pixels).step_by(MR) {
        let rows = MR.min(pixels - p0);
        pack_input(
            c.window,
            c.input,
            c.zero_point,
            c.first + p0,
            rows,
            MR,
            k,
            flip,
            a,
        );
        for block in 0..oc.div_ceil(NR) {
            let b = &c.packed[block * k_pad * NR..][..k_pad * NR];
            let acc = tile(isa, a, b, steps);
            let o0 = block * NR;
            // VNNI multiplied x + 128: take 128 · Σw back out (wrapping, exactly).
            let offset = |o| {
                if flip {
                    channel_sum(c.packed, sums, o).wrapping_mul(128)
                } else {
                    0
                }
            };
            let store = TileStore::of(c, rows, p0, o0);
            store.lanes(NR.min(oc - o0), |m, n| acc[m][n], offset, output);
        }
    }
}

/// The packed weight layouts, each read by its own family of micro-kernels; every ISA
/// runs both (the ones without a kernel of their own through the portable tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// This module's `[OC/4][K/16][4][16]`: Cortex-A72 (`SMLAL`), and `sdot` without
    /// lane indexing.
    Blocks4,
    /// [`crate::gemm16`]'s `[OC/16][K/4][16][4]`: AVX-512 VNNI, AVX2, `sdot` by element.
    Lanes16,
}

impl Packing {
    pub const fn packed_len(self, k: usize, oc: usize) -> usize {
        match self {
            Packing::Blocks4 => packed_len(k, oc),
            Packing::Lanes16 => crate::gemm16::packed_len(k, oc),
        }
    }

    pub const fn scratch_len(self, k: usize) -> usize {
        match self {
            Packing::Blocks4 => scratch_len(k),
            Packing::Lanes16 => crate::gemm16::scratch_len(k),
        }
    }

    fn layout(self, k: usize, oc: usize) -> Layout {
        match self {
            Packing::Blocks4 => Layout {
                k_pad: round_up(k, KC),
                oc_pad: round_up(oc, NR),
                at,
            },
            Packing::Lanes16 => crate::gemm16::layout(k, oc),
        }
    }

    /// Packs `[K][OC]` weights (the portable `[KH][KW][IC][OC]` layout) this way.
    #[cfg(feature = "std")]
    pub fn pack_weights(self, weights: &[i8], k: usize, oc: usize) -> std::vec::Vec<i8> {
        self.layout(k, oc).pack(weights, k, oc)
    }

    /// See [`Layout::is_consistent`]: what the file parser checks of packed weights.
    pub fn is_consistent(self, packed: &[i8], k: usize, oc: usize) -> bool {
        self.layout(k, oc).is_consistent(packed, k, oc)
    }

    /// Whether `isa` has a micro-kernel for this layout. Without one, `conv2d` runs the
    /// portable tile: the same results, several times slower (a `--target rpi5` file on a
    /// Cortex-A72). Kept beside the two dispatches it describes.
    pub fn has_tile(self, isa: Isa) -> bool {
        match (self, isa) {
            (_, Isa::Scalar) => false,
            (Packing::Blocks4, Isa::Neon | Isa::NeonDot | Isa::Avx2 | Isa::Avx512Vnni) => true,
            (Packing::Lanes16, Isa::NeonDot | Isa::Avx2 | Isa::Avx512Vnni) => true,
            (Packing::Lanes16, Isa::Neon) => false,
        }
    }

    /// The conv on weights packed this way, on the best kernel of `isa` for it.
    pub fn conv2d(self, isa: Isa, c: &PackedConv<'_>, output: &mut [i8], scratch: &mut [i8]) {
        match self {
            Packing::Blocks4 => conv2d(isa, c, output, scratch),
            Packing::Lanes16 => crate::gemm16::conv2d(isa, c, output, scratch),
        }
    }
}

/// Where a tile's results go, for the element-by-element epilogue.
pub(crate) struct TileStore<'a, 'r> {
    pub rows: usize,
    /// First pixel (in the output slice) and first channel of the tile; `oc` channels per
    /// output pixel.
    pub p0: usize,
    pub o0: usize,
    pub oc: usize,
    /// `(bias, multiplier, shift)` records, 12 bytes per channel.
    pub params: &'a [u8],
    pub out: OutQuant,
    pub residual: &'a Residual<'r>,
}

impl<'a, 'r> TileStore<'a, 'r> {
    /// The tile of `rows` pixels from `p0` (in the output slice) and channels from `o0`
    /// of conv `c`.
    pub fn of(c: &'a PackedConv<'r>, rows: usize, p0: usize, o0: usize) -> Self {
        TileStore {
            rows,
            p0,
            o0,
            oc: c.window.out_c,
            params: c.params,
            out: c.out,
            residual: &c.residual,
        }
    }
}

impl TileStore<'_, '_> {
    /// The scalar epilogue on the first `channels` lanes of every row: bias (minus
    /// `offset(channel)`), requantisation, residual, clamp.
    pub fn lanes(
        &self,
        channels: usize,
        acc: impl Fn(usize, usize) -> i32,
        offset: impl Fn(usize) -> i32,
        output: &mut [i8],
    ) {
        for n in 0..channels {
            let o = self.o0 + n;
            let (bias, mult, shift) = param(self.params, o);
            let bias = bias.wrapping_sub(offset(o));
            for m in 0..self.rows {
                let idx = (self.p0 + m) * self.oc + o;
                let res = residual_term(self.residual, idx, output);
                output[idx] = finish(bias.wrapping_add(acc(m, n)), mult, shift, res, self.out);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scalar;
    use std::vec;
    use std::vec::Vec;

    /// Deterministic pseudo-random int8 values.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<i8> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 7) as i8
            })
            .collect()
    }

    struct Case {
        hw: [usize; 2],
        ic: usize,
        oc: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    }

    /// Odd shapes: channels off the tile, 1×1, 3×3, 7×7, stride 2, padding, 1-pixel maps;
    /// for the paths that read the input in place, an odd number of 16-channel chunks and
    /// a map too wide for one band.
    const CASES: [Case; 11] = [
        Case {
            hw: [5, 7],
            ic: 3,
            oc: 5,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
        Case {
            hw: [9, 9],
            ic: 16,
            oc: 16,
            kernel: 1,
            stride: 1,
            pad: 0,
        },
        Case {
            hw: [8, 6],
            ic: 19,
            oc: 13,
            kernel: 3,
            stride: 2,
            pad: 1,
        },
        Case {
            hw: [11, 10],
            ic: 3,
            oc: 8,
            kernel: 7,
            stride: 2,
            pad: 3,
        },
        Case {
            hw: [7, 7],
            ic: 32,
            oc: 36,
            kernel: 1,
            stride: 2,
            pad: 0,
        },
        Case {
            hw: [1, 1],
            ic: 40,
            oc: 7,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
        Case {
            hw: [6, 5],
            ic: 64,
            oc: 4,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
        Case {
            hw: [4, 4],
            ic: 1,
            oc: 1,
            kernel: 1,
            stride: 1,
            pad: 0,
        },
        Case {
            hw: [6, 6],
            ic: 32,
            oc: 6,
            kernel: 3,
            stride: 2,
            pad: 1,
        },
        Case {
            hw: [7, 9],
            ic: 48,
            oc: 20,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
        Case {
            hw: [6, 400],
            ic: 16,
            oc: 16,
            kernel: 3,
            stride: 1,
            pad: 1,
        },
    ];

    /// Every ISA this CPU runs gives the scalar reference's output, on every case, with
    /// and without a residual.
    pub fn check_all_paths(layout: Packing, isas: &[Isa]) {
        for (ci, c) in CASES.iter().enumerate() {
            let [h, w] = c.hw;
            let oh = (h + 2 * c.pad - c.kernel) / c.stride + 1;
            let ow = (w + 2 * c.pad - c.kernel) / c.stride + 1;
            let win = Window {
                in_h: h,
                in_w: w,
                in_c: c.ic,
                out_h: oh,
                out_w: ow,
                out_c: c.oc,
                kernel: [c.kernel; 2],
                stride: [c.stride; 2],
                pads: [c.pad; 4],
            };
            let k = c.kernel * c.kernel * c.ic;
            let input = values(h * w * c.ic, ci as u32 + 1);
            let weights: Vec<i8> = values(k * c.oc, ci as u32 + 100)
                .into_iter()
                .map(|v| v.max(-127))
                .collect();
            // Channels shifting right only, some shifting left (small multipliers), or
            // some not shifting at all, and the residual's shift none, right or left,
            // spread so cases with whole 16-channel blocks have each. Odd cases clamp
            // like a fused ReLU. Then every case again at the limits the parser accepts:
            // shifts −31 and +30, multipliers 0, 2³⁰ and up to 2³¹ − 1, large biases.
            let mode = [0, 1, 2, 0][ci % 4];
            for extreme in [false, true] {
                let params: Vec<(i32, i32, i32)> = (0..c.oc)
                    .map(|o| {
                        let o = o as i32;
                        if extreme {
                            let large = (o % 7 - 3) * 300_000_000;
                            let small = (o % 7 - 3) * 1000;
                            return match (o + 2 * ci as i32) % 6 {
                                0 => (large, i32::MAX, -31),
                                1 => (small, i32::MAX, 30),
                                2 => (small, i32::MAX - o, -8),
                                3 => (large, 1 << 30, -24),
                                4 => (small, 0, 7),
                                _ => (large, i32::MAX - 1, -30 + o % 3),
                            };
                        }
                        match mode {
                            0 => (o * 977 - 3000, 1_300_000_000 + o * 7_000_000, -7 + o % 3),
                            // Left shifts and shift 0 with small multipliers (a scale above one
                            // is a small multiplier shifted left), right shifts normalised.
                            1 if o % 5 >= 3 => (o * 31 - 100, 2_000 + o * 300, o % 5 - 3),
                            1 => (o * 31 - 100, 1_100_000_000 + o * 3_000_000, -8 - o % 5),
                            // Shift 0 with a multiplier far below 2³⁰ (the parser accepts any ≥ 0),
                            // so those channels are not all clamped.
                            _ if o % 3 == 0 => (o * 53 - 400, 40_000 + o * 1_000, 0),
                            _ => (o * 53 - 400, 1_200_000_000 + o * 5_000_000, -9 - o % 3),
                        }
                    })
                    .collect();
                let out = OutQuant {
                    zero_point: -5,
                    min: if ci % 2 == 0 { -128 } else { -5 },
                    max: 127,
                };
                let res_data = values(oh * ow * c.oc, ci as u32 + 200);
                for with_residual in [false, true] {
                    let residual = if with_residual {
                        Residual::Separate {
                            data: &res_data,
                            zero_point: 3,
                            multiplier: if extreme { i32::MAX } else { 1_500_000_000 },
                            shift: if extreme {
                                [30, -31][ci % 2]
                            } else {
                                [0, -2, 1][mode]
                            },
                        }
                    } else {
                        Residual::None
                    };
                    let mut expect = vec![0i8; oh * ow * c.oc];
                    scalar::conv2d(
                        &win,
                        &input,
                        9,
                        &weights,
                        |o| params[o],
                        out,
                        residual,
                        &mut expect,
                    );
                    // Equal outputs prove little if every one is clamped.
                    assert!(
                        expect.iter().any(|&v| v > out.min && v < out.max),
                        "case {ci} (extreme {extreme}): every reference output is clamped"
                    );
                    let packed = layout.pack_weights(&weights, k, c.oc);
                    assert_eq!(packed.len(), layout.packed_len(k, c.oc));
                    assert!(layout.is_consistent(&packed, k, c.oc));
                    let raw = param_bytes(&params);
                    for &isa in isas {
                        // The whole map at once, and split in runs of pixels as threads do.
                        let pixels = oh * ow;
                        for parts in [1, 3] {
                            let mut got = vec![0i8; pixels * c.oc];
                            let mut scratch = vec![0i8; layout.scratch_len(k)];
                            let run = pixels.div_ceil(parts);
                            for (i, chunk) in got.chunks_mut(run * c.oc).enumerate() {
                                let first = i * run;
                                let part_residual = residual.part(first * c.oc, chunk.len());
                                let conv = PackedConv {
                                    window: &win,
                                    input: &input,
                                    zero_point: 9,
                                    packed: &packed,
                                    params: &raw,
                                    out,
                                    residual: part_residual,
                                    first,
                                };
                                layout.conv2d(isa, &conv, chunk, &mut scratch);
                            }
                            assert_eq!(
                            got, expect,
                            "{layout:?}/{isa} differs on case {ci} (residual {with_residual}, {parts} parts, extreme {extreme})"
                        );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn scalar_micro_kernel_matches_the_reference_conv() {
        check_all_paths(Packing::Blocks4, &[Isa::Scalar]);
        check_all_paths(Packing::Lanes16, &[Isa::Scalar]);
    }

    fn supported() -> Vec<Isa> {
        let cpu = crate::isa::CpuFeatures::available();
        Isa::ALL.into_iter().filter(|&i| cpu.supports(i)).collect()
    }

    #[test]
    fn every_supported_simd_path_matches_the_reference_conv() {
        let isas = supported();
        std::println!("checking {isas:?}");
        check_all_paths(Packing::Blocks4, &isas);
    }

    #[test]
    fn packed_weights_are_checked() {
        let w = values(27 * 5, 3)
            .into_iter()
            .map(|v| v.max(-127))
            .collect::<Vec<_>>();
        for packing in [Packing::Blocks4, Packing::Lanes16] {
            let geometry = packing.layout(27, 5);
            let place = |kk, o| (geometry.at)(geometry.k_pad, kk, o);
            let good = packing.pack_weights(&w, 27, 5);
            assert!(packing.is_consistent(&good, 27, 5));
            // A -128, a non-zero padded k, a non-zero padded channel, a wrong sum, a
            // wrong length: each refused.
            let mut bad = good.clone();
            bad[place(0, 0)] = -128;
            assert!(!packing.is_consistent(&bad, 27, 5));
            let mut bad = good.clone();
            bad[place(27, 0)] = 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            let mut bad = good.clone();
            bad[place(3, 5)] = 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            let mut bad = good.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(!packing.is_consistent(&bad, 27, 5));
            assert!(!packing.is_consistent(&good[1..], 27, 5));
            assert_eq!(good.len(), packing.packed_len(27, 5));
        }
    }

    #[test]
    fn in_place_residual_matches_too() {
        let win = Window {
            in_h: 5,
            in_w: 5,
            in_c: 8,
            out_h: 5,
            out_w: 5,
            out_c: 8,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
        };
        let input = values(200, 7);
        let weights = values(9 * 8 * 8, 8);
        let start = values(200, 9);
        let out = OutQuant {
            zero_point: 0,
            min: 0,
            max: 127,
        };
        let residual = Residual::InPlace {
            zero_point: -2,
            multiplier: 1_400_000_000,
            shift: 1,
        };
        let mut expect = start.clone();
        scalar::conv2d(
            &win,
            &input,
            -3,
            &weights,
            |o| (o as i32, 1_200_000_000, -6),
            out,
            residual,
            &mut expect,
        );
        let raw = param_bytes(&(0..8).map(|o| (o, 1_200_000_000, -6)).collect::<Vec<_>>());
        for layout in [Packing::Blocks4, Packing::Lanes16] {
            let packed = layout.pack_weights(&weights, 72, 8);
            for isa in supported() {
                let mut got = start.clone();
                let mut scratch = vec![0i8; layout.scratch_len(72)];
                let conv = PackedConv {
                    window: &win,
                    input: &input,
                    zero_point: -3,
                    packed: &packed,
                    params: &raw,
                    out,
                    residual,
                    first: 0,
                };
                layout.conv2d(isa, &conv, &mut got, &mut scratch);
                assert_eq!(got, expect, "{layout:?}/{isa}");
            }
        }
    }
}
