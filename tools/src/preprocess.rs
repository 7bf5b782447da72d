//! Image → model input: decode, resize/crop to the model's size, scale, normalise, NCHW.
//!
//! The policy comes from a model card or from the ONNX `metadata_props` (`preprocess.*`),
//! which is how the models in `shared/models` describe themselves.

use std::collections::BTreeMap;
use std::path::Path;

use kestrel_format::PreprocessInfo;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read image {path}: {reason}")]
    Image { path: String, reason: String },
    #[error("preprocessing metadata '{key}' = '{value}' is invalid: {reason}")]
    Metadata {
        key: String,
        value: String,
        reason: String,
    },
    #[error(
        "the model has no preprocessing metadata (preprocess.*); pass --card with a model card"
    )]
    Missing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Nearest neighbour to the input size (an integer upsampling repeats pixels exactly).
    Nearest,
    /// Bilinear to the input size.
    Bilinear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

/// How a decoded RGB image becomes the model's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// Model input `[height, width]`.
    pub size: [usize; 2],
    pub resize: Resize,
    /// When set, the shorter side is first resized to this many pixels (bilinear) and the
    /// centre `size` is cropped out (the torchvision ImageNet policy: 256 then 224).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<usize>,
    /// Multiplies the raw 0..255 pixel value first (1/255 for most models).
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channel_order: ChannelOrder,
}

impl Preprocess {
    /// Reads the `preprocess.*` metadata keys written by Kestrel and by the shared models.
    pub fn from_metadata(
        meta: &BTreeMap<String, String>,
        size: [usize; 2],
    ) -> Result<Self, PreprocessError> {
        if !meta.keys().any(|k| k.starts_with("preprocess.")) {
            return Err(PreprocessError::Missing);
        }
        let bad = |key: &str, reason: &str| PreprocessError::Metadata {
            key: key.to_string(),
            value: meta.get(key).cloned().unwrap_or_default(),
            reason: reason.to_string(),
        };
        let float = |key: &str, default: f32| -> Result<f32, PreprocessError> {
            meta.get(key).map_or(Ok(default), |v| {
                v.trim().parse().map_err(|_| bad(key, "not a number"))
            })
        };
        let triple = |key: &str, default: f32| -> Result<[f32; 3], PreprocessError> {
            match meta.get(key) {
                None => Ok([default; 3]),
                Some(v) => {
                    let parts: Vec<f32> = v
                        .split(',')
                        .map(|p| p.trim().parse())
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad(key, "not a comma-separated list of numbers"))?;
                    parts.try_into().map_err(|_| bad(key, "expected 3 values"))
                }
            }
        };
        let channel_order = match meta.get("preprocess.channel_order").map(|s| s.trim()) {
            None | Some("RGB") => ChannelOrder::Rgb,
            Some("BGR") => ChannelOrder::Bgr,
            Some(_) => return Err(bad("preprocess.channel_order", "expected RGB or BGR")),
        };
        if let Some(layout) = meta.get("preprocess.layout") {
            if layout.trim() != "NCHW" {
                return Err(bad(
                    "preprocess.layout",
                    "only NCHW ONNX inputs are supported",
                ));
            }
        }
        let resize = match meta.get("preprocess.resize").map(|s| s.trim()) {
            Some("bilinear") => Resize::Bilinear,
            Some("nearest") => Resize::Nearest,
            None if meta.contains_key("preprocess.upsample") => Resize::Nearest,
            None => Resize::Bilinear,
            Some(_) => return Err(bad("preprocess.resize", "expected nearest or bilinear")),
        };
        let resize_shorter = match meta.get("preprocess.resize_shorter") {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse()
                    .map_err(|_| bad("preprocess.resize_shorter", "not an integer"))?,
            ),
        };
        let std = triple("preprocess.std", 1.0)?;
        if std.contains(&0.0) {
            return Err(bad("preprocess.std", "a standard deviation is zero"));
        }
        Ok(Preprocess {
            size,
            resize,
            resize_shorter,
            scale: float("preprocess.scale", 1.0)?,
            mean: triple("preprocess.mean", 0.0)?,
            std,
            channel_order,
        })
    }

    /// The metadata keys [`Preprocess::from_metadata`] reads back.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let join = |v: &[f32; 3]| v.map(|x| x.to_string()).join(",");
        let mut out = vec![
            ("preprocess.scale".to_string(), self.scale.to_string()),
            ("preprocess.mean".to_string(), join(&self.mean)),
            ("preprocess.std".to_string(), join(&self.std)),
            (
                "preprocess.channel_order".to_string(),
                match self.channel_order {
                    ChannelOrder::Rgb => "RGB",
                    ChannelOrder::Bgr => "BGR",
                }
                .to_string(),
            ),
            ("preprocess.layout".to_string(), "NCHW".to_string()),
            (
                "preprocess.resize".to_string(),
                match self.resize {
                    Resize::Nearest => "nearest",
                    Resize::Bilinear => "bilinear",
                }
                .to_string(),
            ),
        ];
        if let Some(s) = self.resize_shorter {
            out.push(("preprocess.resize_shorter".to_string(), s.to_string()));
        }
        out
    }

    /// Decodes an image file and preprocesses it.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, PreprocessError> {
        let err = |reason: String| PreprocessError::Image {
            path: path.display().to_string(),
            reason,
        };
        let img = image::ImageReader::open(path)
            .map_err(|e| err(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| err(e.to_string()))?
            .decode()
            .map_err(|e| err(e.to_string()))?
            .to_rgb8();
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(err("the image is empty".into()));
        }
        Ok(self.apply(img.as_raw(), w as usize, h as usize))
    }

    /// Preprocesses decoded interleaved RGB bytes (`h × w × 3`) into NCHW f32, with the
    /// runtime's implementation so host and board inputs are identical.
    pub fn apply(&self, rgb: &[u8], w: usize, h: usize) -> Vec<f32> {
        let info = self.to_info();
        let [oh, ow] = self.size;
        let mut out = vec![0.0f32; 3 * oh * ow];
        let mut scratch = vec![0.0f32; kestrel_runtime::preprocess::scratch_len(&info, w, h)];
        kestrel_runtime::preprocess::preprocess_rgb(&info, rgb, w, h, &mut scratch, |c, p, v| {
            out[c * oh * ow + p] = v
        })
        .expect("buffers are sized for the image");
        out
    }

    /// The `.kes` preprocessing record.
    pub fn to_info(&self) -> PreprocessInfo {
        PreprocessInfo {
            size: [self.size[0] as u32, self.size[1] as u32],
            resize: match self.resize {
                Resize::Nearest => 0,
                Resize::Bilinear => 1,
            },
            channel_order: match self.channel_order {
                ChannelOrder::Rgb => 0,
                ChannelOrder::Bgr => 1,
            },
            resize_shorter: self.resize_shorter.unwrap_or(0) as u32,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }

    /// The inverse of [`Preprocess::to_info`].
    pub fn from_info(p: &PreprocessInfo) -> Self {
        Preprocess {
            size: [p.size[0] as usize, p.size[1] as usize],
            resize: if p.resize == 0 {
                Resize::Nearest
            } else {
                Resize::Bilinear
            },
            resize_shorter: (p.resize_shorter != 0).then_some(p.resize_shorter as usize),
            scale: p.scale,
            mean: p.mean,
            std: p.std,
            channel_order: if p.channel_order == 0 {
                ChannelOrder::Rgb
            } else {
                ChannelOrder::Bgr
            },
        }
    }
}

/// A deterministic pseudo-image (interleaved RGB bytes): the fixed input `kestrel check`
/// uses when no image is given. Smooth gradients plus a little noise, like a photo.
pub fn synthetic_rgb(w: usize, h: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((state >> 33) % 32) as usize;
                let base = (x * 160 / w.max(1) + y * 96 / h.max(1) + c * 40) % 224;
                out.push((base + noise) as u8);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cifar_meta(upsample: bool) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("preprocess.scale".into(), "0.00392156862745098".into());
        m.insert("preprocess.mean".into(), "0.485,0.456,0.406".into());
        m.insert("preprocess.std".into(), "0.229,0.224,0.225".into());
        m.insert("preprocess.channel_order".into(), "RGB".into());
        if upsample {
            m.insert("preprocess.upsample".into(), "2".into());
        }
        m
    }

    #[test]
    fn nearest_upsampling_repeats_each_pixel() {
        let p = Preprocess::from_metadata(&cifar_meta(true), [4, 4]).unwrap();
        assert_eq!(p.resize, Resize::Nearest);
        let rgb: Vec<u8> = (0..12).map(|v| v * 20).collect(); // 2×2 image
        let out = p.apply(&rgb, 2, 2);
        // Red plane, row 0: pixel (0,0) twice then pixel (1,0) twice.
        let r = |v: u8| (v as f32 / 255.0 - 0.485) / 0.229;
        assert_eq!(&out[..4], &[r(0), r(0), r(60), r(60)]);
        assert_eq!(&out[4..8], &out[..4]);
    }

    #[test]
    fn metadata_round_trips_and_bad_values_are_named() {
        let p = Preprocess::from_metadata(&cifar_meta(false), [32, 32]).unwrap();
        let back: BTreeMap<_, _> = p.to_metadata().into_iter().collect();
        assert_eq!(Preprocess::from_metadata(&back, [32, 32]).unwrap(), p);
        let mut m = cifar_meta(false);
        m.insert("preprocess.std".into(), "0.2,0.2".into());
        let e = Preprocess::from_metadata(&m, [32, 32])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("preprocess.std") && e.contains("3 values"),
            "{e}"
        );
        assert!(matches!(
            Preprocess::from_metadata(&BTreeMap::new(), [32, 32]),
            Err(PreprocessError::Missing)
        ));
    }

    #[test]
    fn a_file_that_is_not_an_image_is_a_typed_error() {
        let dir = std::env::temp_dir().join(format!("kestrel-pre-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("not-an-image.jpg");
        std::fs::write(&f, b"this is text").unwrap();
        let p = Preprocess::from_metadata(&cifar_meta(false), [32, 32]).unwrap();
        let e = p.load(&f).unwrap_err();
        assert!(matches!(e, PreprocessError::Image { .. }), "{e}");
        assert!(e.to_string().contains("not-an-image.jpg"));
    }
}
