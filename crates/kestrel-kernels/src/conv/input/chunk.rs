//! One 16-byte chunk moved with the target's vector registers (`FLIP`: `^ 0x80`).

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
