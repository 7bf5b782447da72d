//! Mixed precision under an agreement budget: which layers to keep at int16 activations
//! ("16x8") so the `.kes` picks the float model's class on at least a given share of images.
//!
//! 1. Sensitivity: on a sample of the calibration inputs, each candidate layer alone is kept
//!    wide and the logits' squared error against float is measured; the layers are ranked
//!    by how much of the all-int8 error that removes.
//! 2. Budget: the shortest prefix of that ranking whose file agrees with float at least as
//!    often as asked (binary search: agreement grows with the prefix, up to noise), checked
//!    on inputs calibration did not see when there are any (on its own inputs a file agrees
//!    more often than in the field).

use std::collections::HashSet;

use serde::Serialize;

use crate::calibrate::{Method, TensorStats};
use crate::check::argmax;
use crate::graph::{Graph, Op, ValueId};
use crate::preprocess::Preprocess;
use crate::quantize::{self, Wide};
use crate::reference;

/// What a layer kept wider gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum WideKind {
    /// int16 activations, int8 weights (TFLite's 16x8).
    #[value(name = "16x8")]
    #[serde(rename = "16x8")]
    Int16,
    /// int16 activations and f16 weights (computed in f32).
    #[value(name = "f16")]
    #[serde(rename = "f16")]
    F16,
}

impl WideKind {
    pub fn name(self) -> &'static str {
        match self {
            WideKind::Int16 => "16x8",
            WideKind::F16 => "f16",
        }
    }

    /// The lowering of `values` kept wide this way.
    pub fn wide(self, values: HashSet<ValueId>) -> Wide {
        Wide {
            values,
            f16_weights: self == WideKind::F16,
        }
    }
}

/// How many calibration inputs the per-layer sensitivity pass runs.
const SENSITIVITY_INPUTS: usize = 64;

/// Tensors that can be kept wider: the input image and the measured outputs of
/// convolutions, dense layers and global pooling; the logits (int32 already) only for
/// `kind` f16, whose weights they then take.
pub fn candidates(graph: &Graph, kind: WideKind) -> Vec<ValueId> {
    let layers = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Conv(_) | Op::Dense(_) | Op::GlobalAvgPool))
        .map(|n| n.output);
    std::iter::once(graph.input)
        .chain(layers)
        .filter(|&v| v != graph.output || kind == WideKind::F16)
        .filter(|&v| graph.values[v].quant.is_none())
        .collect()
}

/// The name `--keep-wide` takes for a candidate: the node that writes it, as `compare`
/// lists it, or `input`.
pub fn name_of(graph: &Graph, v: ValueId) -> String {
    if v == graph.input {
        return "input".to_string();
    }
    graph
        .nodes
        .iter()
        .find(|n| n.output == v)
        .map_or_else(|| graph.values[v].name.clone(), |n| n.name.clone())
}

/// The candidate called `name` (see [`name_of`]).
pub fn value_named(graph: &Graph, name: &str, kind: WideKind) -> Option<ValueId> {
    candidates(graph, kind)
        .into_iter()
        .find(|&v| name_of(graph, v) == name)
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerSensitivity {
    pub layer: String,
    /// Share of the all-int8 logit error left when only this layer is kept wide.
    pub error_left: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BudgetReport {
    /// The agreement asked for, in percent.
    pub budget: f64,
    pub kind: WideKind,
    /// How many inputs agreement was checked on, and whether calibration had not seen them.
    pub inputs: usize,
    pub held_out: bool,
    /// Agreement of the all-int8 file and of the chosen one, on those inputs.
    pub int8_agreement: f64,
    pub chosen_agreement: f64,
    /// Layers kept wide, most useful first.
    pub wide_layers: Vec<String>,
    pub ranking: Vec<LayerSensitivity>,
    /// Even every candidate kept wide fell short of the budget.
    pub unmet: bool,
}

/// Runs a lowering of `graph` with the layers in `wide` kept wide over inputs paired with
/// their float logits: `(agreement count, Σ squared logit error against float)`.
struct Trial<'a> {
    graph: &'a Graph,
    stats: &'a [TensorStats],
    method: Method,
    pre: &'a Preprocess,
    kind: WideKind,
}

/// Inputs and their float logits.
struct Labelled<'a> {
    inputs: &'a [Vec<f32>],
    float: Vec<Vec<f32>>,
}

impl<'a> Labelled<'a> {
    fn new(graph: &Graph, inputs: &'a [Vec<f32>]) -> anyhow::Result<Self> {
        let float = crate::parallel::map_chunks(inputs, |part| {
            part.iter()
                .map(|x| Ok(reference::run(graph, x)?))
                .collect::<anyhow::Result<Vec<_>>>()
        })?
        .concat();
        Ok(Labelled { inputs, float })
    }
}

impl Trial<'_> {
    fn run(
        &self,
        wide: &HashSet<ValueId>,
        on: &Labelled<'_>,
        count: usize,
    ) -> anyhow::Result<(usize, f64)> {
        let lowered = quantize::lower(
            self.graph,
            Some(self.stats),
            self.method,
            &self.kind.wide(wide.clone()),
            self.pre,
            Vec::new(),
            Vec::new(),
        )?;
        let bytes = lowered.model.to_bytes();
        let model = kestrel_runtime::Model::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pairs: Vec<(&Vec<f32>, &Vec<f32>)> =
            on.inputs.iter().zip(&on.float).take(count).collect();
        let parts = crate::parallel::map_chunks(&pairs, |part| {
            let mut arena = vec![0u8; model.arena_bytes()];
            let mut logits = vec![0f32; model.classes()];
            let (mut agree, mut error) = (0usize, 0f64);
            for (x, float) in part {
                let mut session = kestrel_runtime::Session::new(&model, &mut arena)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                session
                    .set_input_nchw_f32(x)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                session.run();
                session
                    .logits(&mut logits)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                agree += (argmax(&logits) == argmax(float)) as usize;
                error += logits
                    .iter()
                    .zip(float.iter())
                    .map(|(q, f)| (*q as f64 - *f as f64).powi(2))
                    .sum::<f64>();
            }
            Ok((agree, error))
        })?;
        Ok(parts
            .into_iter()
            .fold((0, 0.0), |(a, e), (pa, pe)| (a + pa, e + pe)))
    }
}

/// A calibrated model: what the lowering needs, the inputs it was calibrated on, and the
/// inputs agreement is checked on (`held_out`: ones calibration did not see).
pub struct Calibrated<'a> {
    pub graph: &'a Graph,
    pub stats: &'a [TensorStats],
    pub method: Method,
    pub pre: &'a Preprocess,
    pub inputs: &'a [Vec<f32>],
    pub check: &'a [Vec<f32>],
    pub held_out: bool,
}

/// Chooses the fewest layers to keep wide (as `kind`) for `budget` percent agreement with
/// float on the check inputs.
pub fn choose_wide_layers(
    calibrated: &Calibrated<'_>,
    budget: f64,
    kind: WideKind,
    progress: bool,
) -> anyhow::Result<(HashSet<ValueId>, BudgetReport)> {
    let Calibrated {
        graph,
        stats,
        method,
        pre,
        inputs,
        check,
        held_out,
    } = *calibrated;
    let sample = &inputs[..SENSITIVITY_INPUTS.min(inputs.len())];
    let sample = Labelled::new(graph, sample)?;
    let check = Labelled::new(graph, check)?;
    let trial = Trial {
        graph,
        stats,
        method,
        pre,
        kind,
    };
    let n = check.inputs.len();
    let all = sample.inputs.len();
    let none = HashSet::new();
    let (base_agree, _) = trial.run(&none, &check, n)?;
    let (_, base_error) = trial.run(&none, &sample, all)?;
    let candidates = candidates(graph, kind);
    let bar = if progress {
        indicatif::ProgressBar::new(candidates.len() as u64).with_style(
            indicatif::ProgressStyle::with_template("layer sensitivity {bar:30} {pos}/{len}")
                .expect("static template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut ranking = Vec::new();
    for &v in &candidates {
        bar.inc(1);
        // A layer some consumer cannot take at int16 (average pooling, a QDQ add) stays int8.
        let Ok((_, error)) = trial.run(&HashSet::from([v]), &sample, all) else {
            continue;
        };
        ranking.push((v, error / base_error.max(1e-30)));
    }
    bar.finish_and_clear();
    ranking.sort_by(|a, b| a.1.total_cmp(&b.1));
    let meets = |agree: usize| 100.0 * agree as f64 >= budget * n as f64;
    let prefix = |k: usize| -> HashSet<ValueId> { ranking[..k].iter().map(|r| r.0).collect() };
    // The shortest prefix that meets the budget (0 if int8 already does).
    let (mut lo, mut hi) = (0usize, ranking.len());
    let mut best = (hi, None);
    if meets(base_agree) {
        best = (0, Some(base_agree));
    } else {
        let (all_agree, _) = trial.run(&prefix(hi), &check, n)?;
        best.1 = Some(all_agree);
        if meets(all_agree) {
            while lo + 1 < hi {
                let mid = (lo + hi) / 2;
                let (agree, _) = trial.run(&prefix(mid), &check, n)?;
                if meets(agree) {
                    hi = mid;
                    best = (mid, Some(agree));
                } else {
                    lo = mid;
                }
            }
        }
    }
    let (k, chosen_agree) = (best.0, best.1.unwrap_or(base_agree));
    let name = |v: ValueId| name_of(graph, v);
    let report = BudgetReport {
        budget,
        kind,
        inputs: n,
        held_out,
        int8_agreement: base_agree as f64 / n.max(1) as f64,
        chosen_agreement: chosen_agree as f64 / n.max(1) as f64,
        wide_layers: ranking[..k].iter().map(|r| name(r.0)).collect(),
        ranking: ranking
            .iter()
            .map(|&(v, e)| LayerSensitivity {
                layer: name(v),
                error_left: e,
            })
            .collect(),
        unmet: !meets(chosen_agree),
    };
    Ok((prefix(k), report))
}
