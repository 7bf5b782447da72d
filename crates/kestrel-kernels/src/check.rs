//! Every kernel path against the reference: packed convs on odd shapes and at the limits
//! the parser accepts, and the dense layers' dot product on every length. The host tests
//! run these on every ISA the CPU has; a firmware runs them on its own core (the Cortex-M
//! kernel check under qemu-system-arm), where no test harness exists. A failure says
//! which case, path and variant differed.

use alloc::vec;
use alloc::vec::Vec;

use crate::conv::contract::{Conv, Packing};
use crate::conv::params::to_bytes as param_bytes;
use crate::conv::winograd;
use crate::isa::Isa;
use crate::quant::{OutQuant, Residual};
use crate::scalar;
use crate::window::Window;

/// What a check found wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Every reference output of a case is clamped, so equal outputs would prove little.
    AllClamped { case: usize, extreme: bool },
    /// [`crate::dense::dot`] differs from [`crate::scalar::dot`] on vectors of this length.
    DenseDot { len: usize },
    /// A path's output differs from the reference's.
    Differs {
        packing: Packing,
        isa: Isa,
        case: usize,
        residual: bool,
        parts: usize,
        least_scratch: bool,
        /// Weights and scratch at odd addresses (a caller's unaligned buffers).
        odd_addresses: bool,
        extreme: bool,
    },
    /// A Winograd path's output differs from the reference's (or it did not run) when
    /// `shares` shares of the output channels each run alone, as threads split a small map.
    ChannelShares {
        packing: Packing,
        isa: Isa,
        case: usize,
        residual: bool,
        shares: usize,
        extreme: bool,
    },
}

impl core::fmt::Display for Failure {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Failure::AllClamped { case, extreme } => {
                write!(f, "case {case} (extreme {extreme}): every reference output is clamped")
            }
            Failure::DenseDot { len } => {
                write!(f, "the dense dot product differs on length {len}")
            }
            Failure::Differs {
                packing,
                isa,
                case,
                residual,
                parts,
                least_scratch,
                odd_addresses,
                extreme,
            } => write!(
                f,
                "{packing:?}/{isa} differs on case {case} (residual {residual}, {parts} parts, least scratch {least_scratch}, odd addresses {odd_addresses}, extreme {extreme})"
            ),
            Failure::ChannelShares {
                packing,
                isa,
                case,
                residual,
                shares,
                extreme,
            } => write!(
                f,
                "{packing:?}/{isa}'s Winograd path differs on case {case} in {shares} channel shares (residual {residual}, extreme {extreme})"
            ),
        }
    }
}

/// Deterministic pseudo-random int8 values.
pub fn values(n: usize, seed: u32) -> Vec<i8> {
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

pub struct Case {
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
pub const CASES: [Case; 14] = [
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
    // Winograd's shapes (3×3 stride 1, whole chunks in, whole vectors out) on odd maps:
    // a last tile row and column half outside, runs of pixels starting mid-tile.
    Case {
        hw: [11, 13],
        ic: 32,
        oc: 24,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    Case {
        hw: [9, 16],
        ic: 16,
        oc: 8,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
    // Deeper than the Cortex-M tile's extended input holds (K = 648).
    Case {
        hw: [4, 3],
        ic: 72,
        oc: 6,
        kernel: 3,
        stride: 1,
        pad: 1,
    },
];

/// Every path in `isas` (each must run on this CPU) gives the scalar reference's output
/// on weights packed `layout`, on every case, with and without a residual, whole and
/// split in runs of pixels as threads split it (and, on a Winograd path, in shares of the
/// output channels). Returns the cases checked.
pub fn all_paths(layout: Packing, isas: &[Isa]) -> Result<usize, Failure> {
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
                let raw = param_bytes(&params);
                let mut expect = vec![0i8; oh * ow * c.oc];
                let reference = Conv {
                    window: &win,
                    input: &input,
                    zero_point: 9,
                    weights: &weights,
                    params: &raw,
                    out,
                    residual,
                    first: 0,
                };
                scalar::conv2d(&reference, &mut expect);
                // Equal outputs prove little if every one is clamped.
                if !expect.iter().any(|&v| v > out.min && v < out.max) {
                    return Err(Failure::AllClamped { case: ci, extreme });
                }
                let packed = layout.pack_weights(&weights, k, c.oc);
                debug_assert!(layout.is_consistent(&packed, k, c.oc));
                // The same weights one byte into a buffer: at an odd address, as a
                // caller's model bytes may be.
                let mut shifted = vec![0i8; packed.len() + 1];
                shifted[1..].copy_from_slice(&packed);
                for &isa in isas {
                    // The whole map at once, split in runs of pixels as threads do, in the
                    // least scratch (a microcontroller's file: smaller panels), and with
                    // weights and scratch at odd addresses.
                    let pixels = oh * ow;
                    for (parts, least, odd) in [
                        (1, false, false),
                        (3, false, false),
                        (1, true, false),
                        (1, false, true),
                    ] {
                        let mut got = vec![0i8; pixels * c.oc];
                        let scratch_len = if least {
                            layout.min_scratch_len(k)
                        } else {
                            layout.scratch_len(k)
                        };
                        let mut scratch_buffer = vec![0i8; scratch_len + 1];
                        let scratch = &mut scratch_buffer[odd as usize..][..scratch_len];
                        let weights = if odd { &shifted[1..] } else { &packed[..] };
                        let run = pixels.div_ceil(parts);
                        for (i, chunk) in got.chunks_mut(run * c.oc).enumerate() {
                            let first = i * run;
                            let part_residual = residual.part(first * c.oc, chunk.len());
                            let conv = Conv {
                                window: &win,
                                input: &input,
                                zero_point: 9,
                                weights,
                                params: &raw,
                                out,
                                residual: part_residual,
                                first,
                            };
                            layout.conv2d(isa, &conv, chunk, scratch);
                        }
                        if got != expect {
                            return Err(Failure::Differs {
                                packing: layout,
                                isa,
                                case: ci,
                                residual: with_residual,
                                parts,
                                least_scratch: least,
                                odd_addresses: odd,
                                extreme,
                            });
                        }
                    }
                    let conv = Conv {
                        weights: &packed,
                        ..reference
                    };
                    let zeros = vec![0i8; expect.len()];
                    if let Some(shares) = channel_shares(layout, isa, &conv, &zeros, &expect) {
                        return Err(Failure::ChannelShares {
                            packing: layout,
                            isa,
                            case: ci,
                            residual: with_residual,
                            shares,
                            extreme,
                        });
                    }
                }
            }
        }
    }
    Ok(CASES.len())
}

/// Where the Winograd path of `layout` on `isa` runs the whole map of `conv` and it has
/// several passes of output channels: the conv in up to 3 shares of whole passes, each
/// alone, as threads split a small map, into an output that holds `start` first (an
/// in-place residual's). `Some(shares)` if that differs from `expect`.
fn channel_shares(
    layout: Packing,
    isa: Isa,
    conv: &Conv<'_>,
    start: &[i8],
    expect: &[i8],
) -> Option<usize> {
    let path = layout.tile(isa).winograd()?;
    let (win, oc) = (conv.window, conv.window.out_c);
    let pixels = win.out_h * win.out_w;
    let mut scratch = vec![0i8; path.scratch_len(win)];
    let passes = oc.div_ceil(path.pass);
    if passes < 2 || !path.runs(win, 0, pixels, scratch.len()) {
        return None;
    }
    let shares = passes.min(3);
    let mut got = start.to_vec();
    let mut ran = true;
    for s in 0..shares {
        let channels = path.share(oc, s, shares);
        ran &= unsafe {
            layout.winograd_channels(isa, conv, got.as_mut_ptr(), pixels, channels, &mut scratch)
        };
    }
    (!ran || got != expect).then_some(shares)
}

/// A residual added in place (the output starts as the residual) on every layout and
/// every path in `isas`, on a small map and on one the Winograd paths run (whole, and in
/// channel shares).
pub fn in_place_residual(isas: &[Isa]) -> Result<(), Failure> {
    for (case, (h, w, ic, oc)) in [(5, 5, 8, 8), (12, 11, 16, 32)].into_iter().enumerate() {
        let win = Window {
            in_h: h,
            in_w: w,
            in_c: ic,
            out_h: h,
            out_w: w,
            out_c: oc,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
        };
        let k = 9 * ic;
        let input = values(h * w * ic, 7);
        let weights: Vec<i8> = values(k * oc, 8).into_iter().map(|v| v.max(-127)).collect();
        let start = values(h * w * oc, 9);
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
        let raw = param_bytes(
            &(0..oc as i32)
                .map(|o| (o, 1_200_000_000, -6 - (ic > 8) as i32))
                .collect::<Vec<_>>(),
        );
        let reference = Conv {
            window: &win,
            input: &input,
            zero_point: -3,
            weights: &weights,
            params: &raw,
            out,
            residual,
            first: 0,
        };
        scalar::conv2d(&reference, &mut expect);
        if !expect.iter().any(|&v| v > out.min && v < out.max) {
            return Err(Failure::AllClamped {
                case: CASES.len() + case,
                extreme: false,
            });
        }
        for layout in Packing::ALL {
            let packed = layout.pack_weights(&weights, k, oc);
            let conv = Conv {
                weights: &packed,
                ..reference
            };
            for &isa in isas {
                let mut got = start.clone();
                let scratch_len = layout.scratch_len(k).max(winograd::most_scratch_len(&win));
                let mut scratch = vec![0i8; scratch_len];
                layout.conv2d(isa, &conv, &mut got, &mut scratch);
                if got != expect {
                    return Err(Failure::Differs {
                        packing: layout,
                        isa,
                        case: CASES.len() + case,
                        residual: true,
                        parts: 1,
                        least_scratch: false,
                        odd_addresses: false,
                        extreme: false,
                    });
                }
                if let Some(shares) = channel_shares(layout, isa, &conv, &start, &expect) {
                    return Err(Failure::ChannelShares {
                        packing: layout,
                        isa,
                        case: CASES.len() + case,
                        residual: true,
                        shares,
                        extreme: false,
                    });
                }
            }
        }
    }
    Ok(())
}

/// [`crate::dense::dot`] (this build's SIMD or DSP dot product) equals the plain sum on
/// every length up to 300, misaligned starts, and the extreme values.
pub fn dense_dot() -> Result<(), Failure> {
    let x = values(304, 77);
    let w: Vec<i8> = values(304, 78).into_iter().map(|v| v.max(-127)).collect();
    let extreme_x = vec![-128i8; 304];
    let extreme_w = vec![-127i8; 304];
    for len in 0..=300 {
        for start in [0, 1, 3] {
            for (x, w) in [(&x, &w), (&extreme_x, &extreme_w)] {
                let (x, w) = (&x[start..][..len], &w[start..][..len]);
                if crate::dense::dot(x, w) != scalar::dot(x, w) {
                    return Err(Failure::DenseDot { len });
                }
            }
        }
    }
    Ok(())
}
