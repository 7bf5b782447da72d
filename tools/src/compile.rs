//! `kestrel compile`: ONNX → fold → calibrate → quantise → plan → `.kes` bytes.

use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::calibrate::{self, Method};
use crate::card::LoadedCard;
use crate::check::imagenet_preprocess;
use crate::dataset;
use crate::graph::Graph;
use crate::onnx_import;
use crate::passes::{self, PassReport};
use crate::preprocess::{Preprocess, PreprocessError};
use crate::quantize;
use kestrel_format::WeightLayout;

/// The board a model is compiled for. `generic` keeps the portable `[KH][KW][IC][OC]`
/// conv weights the scalar reference reads; every board target gets the packed-GEMM
/// layout its fastest micro-kernel reads: 4-channel blocks for the Pi 4's Cortex-A72,
/// 16-channel lanes for `sdot` by element (Pi 5, Jetson Orin) and AVX-512 VNNI/AVX2.
/// Either file also runs, slower, on any other CPU (the portable micro-kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Generic,
    Rpi4,
    Rpi5,
    JetsonOrin,
    #[value(name = "x86-64")]
    X86_64,
}

impl Target {
    /// The conv weight layout this target's kernels read.
    pub fn weight_layout(self) -> WeightLayout {
        match self {
            Target::Generic => WeightLayout::Portable,
            Target::Rpi4 => WeightLayout::Blocks4,
            Target::Rpi5 | Target::JetsonOrin | Target::X86_64 => WeightLayout::Lanes16,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub method: Method,
    pub calib_count: usize,
    pub target: Target,
    pub progress: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub passes: PassReport,
    pub calibration_images: usize,
    pub method: String,
    pub arena_bytes: u64,
    pub arena_lower_bound_bytes: u64,
    pub file_bytes: usize,
}

/// A model loaded for compiling or evaluating: folded graph, preprocessing and labels.
pub struct Prepared {
    pub graph: Graph,
    pub passes: PassReport,
    pub preprocess: Preprocess,
    pub labels: Vec<String>,
    pub sha256: String,
}

/// Imports and folds `model`, taking preprocessing and labels from the card, else from
/// the ONNX metadata.
pub fn prepare(model: &Path, card: Option<&LoadedCard>) -> anyhow::Result<Prepared> {
    let bytes = std::fs::read(model).with_context(|| format!("cannot read {}", model.display()))?;
    let sha256 = format!("{:x}", Sha256::digest(&bytes));
    let mut graph = onnx_import::import_path(model)?;
    let shape = &graph.values[graph.input].shape;
    let size = [shape[2], shape[3]];
    let preprocess = match card {
        Some(c) => c.preprocess(),
        None => match Preprocess::from_metadata(&graph.metadata, size) {
            Ok(p) => p,
            Err(PreprocessError::Missing) => imagenet_preprocess(size),
            Err(e) => return Err(e.into()),
        },
    };
    anyhow::ensure!(
        preprocess.size == size,
        "the card's input size {:?} differs from the model's {size:?}",
        preprocess.size
    );
    let labels = match card {
        Some(c) => c.labels()?,
        None => graph
            .metadata
            .get("labels")
            .map(|l| l.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default(),
    };
    let passes = passes::fold_and_fuse(&mut graph);
    let outputs = graph.values[graph.output].len();
    anyhow::ensure!(
        labels.is_empty() || labels.len() == outputs,
        "{} labels for {outputs} model outputs",
        labels.len()
    );
    Ok(Prepared {
        graph,
        passes,
        preprocess,
        labels,
        sha256,
    })
}

/// Loads `count` images spread over the classes of `dir`, preprocessed.
pub fn load_images(
    dir: &Path,
    count: usize,
    pre: &Preprocess,
    progress: bool,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let picked = dataset::spread(&dataset::list(dir)?, count);
    let bar = if progress {
        ProgressBar::new(picked.len() as u64).with_style(
            ProgressStyle::with_template("loading images {bar:30} {pos}/{len}")
                .expect("static template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let images = picked
        .iter()
        .map(|img| {
            bar.inc(1);
            pre.load(&img.path)
                .with_context(|| format!("calibration image {}", img.path.display()))
        })
        .collect();
    bar.finish_and_clear();
    images
}

pub fn compile(
    model: &Path,
    calib: &Path,
    card: Option<&LoadedCard>,
    opts: &CompileOptions,
) -> anyhow::Result<(Vec<u8>, CompileReport)> {
    let p = prepare(model, card)?;
    let images = load_images(calib, opts.calib_count, &p.preprocess, opts.progress)?;
    let stats = calibrate::collect(&p.graph, &images, opts.progress)?;
    let source = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = vec![
        ("source_model".to_string(), source),
        ("source_sha256".to_string(), p.sha256.clone()),
        ("calibration_method".to_string(), opts.method.name()),
        ("calibration_images".to_string(), images.len().to_string()),
        (
            "target".to_string(),
            format!("{:?}", opts.target).to_lowercase(),
        ),
        (
            "tool".to_string(),
            format!("kestrel {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let lowered = quantize::lower(
        &p.graph,
        &stats,
        opts.method,
        &p.preprocess,
        p.labels.clone(),
        metadata,
    )?;
    let mut model = lowered.model;
    model.pack_convs(opts.target.weight_layout());
    let bytes = model.to_bytes();
    // What we write must be what the board accepts.
    kestrel_runtime::Model::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("internal error: the compiled file does not parse: {e}"))?;
    let report = CompileReport {
        passes: p.passes,
        calibration_images: images.len(),
        method: opts.method.name(),
        arena_bytes: model.plan.arena_bytes,
        arena_lower_bound_bytes: model.plan.lower_bound_bytes,
        file_bytes: bytes.len(),
    };
    Ok((bytes, report))
}
