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
use kestrel_kernels::quant::quantize_multiplier;

use crate::calibrate::{choose_range, Method, TensorStats};
use crate::graph::{
    ChannelAffine, Conv, Dense, Graph, Node, Op, Pad, Pool, Slice, StatedQuant, ValueId,
};
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
    let mut l = Lowering {
        graph,
        stats,
        method,
        wide,
        last_use: graph.last_use(),
        quant: HashMap::new(),
        tensors: Vec::new(),
        tensor_of_value: HashMap::new(),
        ops: Vec::new(),
        shares: HashMap::new(),
    };
    let input_q = l.own_quant(graph.input)?;
    l.output(graph.input, l.own_dtype(graph.input), input_q);
    for (step, node) in graph.nodes.iter().enumerate() {
        let x = node.inputs[0];
        let xt = l.tensor_of_value[&x];
        let n = At {
            node,
            step,
            xq: l.quant[&x],
            xt,
            x_dtype: l.tensors[xt as usize].dtype,
            in_shape: &graph.values[x].shape,
        };
        let op =
            match &node.op {
                Op::Conv(c) => l.conv(&n, c)?,
                Op::Dense(d) => l.dense(&n, d)?,
                Op::MaxPool(p) => l.pool(&n, p, OpKind::MaxPool)?,
                Op::AvgPool(p) => {
                    l.int8_only(&n, "AveragePool")?;
                    l.pool(&n, p, OpKind::AvgPool)?
                }
                Op::GlobalAvgPool => l.global_avg_pool(&n)?,
                Op::Reshape => l.reshape(&n)?,
                Op::Slice(s) => l.slice(&n, s)?,
                Op::Pad(p) => l.pad_channels(&n, p)?,
                Op::ChannelAffine(a) => l.channel_affine(&n, a)?,
                Op::Add { relu } => l.add(&n, *relu)?,
                Op::BatchNorm(_) | Op::Relu => return Err(unsupported(
                    node,
                    node.op.kind(),
                    "left unfused by the graph passes; int8 runs it only fused into a convolution",
                )),
            };
        l.ops.push(op);
    }
    Ok(l.finish(pre, labels, metadata))
}

fn unsupported(node: &Node, op: &str, reason: &str) -> LowerError {
    LowerError::Unsupported {
        node: node.name.clone(),
        op: op.to_string(),
        reason: reason.to_string(),
    }
}

/// What each value has become so far, and the records written.
struct Lowering<'g> {
    graph: &'g Graph,
    stats: Option<&'g [TensorStats]>,
    method: Method,
    wide: &'g Wide,
    last_use: Vec<Option<usize>>,
    quant: HashMap<ValueId, Quant>,
    tensors: Vec<TensorRecord>,
    tensor_of_value: HashMap<ValueId, u32>,
    ops: Vec<OpRecord>,
    /// Storage sharing: tensor → tensor whose buffer it reuses.
    shares: HashMap<u32, u32>,
}

/// The node being lowered, with its first input's quantisation, tensor and type.
struct At<'n> {
    node: &'n Node,
    step: usize,
    xq: Quant,
    xt: u32,
    x_dtype: DType,
    in_shape: &'n [usize],
}

impl Lowering<'_> {
    /// A model's own scale wins over a measured one: an already-quantised model was
    /// trained or calibrated for it.
    fn own_quant(&self, v: ValueId) -> Result<Quant, LowerError> {
        match (self.graph.values[v].quant, self.stats) {
            (Some(q), _) => Ok(Quant::from_stated(q)),
            // int16 has steps to spare: its range is the whole observed one, clipping nothing.
            (None, Some(stats)) if self.wide.values.contains(&v) => {
                Ok(Quant::wide_from_range(stats[v].min, stats[v].max))
            }
            (None, Some(stats)) => {
                let (lo, hi) = choose_range(&stats[v], self.method);
                Ok(Quant::from_range(lo, hi))
            }
            (None, None) => Err(LowerError::NeedsCalibration {
                value: self.graph.values[v].name.clone(),
            }),
        }
    }

    fn own_dtype(&self, v: ValueId) -> DType {
        if self.wide.values.contains(&v) && self.graph.values[v].quant.is_none() {
            DType::I16
        } else {
            DType::I8
        }
    }

    /// Records value `v` as a tensor of `dtype` at `q`; its index.
    fn output(&mut self, v: ValueId, dtype: DType, q: Quant) -> u32 {
        let shape = &self.graph.values[v].shape;
        let dims = match shape.len() {
            4 => [1, shape[2] as u32, shape[3] as u32, shape[1] as u32],
            2 => [1, 1, 1, shape[1] as u32],
            _ => [1, 1, 1, shape.iter().product::<usize>() as u32],
        };
        let idx = self.tensors.len() as u32;
        self.tensors.push(TensorRecord {
            dtype,
            dims,
            scale: q.scale,
            zero_point: q.zero_point,
            offset: 0,
        });
        self.tensor_of_value.insert(v, idx);
        self.quant.insert(v, q);
        idx
    }

    /// The node's output at its own quantisation and type.
    fn own_output(&mut self, n: &At<'_>) -> Result<(u32, Quant), LowerError> {
        let v = n.node.output;
        let q = self.own_quant(v)?;
        Ok((self.output(v, self.own_dtype(v), q), q))
    }

    /// The node's output at its input's quantisation and type (ops that move values).
    fn moved_output(&mut self, n: &At<'_>) -> u32 {
        self.output(n.node.output, n.x_dtype, n.xq)
    }

    fn int8_only(&self, n: &At<'_>, what: &str) -> Result<(), LowerError> {
        let wide_operand = n
            .node
            .inputs
            .iter()
            .any(|i| self.tensors[self.tensor_of_value[i] as usize].dtype == DType::I16);
        if wide_operand {
            return Err(unsupported(
                n.node,
                what,
                "int16 operand (only convs, dense layers and pooling take layers kept wider)",
            ));
        }
        Ok(())
    }

    fn conv(&mut self, n: &At<'_>, c: &Conv) -> Result<OpRecord, LowerError> {
        if c.dilation != [1, 1] {
            return Err(unsupported(n.node, "Conv", "dilated convolution in int8"));
        }
        let (xq, output) = (n.xq, n.node.output);
        let yq = self.own_quant(output)?;
        let [oc, _, kh, kw] = c.weight_shape;
        let f16 = self.wide.f16_weights_for(output);
        let (packed, params) = if f16 {
            (
                f16_weights(&oihw_to_hwio(&c.weight, c.weight_shape)),
                f16_records(c.bias.as_deref(), xq, yq.scale, oc),
            )
        } else {
            let (weights, scales) = quantize_weights(&c.weight, oc);
            // The bias correction sums each channel's weights: OIHW rows are channels.
            let params = channel_params(&weights, &scales, c.bias.as_deref(), xq, yq.scale, oc);
            (oihw_to_hwio(&weights, c.weight_shape), params)
        };
        let yt = self.output(output, self.own_dtype(output), yq);
        let residual = if c.fused_add {
            let r = n.node.inputs[1];
            let (rq, rt) = (self.quant[&r], self.tensor_of_value[&r]);
            let (m, s) = quantize_multiplier(rq.scale as f64 / yq.scale as f64);
            // The residual dies here: the output overwrites it in place.
            let same_type = self.tensors[rt as usize].dtype == self.tensors[yt as usize].dtype;
            let g = self.graph;
            if same_type && self.last_use[r] == Some(n.step) && r != g.input && r != g.output {
                self.shares.insert(yt, rt);
            }
            Some(Residual {
                tensor: rt,
                multiplier: m,
                shift: s,
            })
        } else {
            None
        };
        let mut op = OpRecord::plain(OpKind::Conv, n.xt, yt);
        window(n.node, &mut op, [kh, kw], c.stride, c.pads)?;
        op.out_min = if c.relu { yq.zero_point as i8 } else { i8::MIN };
        op.residual = residual;
        op.weights = packed;
        op.params = params;
        if f16 {
            op.layout = WeightLayout::F16;
        }
        Ok(op)
    }

    fn dense(&mut self, n: &At<'_>, d: &Dense) -> Result<OpRecord, LowerError> {
        let (xq, output) = (n.xq, n.node.output);
        let (weights, scales) = quantize_weights(&d.weight, d.out_features);
        let (yt, yq) = if output == self.graph.output && !d.relu {
            // Logits: int32 at the largest channel scale, so no channel is rounded
            // coarser (with f16 weights too: an int16 input makes it fine already).
            let s = scales
                .iter()
                .map(|&w| w * xq.scale as f64)
                .fold(0.0, f64::max)
                .max(1e-12);
            let q = Quant {
                scale: s as f32,
                zero_point: 0,
            };
            (self.output(output, DType::I32, q), q)
        } else {
            self.own_output(n)?
        };
        let mut op = OpRecord::plain(OpKind::Dense, n.xt, yt);
        op.out_min = if d.relu { yq.zero_point as i8 } else { i8::MIN };
        if self.wide.f16_weights_for(output) {
            op.weights = f16_weights(&d.weight);
            op.params = f16_records(d.bias.as_deref(), xq, yq.scale, d.out_features);
            op.layout = WeightLayout::F16;
        } else {
            let bias = d.bias.as_deref();
            op.params = channel_params(&weights, &scales, bias, xq, yq.scale, d.out_features);
            op.weights = weights;
        }
        Ok(op)
    }

    fn pool(&mut self, n: &At<'_>, p: &Pool, kind: OpKind) -> Result<OpRecord, LowerError> {
        let yt = self.moved_output(n);
        let mut op = OpRecord::plain(kind, n.xt, yt);
        window(n.node, &mut op, p.kernel, p.stride, p.pads)?;
        op.count_include_pad = p.count_include_pad;
        Ok(op)
    }

    fn global_avg_pool(&mut self, n: &At<'_>) -> Result<OpRecord, LowerError> {
        // The pooled tensor's own scale: the mean's range is narrower than the feature
        // map's, so its own steps are finer (and a QDQ model rounds there).
        let (yt, yq) = self.own_output(n)?;
        let xq = n.xq;
        let mut op = OpRecord::plain(OpKind::GlobalAvgPool, n.xt, yt);
        if yq != xq || self.tensors[yt as usize].dtype != n.x_dtype {
            let pixels = (n.in_shape[2] * n.in_shape[3]) as f64;
            let (m, s) = quantize_multiplier(xq.scale as f64 / (pixels * yq.scale as f64));
            let bias = -(pixels as i64 * xq.zero_point as i64) as i32;
            op.params = vec![(bias, m, s)];
        }
        Ok(op)
    }

    fn reshape(&mut self, n: &At<'_>) -> Result<OpRecord, LowerError> {
        // NHWC and NCHW orders agree only when there is one pixel.
        if n.in_shape.len() == 4 && n.in_shape[2] * n.in_shape[3] != 1 {
            return Err(unsupported(
                n.node,
                "Reshape",
                "flattening a feature map larger than 1×1",
            ));
        }
        let yt = self.moved_output(n);
        self.shares.insert(yt, n.xt);
        Ok(OpRecord::plain(OpKind::Reshape, n.xt, yt))
    }

    fn slice(&mut self, n: &At<'_>, s: &Slice) -> Result<OpRecord, LowerError> {
        let in_shape = n.in_shape;
        if in_shape.len() != 4
            || s.start[..2] != [0, 0]
            || s.step[..2] != [1, 1]
            || self.graph.values[n.node.output].shape[1] != in_shape[1]
        {
            return Err(unsupported(
                n.node,
                "Slice",
                "only strided slicing of height and width",
            ));
        }
        let yt = self.moved_output(n);
        let mut op = OpRecord::plain(OpKind::Subsample, n.xt, yt);
        op.stride = [small(n.node, s.step[2])?, small(n.node, s.step[3])?];
        op.aux = [s.start[2] as u16, s.start[3] as u16];
        Ok(op)
    }

    fn pad_channels(&mut self, n: &At<'_>, p: &Pad) -> Result<OpRecord, LowerError> {
        let only_channels = p.pads.len() == 4
            && p.pads
                .iter()
                .enumerate()
                .all(|(a, &(b, e))| a == 1 || (b, e) == (0, 0));
        if !only_channels || p.value != 0.0 {
            return Err(unsupported(
                n.node,
                "Pad",
                "only zero padding of the channel axis",
            ));
        }
        let yt = self.moved_output(n);
        let mut op = OpRecord::plain(OpKind::PadChannels, n.xt, yt);
        op.aux = [p.pads[1].0 as u16, p.pads[1].1 as u16];
        Ok(op)
    }

    fn channel_affine(&mut self, n: &At<'_>, a: &ChannelAffine) -> Result<OpRecord, LowerError> {
        self.int8_only(n, "ChannelAffine")?;
        let yq = self.own_quant(n.node.output)?;
        let channels = a.scale.len();
        // One weight per channel: its own scale makes it ±127, so only the offset and the
        // requantisation round.
        let (weights, scales) = quantize_weights(&a.scale, channels);
        let params = channel_params(&weights, &scales, Some(&a.offset), n.xq, yq.scale, channels);
        let yt = self.output(n.node.output, DType::I8, yq);
        let mut op = OpRecord::plain(OpKind::ChannelAffine, n.xt, yt);
        op.out_min = if a.relu { yq.zero_point as i8 } else { i8::MIN };
        op.weights = weights;
        op.params = params;
        Ok(op)
    }

    fn add(&mut self, n: &At<'_>, relu: bool) -> Result<OpRecord, LowerError> {
        self.int8_only(n, "Add")?;
        let b = n.node.inputs[1];
        let (bq, bt) = (self.quant[&b], self.tensor_of_value[&b]);
        let yq = self.own_quant(n.node.output)?;
        let yt = self.output(n.node.output, DType::I8, yq);
        let (ma, sa) = quantize_multiplier(n.xq.scale as f64 / yq.scale as f64);
        let (mb, sb) = quantize_multiplier(bq.scale as f64 / yq.scale as f64);
        let mut op = OpRecord::plain(OpKind::Add, n.xt, yt);
        op.residual = Some(Residual {
            tensor: bt,
            multiplier: mb,
            shift: sb,
        });
        op.params = vec![(0, ma, sa)];
        op.out_min = if relu { yq.zero_point as i8 } else { i8::MIN };
        Ok(op)
    }

    /// The memory plan, and the model.
    fn finish(
        mut self,
        pre: &Preprocess,
        labels: Vec<String>,
        metadata: Vec<(String, String)>,
    ) -> Lowered {
        let input = self.tensor_of_value[&self.graph.input];
        let placement = plan_memory(&self.tensors, &self.ops, &self.shares, input);
        for (t, off) in self.tensors.iter_mut().zip(&placement.offsets) {
            t.offset = *off as u32;
        }
        let model = KesModel {
            tensors: self.tensors,
            ops: self.ops,
            input,
            output: self.tensor_of_value[&self.graph.output],
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
        Lowered {
            model,
            tensor_of_value: self.tensor_of_value,
        }
    }
}

/// A window op's kernel, stride and pads, each of which the file holds in a byte.
fn window(
    node: &Node,
    op: &mut OpRecord,
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
) -> Result<(), LowerError> {
    op.kernel = [small(node, kernel[0])?, small(node, kernel[1])?];
    op.stride = [small(node, stride[0])?, small(node, stride[1])?];
    op.pads = [
        small(node, pads[0])?,
        small(node, pads[1])?,
        small(node, pads[2])?,
        small(node, pads[3])?,
    ];
    Ok(())
}

fn small(node: &Node, v: usize) -> Result<u8, LowerError> {
    u8::try_from(v).map_err(|_| unsupported(node, node.op.kind(), "window parameter above 255"))
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

pub(crate) fn plan_memory(
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
