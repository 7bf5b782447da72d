//! Replacing the running model without a restart: the model file is watched (and re-read
//! on SIGHUP); a new file is parsed, checked against the running model and test-run once
//! before it takes over. A file that fails any step is refused and the old model stays.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use kestrel_runtime::Isa;

use crate::classifier::Classifier;
use crate::frame::RgbImage;

/// Why a new model file was not taken.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refusal {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a valid .kes model: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path} was compiled for another CPU family: {mismatch}")]
    WrongTarget { path: String, mismatch: String },
    #[error("{path} takes input {new:?} (N, H, W, C), the running model {running:?}")]
    InputShape {
        path: String,
        running: [u32; 4],
        new: [u32; 4],
    },
    #[error("{path} has other classes than the running model ({new} vs {running}: {detail})")]
    Labels {
        path: String,
        running: usize,
        new: usize,
        detail: String,
    },
    #[error("{path} failed its test run: {reason}")]
    TestRun { path: String, reason: String },
}

/// What identifies a version of a file on disk: replacing it by rename changes the inode,
/// rewriting it in place the size or the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// Notices when the model file has been replaced.
pub struct ModelWatch {
    path: PathBuf,
    seen: Option<Stamp>,
}

impl ModelWatch {
    /// Watches `path`, taking its current version as the one running.
    pub fn new(path: &Path) -> Self {
        ModelWatch {
            path: path.to_path_buf(),
            seen: stamp(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once per new version of the file (a missing file is not a new version: a
    /// package manager may be between its unlink and its rename).
    pub fn changed(&mut self) -> bool {
        match stamp(&self.path) {
            Some(now) if Some(now) != self.seen => {
                self.seen = Some(now);
                true
            }
            _ => false,
        }
    }
}

/// Loads `path` as the successor of `running`: the same input and classes, packed for
/// `kernels`, and able to classify a frame. Returns it ready to run, on the same threads.
pub fn load_successor(
    running: &Classifier,
    path: &Path,
    kernels: Isa,
) -> Result<Classifier, Refusal> {
    let p = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Refusal::Read {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let mut next = Classifier::new(bytes).map_err(|e| Refusal::Parse {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    if let Some(mismatch) = target_mismatch(&next, kernels) {
        return Err(Refusal::WrongTarget { path: p, mismatch });
    }
    let (old, new) = (running.model().input().dims, next.model().input().dims);
    if old != new {
        return Err(Refusal::InputShape {
            path: p,
            running: old,
            new,
        });
    }
    let (old_n, new_n) = (running.model().classes(), next.model().classes());
    let differing = (0..old_n.min(new_n)).find(|&i| running.label(i) != next.label(i));
    if old_n != new_n || differing.is_some() {
        let detail = match differing {
            Some(i) => format!(
                "class {i} is '{}', was '{}'",
                next.label(i),
                running.label(i)
            ),
            None => "another number of classes".into(),
        };
        return Err(Refusal::Labels {
            path: p,
            running: old_n,
            new: new_n,
            detail,
        });
    }
    test_run(&mut next).map_err(|reason| Refusal::TestRun {
        path: p.clone(),
        reason,
    })?;
    let (threads, pin) = running.threads();
    next.set_threads(threads, pin)
        .map_err(|e| Refusal::TestRun {
            path: p,
            reason: format!("cannot start {threads} threads: {e}"),
        })?;
    Ok(next)
}

/// The CPU family a `--target` compiles for (`None`: any).
fn target_family(target: &str) -> Option<&'static str> {
    match target {
        "rpi4" | "rpi5" | "jetson-orin" => Some("aarch64"),
        "x86-64" => Some("x86-64"),
        "cortex-m4" => Some("cortex-m"),
        _ => None,
    }
}

/// Why a model does not belong on a board with `kernels`: its weights have no tile there,
/// or it was compiled for another CPU family (an x86-64 file on a Pi runs, but was tuned
/// and measured for another machine: a deployment mistake to stop, not to run).
pub fn target_mismatch(c: &Classifier, kernels: Isa) -> Option<String> {
    if let Some(m) = c.model().kernel_mismatch(kernels) {
        return Some(m.to_string());
    }
    let board = match kernels {
        Isa::Neon | Isa::NeonDot => "aarch64",
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => "x86-64",
        Isa::ArmDsp => "cortex-m",
        Isa::Scalar => return None,
    };
    let target = c
        .model()
        .file()
        .metadata()
        .find(|(k, _)| *k == "target")
        .map(|(_, v)| v)?;
    match target_family(target) {
        Some(family) if family != board => Some(format!(
            "it was compiled with --target {target} ({family}); this board is {board}"
        )),
        _ => None,
    }
}

/// Classifies a mid-grey frame of the model's input size: the scores must be a
/// probability distribution.
fn test_run(c: &mut Classifier) -> Result<(), String> {
    let [_, h, w, _] = c.model().input().dims;
    let (w, h) = (w as usize, h as usize);
    let rgb = vec![128u8; w * h * 3];
    c.classify(&RgbImage {
        rgb: &rgb,
        width: w,
        height: h,
    })
    .map_err(|e| e.to_string())?;
    let sum: f32 = c.scores().iter().sum();
    if c.scores().iter().all(|s| s.is_finite()) && (sum - 1.0).abs() < 1e-3 {
        Ok(())
    } else {
        Err(format!("scores are not probabilities (sum {sum})"))
    }
}
