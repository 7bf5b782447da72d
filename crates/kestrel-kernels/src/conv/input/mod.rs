//! Packed input: the im2col rows of a run of output pixels, built in the scratch a panel
//! at a time (no full im2col of a feature map), laid out as [`Slots`] says. Padding taps
//! hold the input zero point, padded `k` hold zero; with `flip` every byte is stored
//! `x ^ 0x80` (`x + 128` as u8, for VNNI's unsigned × signed products). Also the bands
//! of padded input that the direct path reads in place ([`fill_band`]).

mod chunk;
#[cfg(target_arch = "aarch64")]
mod gather;

#[cfg(target_arch = "aarch64")]
use crate::conv::budget::GATHER_ROWS;
use crate::conv::budget::{PADDED_CHUNKS, PADDED_ROWS, ROW_MAX};
use crate::conv::contract::{round_up, Conv, KC};
use crate::window::Window;

/// How a micro-kernel wants its input packed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputFormat {
    /// Pixels per group: the kernel's tile height.
    pub group: usize,
    /// Bytes stored `x ^ 0x80` (VNNI).
    pub flip: bool,
    /// 64-byte chunks where the input channels allow (`IC % 64 == 0`), packed with
    /// AVX-512 copies. Only kernels whose ISA includes AVX-512 F/BW set it.
    pub wide_chunks: bool,
    /// Every value sign-extended to int16 once packed (AVX2's `vpmaddwd` reads them as
    /// they lie), at twice the bytes: `Slots` positions count int16s. Only kernels whose
    /// ISA includes AVX2 set it.
    pub int16: bool,
}

/// Packs pixels `first .. first + count` of `c` into `a` as `format` says; returns the
/// layout of what it wrote.
pub fn pack_panel(
    format: InputFormat,
    c: &Conv<'_>,
    first: usize,
    count: usize,
    a: &mut [i8],
) -> Slots {
    let k = c.k();
    let k_pad = round_up(k, KC);
    #[cfg(target_arch = "x86_64")]
    if format.wide_chunks && c.window.in_c.is_multiple_of(64) {
        // SAFETY: only kernels that need AVX-512 F/BW (VNNI) ask for wide chunks, and the
        // session checked the CPU for their ISA.
        unsafe {
            pack_input_64_avx512(
                (c.window, c.input, c.zero_point, first, count, a),
                format.group,
            )
        };
        return Slots {
            group: format.group,
            k_pad,
            chunk: 64,
        };
    }
    #[cfg(target_arch = "x86_64")]
    if format.int16 {
        // Packed into the upper half, then widened into the whole.
        let bytes = Slots::new(format.group, k_pad).bytes(count);
        let (a, packed) = a.split_at_mut(bytes);
        let (window, input, zp) = (c.window, c.input, c.zero_point);
        pack_input(
            window,
            input,
            zp,
            first,
            count,
            format.group,
            k,
            format.flip,
            packed,
        );
        // SAFETY: only kernels that need AVX2 ask for int16 (the session checked the CPU);
        // `a` then `packed` are `bytes` bytes each, one after the other.
        unsafe { widen_avx2(a.as_mut_ptr(), bytes) };
        return Slots::new(format.group, k_pad);
    }
    pack_input(
        c.window,
        c.input,
        c.zero_point,
        first,
        count,
        format.group,
        k,
        format.flip,
        a,
    );
    Slots::new(format.group, k_pad)
}

/// Sign-extends the `n` bytes at `a + n` to `n` int16s at `a` (`n` a multiple of 16),
/// in place: each 16 bytes are read before the 32 they become are written, and those
/// never reach bytes not read yet.
///
/// # Safety
/// The CPU has AVX2; `a .. a + 2n` is writable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn widen_avx2(a: *mut i8, n: usize) {
    use core::arch::x86_64::*;
    debug_assert!(n.is_multiple_of(16));
    for i in (0..n).step_by(16) {
        let bytes = _mm_loadu_si128(a.add(n + i) as *const __m128i);
        _mm256_storeu_si256(a.add(2 * i) as *mut __m256i, _mm256_cvtepi8_epi16(bytes));
    }
}

/// Fills the scratch with the im2col rows of pixels `p0 .. p0 + count`, in groups of
/// `group` pixels (one micro-kernel tile each, contiguous so a tile reads one stream):
/// group `g` is `[K/KC][group][KC]` at `g · group · K'` (`K'` = `K` padded to `KC`).
/// The scratch holds `count` rounded up to `group`, times `K'` bytes.
/// With `flip` every value is stored `x ^ 0x80` (`x + 128` as u8, for VNNI).
#[allow(clippy::too_many_arguments)]
pub fn pack_input(
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
            (true, 6) => pack_input_chunks::<true, 6>(args),
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
    a[..Slots::new(group, k_pad).bytes(count)].fill(x);
    let kw = s.kernel[1];
    let at = Slots::new(group, k_pad);
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

/// [`pack_input`] for shallow inputs (`IC` off the chunk size, as a stem's three
/// colours) in groups of several pixels: each pixel's im2col row is built on the stack,
/// then stored a chunk at a time.
fn pack_input_rows<const FLIP: bool>(
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let k_pad = round_up(s.kernel[0] * s.kernel[1] * s.in_c, KC);
    assert!(a.len() >= Slots::new(group, k_pad).bytes(count));
    #[cfg(target_arch = "aarch64")]
    if !FLIP {
        if let Some(gather) = gather::RowGather::new(s) {
            pack_input_gathered(&gather, (s, input, zero_point, p0, count, a), group);
            return;
        }
    }
    let width = s.padded_row();
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
    let width = s.padded_row();
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
    let width = s.padded_row();
    let x = if FLIP { i8::MIN } else { 0 };
    assert!(run >= KC && kh * width <= PADDED_ROWS && k_pad / KC <= PADDED_CHUNKS);
    assert!(a.len() >= Slots::new(group, k_pad).bytes(count));
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
    let at = Slots::new(group, k_pad);
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
                        to.add(c * at.chunk_step()),
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
    assert!(a.len() >= Slots::new(group, k_pad).bytes(count));
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
        // Chunk c of pixel m at base + c · chunk step (the division once per pixel).
        let at = Slots::new(group, k_pad);
        let base = at.slot(m, 0);
        // SAFETY: chunk c of the row is inside it (c < k_pad / KC); its slot is inside
        // `a` (asserted above: the group of pixel m < count holds k_pad bytes per pixel).
        unsafe {
            let dst = a.as_mut_ptr().add(base);
            for c in 0..k_pad / KC {
                chunk::copy::<FLIP>(row.as_ptr().add(c * KC), dst.add(c * at.chunk_step()));
            }
        }
    }
}

/// [`pack_input_rows`] with the pixels inside the map gathered straight from the input
/// rows by table lookups ([`gather::RowGather`]); those at the border build their row
/// on the stack as before.
#[cfg(target_arch = "aarch64")]
fn pack_input_gathered(gather: &gather::RowGather, args: PackArgs<'_>, group: usize) {
    let s = args.0;
    if s.kernel[0] * s.padded_row() > GATHER_ROWS {
        return pack_input_rows_on_stack::<false>(args, group);
    }
    // The usual shape (a 3×3 stem on RGB: three rows, two chunks) with its loops unrolled.
    match (gather.rows(), gather.chunks()) {
        (3, 2) => gathered::<3, 2>(gather, args, group),
        _ => gathered::<0, 0>(gather, args, group),
    }
}

/// [`pack_input_gathered`] for `KH` kernel rows and `CHUNKS` chunks (0: as `gather` says):
/// for each output row, its kernel rows are copied to the stack with their padding
/// written out (the zero point), then every pixel of the row is gathered from there.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn gathered<const KH: usize, const CHUNKS: usize>(
    gather: &gather::RowGather,
    (s, input, zero_point, p0, count, a): PackArgs<'_>,
    group: usize,
) {
    let (kh, kw, ic) = (s.kernel[0], s.kernel[1], s.in_c);
    let k_pad = round_up(kh * kw * ic, KC);
    let sx = s.stride[1];
    let width = s.padded_row();
    // The gathers read 16 bytes from each kernel row's start: slack after the last row.
    let mut rows = [zero_point; GATHER_ROWS + KC];
    assert!(kh * width <= GATHER_ROWS);
    let last_slot = Slots::new(group, k_pad).slot(count.max(1) - 1, k_pad - KC);
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
            gather::gather_run::<KH, CHUNKS>(
                gather,
                rows.as_ptr().add(ox * sx * ic),
                sx * ic,
                width,
                run,
                a.as_mut_ptr().add(Slots::new(group, k_pad).slot(m, 0)),
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

/// Where each byte of a packed input goes: pixels in groups of `group` (one
/// micro-kernel tile), each group `[K/chunk][group][chunk]`, so a tile reads one stream.
/// The one statement of that arithmetic; kernels walk a group with [`Slots::pixel_step`]
/// and [`Slots::chunk_step`].
#[derive(Clone, Copy, Debug)]
pub struct Slots {
    pub group: usize,
    pub k_pad: usize,
    /// Bytes of a pixel side by side: [`KC`], or 64 where VNNI packs wide chunks.
    pub chunk: usize,
}

impl Slots {
    /// Groups of `group` pixels in chunks of [`KC`].
    #[inline(always)]
    pub fn new(group: usize, k_pad: usize) -> Slots {
        Slots {
            group,
            k_pad,
            chunk: KC,
        }
    }

    /// Byte of pixel `m`'s reduction index `k`.
    #[inline(always)]
    pub fn slot(&self, m: usize, k: usize) -> usize {
        let (g, ch) = (self.group, self.chunk);
        (m / g) * g * self.k_pad + (k / ch) * g * ch + (m % g) * ch + k % ch
    }

    /// Where the group starting at pixel `m0` (a multiple of `group`) starts: its pixels
    /// take `k_pad` bytes each.
    #[inline(always)]
    pub fn group_at(&self, m0: usize) -> usize {
        debug_assert!(m0.is_multiple_of(self.group));
        m0 * self.k_pad
    }

    /// From one pixel's chunk to the next pixel's in its group.
    #[inline(always)]
    pub fn pixel_step(&self) -> usize {
        self.chunk
    }

    /// From one chunk of a pixel to its next.
    #[inline(always)]
    pub fn chunk_step(&self) -> usize {
        self.group * self.chunk
    }

    /// Bytes `count` pixels take (whole groups).
    #[inline(always)]
    pub fn bytes(&self, count: usize) -> usize {
        round_up(count, self.group) * self.k_pad
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
fn pack_input_64<const FLIP: bool>(args: PackArgs<'_>, group: usize) {
    debug_assert!(args.0.in_c.is_multiple_of(64));
    pack_input_chunks_any::<FLIP, 64>(args, group)
}

/// What [`pack_input`] passes on to its variants: window, input, zero point, first
/// pixel, pixel count, scratch.
pub type PackArgs<'a> = (&'a Window, &'a [i8], i8, usize, usize, &'a mut [i8]);

/// Chunks of `CH` bytes (16 or 64; `IC % CH == 0`).
#[inline(always)]
fn pack_input_chunks_any<const FLIP: bool, const CH: usize>(
    (s, input, zero_point, p0, rows, a): PackArgs<'_>,
    group: usize,
) {
    let ic = s.in_c;
    let chunks = ic / CH;
    let k_pad = chunks * CH * s.kernel[0] * s.kernel[1];
    let slots = Slots {
        group,
        k_pad,
        chunk: CH,
    };
    assert!(a.len() >= slots.bytes(rows) && input.len() >= s.in_h * s.in_w * ic);
    let pad = [zero_point; 64];
    let dst0 = a.as_mut_ptr();
    let kw = s.kernel[1];
    let step = slots.chunk_step();
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
            let mut dst = dst0.add(slots.slot(m, 0));
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

/// [`pack_input`] in 64-byte chunks compiled for AVX-512, where each chunk moves with one
/// copy each way.
///
/// # Safety
/// The CPU has AVX-512 F/BW; the input channels are a multiple of 64; `a` holds `count`
/// (rounded up to `group`) packed rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_input_64_avx512(args: PackArgs<'_>, group: usize) {
    pack_input_64::<true>(args, group)
}

/// Writes rows `r0 .. r0 + rows` of the padded input (input row `r - top pad`) to `band`,
/// the zero point wherever the padding is: what the direct path reads in place.
pub fn fill_band(
    s: &Window,
    input: &[i8],
    zero_point: i8,
    r0: usize,
    rows: usize,
    band: &mut [i8],
) {
    let row = s.padded_row();
    let (left, inner) = (s.pads[1] * s.in_c, s.in_w * s.in_c);
    // Padding columns are a few 16-byte chunks (`IC % 16 == 0`): stores, not calls.
    let pad = |d: &mut [i8]| {
        for c in d.chunks_exact_mut(KC) {
            c.copy_from_slice(&[zero_point; KC]);
        }
    };
    for (i, dst) in band[..rows * row].chunks_exact_mut(row).enumerate() {
        match (r0 + i).checked_sub(s.pads[0]).filter(|&iy| iy < s.in_h) {
            Some(iy) => {
                pad(&mut dst[..left]);
                dst[left..left + inner].copy_from_slice(&input[iy * inner..][..inner]);
                pad(&mut dst[left + inner..]);
            }
            None => dst.fill(zero_point),
        }
    }
}
