//! Labelled image folders: `DIR/<class-name>/<image>`, as in `shared/data/cifar10`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read image folder {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("image folder {0} holds no images in <class>/<image> sub-folders")]
    Empty(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledImage {
    pub path: PathBuf,
    /// The name of the folder the image is in.
    pub class: String,
}

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "ppm"];

/// Every image under `dir/<class>/`, sorted by class then file name.
pub fn list(dir: &Path) -> Result<Vec<LabelledImage>, DatasetError> {
    let read = |p: &Path| {
        std::fs::read_dir(p).map_err(|e| DatasetError::Read {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut classes: Vec<PathBuf> = read(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    let mut images = Vec::new();
    for class_dir in classes {
        let class = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = read(&class_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            })
            .collect();
        files.sort();
        images.extend(files.into_iter().map(|path| LabelledImage {
            path,
            class: class.clone(),
        }));
    }
    if images.is_empty() {
        return Err(DatasetError::Empty(dir.display().to_string()));
    }
    Ok(images)
}

/// `count` images spread evenly over the (class-sorted) list, so every class is represented.
pub fn spread(images: &[LabelledImage], count: usize) -> Vec<LabelledImage> {
    let count = count.min(images.len());
    (0..count)
        .map(|i| images[i * images.len() / count].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(class: &str, n: usize) -> LabelledImage {
        LabelledImage {
            path: PathBuf::from(format!("{class}/{n}.jpg")),
            class: class.into(),
        }
    }

    #[test]
    fn spread_takes_every_class() {
        let all: Vec<_> = ["a", "b", "c"]
            .iter()
            .flat_map(|c| (0..10).map(move |n| image(c, n)))
            .collect();
        let picked = spread(&all, 6);
        assert_eq!(picked.len(), 6);
        for c in ["a", "b", "c"] {
            assert_eq!(picked.iter().filter(|i| i.class == c).count(), 2, "{c}");
        }
        assert_eq!(spread(&all, 100).len(), 30);
    }

    #[test]
    fn a_missing_or_empty_folder_is_an_error() {
        let missing = Path::new("/nonexistent/kestrel/data");
        assert!(matches!(list(missing), Err(DatasetError::Read { .. })));
        let empty = std::env::temp_dir().join(format!("kestrel-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(list(&empty), Err(DatasetError::Empty(_))));
    }
}
