//! Empirical bias correction: the int8 file's per-channel mean output drifts from the float
//! model's (clipped ranges, the rounding of weights against a non-zero mean input); each
//! conv's and dense layer's drift on calibration inputs is folded back into its bias (int32,
//! or the f32 one of a layer kept at f16).
//!
//! Layers are corrected in order, each measured with every earlier correction in place, so a
//! layer does not also correct the drift its inputs carried in (which the layers before it
//! have removed). Measured on the output after the fused ReLU: a bias step moves that mean
//! only where the output is above the clamp, so the step is the drift divided by that share.

use kestrel_format::writer::KesModel;
use kestrel_format::{OpKind, WeightLayout};

use crate::compare::dequantize_nchw;
use crate::graph::Graph;
use crate::reference;

/// How many calibration inputs the correction measures drift on.
pub const INPUTS: usize = 64;

/// What the correction did, for the compile report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BiasReport {
    pub layers: usize,
    pub inputs: usize,
    /// Mean |drift| over channels and layers, in output steps, before and after.
    pub mean_drift_before: f64,
    pub mean_drift_after: f64,
}

/// Per-channel means of an NCHW tensor.
fn channel_means(data: &[f32], channels: usize) -> Vec<f64> {
    let per = data.len() / channels.max(1);
    data.chunks(per.max(1))
        .map(|c| c.iter().map(|&v| v as f64).sum::<f64>() / per.max(1) as f64)
        .collect()
}

/// Corrects the biases of `model` (lowered from `graph`, one op per node, weights not yet
/// packed) on `inputs`.
pub fn correct(
    model: &mut KesModel,
    graph: &Graph,
    inputs: &[Vec<f32>],
) -> anyhow::Result<BiasReport> {
    anyhow::ensure!(
        model.ops.len() == graph.nodes.len(),
        "internal error: bias correction needs one op per graph node"
    );
    let inputs = &inputs[..INPUTS.min(inputs.len())];
    // Float per-channel means of every node's output, averaged over the inputs.
    let mut float_means: Vec<Vec<f64>> = vec![Vec::new(); graph.nodes.len()];
    for x in inputs {
        reference::run_observed(graph, x, |i, v, data| {
            let channels = graph.values[v].shape.get(1).copied().unwrap_or(1);
            let m = channel_means(data, channels);
            let acc = &mut float_means[i];
            if acc.is_empty() {
                acc.resize(m.len(), 0.0);
            }
            for (a, b) in acc.iter_mut().zip(m) {
                *a += b / inputs.len() as f64;
            }
        })?;
    }
    let mut report = BiasReport {
        inputs: inputs.len(),
        ..BiasReport::default()
    };
    let mut drift_count = 0usize;
    for (i, float_mean) in float_means.iter().enumerate() {
        let op = &model.ops[i];
        let correctable = matches!(op.kind, OpKind::Conv | OpKind::Dense)
            && matches!(op.layout, WeightLayout::Portable | WeightLayout::F16);
        if !correctable {
            continue;
        }
        let (drift, above) = measure(model, i, inputs, float_mean)?;
        let out = &model.tensors[model.ops[i].output as usize];
        let step = out.scale as f64;
        let op = &mut model.ops[i];
        let f16 = op.layout == WeightLayout::F16;
        for (c, rec) in op.params.iter_mut().enumerate() {
            // Output steps one bias unit moves: the requantisation's real multiplier (an
            // f16 layer's record holds its f32 bias and scale).
            let per_unit = if f16 {
                f32::from_bits(rec.1 as u32) as f64
            } else {
                rec.1 as f64 * 2f64.powi(rec.2 - 31)
            };
            if per_unit <= 0.0 || above[c] < 0.05 {
                continue;
            }
            let units = -(drift[c] / step) / per_unit / above[c];
            rec.0 = if f16 {
                let bias = f32::from_bits(rec.0 as u32) as f64 + units;
                (bias as f32).to_bits() as i32
            } else {
                (rec.0 as f64 + units.round()).clamp(i32::MIN as f64, i32::MAX as f64) as i32
            };
            report.mean_drift_before += (drift[c] / step).abs();
            drift_count += 1;
        }
        let (after, _) = measure(model, i, inputs, float_mean)?;
        report.mean_drift_after += after.iter().map(|d| (d / step).abs()).sum::<f64>();
        report.layers += 1;
    }
    if drift_count > 0 {
        report.mean_drift_before /= drift_count as f64;
        report.mean_drift_after /= drift_count as f64;
    }
    Ok(report)
}

/// Runs ops `0..=index` of `model` on `inputs`: each channel's mean drift of op `index`'s
/// output from `float_means` (real units), and the share of its outputs above the clamp.
fn measure(
    model: &KesModel,
    index: usize,
    inputs: &[Vec<f32>],
    float_means: &[f64],
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let bytes = model.to_bytes();
    let parsed = kestrel_runtime::Model::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let op = &model.ops[index];
    let channels = float_means.len();
    // A fused ReLU clamps at the zero point; without one, nothing to count.
    let relu = op.out_min > i8::MIN;
    let floor = op.out_min as i32;
    let parts = crate::parallel::map_chunks(inputs, |part| {
        let mut arena = vec![0u8; parsed.arena_bytes()];
        let mut sums = vec![0f64; channels];
        let mut above = vec![0f64; channels];
        for x in part {
            let mut session = kestrel_runtime::Session::new(&parsed, &mut arena)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            session
                .set_input_nchw_f32(x)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for j in 0..=index as u32 {
                session.run_op(j);
            }
            let (info, raw) = session.tensor(op.output).expect("validated");
            let real = dequantize_nchw(&info, raw);
            let floor_real = (floor - info.zero_point) as f32 * info.scale;
            let per = real.len() / channels;
            for (c, chunk) in real.chunks(per).enumerate() {
                sums[c] += chunk.iter().map(|&v| v as f64).sum::<f64>() / per as f64;
                above[c] += if relu {
                    chunk.iter().filter(|&&v| v > floor_real).count() as f64 / per as f64
                } else {
                    1.0
                };
            }
        }
        Ok((sums, above))
    })?;
    let n = inputs.len().max(1) as f64;
    let mut drift = vec![0f64; channels];
    let mut above = vec![0f64; channels];
    for (s, a) in parts {
        for c in 0..channels {
            drift[c] += s[c] / n;
            above[c] += a[c] / n;
        }
    }
    for (d, f) in drift.iter_mut().zip(float_means) {
        *d -= f;
    }
    Ok((drift, above))
}
