//! `kestrel compile`: ONNX → fold → calibrate → quantise → plan → `.kes` bytes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::bias_correction;
use crate::calibrate::{self, Method};
use crate::card::LoadedCard;
use crate::check::imagenet_preprocess;
use crate::dataset;
use crate::graph::Graph;
use crate::graph::ValueId;
use crate::onnx_import;
use crate::passes::{self, PassReport};
use crate::precision;
use crate::preprocess::{Preprocess, PreprocessError};
use crate::quantize;
use kestrel_format::writer::ScratchPlan;
use kestrel_format::WeightLayout;
use kestrel_kernels::conv::Packing;
use kestrel_kernels::isa::Isa;

/// The board a model is compiled for. `generic` keeps the portable `[KH][KW][IC][OC]`
/// conv weights the scalar reference reads; every board target gets the packed-GEMM
/// layout its fastest micro-kernel reads: 4-channel blocks for the Pi 4's Cortex-A72,
/// 16-channel lanes for `sdot` by element (Pi 5, Jetson Orin) and AVX-512 VNNI/AVX2, and
/// 4-channel blocks again for a Cortex-M4/M7's `SMLAD` (the `boards/mps2-an386` firmware).
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
    #[value(name = "cortex-m4")]
    CortexM4,
}

impl Target {
    /// The target of the machine this runs on: its own SIMD kernels (`x86-64`; `rpi5` on
    /// an ARM core with the dot product, `rpi4` without), `generic` elsewhere.
    pub fn host() -> Target {
        #[cfg(target_arch = "x86_64")]
        return Target::X86_64;
        #[cfg(target_arch = "aarch64")]
        return if std::arch::is_aarch64_feature_detected!("dotprod") {
            Target::Rpi5
        } else {
            Target::Rpi4
        };
        #[allow(unreachable_code)]
        Target::Generic
    }

    /// The name `--target` takes.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// The kernels a board target's CPU runs (`None` off the boards).
    pub fn board_kernels(self) -> Option<kestrel_runtime::Isa> {
        match self {
            Target::Rpi4 => Some(kestrel_runtime::Isa::Neon),
            Target::Rpi5 | Target::JetsonOrin => Some(kestrel_runtime::Isa::NeonDot),
            Target::CortexM4 => Some(kestrel_runtime::Isa::ArmDsp),
            Target::Generic | Target::X86_64 => None,
        }
    }

    /// The scratch the plan lends each packed conv. A microcontroller's SRAM holds the
    /// arena: panels of a few dozen pixels there cost a Cortex-M nothing (it has no cache
    /// to fill), so its scratch is limited. x86-64's AVX2 path and the Raspberry Pi 4's
    /// Cortex-A72 compute 3×3 stride-1 convs by Winograd, whose scratch holds a map's
    /// transformed tiles.
    pub fn scratch_plan(self) -> ScratchPlan {
        ScratchPlan {
            limit: match self {
                Target::CortexM4 => Some(16 * 1024),
                _ => None,
            },
            winograd: match self {
                Target::X86_64 => Packing::Lanes16.tile(Isa::Avx2).winograd(),
                Target::Rpi4 => Packing::Blocks4.tile(Isa::Neon).winograd(),
                _ => None,
            },
        }
    }

    /// The conv weight layout this target's kernels read.
    pub fn weight_layout(self) -> WeightLayout {
        match self {
            Target::Generic => WeightLayout::Portable,
            Target::Rpi4 => WeightLayout::Blocks4,
            Target::CortexM4 => WeightLayout::Pairs4,
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
    /// Layers (node names, or `input`) to keep wider than int8.
    pub keep_wide: Vec<String>,
    /// What a layer kept wider gets.
    pub wide_as: precision::WideKind,
    /// Keep the fewest layers wide for this top-1 agreement with float (percent), checked
    /// on `budget_data` or else on calibration images calibration did not use.
    pub budget: Option<f64>,
    /// Images (any depth) the budget is checked on: ones the model never trained on.
    pub budget_data: Option<PathBuf>,
    /// Fold each layer's mean drift from float on calibration inputs into its bias.
    pub bias_correction: bool,
    /// Cross-layer equalisation of conv → ReLU → conv pairs before calibrating.
    pub equalize: bool,
    /// Calibrate on every input and its left-right mirror image too.
    pub calib_flip: bool,
    /// Stream each stem's conv into its max pool ([`crate::stem`]): the same results in
    /// less memory.
    pub stream_stems: bool,
}

impl CompileOptions {
    /// Plain int8: no progress bars, no layer kept wider, no equalisation, bias correction
    /// or mirrored calibration (the CLI turns on its defaults itself); stems streamed, which
    /// changes no result.
    pub fn new(method: Method, calib_count: usize, target: Target) -> CompileOptions {
        CompileOptions {
            method,
            calib_count,
            target,
            progress: false,
            keep_wide: Vec::new(),
            budget: None,
            budget_data: None,
            wide_as: precision::WideKind::F16,
            bias_correction: false,
            equalize: false,
            calib_flip: false,
            stream_stems: true,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub passes: PassReport,
    pub target: Target,
    /// Calibration inputs used (0: the model's own scales only).
    pub calibration_images: usize,
    /// Calibration images that could not be decoded, with the reason.
    pub calibration_skipped: Vec<(String, String)>,
    /// Values whose quantisation the model itself states (QDQ).
    pub stated_scales: usize,
    pub method: String,
    pub arena_bytes: u64,
    pub arena_lower_bound_bytes: u64,
    pub file_bytes: usize,
    /// Layers kept wider than int8, and how.
    pub wide_layers: Vec<String>,
    pub wide_as: precision::WideKind,
    pub budget: Option<crate::precision::BudgetReport>,
    pub bias_correction: Option<crate::bias_correction::BiasReport>,
    /// Conv pairs equalised.
    pub equalized_pairs: usize,
    /// Stems streamed into their max pool ([`crate::stem`]).
    pub streamed_stems: usize,
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

/// Calibration inputs: preprocessed images of a folder, or tensors of a `.npy`/`.npz`.
pub struct Calibration {
    pub inputs: Vec<Vec<f32>>,
    /// Images that could not be decoded: path and reason (they are left out).
    pub skipped: Vec<(PathBuf, String)>,
    /// What the source held beyond the inputs picked: the `--budget` check's held-out set.
    pub rest: Rest,
}

/// A calibration source's items that were not picked, not yet loaded.
pub enum Rest {
    Images(Vec<PathBuf>),
    Tensors(Vec<Vec<f32>>),
}

impl Calibration {
    /// Up to `count` of the inputs calibration did not see, spread over the source
    /// (undecodable images left out).
    pub fn held_out(&self, count: usize, pre: &Preprocess) -> Vec<Vec<f32>> {
        match &self.rest {
            Rest::Tensors(t) => dataset::spread(t, count),
            Rest::Images(paths) => dataset::spread(paths, count)
                .iter()
                .filter_map(|p| pre.load(p).ok())
                .collect(),
        }
    }
}

/// Loads up to `count` calibration inputs from `source`: a folder of images at any depth
/// (class sub-folders optional; spread over the path-sorted list so every sub-folder is
/// represented) or a `.npy`/`.npz` of preprocessed NCHW float32 inputs. An image that
/// cannot be decoded is reported and skipped; no usable input at all is an error.
pub fn load_calibration(
    source: &Path,
    count: usize,
    pre: &Preprocess,
    input_len: usize,
    progress: bool,
) -> anyhow::Result<Calibration> {
    if source.is_file() {
        let all = dataset::read_tensors(source, input_len)?;
        let (inputs, rest) = dataset::spread_and_rest(&all, count);
        return Ok(Calibration {
            inputs,
            skipped: Vec::new(),
            rest: Rest::Tensors(rest),
        });
    }
    let (picked, rest) = dataset::spread_and_rest(&dataset::images_under(source)?, count);
    let bar = progress_bar(
        progress,
        picked.len(),
        "loading images {bar:30} {pos}/{len}",
    );
    let mut inputs = Vec::with_capacity(picked.len());
    let mut skipped = Vec::new();
    for path in picked {
        bar.inc(1);
        match pre.load(&path) {
            Ok(x) => inputs.push(x),
            Err(e) => {
                bar.suspend(|| eprintln!("skipping calibration image {}: {e}", path.display()));
                skipped.push((path, e.to_string()));
            }
        }
    }
    bar.finish_and_clear();
    anyhow::ensure!(
        !inputs.is_empty(),
        "no usable calibration image in {}: {} could not be decoded",
        source.display(),
        skipped.len()
    );
    Ok(Calibration {
        inputs,
        skipped,
        rest: Rest::Images(rest),
    })
}

/// An NCHW input mirrored left to right (rows of `width` reversed).
fn mirror(x: &[f32], width: usize) -> Vec<f32> {
    x.chunks(width.max(1))
        .flat_map(|row| row.iter().rev().copied())
        .collect()
}

fn progress_bar(show: bool, len: usize, template: &'static str) -> ProgressBar {
    if show {
        ProgressBar::new(len as u64)
            .with_style(ProgressStyle::with_template(template).expect("static template"))
    } else {
        ProgressBar::hidden()
    }
}

/// Loads `count` images spread over the classes of `dir`, preprocessed.
pub fn load_images(
    dir: &Path,
    count: usize,
    pre: &Preprocess,
    progress: bool,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let picked = dataset::spread(&dataset::list(dir)?, count);
    let bar = progress_bar(
        progress,
        picked.len(),
        "loading images {bar:30} {pos}/{len}",
    );
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

/// Compiles `model`. `calib` (a folder of images or a `.npy`/`.npz`) measures the ranges
/// of activations; without it every activation's scale must be stated by the model (QDQ).
pub fn compile(
    model: &Path,
    calib: Option<&Path>,
    card: Option<&LoadedCard>,
    opts: &CompileOptions,
) -> anyhow::Result<(Vec<u8>, CompileReport)> {
    let mut p = prepare(model, card)?;
    let stated_scales = p.graph.values.iter().filter(|v| v.quant.is_some()).count();
    // Exact in float, so before the ranges are measured; never on a model whose own scales
    // (QDQ) were chosen for its weights as they are.
    let equalized_pairs = if opts.equalize && stated_scales == 0 {
        crate::equalize::equalize(&mut p.graph)
    } else {
        0
    };
    let calibration = match calib {
        Some(source) => {
            let input_len = p.graph.values[p.graph.input].len();
            let mut c = load_calibration(
                source,
                opts.calib_count,
                &p.preprocess,
                input_len,
                opts.progress,
            )?;
            if opts.calib_flip {
                let width = *p.graph.values[p.graph.input].shape.last().unwrap_or(&1);
                let mirrored: Vec<Vec<f32>> = c.inputs.iter().map(|x| mirror(x, width)).collect();
                c.inputs.extend(mirrored);
            }
            let stats = calibrate::collect(&p.graph, &c.inputs, opts.progress)?;
            Some((c, stats))
        }
        None if stated_scales == 0 => anyhow::bail!(
            "{} states no quantisation of its own (it is not a QDQ model): give --calib DIR with images to calibrate on",
            model.display()
        ),
        None => None,
    };
    let images = calibration.as_ref().map_or(0, |(c, _)| c.inputs.len());
    let source = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = vec![
        ("source_model".to_string(), source),
        ("source_sha256".to_string(), p.sha256.clone()),
        ("calibration_method".to_string(), opts.method.name()),
        (
            "bias_correction".to_string(),
            if opts.bias_correction { "on" } else { "off" }.to_string(),
        ),
        ("calibration_images".to_string(), images.to_string()),
        ("equalized_pairs".to_string(), equalized_pairs.to_string()),
        ("stated_scales".to_string(), stated_scales.to_string()),
        ("target".to_string(), opts.target.name()),
        (
            "tool".to_string(),
            format!("kestrel {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    let (wide, budget) = choose_precision(&p, calibration.as_ref(), opts)?;
    let mut wide_layers: Vec<String> = wide
        .iter()
        .map(|&v| precision::name_of(&p.graph, v))
        .collect();
    wide_layers.sort();
    let mut metadata = metadata;
    if !wide_layers.is_empty() {
        metadata.push((
            format!("wide_layers_{}", opts.wide_as.name()),
            wide_layers.join(","),
        ));
    }
    let lowered = quantize::lower(
        &p.graph,
        calibration.as_ref().map(|(_, stats)| stats.as_slice()),
        opts.method,
        &opts.wide_as.wide(wide.clone()),
        &p.preprocess,
        p.labels.clone(),
        metadata,
    )?;
    let mut model = lowered.model;
    let bias_correction = match (&calibration, opts.bias_correction) {
        (Some((c, _)), true) => Some(bias_correction::correct(&mut model, &p.graph, &c.inputs)?),
        _ => None,
    };
    let streamed_stems = if opts.stream_stems {
        crate::stem::stream_stems(&mut model)
    } else {
        0
    };
    model.pack_convs_within(opts.target.weight_layout(), opts.target.scratch_plan());
    let bytes = model.to_bytes();
    // What we write must be what the board accepts.
    kestrel_runtime::Model::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("internal error: the compiled file does not parse: {e}"))?;
    let report = CompileReport {
        passes: p.passes,
        target: opts.target,
        calibration_images: images,
        calibration_skipped: calibration
            .map(|(c, _)| {
                c.skipped
                    .into_iter()
                    .map(|(p, why)| (p.display().to_string(), why))
                    .collect()
            })
            .unwrap_or_default(),
        stated_scales,
        method: opts.method.name(),
        arena_bytes: model.plan.arena_bytes,
        arena_lower_bound_bytes: model.plan.lower_bound_bytes,
        file_bytes: bytes.len(),
        wide_layers,
        wide_as: opts.wide_as,
        budget,
        bias_correction,
        equalized_pairs,
        streamed_stems,
    };
    Ok((bytes, report))
}

/// How many held-out inputs the `--budget` check runs (at most).
const BUDGET_CHECK_INPUTS: usize = 500;

/// The layers kept at int16: those named, plus what the agreement budget needs.
fn choose_precision(
    p: &Prepared,
    calibration: Option<&(Calibration, Vec<calibrate::TensorStats>)>,
    opts: &CompileOptions,
) -> anyhow::Result<(HashSet<ValueId>, Option<precision::BudgetReport>)> {
    let mut wide = HashSet::new();
    if opts.keep_wide.is_empty() && opts.budget.is_none() {
        return Ok((wide, None));
    }
    let Some((c, stats)) = calibration else {
        anyhow::bail!("--keep-wide and --budget need --calib: int16 ranges are measured");
    };
    for name in &opts.keep_wide {
        let v = precision::value_named(&p.graph, name, opts.wide_as).with_context(|| {
            format!("--keep-wide: no convolution, dense layer or global pooling named '{name}', nor 'input' (`kestrel compare` lists the layers)")
        })?;
        wide.insert(v);
    }
    let Some(budget) = opts.budget else {
        return Ok((wide, None));
    };
    anyhow::ensure!(
        (0.0..=100.0).contains(&budget),
        "--budget is a top-1 agreement in percent, 0 to 100 (got {budget})"
    );
    // Agreement is checked on images calibration did not see, when the source has them: on
    // its own inputs a file agrees more often than it will in the field (and on images the
    // model was trained on, as calibration images often are, far more: `--budget-data`).
    let held_out = match &opts.budget_data {
        Some(dir) => {
            let check = load_calibration(
                dir,
                BUDGET_CHECK_INPUTS,
                &p.preprocess,
                p.graph.values[p.graph.input].len(),
                false,
            )
            .with_context(|| format!("--budget-data {}", dir.display()))?;
            check.inputs
        }
        None => c.held_out(BUDGET_CHECK_INPUTS, &p.preprocess),
    };
    let calibrated = precision::Calibrated {
        graph: &p.graph,
        stats,
        method: opts.method,
        pre: &p.preprocess,
        inputs: &c.inputs,
        check: if held_out.is_empty() {
            &c.inputs
        } else {
            &held_out
        },
        held_out: !held_out.is_empty(),
    };
    let (chosen, report) =
        precision::choose_wide_layers(&calibrated, budget, opts.wide_as, opts.progress)?;
    wide.extend(chosen);
    Ok((wide, Some(report)))
}

/// The line `compile` ends with: what was written, for which target and from what scales.
pub fn summary(output: &Path, r: &CompileReport, target_defaulted: bool) -> String {
    let target = if target_defaulted {
        format!(
            "target {} (this machine; --target to choose)",
            r.target.name()
        )
    } else {
        format!("target {}", r.target.name())
    };
    let scales = match (r.calibration_images, r.stated_scales) {
        (0, stated) => format!("the model's own scales ({stated} stated)"),
        (n, 0) => format!("{n} calibration inputs ({})", r.method),
        (n, stated) => format!(
            "the model's own scales ({stated} stated), the rest from {n} calibration inputs ({})",
            r.method
        ),
    };
    let skipped = match r.calibration_skipped.len() {
        0 => String::new(),
        n => format!(", {n} undecodable images skipped"),
    };
    let precision = match (&r.budget, r.wide_layers.len()) {
        (Some(b), n) => format!(
            "\nbudget {}%: {n} of {} layers kept {} ({}), agreement with float on {} {:.2}%, predicted from the logit noise {:.2}% (at least {:.2}% at two standard errors; all int8: {:.2}%, predicted {:.2}%){}",
            b.budget,
            b.ranking.len(),
            r.wide_as.name(),
            r.wide_layers.join(", "),
            if b.held_out {
                format!("{} inputs calibration did not use", b.inputs)
            } else {
                format!("the {} calibration inputs (none left over to hold out)", b.inputs)
            },
            100.0 * b.chosen_agreement,
            100.0 * b.chosen_predicted,
            100.0 * b.chosen_predicted_low,
            100.0 * b.int8_agreement,
            100.0 * b.int8_predicted,
            if b.unmet { " — budget not met even with every layer kept wider" } else { "" }
        ),
        (None, 0) => String::new(),
        (None, n) => format!("\n{n} layers kept {}: {}", r.wide_as.name(), r.wide_layers.join(", ")),
    };
    let equalized = match r.equalized_pairs {
        0 => String::new(),
        n => format!(", {n} conv pairs equalised"),
    };
    let bias = match &r.bias_correction {
        Some(b) => format!(
            "\nbias correction: {} layers on {} inputs, mean drift from float {:.3} → {:.3} output steps",
            b.layers, b.inputs, b.mean_drift_before, b.mean_drift_after
        ),
        None => String::new(),
    };
    let streamed = match r.streamed_stems {
        0 => String::new(),
        1 => ", stem streamed into its max pool".to_string(),
        n => format!(", {n} stems streamed into their max pools"),
    };
    format!(
        "wrote {} ({} bytes), {target}: {} BatchNorm folded{equalized}, {scales}{skipped}, arena {} bytes (lower bound {}){streamed}{precision}{bias}",
        output.display(),
        r.file_bytes,
        r.passes.bn_folded,
        r.arena_bytes,
        r.arena_lower_bound_bytes
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn mirror_reverses_every_row() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(super::mirror(&x, 3), vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
        assert_eq!(super::mirror(&super::mirror(&x, 2), 2), x.to_vec());
    }
}
