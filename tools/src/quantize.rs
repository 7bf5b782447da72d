//! Quantisation and lowering: folded float graph + calibration → a `.kes` model.
//!
//! - Weights: int8 symmetric per output channel (`[-127, 127]`), repacked from OIHW to
//!   `[KH][KW][IC][OC]`, the layout the kernels read over NHWC activations.
//! - Activations: int8 per tensor with a zero point; ops that only move or compare values
//!   (pooling, subsample, channel padding, reshape) keep their input's quantisation.
//! - Bias: int32 at scale `s_in·s_w`, with `−z_in·Σw` folded in.
//! - Requantisation: Q31 multiplier and shift of `s_in·s_w / s_out` per channel; the
//!   residual operand gets its own `s_res / s_out`.
//! - The final dense layer gives int32 at one common scale: logits come out dequantised.

use std::collections::{HashMap, HashSet};

use kestrel_format::writer::{KesModel, OpRecord, TensorRecord};
use kestrel_format::{DType, OpKind, Plan, Residual, WeightLayout};
use kestrel_kernels::scalar::quantize_multiplier;

use crate::calibrate::{choose_range, Method, TensorStats};
use crate::graph::{Graph, Op, StatedQuant, ValueId};
use crate::plan::{self, Buffer};
use crate::preprocess::Preprocess;

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("node '{node}' ({op}): {reason}")]
    Unsupported {
        node: String,
        op: String,
        reason: String,
    },
    #[error("tensor '{value}' needs a scale the model does not state: give --calib to measure it")]
    NeedsCalibration { value: String },
}

/// Quantisation of one activation tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quant {
    pub scale: f32,
    pub zero_point: i32,
}

impl Quant {
    pub fn from_stated(q: StatedQuant) -> Quant {
        Quant {
            scale: q.scale,
            zero_point: q.int8_zero_point(),
        }
    }

    /// int16 (a layer kept wider): symmetric, so zero point 0, over the larger bound.
    pub fn wide_from_range(lo: f32, hi: f32) -> Quant {
        Quant {
            scale: (lo.abs().max(hi.abs()) / 32767.0).max(1e-10),
            zero_point: 0,
        }
    }

    pub fn from_range(lo: f32, hi: f32) -> Quant {
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zero_point = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
        Quant { scale, zero_point }
    }
}

/// Values kept wider than int8, and how: int16 activations, and with `f16_weights` the
/// weights of the convs and dense layers that write them (and of the logits' dense layer,
/// if listed) as f16.
#[derive(Clone, Debug, Default)]
pub struct Wide {
    pub values: HashSet<ValueId>,
    pub f16_weights: bool,
}

impl Wide {
    fn f16_weights_for(&self, v: ValueId) -> bool {
        self.f16_weights && self.values.contains(&v)
    }
}

pub struct Lowered {
    pub model: KesModel,
    /// The kes tensor index holding each float value that has an int8 twin.
    pub tensor_of_value: HashMap<ValueId, u32>,
}

/// Lowers a folded graph. `stats` (indexed by value id) give the ranges of the values
/// whose quantisation the model does not state; without them every value needs its own.
/// The values in `wide` (measured ones; a model's stated int8 stays int8) are stored as
/// int16, and ops that only move values keep their input's type.
pub fn lower(
    graph: &Graph,
    stats: Option<&[TensorStats]>,
    method: Method,
    wide: &Wide,
    pre: &Preprocess,
    labels: Vec<String>,
    metadata: Vec<(String, String)>,
) -> Result<Lowered, LowerError> {
    let unsupported = |node: &str, op: &str, reason: &str| LowerError::Unsupported {
        node: node.to_string(),
        op: op.to_string(),
        reason: reason.to_string(),
    };
    // A model's own scale wins over a measured one: an already-quantised model was
    // trained or calibrated for it.
    let own_quant = |v: ValueId| match (graph.values[v].quant, stats) {
        (Some(q), _) => Ok(Quant::from_stated(q)),
        // int16 has steps to spare: its range is the whole observed one, clipping nothing.
        (None, Some(stats)) if wide.values.contains(&v) => {
            Ok(Quant::wide_from_range(stats[v].min, stats[v].max))
        }
        (None, Some(stats)) => {
            let (lo, hi) = choose_range(&stats[v], method);
            Ok(Quant::from_range(lo, hi))
        }
        (None, None) => Err(LowerError::NeedsCalibration {
            value: graph.values[v].name.clone(),
        }),
    };
    let own_dtype = |v: ValueId| {
        if wide.values.contains(&v) && graph.values[v].quant.is_none() {
            DType::I16
        } else {
            DType::I8
        }
    };
    let mut quant: HashMap<ValueId, Quant> = HashMap::new();
    let mut tensors: Vec<TensorRecord> = Vec::new();
    let mut tensor_of_value: HashMap<ValueId, u32> = HashMap::new();
    let mut ops: Vec<OpRecord> = Vec::new();
    // Storage sharing: tensor → tensor whose buffer it reuses.
    let mut shares: HashMap<u32, u32> = HashMap::new();

    let nhwc = |shape: &[usize]| -> [u32; 4] {
        match shape.len() {
            4 => [1, shape[2] as u32, shape[3] as u32, shape[1] as u32],
            2 => [1, 1, 1, shape[1] as u32],
            _ => [1, 1, 1, shape.iter().product::<usize>() as u32],
        }
    };
    let add_tensor = |v: ValueId,
                      dtype: DType,
                      q: Quant,
                      tensors: &mut Vec<TensorRecord>,
                      map: &mut HashMap<ValueId, u32>| {
        let idx = tensors.len() as u32;
        tensors.push(TensorRecord {
            dtype,
            dims: nhwc(&graph.values[v].shape),
            scale: q.scale,
            zero_point: q.zero_point,
            offset: 0,
        });
        map.insert(v, idx);
        idx
    };

    let input_q = own_quant(graph.input)?;
    quant.insert(graph.input, input_q);
    add_tensor(
        graph.input,
        own_dtype(graph.input),
        input_q,
        &mut tensors,
        &mut tensor_of_value,
    );

    let last_use = graph.last_use();
    for (step, node) in graph.nodes.iter().enumerate() {
        let x = node.inputs[0];
        let xq = quant[&x];
        let xt = tensor_of_value[&x];
        let x_dtype = tensors[xt as usize].dtype;
        let in_shape = &graph.values[x].shape;
        let int8_only = |what: &str| {
            let wide_operand = node
                .inputs
                .iter()
                .any(|i| tensors[tensor_of_value[i] as usize].dtype == DType::I16);
            if wide_operand {
                Err(unsupported(
                    &node.name,
                    what,
                    "int16 operand (only convs, dense layers and pooling take layers kept wider)",
                ))
            } else {
                Ok(())
            }
        };
        let small = |v: usize| {
            u8::try_from(v)
                .map_err(|_| unsupported(&node.name, node.op.kind(), "window parameter above 255"))
        };
        match &node.op {
            Op::Conv(c) => {
                if c.dilation != [1, 1] {
                    return Err(unsupported(
                        &node.name,
                        "Conv",
                        "dilated convolution in int8",
                    ));
                }
                let yq = own_quant(node.output)?;
                let [oc, _, kh, kw] = c.weight_shape;
                let f16 = wide.f16_weights_for(node.output);
                let (packed, params) = if f16 {
                    (
                        f16_weights(&oihw_to_hwio(&c.weight, c.weight_shape)),
                        f16_records(c.bias.as_deref(), xq, yq.scale, oc),
                    )
                } else {
                    let (weights, scales) = quantize_weights(&c.weight, oc);
                    // The bias correction sums each channel's weights: OIHW rows are channels.
                    let params =
                        channel_params(&weights, &scales, c.bias.as_deref(), xq, yq.scale, oc);
                    (oihw_to_hwio(&weights, c.weight_shape), params)
                };
                let yt = add_tensor(
                    node.output,
                    own_dtype(node.output),
                    yq,
                    &mut tensors,
                    &mut tensor_of_value,
                );
                let residual = if c.fused_add {
                    let r = node.inputs[1];
                    let rq = quant[&r];
                    let rt = tensor_of_value[&r];
                    let (m, s) = quantize_multiplier(rq.scale as f64 / yq.scale as f64);
                    // The residual dies here: the output overwrites it in place.
                    let same_type = tensors[rt as usize].dtype == tensors[yt as usize].dtype;
                    if same_type
                        && last_use[r] == Some(step)
                        && r != graph.input
                        && r != graph.output
                    {
                        shares.insert(yt, rt);
                    }
                    Some(Residual {
                        tensor: rt,
                        multiplier: m,
                        shift: s,
                    })
                } else {
                    None
                };
                let mut op = OpRecord::plain(OpKind::Conv, xt, yt);
                op.kernel = [small(kh)?, small(kw)?];
                op.stride = [small(c.stride[0])?, small(c.stride[1])?];
                op.pads = [
                    small(c.pads[0])?,
                    small(c.pads[1])?,
                    small(c.pads[2])?,
                    small(c.pads[3])?,
                ];
                op.out_min = if c.relu { yq.zero_point as i8 } else { i8::MIN };
                op.residual = residual;
                op.weights = packed;
                op.params = params;
                if f16 {
                    op.layout = WeightLayout::F16;
                }
                quant.insert(node.output, yq);
                ops.push(op);
            }
            Op::Dense(d) => {
                let (weights, scales) = quantize_weights(&d.weight, d.out_features);
                let is_output = node.output == graph.output;
                let f16 = wide.f16_weights_for(node.output);
                let (dtype, yq) = if is_output && !d.relu {
                    // Logits: int32 at the largest channel scale, so no channel is rounded
                    // coarser (with f16 weights too: an int16 input makes it fine already).
                    let s = scales
                        .iter()
                        .map(|&w| w * xq.scale as f64)
                        .fold(0.0, f64::max)
                        .max(1e-12);
                    (
                        DType::I32,
                        Quant {
                            scale: s as f32,
                            zero_point: 0,
                        },
                    )
                } else {
                    (own_dtype(node.output), own_quant(node.output)?)
                };
                let yt = add_tensor(node.output, dtype, yq, &mut tensors, &mut tensor_of_value);
                let mut op = OpRecord::plain(OpKind::Dense, xt, yt);
                op.out_min = if d.relu { yq.zero_point as i8 } else { i8::MIN };
                if f16 {
                    op.weights = f16_weights(&d.weight);
                    op.params = f16_records(d.bias.as_deref(), xq, yq.scale, d.out_features);
                    op.layout = WeightLayout::F16;
                } else {
                    op.params = channel_params(
                        &weights,
                        &scales,
                        d.bias.as_deref(),
                        xq,
                        yq.scale,
                        d.out_features,
                    );
                    op.weights = weights;
                }
                quant.insert(node.output, yq);
                ops.push(op);
            }
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let kind = if matches!(node.op, Op::MaxPool(_)) {
                    OpKind::MaxPool
                } else {
                    int8_only("AveragePool")?;
                    OpKind::AvgPool
                };
                let yt = add_tensor(node.output, x_dtype, xq, &mut tensors, &mut tensor_of_value);
                let mut op = OpRecord::plain(kind, xt, yt);
                op.kernel = [small(p.kernel[0])?, small(p.kernel[1])?];
                op.stride = [small(p.stride[0])?, small(p.stride[1])?];
                op.pads = [
                    small(p.pads[0])?,
                    small(p.pads[1])?,
                    small(p.pads[2])?,
                    small(p.pads[3])?,
                ];
                op.count_include_pad = p.count_include_pad;
                quant.insert(node.output, xq);
                ops.push(op);
            }
            Op::GlobalAvgPool => {
                // The pooled tensor's own scale: the mean's range is narrower than the
                // feature map's, so its own steps are finer (and a QDQ model rounds there).
                let yq = own_quant(node.output)?;
                let yt = add_tensor(
                    node.output,
                    own_dtype(node.output),
                    yq,
                    &mut tensors,
                    &mut tensor_of_value,
                );
                let mut op = OpRecord::plain(OpKind::GlobalAvgPool, xt, yt);
                if yq != xq || tensors[yt as usize].dtype != x_dtype {
                    let pixels = (in_shape[2] * in_shape[3]) as f64;
                    let (m, s) = quantize_multiplier(xq.scale as f64 / (pixels * yq.scale as f64));
                    let bias = -(pixels as i64 * xq.zero_point as i64) as i32;
                    op.params = vec![(bias, m, s)];
                }
                quant.insert(node.output, yq);
                ops.push(op);
            }
            Op::Reshape => {
                // NHWC and NCHW orders agree only when there is one pixel.
                if in_shape.len() == 4 && in_shape[2] * in_shape[3] != 1 {
                    return Err(unsupported(
                        &node.name,
                        "Reshape",
                        "flattening a feature map larger than 1×1",
                    ));
                }
                let yt = add_tensor(node.output, x_dtype, xq, &mut tensors, &mut tensor_of_value);
                shares.insert(yt, xt);
                quant.insert(node.output, xq);
                ops.push(OpRecord::plain(OpKind::Reshape, xt, yt));
            }
            Op::Slice(s) => {
                if in_shape.len() != 4
                    || s.start[..2] != [0, 0]
                    || s.step[..2] != [1, 1]
                    || graph.values[node.output].shape[1] != in_shape[1]
                {
                    return Err(unsupported(
                        &node.name,
                        "Slice",
                        "only strided slicing of height and width",
                    ));
                }
                let yt = add_tensor(node.output, x_dtype, xq, &mut tensors, &mut tensor_of_value);
                let mut op = OpRecord::plain(OpKind::Subsample, xt, yt);
                op.stride = [small(s.step[2])?, small(s.step[3])?];
                op.aux = [s.start[2] as u16, s.start[3] as u16];
                quant.insert(node.output, xq);
                ops.push(op);
            }
            Op::Pad(p) => {
                let only_channels = p.pads.len() == 4
                    && p.pads
                        .iter()
                        .enumerate()
                        .all(|(a, &(b, e))| a == 1 || (b, e) == (0, 0));
                if !only_channels || p.value != 0.0 {
                    return Err(unsupported(
                        &node.name,
                        "Pad",
                        "only zero padding of the channel axis",
                    ));
                }
                let yt = add_tensor(node.output, x_dtype, xq, &mut tensors, &mut tensor_of_value);
                let mut op = OpRecord::plain(OpKind::PadChannels, xt, yt);
                op.aux = [p.pads[1].0 as u16, p.pads[1].1 as u16];
                quant.insert(node.output, xq);
                ops.push(op);
            }
            Op::ChannelAffine(a) => {
                int8_only("ChannelAffine")?;
                let yq = own_quant(node.output)?;
                let channels = a.scale.len();
                // One weight per channel: its own scale makes it ±127, so only the offset
                // and the requantisation round.
                let (weights, scales) = quantize_weights(&a.scale, channels);
                let params =
                    channel_params(&weights, &scales, Some(&a.offset), xq, yq.scale, channels);
                let yt = add_tensor(
                    node.output,
                    DType::I8,
                    yq,
                    &mut tensors,
                    &mut tensor_of_value,
                );
                let mut op = OpRecord::plain(OpKind::ChannelAffine, xt, yt);
                op.out_min = if a.relu { yq.zero_point as i8 } else { i8::MIN };
                op.weights = weights;
                op.params = params;
                quant.insert(node.output, yq);
                ops.push(op);
            }
            Op::Add { relu } => {
                int8_only("Add")?;
                let b = node.inputs[1];
                let (bq, bt) = (quant[&b], tensor_of_value[&b]);
                let yq = own_quant(node.output)?;
                let yt = add_tensor(
                    node.output,
                    DType::I8,
                    yq,
                    &mut tensors,
                    &mut tensor_of_value,
                );
                let (ma, sa) = quantize_multiplier(xq.scale as f64 / yq.scale as f64);
                let (mb, sb) = quantize_multiplier(bq.scale as f64 / yq.scale as f64);
                let mut op = OpRecord::plain(OpKind::Add, xt, yt);
                op.residual = Some(Residual {
                    tensor: bt,
                    multiplier: mb,
                    shift: sb,
                });
                op.params = vec![(0, ma, sa)];
                op.out_min = if *relu { yq.zero_point as i8 } else { i8::MIN };
                quant.insert(node.output, yq);
                ops.push(op);
            }
            Op::BatchNorm(_) | Op::Relu => {
                return Err(unsupported(
                    &node.name,
                    node.op.kind(),
                    "left unfused by the graph passes; int8 runs it only fused into a convolution",
                ))
            }
        }
    }

    let placement = plan_memory(&tensors, &ops, &shares, tensor_of_value[&graph.input]);
    for (t, off) in tensors.iter_mut().zip(&placement.offsets) {
        t.offset = *off as u32;
    }
    let model = KesModel {
        tensors,
        ops,
        input: tensor_of_value[&graph.input],
        output: tensor_of_value[&graph.output],
        plan: Plan {
            arena_bytes: placement.arena_bytes as u64,
            lower_bound_bytes: placement.lower_bound_bytes as u64,
            scratch_offset: 0,
            scratch_bytes: 0,
        },
        preprocess: pre.to_info(),
        labels,
        metadata,
    };
    Ok(Lowered {
        model,
        tensor_of_value,
    })
}

/// Per-channel symmetric int8 weights and their scales (`[N, …]` row-major).
fn quantize_weights(w: &[f32], channels: usize) -> (Vec<i8>, Vec<f64>) {
    let per = w.len() / channels;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(channels);
    for row in w.chunks(per) {
        let max = row.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        q.extend(
            row.iter()
                .map(|&v| (v as f64 / s).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(s);
    }
    (q, scales)
}

/// OIHW → `[KH][KW][IC][OC]`, the layout the kernels read over NHWC activations.
fn oihw_to_hwio<T: Copy + Default>(w: &[T], [oc, ic, kh, kw]: [usize; 4]) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for o in 0..oc {
        for i in 0..ic {
            for y in 0..kh {
                for x in 0..kw {
                    out[((y * kw + x) * ic + i) * oc + o] = w[((o * ic + i) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// Weights as little-endian f16 bytes (the `.kes` weights are bytes).
fn f16_weights(w: &[f32]) -> Vec<i8> {
    w.iter()
        .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
        .map(|b| b as i8)
        .collect()
}

/// f16-weight channel records: `(f32 bias / s_in, f32 s_in / s_out, 0)` bit patterns (the
/// kernel sums `x − z_in` times the real weights).
fn f16_records(
    bias: Option<&[f32]>,
    xq: Quant,
    out_scale: f32,
    channels: usize,
) -> Vec<(i32, i32, i32)> {
    let scale = (xq.scale as f64 / out_scale as f64) as f32;
    (0..channels)
        .map(|c| {
            let b = (bias.map_or(0.0, |b| b[c] as f64) / xq.scale as f64) as f32;
            (b.to_bits() as i32, scale.to_bits() as i32, 0)
        })
        .collect()
}

/// `(bias, multiplier, shift)` per output channel, with `−z_in·Σw` folded into the bias.
fn channel_params(
    weights: &[i8],
    w_scales: &[f64],
    bias: Option<&[f32]>,
    xq: Quant,
    out_scale: f32,
    channels: usize,
) -> Vec<(i32, i32, i32)> {
    let per = weights.len() / channels;
    (0..channels)
        .map(|c| {
            let acc_scale = xq.scale as f64 * w_scales[c];
            let b = bias.map_or(0.0, |b| b[c] as f64) / acc_scale;
            let wsum: i64 = weights[c * per..(c + 1) * per]
                .iter()
                .map(|&v| v as i64)
                .sum();
            let folded = (b.round() as i64 - xq.zero_point as i64 * wsum)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            let (m, s) = quantize_multiplier(acc_scale / out_scale as f64);
            (folded, m, s)
        })
        .collect()
}

fn plan_memory(
    tensors: &[TensorRecord],
    ops: &[OpRecord],
    shares: &HashMap<u32, u32>,
    input: u32,
) -> plan::Placement {
    let n = tensors.len();
    // Root buffer of each tensor.
    let root = |mut t: u32| {
        while let Some(&r) = shares.get(&t) {
            t = r;
        }
        t as usize
    };
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let touch = |t: u32, step: usize, first: &mut Vec<usize>, last: &mut Vec<usize>| {
        let r = root(t);
        first[r] = first[r].min(step);
        last[r] = last[r].max(step);
    };
    touch(input, 0, &mut first, &mut last);
    let out_step = ops.len();
    for (step, op) in ops.iter().enumerate() {
        touch(op.input, step, &mut first, &mut last);
        touch(op.output, step, &mut first, &mut last);
        if let Some(r) = op.residual {
            touch(r.tensor, step, &mut first, &mut last);
        }
    }
    // The graph output lives until the caller reads it.
    if let Some(op) = ops.last() {
        touch(op.output, out_step, &mut first, &mut last);
    }
    let bytes =
        |t: &TensorRecord| t.dims.iter().map(|&d| d as usize).product::<usize>() * t.dtype.size();
    let roots: Vec<usize> = (0..n).filter(|&t| root(t as u32) == t).collect();
    let buffers: Vec<Buffer> = roots
        .iter()
        .map(|&t| Buffer {
            bytes: bytes(&tensors[t]),
            first: first[t],
            last: last[t],
        })
        .collect();
    let placed = plan::place(&buffers);
    let offsets = (0..n)
        .map(|t| {
            let r = root(t as u32);
            let i = roots
                .iter()
                .position(|&x| x == r)
                .expect("every root is a buffer");
            placed.offsets[i]
        })
        .collect();
    plan::Placement { offsets, ..placed }
}
