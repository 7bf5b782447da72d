//! Camera frames and their conversion to interleaved RGB, into a buffer kept across frames.

use std::fmt;

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// How a frame's bytes encode its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Interleaved 8-bit R, G, B.
    Rgb24,
    /// Interleaved 8-bit B, G, R.
    Bgr24,
    /// Packed 4:2:2 Y0 U Y1 V (UVC webcams' raw format).
    Yuyv,
    /// Planar 4:2:0: full Y plane, then quarter U and V planes (`rpicam-vid --codec yuv420`).
    I420,
    /// One JPEG image per frame (UVC MJPEG, `rpicam-vid --codec mjpeg`).
    Mjpeg,
}

impl PixelFormat {
    /// Bytes of one `width × height` frame, for raw formats.
    pub fn frame_len(self, width: usize, height: usize) -> Option<usize> {
        match self {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => Some(width * height * 3),
            PixelFormat::Yuyv => Some(width * height * 2),
            PixelFormat::I420 => Some(width * height + 2 * width.div_ceil(2) * height.div_ceil(2)),
            PixelFormat::Mjpeg => None,
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "rgb24" | "rgb" => PixelFormat::Rgb24,
            "bgr24" | "bgr" => PixelFormat::Bgr24,
            "yuyv" | "yuy2" => PixelFormat::Yuyv,
            "yuv420" | "i420" => PixelFormat::I420,
            "mjpeg" | "jpeg" => PixelFormat::Mjpeg,
            _ => return None,
        })
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Bgr24 => "bgr24",
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::I420 => "yuv420",
            PixelFormat::Mjpeg => "mjpeg",
        })
    }
}

/// One captured frame, borrowing the source's buffer.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub format: PixelFormat,
    /// Width and height; for MJPEG the decoder reads them from the JPEG header.
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
    /// Where the frame came from: the device, or the file name for replayed images.
    pub origin: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("{format} frame of {width}×{height} needs {expected} bytes, got {got}")]
    Length {
        format: PixelFormat,
        width: usize,
        height: usize,
        expected: usize,
        got: usize,
    },
    #[error("corrupt JPEG frame: {0}")]
    Jpeg(String),
    #[error("frame has no pixels ({width}×{height})")]
    Empty { width: usize, height: usize },
}

/// Turns frames into RGB, reusing one buffer: after the first frame of a given size,
/// raw formats allocate nothing.
#[derive(Default)]
pub struct RgbConverter {
    rgb: Vec<u8>,
}

/// A frame as interleaved RGB.
pub struct RgbImage<'a> {
    pub rgb: &'a [u8],
    pub width: usize,
    pub height: usize,
}

impl RgbConverter {
    pub fn convert<'a>(&'a mut self, frame: &Frame<'a>) -> Result<RgbImage<'a>, FrameError> {
        let (w, h) = (frame.width, frame.height);
        if frame.format != PixelFormat::Mjpeg {
            if w == 0 || h == 0 {
                return Err(FrameError::Empty {
                    width: w,
                    height: h,
                });
            }
            let expected = frame.format.frame_len(w, h).unwrap_or(0);
            if frame.data.len() != expected {
                return Err(FrameError::Length {
                    format: frame.format,
                    width: w,
                    height: h,
                    expected,
                    got: frame.data.len(),
                });
            }
        }
        let data = frame.data;
        match frame.format {
            PixelFormat::Rgb24 => {
                return Ok(RgbImage {
                    rgb: data,
                    width: w,
                    height: h,
                })
            }
            PixelFormat::Bgr24 => {
                let out = self.buffer(w * h * 3);
                for (o, i) in out.chunks_exact_mut(3).zip(data.chunks_exact(3)) {
                    o.copy_from_slice(&[i[2], i[1], i[0]]);
                }
            }
            PixelFormat::Yuyv => {
                let out = self.buffer(w * h * 3);
                // Pixels pair up along the flat stream; a lone last pixel gets neutral chroma.
                for (i, o) in out.chunks_exact_mut(3).enumerate() {
                    let pair = (i & !1) * 2;
                    let (u, v) = match data.get(pair + 3) {
                        Some(&v) => (data[pair + 1], v),
                        None => (128, 128),
                    };
                    o.copy_from_slice(&yuv_to_rgb(data[i * 2], u, v));
                }
            }
            PixelFormat::I420 => {
                let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                let (ys, rest) = data.split_at(w * h);
                let (us, vs) = rest.split_at(cw * ch);
                let out = self.buffer(w * h * 3);
                for y in 0..h {
                    for x in 0..w {
                        let c = (y / 2) * cw + x / 2;
                        out[(y * w + x) * 3..][..3].copy_from_slice(&yuv_to_rgb(
                            ys[y * w + x],
                            us[c],
                            vs[c],
                        ));
                    }
                }
            }
            PixelFormat::Mjpeg => return self.decode_jpeg(data),
        }
        Ok(RgbImage {
            rgb: &self.rgb,
            width: w,
            height: h,
        })
    }

    fn decode_jpeg(&mut self, data: &[u8]) -> Result<RgbImage<'_>, FrameError> {
        let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
        decoder
            .decode_headers()
            .map_err(|e| FrameError::Jpeg(e.to_string()))?;
        let (w, h) = decoder
            .dimensions()
            .ok_or_else(|| FrameError::Jpeg("no frame header".into()))?;
        if w == 0 || h == 0 {
            return Err(FrameError::Empty {
                width: w,
                height: h,
            });
        }
        let out = self.buffer(w * h * 3);
        decoder
            .decode_into(out)
            .map_err(|e| FrameError::Jpeg(e.to_string()))?;
        Ok(RgbImage {
            rgb: &self.rgb,
            width: w,
            height: h,
        })
    }

    fn buffer(&mut self, len: usize) -> &mut [u8] {
        // Grows once per frame size; a steady camera reuses it.
        self.rgb.resize(len, 0);
        &mut self.rgb
    }
}

/// BT.601 limited-range YCbCr → RGB in 8.8 fixed point (what UVC and the Pi's ISP emit).
fn yuv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16).max(0) * 298;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(format: PixelFormat, w: usize, h: usize, data: &[u8]) -> Frame<'_> {
        Frame {
            format,
            width: w,
            height: h,
            data,
            origin: "test",
        }
    }

    #[test]
    fn yuv_greys_and_primaries() {
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        let red = yuv_to_rgb(81, 90, 240); // BT.601 red
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
    }

    #[test]
    fn yuyv_and_i420_of_the_same_grey_agree() {
        let mut conv = RgbConverter::default();
        let (w, h) = (3, 3); // odd sizes on purpose
        let yuyv = [126u8, 128].repeat(w * h);
        let a = conv
            .convert(&frame(PixelFormat::Yuyv, w, h, &yuyv))
            .unwrap()
            .rgb
            .to_vec();
        let mut i420 = vec![126u8; w * h];
        i420.extend(vec![128u8; 2 * 2 * 2]);
        let b = conv
            .convert(&frame(PixelFormat::I420, w, h, &i420))
            .unwrap()
            .rgb
            .to_vec();
        assert_eq!(a, b);
        assert!(a.iter().all(|&v| v == a[0]));
    }

    #[test]
    fn bgr_is_swapped_and_lengths_are_checked() {
        let mut conv = RgbConverter::default();
        let img = conv
            .convert(&frame(PixelFormat::Bgr24, 1, 1, &[1, 2, 3]))
            .unwrap();
        assert_eq!(img.rgb, &[3, 2, 1]);
        let e = conv
            .convert(&frame(PixelFormat::Yuyv, 4, 2, &[0; 10]))
            .err()
            .unwrap();
        assert!(e.to_string().contains("needs 16 bytes, got 10"), "{e}");
    }

    #[test]
    fn jpeg_decodes_like_the_image_crate_and_garbage_is_an_error() {
        let mut rgb = Vec::new();
        for y in 0..16u8 {
            for x in 0..24u8 {
                rgb.extend_from_slice(&[x * 10, y * 15, 128]);
            }
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode(&rgb, 24, 16, image::ExtendedColorType::Rgb8)
            .unwrap();
        let expect = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        let mut conv = RgbConverter::default();
        let got = conv
            .convert(&frame(PixelFormat::Mjpeg, 0, 0, &jpeg))
            .unwrap();
        assert_eq!((got.width, got.height), (24, 16));
        assert_eq!(got.rgb, expect.as_raw().as_slice());
        assert!(matches!(
            conv.convert(&frame(PixelFormat::Mjpeg, 0, 0, b"not a jpeg")),
            Err(FrameError::Jpeg(_))
        ));
    }
}
