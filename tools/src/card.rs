//! Model cards (`models/*.toml`): where a network comes from, how to get its weights,
//! its input and preprocessing, and its labels.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::preprocess::{ChannelOrder, Preprocess, Resize};

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("cannot read model card {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("model card {path} is invalid: {reason}")]
    Invalid { path: String, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    pub model: ModelSection,
    pub input: InputSection,
    pub preprocess: PreprocessSection,
    pub labels: LabelsSection,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    /// One of the archs `kestrel synth` knows (resnet18 … resnet56, resnet8).
    pub architecture: String,
    /// Where the trained weights come from (repository, file, license).
    pub source: String,
    pub license: String,
    /// How to obtain the ONNX file on a machine with internet access.
    pub obtain: String,
    /// SHA-256 of the ONNX file, when the file is pinned.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Whether weights here are synthetic (what `kestrel synth` writes).
    #[serde(default)]
    pub synthetic_here: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// `[height, width]`.
    pub size: [usize; 2],
    pub channels: usize,
    pub layout: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    pub resize: Resize,
    #[serde(default)]
    pub resize_shorter: Option<usize>,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub channel_order: ChannelOrder,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSection {
    /// Labels file, one class name a line, relative to the card.
    pub file: String,
    pub classes: usize,
}

/// A card read from disk, with the folder its relative paths start from.
#[derive(Clone, Debug)]
pub struct LoadedCard {
    pub card: Card,
    pub dir: PathBuf,
}

impl LoadedCard {
    pub fn load(path: &Path) -> Result<Self, CardError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CardError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let card: Card = toml::from_str(&text).map_err(|e| CardError::Invalid {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if card.preprocess.std.contains(&0.0) {
            return Err(CardError::Invalid {
                path: shown,
                reason: "preprocess.std has a zero".into(),
            });
        }
        Ok(LoadedCard {
            card,
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        })
    }

    pub fn preprocess(&self) -> Preprocess {
        let p = &self.card.preprocess;
        Preprocess {
            size: self.card.input.size,
            resize: p.resize,
            resize_shorter: p.resize_shorter,
            scale: p.scale,
            mean: p.mean,
            std: p.std,
            channel_order: p.channel_order,
        }
    }

    pub fn labels(&self) -> Result<Vec<String>, CardError> {
        let path = self.dir.join(&self.card.labels.file);
        let text = std::fs::read_to_string(&path).map_err(|e| CardError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let labels: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if labels.len() != self.card.labels.classes {
            return Err(CardError::Invalid {
                path: path.display().to_string(),
                reason: format!(
                    "{} labels, the card says {} classes",
                    labels.len(),
                    self.card.labels.classes
                ),
            });
        }
        Ok(labels)
    }
}
