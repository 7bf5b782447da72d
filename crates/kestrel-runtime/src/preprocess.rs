//! Decoded RGB image → model input, as the `.kes` preprocessing section prescribes.
//!
//! This is the one implementation of resize, centre crop and normalisation: the host tools
//! (`kestrel run`, `eval`, calibration) and the board binaries both call it, so a board
//! sees exactly the input the host measured accuracy on. It is `no_std` and allocation
//! free; the bilinear filter needs a caller-provided scratch of [`scratch_len`] floats.
//!
//! Geometry: with `resize_shorter` set, the image is resized (bilinear) so its shorter
//! side has that many pixels and the centre `size` is cropped out; otherwise it is resized
//! straight to `size`. Only the cropped window is ever computed.

use kestrel_format::PreprocessInfo;

use crate::Error;

/// Resize filter recorded in the `.kes` (`PreprocessInfo::resize`).
const NEAREST: u8 = 0;

/// Where the model's input window sits in the resized image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    /// Size of the (virtual) resized image.
    resized: [usize; 2],
    /// Top-left corner of the crop in it.
    origin: [usize; 2],
    /// Model input `[height, width]`.
    out: [usize; 2],
    bilinear: bool,
}

fn geometry(info: &PreprocessInfo, width: usize, height: usize) -> Geometry {
    let [oh, ow] = info.size.map(|v| v as usize);
    match info.resize_shorter as usize {
        0 => Geometry {
            resized: [oh, ow],
            origin: [0, 0],
            out: [oh, ow],
            bilinear: info.resize != NEAREST,
        },
        shorter => {
            let (rw, rh) = if width <= height {
                (shorter, (height * shorter).div_ceil(width))
            } else {
                ((width * shorter).div_ceil(height), shorter)
            };
            let (rw, rh) = (rw.max(ow), rh.max(oh));
            Geometry {
                resized: [rh, rw],
                origin: [(rh - oh) / 2, (rw - ow) / 2],
                out: [oh, ow],
                bilinear: true,
            }
        }
    }
}

/// Floats of scratch [`preprocess_rgb`] needs for a `width × height` image (0 when no
/// bilinear filtering happens).
pub fn scratch_len(info: &PreprocessInfo, width: usize, height: usize) -> usize {
    let g = geometry(info, width, height);
    if g.bilinear && g.resized != [height, width] {
        height * g.out[1] * 3
    } else {
        0
    }
}

/// Preprocesses interleaved RGB bytes (`height × width × 3`) and hands each model input
/// value to `emit(channel, pixel, value)`, `pixel` being `y * width + x` in the model's
/// input. Values come out in channel-major order.
pub fn preprocess_rgb(
    info: &PreprocessInfo,
    rgb: &[u8],
    width: usize,
    height: usize,
    scratch: &mut [f32],
    mut emit: impl FnMut(usize, usize, f32),
) -> Result<(), Error> {
    if width == 0 || height == 0 || rgb.len() != width * height * 3 {
        return Err(Error::BufferSize {
            expected: width * height * 3,
            given: rgb.len(),
        });
    }
    let g = geometry(info, width, height);
    let need = scratch_len(info, width, height);
    if scratch.len() < need {
        return Err(Error::BufferSize {
            expected: need,
            given: scratch.len(),
        });
    }
    let [oh, ow] = g.out;
    let [y0, x0] = g.origin;
    // `pixel(y, x)` gives the resized image's RGB at model position (y, x).
    let mut normalise = |pixel: &mut dyn FnMut(usize, usize) -> [u8; 3]| {
        let plane = oh * ow;
        // Channel-major so that `emit` sees each output plane in order.
        for c in 0..3 {
            let src = if info.channel_order == 0 { c } else { 2 - c };
            for y in 0..oh {
                for x in 0..ow {
                    let v = pixel(y, x)[src] as f32 * info.scale;
                    emit(c, y * ow + x, (v - info.mean[c]) / info.std[c]);
                }
            }
        }
        debug_assert_eq!(plane, oh * ow);
    };
    let at = |y: usize, x: usize| {
        let i = (y * width + x) * 3;
        [rgb[i], rgb[i + 1], rgb[i + 2]]
    };
    let [rh, rw] = g.resized;
    if g.resized == [height, width] {
        normalise(&mut |y, x| at(y + y0, x + x0));
    } else if !g.bilinear {
        normalise(&mut |y, x| at((y + y0) * height / rh, (x + x0) * width / rw));
    } else {
        // Separable triangle filter, widened when shrinking so every source pixel counts
        // (antialiasing, as Pillow does). Horizontal pass into `scratch`, vertical on read.
        let tmp = &mut scratch[..need];
        for sy in 0..height {
            for x in 0..ow {
                let mut acc = [0.0f32; 3];
                for_each_tap(x + x0, rw, width, |sx, w| {
                    let p = at(sy, sx);
                    for c in 0..3 {
                        acc[c] += p[c] as f32 * w;
                    }
                });
                tmp[(sy * ow + x) * 3..][..3].copy_from_slice(&acc);
            }
        }
        let tmp = &*tmp;
        normalise(&mut |y, x| {
            let mut acc = [0.0f32; 3];
            for_each_tap(y + y0, rh, height, |sy, w| {
                for c in 0..3 {
                    acc[c] += tmp[(sy * ow + x) * 3 + c] * w;
                }
            });
            acc.map(to_u8)
        });
    }
    Ok(())
}

/// Calls `f(source_index, weight)` for the source samples that output sample `out` of a
/// `src_len → dst_len` triangle resize reads; the weights sum to 1.
fn for_each_tap(out: usize, dst_len: usize, src_len: usize, mut f: impl FnMut(usize, f32)) {
    let scale = src_len as f32 / dst_len as f32;
    let support = if scale > 1.0 { scale } else { 1.0 };
    let centre = (out as f32 + 0.5) * scale;
    let lo = floor_to_usize(centre - support);
    let hi = (ceil_to_usize(centre + support)).min(src_len);
    let weight = |i: usize| {
        let d = ((i as f32 + 0.5 - centre) / support).abs();
        if d < 1.0 {
            1.0 - d
        } else {
            0.0
        }
    };
    let total: f32 = (lo..hi).map(weight).sum();
    if total <= 0.0 {
        f(lo.min(src_len - 1), 1.0);
        return;
    }
    for i in lo..hi {
        let w = weight(i);
        if w > 0.0 {
            f(i, w / total);
        }
    }
}

fn floor_to_usize(v: f32) -> usize {
    if v <= 0.0 {
        0
    } else {
        v as usize
    }
}

fn ceil_to_usize(v: f32) -> usize {
    let t = floor_to_usize(v);
    if (t as f32) < v {
        t + 1
    } else {
        t
    }
}

fn to_u8(v: f32) -> u8 {
    let r = v + 0.5;
    if r <= 0.0 {
        0
    } else if r >= 255.0 {
        255
    } else {
        r as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn info(size: [u32; 2], resize: u8, shorter: u32) -> PreprocessInfo {
        PreprocessInfo {
            size,
            resize,
            channel_order: 0,
            resize_shorter: shorter,
            scale: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    fn run(p: &PreprocessInfo, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
        let [oh, ow] = p.size.map(|v| v as usize);
        let mut out = vec![f32::NAN; 3 * oh * ow];
        let mut scratch = vec![0.0; scratch_len(p, w, h)];
        preprocess_rgb(p, rgb, w, h, &mut scratch, |c, i, v| {
            out[c * oh * ow + i] = v
        })
        .unwrap();
        out
    }

    #[test]
    fn same_size_is_a_plain_transpose() {
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|v| v as u8).collect(); // 3 wide, 2 high
        let out = run(&info([2, 3], 1, 0), &rgb, 3, 2);
        assert_eq!(&out[..6], &[0.0, 3.0, 6.0, 9.0, 12.0, 15.0]);
        assert_eq!(&out[6..12], &[1.0, 4.0, 7.0, 10.0, 13.0, 16.0]);
    }

    #[test]
    fn bilinear_keeps_a_flat_image_flat_and_averages_when_halving() {
        let flat = vec![77u8; 10 * 6 * 3];
        assert!(run(&info([3, 4], 1, 0), &flat, 10, 6)
            .iter()
            .all(|&v| v == 77.0));
        // A 4×1 image 0,0,200,200 halved: each output averages a pair (plus the tails of
        // the widened triangle), so it lies strictly between and is monotonic.
        let mut rgb = Vec::new();
        for v in [0u8, 0, 200, 200] {
            rgb.extend_from_slice(&[v, v, v]);
        }
        let out = run(&info([1, 2], 1, 0), &rgb, 4, 1);
        assert!(
            out[0] < out[1] && out[0] < 100.0 && out[1] > 100.0,
            "{out:?}"
        );
    }

    #[test]
    fn shorter_side_then_centre_crop_takes_the_middle() {
        // 8×4 image whose columns are numbered; shorter side 4 = no scaling, crop 4×4
        // from the middle: columns 2..6.
        let mut rgb = Vec::new();
        for _y in 0..4 {
            for x in 0..8u8 {
                rgb.extend_from_slice(&[x * 10; 3]);
            }
        }
        let out = run(&info([4, 4], 1, 4), &rgb, 8, 4);
        assert_eq!(&out[..4], &[20.0, 30.0, 40.0, 50.0]);
    }

    #[test]
    fn nearest_and_bgr_and_normalisation() {
        let mut p = info([2, 2], 0, 0);
        p.channel_order = 1;
        p.scale = 0.5;
        p.mean = [1.0, 2.0, 3.0];
        p.std = [2.0, 2.0, 2.0];
        let rgb = [10u8, 20, 30]; // 1×1 upsampled to 2×2
        let out = run(&p, &rgb, 1, 1);
        // Channel 0 of a BGR model is blue: (30 × 0.5 − 1) / 2 = 7.
        assert_eq!(&out[..4], &[7.0; 4]);
        assert_eq!(&out[8..], &[1.0; 4]); // red: (10 × 0.5 − 3) / 2
    }

    #[test]
    fn wrong_buffer_sizes_are_errors() {
        let p = info([2, 2], 1, 0);
        let mut none: [f32; 0] = [];
        assert!(preprocess_rgb(&p, &[0; 5], 1, 2, &mut none, |_, _, _| {}).is_err());
        assert!(preprocess_rgb(&p, &[0; 48], 4, 4, &mut none, |_, _, _| {}).is_err());
        assert!(preprocess_rgb(&p, &[], 0, 0, &mut none, |_, _, _| {}).is_err());
    }
}
