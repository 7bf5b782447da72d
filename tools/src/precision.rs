//! Mixed precision under an agreement budget: which layers to keep at int16 activations
//! ("16x8") so the `.kes` picks the float model's class on at least a given share of images.
//!
//! 1. Sensitivity: on a sample of the calibration inputs, each candidate layer alone is kept
//!    wide and the logits' squared error against float is measured; the layers are ranked
//!    by how much of the all-int8 error that removes.
//! 2. Budget: the shortest prefix of that ranking whose file agrees with float at least as
//!    often as asked (binary search: agreement grows with the prefix, up to noise), checked
//!    on inputs calibration did not see when there are any (on its own inputs a file agrees
//!    more often than in the field), both as counted and as the logit noise predicts it
//!    (a few hundred inputs are too few to count 99.9% on).

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
    /// The same two as the logit noise predicts them (the budget wants both).
    pub int8_predicted: f64,
    pub chosen_predicted: f64,
    /// The chosen file's prediction less two standard errors of its mean over the check
    /// inputs: what the budget is held to, so a few hundred inputs do not flatter it.
    pub chosen_predicted_low: f64,
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

/// What a trial measured on its inputs.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    /// Inputs whose top-1 is float's.
    agree: usize,
    /// Σ squared logit error against float.
    error: f64,
    /// Top-1 agreement the logit noise predicts: each input flips with the chance that
    /// Gaussian noise of its measured power on its two best logits overturns float's margin.
    /// Far steadier than counting flips on a few hundred inputs, which cannot tell 99.9%
    /// from 99.5% (1 flip in 500 against 2.5).
    predicted: Prediction,
}

impl Trial<'_> {
    fn run(
        &self,
        wide: &HashSet<ValueId>,
        on: &Labelled<'_>,
        count: usize,
    ) -> anyhow::Result<Outcome> {
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
            let mut margins = Vec::with_capacity(part.len());
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
                let e = logits
                    .iter()
                    .zip(float.iter())
                    .map(|(q, f)| (*q as f64 - *f as f64).powi(2))
                    .sum::<f64>();
                margins.push((top_margin(float), (e / float.len().max(1) as f64).sqrt()));
                error += e;
            }
            Ok((agree, error, margins))
        })?;
        let (mut agree, mut error, mut margins) = (0, 0.0, Vec::new());
        for (a, e, m) in parts {
            agree += a;
            error += e;
            margins.extend(m);
        }
        Ok(Outcome {
            agree,
            error,
            predicted: predicted_agreement(&margins),
        })
    }
}

/// Float's lead of its best logit over the second.
fn top_margin(float: &[f32]) -> f64 {
    let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in float {
        let v = v as f64;
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    if second.is_finite() {
        first - second
    } else {
        f64::INFINITY
    }
}

/// The agreement the logit noise predicts over some inputs.
#[derive(Clone, Copy, Debug)]
struct Prediction {
    /// The mean over the inputs of each one's chance to keep float's top class.
    mean: f64,
    /// The standard error of that mean: the flips are few and sit on a few inputs, so the
    /// mean over a few hundred inputs moves by this from one sample of them to another.
    standard_error: f64,
}

impl Prediction {
    /// The mean less two standard errors: a one-sided bound the budget must clear.
    fn low(&self) -> f64 {
        self.mean - 2.0 * self.standard_error
    }
}

/// Each input's chance `(margin, noise)` that independent Gaussian noise of its own logit
/// error (its RMS over the logits: the error is far from even across inputs) leaves
/// float's best logit first: the difference of two such noises has deviation `noise·√2`,
/// so a margin `m` is overturned with chance `½·erfc(m / (2·noise))`.
fn predicted_agreement(inputs: &[(f64, f64)]) -> Prediction {
    let n = inputs.len();
    if n == 0 {
        return Prediction {
            mean: 1.0,
            standard_error: 0.0,
        };
    }
    let flip = |&(m, noise): &(f64, f64)| {
        if noise > 0.0 {
            0.5 * libm::erfc(m / (2.0 * noise))
        } else {
            0.0
        }
    };
    let mean_flip = inputs.iter().map(flip).sum::<f64>() / n as f64;
    let variance = match n {
        1 => 0.0,
        _ => {
            inputs
                .iter()
                .map(|i| (flip(i) - mean_flip).powi(2))
                .sum::<f64>()
                / (n - 1) as f64
        }
    };
    Prediction {
        mean: 1.0 - mean_flip,
        standard_error: (variance / n as f64).sqrt(),
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
    let base = trial.run(&none, &check, n)?;
    let base_error = trial.run(&none, &sample, all)?.error;
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
        let Ok(Outcome { error, .. }) = trial.run(&HashSet::from([v]), &sample, all) else {
            continue;
        };
        ranking.push((v, error / base_error.max(1e-30)));
    }
    bar.finish_and_clear();
    ranking.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Met when both the flips counted and the flips the logit noise predicts (at two
    // standard errors below its mean) allow it.
    let meets = |o: &Outcome| {
        100.0 * o.agree as f64 >= budget * n as f64 && 100.0 * o.predicted.low() >= budget
    };
    let prefix = |k: usize| -> HashSet<ValueId> { ranking[..k].iter().map(|r| r.0).collect() };
    // The shortest prefix that meets the budget (0 if int8 already does).
    let (mut lo, mut hi) = (0usize, ranking.len());
    let mut best = (0, base);
    if !meets(&base) {
        let all = trial.run(&prefix(hi), &check, n)?;
        best = (hi, all);
        if meets(&all) {
            while lo + 1 < hi {
                let mid = (lo + hi) / 2;
                let o = trial.run(&prefix(mid), &check, n)?;
                if meets(&o) {
                    hi = mid;
                    best = (mid, o);
                } else {
                    lo = mid;
                }
            }
        }
    }
    let (k, chosen) = best;
    let name = |v: ValueId| name_of(graph, v);
    let share = |agree: usize| agree as f64 / n.max(1) as f64;
    let report = BudgetReport {
        budget,
        kind,
        inputs: n,
        held_out,
        int8_agreement: share(base.agree),
        chosen_agreement: share(chosen.agree),
        int8_predicted: base.predicted.mean,
        chosen_predicted: chosen.predicted.mean,
        chosen_predicted_low: chosen.predicted.low(),
        wide_layers: ranking[..k].iter().map(|r| name(r.0)).collect(),
        ranking: ranking
            .iter()
            .map(|&(v, e)| LayerSensitivity {
                layer: name(v),
                error_left: e,
            })
            .collect(),
        unmet: !meets(&chosen),
    };
    Ok((prefix(k), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_the_lead_of_the_best_logit() {
        assert_eq!(top_margin(&[0.5, 3.0, -1.0, 2.25]), 0.75);
        assert_eq!(top_margin(&[4.0]), f64::INFINITY);
    }

    /// Against a simulation: Gaussian noise of the stated power on every logit flips as
    /// many inputs as predicted.
    #[test]
    fn predicted_agreement_matches_simulated_noise() {
        use rand::{Rng, SeedableRng};
        use rand_distr_free::normal;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (inputs, noise) = (20_000, 0.02);
        let mut margins = Vec::new();
        let mut agree = 0usize;
        for _ in 0..inputs {
            let float: Vec<f64> = (0..10).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let noisy: Vec<f64> = float
                .iter()
                .map(|&v| v + noise * normal(&mut rng))
                .collect();
            let best = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            agree += (best(&float) == best(&noisy)) as usize;
            let f32s: Vec<f32> = float.iter().map(|&v| v as f32).collect();
            margins.push((top_margin(&f32s), noise));
        }
        let counted = agree as f64 / inputs as f64;
        let predicted = predicted_agreement(&margins);
        // Only the two best logits are modelled (a third rarely wins at this noise).
        assert!(
            (predicted.mean - counted).abs() < 0.004 && counted > 0.9 && counted < 0.995,
            "predicted {predicted:?}, simulated {counted}"
        );
        // The spread of the mean over 20,000 inputs: below a tenth of a point, not zero.
        assert!(predicted.standard_error > 0.0 && predicted.standard_error < 0.001);
        assert_eq!(predicted_agreement(&[(1.0, 0.0)]).mean, 1.0);
    }

    /// The same mean flip rate counts for less when it sits on a few inputs than when it
    /// is spread over all of them.
    #[test]
    fn flips_on_few_inputs_have_the_wider_bound() {
        // 500 inputs, 0.1% flips expected either way: on one input at 50%, or on every
        // input at 0.1% (a margin of about 4.4 noises).
        let mut few = vec![(f64::INFINITY, 1.0); 499];
        few.push((0.0, 1.0));
        let m = 2.0 * 1.0 * inverse_half_erfc(0.001);
        let spread = vec![(m, 1.0); 500];
        let (few, spread) = (predicted_agreement(&few), predicted_agreement(&spread));
        assert!((few.mean - spread.mean).abs() < 1e-9, "{few:?} {spread:?}");
        assert!(spread.standard_error < 1e-12);
        assert!(
            few.low() < 0.998 && spread.low() > 0.9989,
            "{few:?} {spread:?}"
        );
    }

    /// The `m` with `½·erfc(m) = p`, by bisection.
    fn inverse_half_erfc(p: f64) -> f64 {
        let (mut lo, mut hi) = (0.0, 10.0);
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if 0.5 * libm::erfc(mid) > p {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        (lo + hi) / 2.0
    }
}

/// A standard normal deviate (Box–Muller), so the test needs no distribution crate.
#[cfg(test)]
mod rand_distr_free {
    use rand::Rng;

    pub fn normal(rng: &mut impl Rng) -> f64 {
        let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen_range(0.0..1.0));
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}
