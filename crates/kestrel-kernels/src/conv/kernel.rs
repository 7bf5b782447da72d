//! What a micro-kernel is given and what it is: the driver packs a [`Panel`] of input (or
//! points at a band read in place, [`Direct`]) and hands it to the kernel, which computes
//! every block of output channels of those pixels and stores them through the epilogue.

use core::ops::Range;

use crate::conv::contract::{Conv, Shifts, KC};
use crate::conv::input::{InputFormat, Slots};
use crate::conv::winograd;

/// One packed panel of input pixels.
pub struct Panel<'a> {
    /// The packed input, laid out as `slots` says.
    pub a: &'a [i8],
    pub slots: Slots,
    /// Pixels packed (the rest of the slots hold stale bytes whose results are dropped).
    pub count: usize,
    /// The panel's first pixel, relative to the output slice.
    pub p0: usize,
    /// The conv's [`Conv::shifts`], worked out once per conv.
    pub shifts: Shifts,
}

impl Panel<'_> {
    /// 16-deep reduction steps.
    pub fn steps(&self) -> usize {
        self.slots.k_pad / KC
    }

    /// The packed input of the `height`-pixel tile starting at pixel `m0` (a multiple
    /// of the group).
    pub fn tile(&self, m0: usize, height: usize) -> &[i8] {
        &self.a[self.slots.group_at(m0)..][..height * self.slots.k_pad]
    }
}

/// Up to [`crate::conv::budget::DIRECT_PIXELS`] output pixels of a band of padded input,
/// for a kernel that reads them in place.
pub struct Direct<'a> {
    pub band: &'a [i8],
    /// Where each pixel's first tap starts in the band, per tile of the kernel's height
    /// (a last, short tile repeats its last pixel; those results are dropped).
    pub offsets: &'a [u32],
    /// Where each tap starts, from its pixel's first.
    pub taps: &'a [u32],
    pub in_c: usize,
    /// Pixels, and the first one relative to the output slice.
    pub count: usize,
    pub p0: usize,
    pub shifts: Shifts,
}

/// Every block of channels of a panel's pixels, stored.
///
/// # Safety
/// The CPU has the kernel's ISA; `c`, the panel and `output` are consistent (the parser
/// checked the shapes; the driver packed the panel as the kernel's [`InputFormat`] says).
pub type PanelKernel = unsafe fn(&Conv<'_>, &Panel<'_>, &mut [i8]);

/// As [`PanelKernel`], reading a band in place.
///
/// # Safety
/// As [`PanelKernel`]; every offset plus every tap plus `IC` bytes is inside the band.
pub type DirectKernel = unsafe fn(&Conv<'_>, &Direct<'_>, &mut [i8]);

/// A whole conv on one path (Winograd): output channels `channels` of the `pixels` pixels
/// of the run whose output starts at the pointer, in `scratch`.
///
/// # Safety
/// As [`PanelKernel`]; the conv [`crate::conv::winograd::fits`], its
/// [`crate::conv::winograd::tiles_in`] the scratch is at least one group, `channels` are
/// whole passes of the path inside `OC` (the last may end at `OC`), and the output is
/// valid for writes of `pixels ×
/// OC` elements none of whose `channels` anything else touches meanwhile.
pub type WholeKernel = unsafe fn(&Conv<'_>, *mut i8, usize, Range<usize>, &mut [i8]);

/// A Winograd kernel as the driver runs it: on runs its path
/// ([`crate::conv::winograd::Path`]) [`Path::runs`](crate::conv::winograd::Path::runs).
#[derive(Clone, Copy)]
pub struct Winograd {
    pub run: WholeKernel,
    pub path: winograd::Path,
}

/// A micro-kernel as the driver runs it.
#[derive(Clone, Copy)]
pub struct MicroKernel {
    pub input: InputFormat,
    pub panel: PanelKernel,
    /// Where the kernel can read a band in place instead (shapes [`crate::conv::budget::band_rows`] allows).
    pub direct: Option<DirectKernel>,
    /// What computes the 3×3 stride-1 convs [`Path::runs`](crate::conv::winograd::Path::runs) on instead.
    pub winograd: Option<Winograd>,
}
