//! `kestrel check`: import, fold and fuse, run our float reference and tract on the
//! original ONNX with the same input, and report how far apart they are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::card::LoadedCard;
use crate::onnx_import;
use crate::passes::{self, PassReport};
use crate::preprocess::{synthetic_rgb, ChannelOrder, Preprocess, PreprocessError, Resize};
use crate::reference;
use crate::tract_ref::TractModel;

/// Relative tolerance of the float check: `max_abs_diff ≤ 1e-4 × max(1, max_abs_logit)`.
pub const RELATIVE_TOLERANCE: f32 = 1e-4;

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub model: String,
    /// The image used, or `synthetic (seed N)` for the fixed deterministic input.
    pub input: String,
    /// Where the preprocessing came from: `card`, `metadata` or `imagenet-default`.
    pub preprocess_source: String,
    pub input_shape: Vec<usize>,
    /// ONNX op type → count, before folding.
    pub ops: BTreeMap<String, usize>,
    /// Kestrel op → count after folding and fusion.
    pub folded_ops: BTreeMap<String, usize>,
    #[serde(flatten)]
    pub passes: PassReport,
    pub params_unfolded: usize,
    pub params_folded: usize,
    pub macs: u64,
    pub max_abs_diff: f32,
    /// Largest |logit| of tract's output.
    pub max_abs_logit: f32,
    pub tolerance: f32,
    pub within_tolerance: bool,
    pub argmax_kestrel: usize,
    pub argmax_tract: usize,
}

/// ImageNet normalisation, for models that carry no preprocessing of their own.
pub fn imagenet_preprocess(size: [usize; 2]) -> Preprocess {
    Preprocess {
        size,
        resize: Resize::Bilinear,
        resize_shorter: None,
        scale: 1.0 / 255.0,
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        channel_order: ChannelOrder::Rgb,
    }
}

pub fn check(
    model: &Path,
    image: Option<&Path>,
    card: Option<&LoadedCard>,
) -> anyhow::Result<CheckReport> {
    let proto = onnx_import::read_proto(model)?;
    let dir = model.parent().and_then(|d| d.to_str());
    let mut graph = onnx_import::import_proto(&proto, dir)?;
    let mut ops = BTreeMap::new();
    for n in proto.graph.iter().flat_map(|g| &g.node) {
        *ops.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    let params_unfolded = graph.param_count();
    let input_shape = graph.values[graph.input].shape.clone();
    let size = [input_shape[2], input_shape[3]];

    let (pre, preprocess_source) = match card {
        Some(c) => (c.preprocess(), "card"),
        None => match Preprocess::from_metadata(&graph.metadata, size) {
            Ok(p) => (p, "metadata"),
            Err(PreprocessError::Missing) => (imagenet_preprocess(size), "imagenet-default"),
            Err(e) => return Err(e.into()),
        },
    };
    anyhow::ensure!(
        pre.size == size,
        "the card's input size {:?} does not match the model's {:?}",
        pre.size,
        size
    );
    const SEED: u64 = 0;
    let (input, input_name) = match image {
        Some(path) => (pre.load(path)?, path.display().to_string()),
        None => (
            pre.apply(&synthetic_rgb(size[1], size[0], SEED), size[1], size[0]),
            format!("synthetic (seed {SEED})"),
        ),
    };

    let report = passes::fold_and_fuse(&mut graph);
    let ours = reference::run(&graph, &input)?;
    let tract = TractModel::load(model, &input_shape)?.run(&input)?;
    anyhow::ensure!(
        ours.len() == tract.len(),
        "Kestrel produced {} values, tract {}",
        ours.len(),
        tract.len()
    );
    let max_abs_diff = ours
        .iter()
        .zip(&tract)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let max_abs_logit = tract.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let tolerance = RELATIVE_TOLERANCE * max_abs_logit.max(1.0);
    Ok(CheckReport {
        model: model.display().to_string(),
        input: input_name,
        preprocess_source: preprocess_source.to_string(),
        input_shape,
        ops,
        folded_ops: graph.op_counts(),
        passes: report,
        params_unfolded,
        params_folded: graph.param_count(),
        macs: graph.macs(),
        max_abs_diff,
        max_abs_logit,
        tolerance,
        within_tolerance: max_abs_diff <= tolerance && !max_abs_diff.is_nan(),
        argmax_kestrel: argmax(&ours),
        argmax_tract: argmax(&tract),
    })
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// The text `kestrel check` prints.
pub fn print(r: &CheckReport) {
    println!("model        {}", r.model);
    println!(
        "input        {} {:?} (preprocessing: {})",
        r.input, r.input_shape, r.preprocess_source
    );
    let ops: Vec<String> = r.ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
    println!("onnx ops     {}", ops.join(" "));
    let folded: Vec<String> = r
        .folded_ops
        .iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    println!("folded ops   {}", folded.join(" "));
    let p = &r.passes;
    let mut extra = String::new();
    if p.bn_affine > 0 {
        extra += &format!(", {} BatchNorm as per-channel affine", p.bn_affine);
    }
    if p.pads_folded > 0 {
        extra += &format!(", {} Pad folded into conv", p.pads_folded);
    }
    if p.convs_to_dense > 0 {
        extra += &format!(", {} 1x1 conv head as dense", p.convs_to_dense);
    }
    println!(
        "passes       {} BatchNorm folded ({} left), {} ReLU fused, {} residual Add fused{extra}",
        p.bn_folded, p.bn_left, p.relu_fused, p.add_fused
    );
    println!(
        "params       {} unfolded → {} folded; {:.2} M MACs",
        r.params_unfolded,
        r.params_folded,
        r.macs as f64 / 1e6
    );
    println!(
        "vs tract     max |diff| {:.3e} (tolerance {:.3e}, max |logit| {:.3}) → {}",
        r.max_abs_diff,
        r.tolerance,
        r.max_abs_logit,
        if r.within_tolerance { "OK" } else { "FAIL" }
    );
    println!(
        "argmax       kestrel {} / tract {}",
        r.argmax_kestrel, r.argmax_tract
    );
}
