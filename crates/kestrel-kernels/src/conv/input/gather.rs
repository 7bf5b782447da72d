//! AArch64 input packing for shallow inputs (a stem on RGB): each pixel's im2col row
//! gathered from its kernel rows with `tbl`.

use core::arch::aarch64::*;

use crate::conv::contract::KC;
use crate::window::Window;

/// One pixel's im2col row gathered from its kernel rows by table lookups, for shallow
/// inputs whose kernel row is at most 16 bytes (a 3×3 stem on RGB: 9) and whole row at
/// most 64 (27): each kernel row one 16-byte load, each 16-byte chunk of the im2col row
/// one `tbl` over those loads (indices past `K` give the zero padding).
pub struct RowGather {
    kh: usize,
    chunks: usize,
    index: [uint8x16_t; 4],
}

impl RowGather {
    /// `None` where the shape does not fit (`KH ≤ 4`, `KW·IC ≤ 16`, `K ≤ 64`).
    pub fn new(s: &Window) -> Option<Self> {
        let (kh, run) = (s.kernel[0], s.kernel[1] * s.in_c);
        let k = kh * run;
        if kh > 4 || run > KC || k > 4 * KC || k == 0 {
            return None;
        }
        let mut bytes = [[0xffu8; KC]; 4];
        for (b, slot) in bytes.iter_mut().flatten().enumerate().take(k) {
            *slot = ((b / run) * KC + b % run) as u8;
        }
        // SAFETY: plain loads of 16 bytes from each array.
        let index = bytes.map(|b| unsafe { vld1q_u8(b.as_ptr()) });
        Some(RowGather {
            kh,
            chunks: k.div_ceil(KC),
            index,
        })
    }

    pub fn rows(&self) -> usize {
        self.kh
    }

    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// Gathers the row whose kernel rows start at `src`, `stride` bytes apart, into
    /// chunk slots `slot_step` bytes apart from `dst`. `KH` and `CHUNKS` are this
    /// gather's rows and chunks, or 0 to read them from it.
    ///
    /// # Safety
    /// 16 bytes are readable at each kernel row's start, `chunks` slots writable.
    #[inline(always)]
    pub unsafe fn row<const KH: usize, const CHUNKS: usize>(
        &self,
        src: *const i8,
        stride: usize,
        dst: *mut i8,
        slot_step: usize,
    ) {
        let kh = if KH > 0 { KH } else { self.kh };
        let chunks = if CHUNKS > 0 { CHUNKS } else { self.chunks };
        let load = |r: usize| {
            if r < kh {
                vld1q_s8(src.add(r * stride))
            } else {
                vdupq_n_s8(0)
            }
        };
        let table = int8x16x4_t(load(0), load(1), load(2), load(3));
        for c in 0..chunks {
            vst1q_s8(dst.add(c * slot_step), vqtbl4q_s8(table, self.index[c]));
        }
    }
}

/// `n` gathers: pixel `m0 + i`'s kernel rows start at `src + i · step` (`stride` apart),
/// its chunks go to its slots in groups of `group` pixels of `k_pad` bytes, pixel `m0`'s
/// first at `dst`.
///
/// # Safety
/// As [`RowGather::row`] for every pixel; the slots are inside the packed input.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub unsafe fn gather_run<const KH: usize, const CHUNKS: usize>(
    gather: &RowGather,
    mut src: *const i8,
    step: usize,
    stride: usize,
    n: usize,
    mut dst: *mut i8,
    m0: usize,
    group: usize,
    k_pad: usize,
) {
    let mut in_group = m0 % group;
    for _ in 0..n {
        gather.row::<KH, CHUNKS>(src, stride, dst, group * KC);
        src = src.add(step);
        in_group += 1;
        dst = dst.add(KC);
        if in_group == group {
            in_group = 0;
            dst = dst.add(group * (k_pad - KC));
        }
    }
}
