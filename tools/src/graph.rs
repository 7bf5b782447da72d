//! Kestrel's own float graph: what an imported ONNX ResNet becomes, what the
//! folding/fusion passes rewrite and what the float reference executes.
//!
//! Tensors are NCHW with batch 1 (`[1, C, H, W]` feature maps, `[1, K]` vectors),
//! as in the ONNX file, so the reference can be compared with tract value for value.
//! Weights live inside the ops: after import there are no "constant" values left.

use std::collections::BTreeMap;

/// Index of a value (an activation tensor) in [`Graph::values`].
pub type ValueId = usize;

#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// The quantisation an already-quantised model (QDQ) states for this value.
    pub quant: Option<StatedQuant>,
}

/// A scale and zero point read from a `QuantizeLinear`/`DequantizeLinear` pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatedQuant {
    pub scale: f32,
    /// In the model's own integer type (`0..=255` when `unsigned`).
    pub zero_point: i32,
    /// uint8 in the model; Kestrel stores every activation as int8 (same scale, zero point − 128).
    pub unsigned: bool,
}

impl StatedQuant {
    /// The zero point once the value is stored as int8.
    pub fn int8_zero_point(&self) -> i32 {
        if self.unsigned {
            self.zero_point - 128
        } else {
            self.zero_point
        }
    }

    /// `DequantizeLinear(QuantizeLinear(x))`: rounding half to even, saturating as ONNX says.
    pub fn fake_quant(&self, x: f32) -> f32 {
        let (lo, hi) = if self.unsigned {
            (0.0, 255.0)
        } else {
            (-128.0, 127.0)
        };
        let q = ((x / self.scale).round_ties_even() + self.zero_point as f32).clamp(lo, hi);
        (q - self.zero_point as f32) * self.scale
    }
}

impl ValueInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
pub struct Graph {
    pub values: Vec<ValueInfo>,
    /// In execution order: every node's inputs are produced by earlier nodes or are the graph input.
    pub nodes: Vec<Node>,
    pub input: ValueId,
    pub output: ValueId,
    /// The ONNX `metadata_props` (preprocessing, labels, provenance).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Node {
    /// The ONNX node name (or its output's name when the node had none).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
}

#[derive(Clone, Debug)]
pub enum Op {
    Conv(Conv),
    BatchNorm(BatchNorm),
    Relu,
    /// Elementwise sum of two tensors of the same shape; `relu` once a following ReLU is fused.
    Add {
        relu: bool,
    },
    MaxPool(Pool),
    AvgPool(Pool),
    GlobalAvgPool,
    /// Flatten or Reshape: the data is unchanged, only the recorded shape differs.
    Reshape,
    /// Gemm or MatMul against constant weights: `y = x · Wᵀ + b`.
    Dense(Dense),
    /// Strided slice on any axes (the CIFAR option-A shortcut's `x[:, :, ::2, ::2]`).
    Slice(Slice),
    /// Constant padding (the option-A shortcut's zero channels).
    Pad(Pad),
    /// Per-channel `x · scale + offset`: a BatchNorm that no conv before it absorbs.
    ChannelAffine(ChannelAffine),
}

impl Op {
    /// The ONNX-like name of the op, for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::BatchNorm(_) => "BatchNormalization",
            Op::Relu => "Relu",
            Op::Add { .. } => "Add",
            Op::MaxPool(_) => "MaxPool",
            Op::AvgPool(_) => "AveragePool",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::Reshape => "Reshape",
            Op::Dense(_) => "Dense",
            Op::Slice(_) => "Slice",
            Op::Pad(_) => "Pad",
            Op::ChannelAffine(_) => "ChannelAffine",
        }
    }

    /// Number of learned parameters the op holds (weights, biases, BN scale/bias/mean/var).
    pub fn param_count(&self) -> usize {
        match self {
            Op::Conv(c) => c.weight.len() + c.bias.as_ref().map_or(0, Vec::len),
            Op::Dense(d) => d.weight.len() + d.bias.as_ref().map_or(0, Vec::len),
            Op::BatchNorm(b) => 4 * b.scale.len(),
            Op::ChannelAffine(a) => 2 * a.scale.len(),
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Conv {
    /// `[out_channels, in_channels, kernel_h, kernel_w]`, row-major.
    pub weight: Vec<f32>,
    pub weight_shape: [usize; 4],
    pub bias: Option<Vec<f32>>,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// The block's residual Add is fused: the node's second input is added before the ReLU.
    pub fused_add: bool,
    pub relu: bool,
}

impl Conv {
    pub fn out_channels(&self) -> usize {
        self.weight_shape[0]
    }
    pub fn in_channels(&self) -> usize {
        self.weight_shape[1]
    }
    pub fn kernel(&self) -> [usize; 2] {
        [self.weight_shape[2], self.weight_shape[3]]
    }
}

#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub scale: Vec<f32>,
    pub bias: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub epsilon: f32,
}

impl BatchNorm {
    /// Per-channel `(multiplier, offset)` such that `bn(x) = x * multiplier + offset`.
    ///
    /// Computed in f64 so that folding adds no error beyond the final f32 rounding.
    pub fn affine(&self) -> Vec<(f64, f64)> {
        (0..self.scale.len())
            .map(|c| {
                let inv_std = 1.0 / (self.var[c] as f64 + self.epsilon as f64).sqrt();
                let m = self.scale[c] as f64 * inv_std;
                (m, self.bias[c] as f64 - self.mean[c] as f64 * m)
            })
            .collect()
    }
}

/// What a BatchNorm becomes when it cannot fold into a conv: the pre-activation BatchNorm of
/// ResNet v2 reads a residual sum that the shortcut reads too.
#[derive(Clone, Debug)]
pub struct ChannelAffine {
    pub scale: Vec<f32>,
    pub offset: Vec<f32>,
    pub relu: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
    /// AveragePool only: whether padded cells count in the divisor.
    pub count_include_pad: bool,
}

#[derive(Clone, Debug)]
pub struct Dense {
    /// `[out_features, in_features]`, row-major.
    pub weight: Vec<f32>,
    pub out_features: usize,
    pub in_features: usize,
    pub bias: Option<Vec<f32>>,
    pub relu: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// Per axis of the input: `(start, step)`; the output shape gives the count.
    pub start: Vec<usize>,
    pub step: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Pad {
    /// Per axis of the input: `(before, after)`.
    pub pads: Vec<(usize, usize)>,
    pub value: f32,
}

impl Graph {
    /// Learned parameters over all ops.
    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| n.op.param_count()).sum()
    }

    /// Multiply-accumulates of Conv and Dense for one image (the MODELS.md convention).
    pub fn macs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| match &n.op {
                Op::Conv(c) => {
                    let out = self.values[n.output].len() as u64;
                    out * (c.in_channels() * c.kernel()[0] * c.kernel()[1]) as u64
                }
                Op::Dense(d) => (d.out_features * d.in_features) as u64,
                _ => 0,
            })
            .sum()
    }

    /// Count of nodes per op kind.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for n in &self.nodes {
            *counts.entry(n.op.kind().to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// For each value, the nodes that read it.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut consumers = vec![Vec::new(); self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                consumers[v].push(i);
            }
        }
        consumers
    }

    /// For each value, the node that writes it (`None` for the graph input).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut producers = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            producers[n.output] = Some(i);
        }
        producers
    }

    /// For each value, the index of the last node that reads it (the graph output lives to the end).
    pub fn last_use(&self) -> Vec<Option<usize>> {
        let mut last = vec![None; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last[v] = Some(i);
            }
        }
        last[self.output] = Some(self.nodes.len());
        last
    }

    /// Drops values no node reads or writes and renumbers the rest, keeping order.
    pub fn compact(&mut self) {
        let mut used = vec![false; self.values.len()];
        used[self.input] = true;
        used[self.output] = true;
        for n in &self.nodes {
            used[n.output] = true;
            for &v in &n.inputs {
                used[v] = true;
            }
        }
        let mut remap = vec![usize::MAX; self.values.len()];
        let mut values = Vec::new();
        for (old, info) in self.values.drain(..).enumerate() {
            if used[old] {
                remap[old] = values.len();
                values.push(info);
            }
        }
        self.values = values;
        self.input = remap[self.input];
        self.output = remap[self.output];
        for n in &mut self.nodes {
            n.output = remap[n.output];
            for v in &mut n.inputs {
                *v = remap[*v];
            }
        }
    }
}
