//! A `.kes` model with its arena and every buffer a frame needs, allocated once.

use std::time::Instant;

use kestrel_runtime::pool::ThreadPool;
use kestrel_runtime::{preprocess, Model, Session};
use sha2::{Digest, Sha256};

use crate::frame::RgbImage;
use crate::sink::Ranked;

#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("cannot read model {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{0}")]
    Runtime(#[from] kestrel_runtime::Error),
}

/// Milliseconds spent on one frame's two stages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub preprocess_ms: f64,
    pub inference_ms: f64,
}

self_cell::self_cell!(
    /// The file's bytes and the model parsed from them (zero-copy): owned together, so a
    /// model can be replaced while the process runs.
    struct OwnedModel {
        owner: Vec<u8>,
        #[covariant]
        dependent: Model,
    }
);

pub struct Classifier {
    model: OwnedModel,
    sha256: String,
    threads: (usize, bool),
    arena: Vec<u8>,
    scratch: Vec<f32>,
    logits: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<usize>,
    index_labels: Vec<String>,
    pool: Option<ThreadPool>,
}

impl Classifier {
    /// Parses (and fully checks) the model.
    pub fn new(bytes: Vec<u8>) -> Result<Self, ClassifierError> {
        let sha256 = hex(&Sha256::digest(&bytes));
        let model = OwnedModel::try_new(bytes, |b| Model::parse(b))?;
        let m = model.borrow_dependent();
        let classes = m.classes();
        let index_labels = (0..classes).map(|i| i.to_string()).collect();
        Ok(Classifier {
            arena: vec![0u8; m.arena_bytes()],
            scratch: Vec::new(),
            logits: vec![0.0; classes],
            scores: vec![0.0; classes],
            order: (0..classes).collect(),
            index_labels,
            model,
            sha256,
            threads: (1, false),
            pool: None,
        })
    }

    /// Reads and parses a `.kes` file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ClassifierError> {
        let bytes = std::fs::read(path).map_err(|e| ClassifierError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::new(bytes)
    }

    /// Runs inference on `threads` threads from now on (a worker pool started once).
    pub fn set_threads(&mut self, threads: usize, pin: bool) -> std::io::Result<()> {
        self.pool = if threads > 1 {
            Some(ThreadPool::new(threads, self.model().scratch_bytes(), pin)?)
        } else {
            None
        };
        self.threads = (threads, pin);
        Ok(())
    }

    /// The thread count and pinning set by [`Classifier::set_threads`].
    pub fn threads(&self) -> (usize, bool) {
        self.threads
    }

    pub fn model(&self) -> &Model<'_> {
        self.model.borrow_dependent()
    }

    /// The SHA-256 of the model file, in hex: which model made a result.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Classifies one RGB image: preprocessing and inference, no allocation once the
    /// frame size has been seen.
    pub fn classify(&mut self, image: &RgbImage<'_>) -> Result<Timing, ClassifierError> {
        let t0 = Instant::now();
        let model = self.model.borrow_dependent();
        let info = model.file().preprocess;
        let need = preprocess::scratch_len(&info, image.width, image.height);
        if self.scratch.len() < need {
            self.scratch.resize(need, 0.0);
        }
        let mut session = Session::new(model, &mut self.arena)?;
        if let Some(pool) = &self.pool {
            session.set_parallel(pool);
        }
        session.set_input_rgb(image.rgb, image.width, image.height, &mut self.scratch)?;
        let t1 = Instant::now();
        session.run();
        session.logits(&mut self.logits)?;
        let t2 = Instant::now();
        softmax(&self.logits, &mut self.scores);
        let logits = &self.logits;
        // Stable order: ties keep the lower class first, like `kestrel run`.
        self.order
            .sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        Ok(Timing {
            preprocess_ms: (t1 - t0).as_secs_f64() * 1e3,
            inference_ms: (t2 - t1).as_secs_f64() * 1e3,
        })
    }

    /// Softmax probabilities of the last frame, by class.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// The best `k` classes of the last frame.
    pub fn top(&self, k: usize) -> Vec<Ranked<'_>> {
        self.order
            .iter()
            .take(k)
            .map(|&i| Ranked {
                label: self.label(i),
                index: i,
                score: self.scores[i],
            })
            .collect()
    }

    /// The class's label, or its index when the model has no labels.
    pub fn label(&self, class: usize) -> &str {
        match self.model().label(class) {
            Some(l) => l,
            None => self.index_labels.get(class).map_or("", String::as_str),
        }
    }

    /// A class index by label.
    pub fn class_of(&self, label: &str) -> Option<usize> {
        (0..self.model().classes()).find(|&i| self.label(i) == label)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}
