//! The driver every packed conv runs through: a panel of pixels packed as the
//! micro-kernel asks, then the kernel on it; or, where the kernel reads its input in place
//! and the shape allows, bands of padded input instead. It knows no ISA: the kernel comes
//! from [`crate::conv::dispatch`].

use crate::conv::budget::{
    band_rows, int16_panel_slots_in, panel_slots_in, scratch_len, DIRECT_PIXELS, DIRECT_TAPS,
};
use crate::conv::contract::{round_up, Conv, Shifts, KC};
use crate::conv::input::{fill_band, pack_panel};
use crate::conv::kernel::{Direct, DirectKernel, MicroKernel, Panel};

/// The conv on `kernel`: same results as [`crate::scalar::conv2d`] on the pixels of
/// `output`. `scratch` holds at least [`crate::conv::budget::min_scratch_len`] bytes;
/// panels and bands are sized to it (up to [`scratch_len`]).
///
/// # Safety
/// The CPU has the kernel's ISA; the shapes are consistent (the file parser checked
/// them, weights packed in the kernel's layout).
pub unsafe fn conv2d(kernel: &MicroKernel, c: &Conv<'_>, output: &mut [i8], scratch: &mut [i8]) {
    if let Some(whole) = kernel.winograd {
        let (first, pixels) = (c.first, c.pixels(output));
        if whole.path.runs(c.window, first, pixels, scratch.len()) {
            let channels = 0..c.window.out_c;
            return (whole.run)(c, output.as_mut_ptr(), pixels, channels, scratch);
        }
    }
    let k = c.k();
    let shifts = c.shifts();
    let budget = scratch.len().min(scratch_len(k));
    if let Some(direct) = kernel.direct {
        let rows = band_rows(c.window, budget);
        if rows > 0 {
            let band = &mut scratch[..budget];
            return bands(direct, kernel.input.group, c, output, band, rows, shifts);
        }
    }
    let (slots, width) = if kernel.input.int16 {
        (int16_panel_slots_in(k, scratch.len()), 2)
    } else {
        (panel_slots_in(k, scratch.len()), 1)
    };
    assert!(slots > 0, "the scratch holds less than one panel");
    let pixels = c.pixels(output);
    let a = &mut scratch[..slots * round_up(k, KC) * width];
    let mut p0 = 0;
    while p0 < pixels {
        let count = slots.min(pixels - p0);
        let layout = pack_panel(kernel.input, c, c.first + p0, count, a);
        let panel = Panel {
            a,
            slots: layout,
            count,
            p0,
            shifts,
        };
        (kernel.panel)(c, &panel, output);
        p0 += count;
    }
}

/// The conv by bands of `rows_per_band` output rows: each band's padded input copied to
/// `scratch` once, then read in place by the kernel, [`DIRECT_PIXELS`] pixels at a time
/// in tiles of `tile` pixels.
///
/// # Safety
/// As [`conv2d`].
#[allow(clippy::too_many_arguments)]
unsafe fn bands(
    direct: DirectKernel,
    tile: usize,
    c: &Conv<'_>,
    output: &mut [i8],
    scratch: &mut [i8],
    rows_per_band: usize,
    shifts: Shifts,
) {
    let s = c.window;
    let row = s.padded_row();
    let (kh, kw, ic) = (s.kernel[0], s.kernel[1], s.in_c);
    let mut taps = [0u32; DIRECT_TAPS];
    for (t, tap) in taps.iter_mut().take(kh * kw).enumerate() {
        *tap = ((t / kw) * row + (t % kw) * ic) as u32;
    }
    let taps = &taps[..kh * kw];
    let end = c.first + c.pixels(output);
    let mut p = c.first;
    while p < end {
        let oy = p / s.out_w;
        let band_end = ((oy + rows_per_band) * s.out_w).min(end);
        let r0 = oy * s.stride[0];
        let rows = (band_end - 1) / s.out_w * s.stride[0] + kh - r0;
        fill_band(s, c.input, c.zero_point, r0, rows, scratch);
        let band = &scratch[..rows * row];
        let mut q = p;
        while q < band_end {
            let count = DIRECT_PIXELS.min(band_end - q);
            let mut offsets = [0u32; DIRECT_PIXELS];
            let slots = round_up(count, tile);
            // A run of pixels per output row: one step apart.
            let (mut y, mut x) = (q / s.out_w, q % s.out_w);
            let col_step = (s.stride[1] * ic) as u32;
            let mut done = 0;
            while done < count {
                let n = (count - done).min(s.out_w - x);
                let first = ((y * s.stride[0] - r0) * row + x * s.stride[1] * ic) as u32;
                for (i, o) in offsets[done..done + n].iter_mut().enumerate() {
                    *o = first + i as u32 * col_step;
                }
                (y, x, done) = (y + 1, 0, done + n);
            }
            let last = offsets[count - 1];
            offsets[count..slots].fill(last);
            let d = Direct {
                band,
                offsets: &offsets[..slots],
                taps,
                in_c: ic,
                count,
                p0: q - c.first,
                shifts,
            };
            // Every offset plus every tap plus `IC` bytes is inside the band (the rows
            // cover the pixels' taps, the padded width their columns).
            direct(c, &d, output);
            q += count;
        }
        p = band_end;
    }
}
