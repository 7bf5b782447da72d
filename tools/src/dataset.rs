//! Image sets: labelled folders (`DIR/<class-name>/<image>`, as in `shared/data/cifar10`),
//! labels files (`path index` or `path,label` lines, the form of ImageNet's `val.txt`),
//! and unlabelled calibration inputs (any folder of images, or a `.npy`/`.npz` batch of
//! preprocessed tensors).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read image folder {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("image folder {0} holds no images in <class>/<image> sub-folders")]
    Empty(String),
    #[error("image folder {0} holds no images (.jpg, .jpeg, .png, .bmp, .ppm) at any depth")]
    NoImages(String),
    #[error("labels file {file}, line {line}: {reason}")]
    LabelsLine {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("labels file {file}, line {line}: image {image} does not exist")]
    MissingImage {
        file: String,
        line: usize,
        image: String,
    },
    #[error("labels file {0} names no image")]
    EmptyLabels(String),
    #[error("{path}: {reason}")]
    Tensors { path: String, reason: String },
}

/// An image and what it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelledImage {
    pub path: PathBuf,
    /// The name of the folder the image is in.
    pub class: String,
}

/// The truth of a labels file: a class index, or a label to look up in the model's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Truth {
    Index(usize),
    Label(String),
}

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "ppm"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir(p: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let entries = std::fs::read_dir(p).map_err(|e| DatasetError::Read {
        path: p.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// Every image under `dir/<class>/`, sorted by class then file name.
pub fn list(dir: &Path) -> Result<Vec<LabelledImage>, DatasetError> {
    let mut images = Vec::new();
    for class_dir in read_dir(dir)?.into_iter().filter(|p| p.is_dir()) {
        let class = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        images.extend(
            read_dir(&class_dir)?
                .into_iter()
                .filter(|p| is_image(p))
                .map(|path| LabelledImage {
                    path,
                    class: class.clone(),
                }),
        );
    }
    if images.is_empty() {
        return Err(DatasetError::Empty(dir.display().to_string()));
    }
    Ok(images)
}

/// Every image under `dir` at any depth (no labels needed: calibration), sorted by path so
/// the order is the same on every machine; class sub-folders stay together.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
        for p in read_dir(dir)? {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut images = Vec::new();
    walk(dir, &mut images)?;
    if images.is_empty() {
        return Err(DatasetError::NoImages(dir.display().to_string()));
    }
    Ok(images)
}

/// A labels file: `path index` (ImageNet's `val.txt`) or `path,label` per line, paths
/// relative to `dir`; blank lines and `#` comments are skipped. Every image must exist.
pub fn read_labels_file(file: &Path, dir: &Path) -> Result<Vec<(PathBuf, Truth)>, DatasetError> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| DatasetError::Read {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| DatasetError::LabelsLine {
            file: shown.clone(),
            line: line_no,
            reason: reason.to_string(),
        };
        let (path, truth) = if let Some((p, label)) = line.split_once(',') {
            let label = label.trim();
            if label.is_empty() {
                return Err(bad("empty label after the comma"));
            }
            (p.trim(), Truth::Label(label.to_string()))
        } else {
            let (p, index) = line
                .rsplit_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `path index` or `path,label`"))?;
            let index = index
                .parse::<usize>()
                .map_err(|_| bad(&format!("'{index}' is not a class index")))?;
            (p.trim(), Truth::Index(index))
        };
        let path = dir.join(path);
        if !path.is_file() {
            return Err(DatasetError::MissingImage {
                file: shown.clone(),
                line: line_no,
                image: path.display().to_string(),
            });
        }
        out.push((path, truth));
    }
    if out.is_empty() {
        return Err(DatasetError::EmptyLabels(shown));
    }
    Ok(out)
}

/// `count` items spread evenly over the list (class-sorted lists: every class is represented).
pub fn spread<T: Clone>(items: &[T], count: usize) -> Vec<T> {
    spread_and_rest(items, count).0
}

/// [`spread`]'s pick, and every item it left, in order.
pub fn spread_and_rest<T: Clone>(items: &[T], count: usize) -> (Vec<T>, Vec<T>) {
    let count = count.min(items.len());
    let picked: Vec<usize> = (0..count).map(|i| i * items.len() / count).collect();
    let mut is_picked = vec![false; items.len()];
    picked.iter().for_each(|&i| is_picked[i] = true);
    let rest = items
        .iter()
        .zip(&is_picked)
        .filter(|(_, &p)| !p)
        .map(|(x, _)| x.clone())
        .collect();
    (picked.into_iter().map(|i| items[i].clone()).collect(), rest)
}

/// Preprocessed NCHW float32 inputs from a `.npy` file (`[N, C, H, W]`, or one `[C, H, W]`)
/// or every array of a `.npz` archive in name order; each input must have `input_len` values.
pub fn read_tensors(path: &Path, input_len: usize) -> Result<Vec<Vec<f32>>, DatasetError> {
    let shown = path.display().to_string();
    let bad = |reason: String| DatasetError::Tensors {
        path: shown.clone(),
        reason,
    };
    let is_npz = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    let mut arrays = Vec::new();
    if is_npz {
        let mut archive = npyz::npz::NpzArchive::open(path).map_err(|e| bad(e.to_string()))?;
        let mut names: Vec<String> = archive.array_names().map(str::to_owned).collect();
        names.sort();
        for name in names {
            let npy = archive
                .by_name(&name)
                .map_err(|e| bad(format!("array '{name}': {e}")))?
                .ok_or_else(|| bad(format!("array '{name}' is missing")))?;
            arrays.push((name, npy_f32(npy).map_err(&bad)?));
        }
    } else {
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not a .npy file: {e}")))?;
        arrays.push(("array".into(), npy_f32(npy).map_err(&bad)?));
    }
    let mut inputs = Vec::new();
    for (name, (shape, data)) in arrays {
        let per: usize = match shape.len() {
            3 => shape.iter().product(),
            4 => shape[1..].iter().product(),
            _ => 0,
        };
        if per != input_len {
            return Err(bad(format!(
                "array '{name}' has shape {shape:?}; expected [N, C, H, W] or [C, H, W] of {input_len} values per input"
            )));
        }
        if let Some(v) = data.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("array '{name}' holds {v}")));
        }
        inputs.extend(data.chunks(per).map(<[f32]>::to_vec));
    }
    if inputs.is_empty() {
        return Err(bad("holds no inputs".into()));
    }
    Ok(inputs)
}

fn npy_f32<R: std::io::Read>(npy: npyz::NpyFile<R>) -> Result<(Vec<usize>, Vec<f32>), String> {
    if npy.order() != npyz::Order::C {
        return Err("Fortran-ordered arrays are not supported".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy
        .into_vec::<f32>()
        .map_err(|e| format!("expected float32 data: {e}"))?;
    Ok((shape, data))
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
    fn the_rest_of_a_spread_is_every_item_it_left() {
        let items: Vec<usize> = (0..1000).collect();
        let (picked, rest) = spread_and_rest(&items, 500);
        assert_eq!(picked.len(), 500);
        assert_eq!(rest.len(), 500);
        assert!(picked.iter().all(|x| !rest.contains(x)));
        let mut all = [picked, rest].concat();
        all.sort();
        assert_eq!(all, items);
        let (all_picked, none) = spread_and_rest(&items[..7], 20);
        assert_eq!((all_picked.len(), none.len()), (7, 0));
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
