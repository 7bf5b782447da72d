//! Typed, validated views of a `.kes` file's model sections.
//!
//! All tensors are NHWC with four dims (`[1, 1, 1, C]` for vectors). Records have fixed
//! sizes so a parser on a microcontroller needs no allocation. Every check the runtime
//! relies on for memory safety (indices, shapes, weight ranges, arena ranges, disjoint
//! input and output buffers) happens here, once, in [`KesFile::parse`].

use crate::container::{parse_container, SectionKind};
use crate::reader::Reader;
use crate::FormatError;
use kestrel_kernels::conv::Packing;
use kestrel_kernels::stream::StreamedPool;
use kestrel_kernels::window::Window;

pub const TENSOR_RECORD_LEN: usize = 32;
pub const OP_RECORD_LEN: usize = 64;
/// Per output channel: bias (i32), requantisation multiplier (i32), shift (i32).
pub const CHANNEL_PARAMS_LEN: usize = kestrel_kernels::conv::params::RECORD_BYTES;
const NO_TENSOR: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    I8 = 0,
    /// Dequantised outputs (the logits' accumulators, requantised to one common scale).
    I32 = 1,
    /// A layer kept wider: int16 activations (symmetric, zero point 0) with int8 weights,
    /// TFLite's "16x8".
    I16 = 2,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::I32 => 4,
            DType::I16 => 2,
        }
    }

    /// The int8 or int16 activation types (not the int32 logits).
    pub fn is_activation(self) -> bool {
        matches!(self, DType::I8 | DType::I16)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    /// `[N, H, W, C]`.
    pub dims: [u32; 4],
    /// `real = scale × (q − zero_point)`.
    pub scale: f32,
    pub zero_point: i32,
    /// Byte offset in the arena.
    pub offset: u32,
}

impl TensorInfo {
    pub fn elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
    pub fn bytes(&self) -> usize {
        self.elements() * self.dtype.size()
    }
    fn range(&self) -> (usize, usize) {
        (self.offset as usize, self.offset as usize + self.bytes())
    }
    fn same_quant(&self, other: &TensorInfo) -> bool {
        self.scale.to_bits() == other.scale.to_bits() && self.zero_point == other.zero_point
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Convolution; with a residual tensor, the block's Add (and its ReLU) is fused in.
    Conv = 1,
    MaxPool = 2,
    AvgPool = 3,
    GlobalAvgPool = 4,
    /// Fully connected layer (weights `[N, K]`).
    Dense = 5,
    /// Strided subsampling of H and W (the option-A shortcut's `x[:, :, ::2, ::2]`).
    Subsample = 6,
    /// Zero channels before and after (the option-A shortcut's channel padding).
    PadChannels = 7,
    /// Same bytes, another shape (Flatten after global pooling); output aliases input.
    Reshape = 8,
    /// Per-channel multiply-add (weights `[C]`, one parameter record per channel): a
    /// BatchNorm no convolution absorbs, as in pre-activation ResNet v2.
    ChannelAffine = 9,
    /// Elementwise sum of the input and the `residual` tensor, rounded once onto the output
    /// scale (one parameter record: the input's multiplier and shift; the residual's in
    /// its own fields): a residual Add a quantised model rounds apart from its conv.
    Add = 10,
    /// A stem's conv streamed into the max pooling after it, a band of pooled rows at a
    /// time ([`kestrel_kernels::stream`]): the conv's record, the pool's window in
    /// [`OpView::pool`]; the conv's map is never stored whole. The band lies at the front
    /// of the op's scratch, a packed conv's panels after it.
    ConvMaxPool = 11,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        use OpKind::*;
        [
            Conv,
            MaxPool,
            AvgPool,
            GlobalAvgPool,
            Dense,
            Subsample,
            PadChannels,
            Reshape,
            ChannelAffine,
            Add,
            ConvMaxPool,
        ]
        .into_iter()
        .find(|k| *k as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv => "conv",
            OpKind::MaxPool => "max_pool",
            OpKind::AvgPool => "avg_pool",
            OpKind::GlobalAvgPool => "global_avg_pool",
            OpKind::Dense => "dense",
            OpKind::Subsample => "subsample",
            OpKind::PadChannels => "pad_channels",
            OpKind::Reshape => "reshape",
            OpKind::ChannelAffine => "channel_affine",
            OpKind::Add => "add",
            OpKind::ConvMaxPool => "conv_max_pool",
        }
    }
}

/// How a conv's weights are laid out in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[KH][KW][IC][OC]`: what the scalar reference reads (`--target generic`).
    Portable = 0,
    /// `kestrel_kernels::conv::layout::blocks4`: 4-channel blocks of 16-byte reduction chunks, plus
    /// channel sums (`--target rpi4`: the Cortex-A72 kernel).
    Blocks4 = 1,
    /// `kestrel_kernels::conv::layout::lanes16`: 16-channel lanes of four reduction steps, plus
    /// channel sums (`--target rpi5|jetson-orin|x86-64`: `sdot` by element, VNNI, AVX2).
    Lanes16 = 2,
    /// A layer kept wider: `[KH][KW][IC][OC]` (dense `[N][K]`) IEEE half floats, little
    /// endian, computed in f32 by the 16x8 reference kernels. Its channel records hold
    /// `(f32 bias, f32 requantisation scale, 0)` bit patterns instead of fixed point.
    F16 = 3,
    /// `kestrel_kernels::conv::layout::pairs4`: the blocks of `Blocks4` as int16 pairs,
    /// plus channel sums (`--target cortex-m4`: the Cortex-M DSP's `SMLAD` operands).
    Pairs4 = 4,
}

impl WeightLayout {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(WeightLayout::Portable),
            1 => Some(WeightLayout::Blocks4),
            2 => Some(WeightLayout::Lanes16),
            3 => Some(WeightLayout::F16),
            4 => Some(WeightLayout::Pairs4),
            _ => None,
        }
    }

    /// The kernels' packing, for packed layouts.
    pub fn packing(self) -> Option<Packing> {
        match self {
            WeightLayout::Portable | WeightLayout::F16 => None,
            WeightLayout::Blocks4 => Some(Packing::Blocks4),
            WeightLayout::Lanes16 => Some(Packing::Lanes16),
            WeightLayout::Pairs4 => Some(Packing::Pairs4),
        }
    }

    /// The name `kestrel inspect` shows.
    pub fn name(self) -> &'static str {
        match self {
            WeightLayout::Portable => "portable",
            WeightLayout::Blocks4 => "blocks4",
            WeightLayout::Lanes16 => "lanes16",
            WeightLayout::F16 => "f16",
            WeightLayout::Pairs4 => "pairs4",
        }
    }
}

/// The residual operand of a fused conv: how to bring it to the output scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Residual {
    pub tensor: u32,
    pub multiplier: i32,
    pub shift: i32,
}

/// The max pooling of a streamed stem ([`OpKind::ConvMaxPool`]). The record holds its
/// window where a residual's multiplier and shift would be (pads, then kernel and
/// stride, a byte each) and the pooled rows per band in `aux[0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    pub kernel: [u8; 2],
    pub stride: [u8; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [u8; 4],
    pub band_rows: u16,
}

impl PoolWindow {
    /// The record fields that hold it: (residual multiplier, residual shift, aux).
    pub fn encode(&self) -> (i32, i32, [u16; 2]) {
        let [k0, k1] = self.kernel;
        let [s0, s1] = self.stride;
        (
            i32::from_le_bytes(self.pads),
            i32::from_le_bytes([k0, k1, s0, s1]),
            [self.band_rows, 0],
        )
    }

    fn decode(multiplier: i32, shift: i32, aux: [u16; 2]) -> Option<Self> {
        let [k0, k1, s0, s1] = shift.to_le_bytes();
        (aux[1] == 0).then_some(PoolWindow {
            kernel: [k0, k1],
            stride: [s0, s1],
            pads: multiplier.to_le_bytes(),
            band_rows: aux[0],
        })
    }

    /// The stem's conv (`kernel`, `stride`, `pads`) over an `[1, H, W, C]` input into `oc`
    /// channels, and this pool over the conv's map; `None` if a window does not fit.
    pub fn streamed(
        &self,
        input: [u32; 4],
        oc: usize,
        conv: ([u8; 2], [u8; 2], [u8; 4]),
    ) -> Option<StreamedPool> {
        let [_, h, w, c] = input.map(|d| d as usize);
        let conv = window_over([h, w, c], oc, conv.0, conv.1, conv.2)?;
        let pool = window_over(
            [conv.out_h, conv.out_w, oc],
            oc,
            self.kernel,
            self.stride,
            self.pads,
        )?;
        Some(StreamedPool {
            conv,
            pool,
            band_rows: self.band_rows as usize,
        })
    }
}

/// The window of `kernel`, `stride` and `pads` over an `[H, W, C]` map into `oc`
/// channels, or `None` for a zero kernel or stride or a window larger than the padded map.
fn window_over(
    [h, w, c]: [usize; 3],
    oc: usize,
    kernel: [u8; 2],
    stride: [u8; 2],
    pads: [u8; 4],
) -> Option<Window> {
    let (kernel, stride, pads) = (
        kernel.map(usize::from),
        stride.map(usize::from),
        pads.map(usize::from),
    );
    let out = |size: usize, k: usize, s: usize, lo: usize, hi: usize| {
        let padded = size + lo + hi;
        (k > 0 && s > 0 && padded >= k).then(|| (padded - k) / s + 1)
    };
    Some(Window {
        in_h: h,
        in_w: w,
        in_c: c,
        out_h: out(h, kernel[0], stride[0], pads[0], pads[2])?,
        out_w: out(w, kernel[1], stride[1], pads[1], pads[3])?,
        out_c: oc,
        kernel,
        stride,
        pads,
    })
}

/// One op, decoded. Weight and parameter slices point into the file.
#[derive(Clone, Copy, Debug)]
pub struct OpView<'a> {
    pub kind: OpKind,
    pub input: u32,
    pub output: u32,
    pub residual: Option<Residual>,
    pub kernel: [u8; 2],
    pub stride: [u8; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [u8; 4],
    pub count_include_pad: bool,
    /// Output clamp (the fused ReLU raises `out_min` to the output zero point). On an int16
    /// output, `i8::MIN` and `i8::MAX` stand for the int16 limits.
    pub out_min: i8,
    pub out_max: i8,
    /// Subsample: start row/column. PadChannels: channels before/after.
    pub aux: [u16; 2],
    /// Conv `[KH][KW][IC][OC]` or packed (see `layout`), Dense `[N][K]`.
    pub weights: &'a [i8],
    pub layout: WeightLayout,
    pub params: ChannelParams<'a>,
    /// A packed conv's own scratch: arena bytes dead while it runs, which the planner lent
    /// it. `None`: the plan's shared scratch.
    pub scratch: Option<OpScratch>,
    /// A streamed stem's max pooling ([`OpKind::ConvMaxPool`] only).
    pub pool: Option<PoolWindow>,
}

impl OpView<'_> {
    /// A streamed stem's conv and pool windows over its input `x` into its output `y`.
    pub fn streamed(&self, x: &TensorInfo, y: &TensorInfo) -> Option<StreamedPool> {
        self.pool?.streamed(
            x.dims,
            y.dims[3] as usize,
            (self.kernel, self.stride, self.pads),
        )
    }
}

/// Arena bytes `offset .. offset + bytes` a packed conv packs its input into while it
/// runs (apart from its operands; other tensors there are dead at that step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpScratch {
    pub offset: u32,
    pub bytes: u32,
}

impl OpScratch {
    fn range(&self) -> (usize, usize) {
        (
            self.offset as usize,
            self.offset as usize + self.bytes as usize,
        )
    }
}

/// Per-output-channel `(bias, multiplier, shift)` records, read without alignment needs.
#[derive(Clone, Copy, Debug)]
pub struct ChannelParams<'a> {
    bytes: &'a [u8],
}

impl<'a> ChannelParams<'a> {
    pub fn len(&self) -> usize {
        self.bytes.len() / CHANNEL_PARAMS_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// The raw records: little-endian `i32` bias, multiplier, shift per channel.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// `(bias, multiplier, shift)` of channel `c` (`c < len()`).
    #[inline]
    pub fn get(&self, c: usize) -> (i32, i32, i32) {
        kestrel_kernels::conv::params::record(self.bytes, c)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub arena_bytes: u64,
    /// The largest sum of live tensor bytes at any step (scratch included).
    pub lower_bound_bytes: u64,
    /// Where the kernels' scratch (packed input panels) lies in the arena; no tensor
    /// overlaps it. Zero bytes when every conv uses the portable layout.
    pub scratch_offset: u64,
    pub scratch_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreprocessInfo {
    /// `[height, width]` of the model input.
    pub size: [u32; 2],
    /// 0 nearest, 1 bilinear.
    pub resize: u8,
    /// 0 RGB, 1 BGR.
    pub channel_order: u8,
    /// Resize the shorter side to this, then centre-crop (0: resize straight to `size`).
    pub resize_shorter: u32,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const PREPROCESS_LEN: usize = 48;

/// A parsed, fully checked `.kes` file borrowing the bytes it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct KesFile<'a> {
    tensors: &'a [u8],
    ops: &'a [u8],
    weights: &'a [u8],
    labels: &'a [u8],
    label_count: u32,
    metadata: &'a [u8],
    metadata_count: u32,
    pub input: u32,
    pub output: u32,
    pub plan: Plan,
    pub preprocess: PreprocessInfo,
}

impl<'a> KesFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let sections = parse_container(bytes)?;
        let (tensors, _) = sections.get(SectionKind::Tensors)?;
        let (graph, _) = sections.get(SectionKind::Graph)?;
        let (weights, _) = sections.get(SectionKind::Weights)?;
        let (plan, _) = sections.get(SectionKind::Plan)?;
        let (pre, pre_base) = sections.get(SectionKind::Preprocess)?;
        let (labels, _) = sections.get(SectionKind::Labels)?;
        let (metadata, _) = sections.get(SectionKind::Metadata)?;

        let plan = parse_plan(plan)?;
        let preprocess = parse_preprocess(pre, pre_base)?;

        let kind = SectionKind::Tensors as u32;
        let mut r = Reader::new(tensors, kind);
        let tensor_count = r.u32()?;
        r.zeros(4, 0)?;
        let tensor_bytes = r.take(tensor_count as usize * TENSOR_RECORD_LEN)?;
        if r.remaining() != 0 {
            return Err(FormatError::SectionTruncated { kind });
        }

        let kind = SectionKind::Graph as u32;
        let mut r = Reader::new(graph, kind);
        let input = r.u32()?;
        let output = r.u32()?;
        let op_count = r.u32()?;
        r.zeros(4, 0)?;
        let ops = r.take(op_count as usize * OP_RECORD_LEN)?;
        if r.remaining() != 0 {
            return Err(FormatError::SectionTruncated { kind });
        }

        let (label_count, metadata_count) = (
            count_strings(labels, SectionKind::Labels, false)?,
            count_strings(metadata, SectionKind::Metadata, true)?,
        );
        let file = KesFile {
            tensors: tensor_bytes,
            ops,
            weights,
            labels,
            label_count,
            metadata,
            metadata_count,
            input,
            output,
            plan,
            preprocess,
        };
        for t in 0..tensor_count {
            file.check_tensor(t)?;
        }
        let input_info = file.tensor(input).ok_or(FormatError::BadPlan {
            reason: "input tensor index out of range",
        })?;
        let output_info = file.tensor(output).ok_or(FormatError::BadPlan {
            reason: "output tensor index out of range",
        })?;
        if !input_info.dtype.is_activation() || input_info.dims[0] != 1 || input_info.dims[3] != 3 {
            return Err(FormatError::BadTensor {
                tensor: input,
                reason: "the input must be an int8 or int16 [1, H, W, 3] image",
            });
        }
        if [input_info.dims[1], input_info.dims[2]] != preprocess.size {
            return Err(FormatError::BadTensor {
                tensor: input,
                reason: "input size differs from the preprocessing size",
            });
        }
        if output_info.dims[..3] != [1, 1, 1] {
            return Err(FormatError::BadTensor {
                tensor: output,
                reason: "the output must be a [1, 1, 1, N] vector",
            });
        }
        if label_count != 0 && label_count != output_info.dims[3] {
            return Err(FormatError::BadPlan {
                reason: "label count differs from the number of outputs",
            });
        }
        let mut output_written = input == output;
        for i in 0..op_count {
            let op = file.decode_op(i)?;
            file.check_op(i, &op)?;
            output_written |= op.output == output;
        }
        if !output_written {
            return Err(FormatError::BadPlan {
                reason: "no op writes the output tensor",
            });
        }
        Ok(file)
    }

    pub fn tensor_count(&self) -> u32 {
        (self.tensors.len() / TENSOR_RECORD_LEN) as u32
    }

    pub fn op_count(&self) -> u32 {
        (self.ops.len() / OP_RECORD_LEN) as u32
    }

    pub fn weights_bytes(&self) -> usize {
        self.weights.len()
    }

    /// Tensor `index`, or `None` past the end.
    pub fn tensor(&self, index: u32) -> Option<TensorInfo> {
        let rec = self
            .tensors
            .get(index as usize * TENSOR_RECORD_LEN..(index as usize + 1) * TENSOR_RECORD_LEN)?;
        let mut r = Reader::new(rec, SectionKind::Tensors as u32);
        let dtype = match r.u8().ok()? {
            0 => DType::I8,
            1 => DType::I32,
            2 => DType::I16,
            _ => return None,
        };
        r.take(3).ok()?;
        let dims = [r.u32().ok()?, r.u32().ok()?, r.u32().ok()?, r.u32().ok()?];
        Some(TensorInfo {
            dtype,
            dims,
            scale: r.f32().ok()?,
            zero_point: r.i32().ok()?,
            offset: r.u32().ok()?,
        })
    }

    /// Op `index` (already validated by `parse`), or `None` past the end.
    pub fn op(&self, index: u32) -> Option<OpView<'a>> {
        self.decode_op(index).ok()
    }

    pub fn label_count(&self) -> u32 {
        self.label_count
    }

    /// Label `index` (validated UTF-8).
    pub fn label(&self, index: u32) -> Option<&'a str> {
        strings(self.labels, self.label_count, false)
            .nth(index as usize)
            .map(|(s, _)| s)
    }

    /// The metadata key/value pairs (source model SHA-256, calibration, tool version, …).
    pub fn metadata(&self) -> Metadata<'a> {
        Metadata {
            inner: strings(self.metadata, self.metadata_count, true),
        }
    }

    fn check_tensor(&self, t: u32) -> Result<(), FormatError> {
        let bad = |reason| FormatError::BadTensor { tensor: t, reason };
        let rec = &self.tensors[t as usize * TENSOR_RECORD_LEN..][..TENSOR_RECORD_LEN];
        if rec[1..4] != [0, 0, 0] {
            return Err(bad("reserved bytes are not zero"));
        }
        let info = self.tensor(t).ok_or(bad("unknown element type"))?;
        if info.dims.contains(&0) || info.dims[0] != 1 {
            return Err(bad("a dimension is zero or the batch is not 1"));
        }
        let bytes = info
            .dims
            .iter()
            .try_fold(info.dtype.size() as u64, |acc, &d| {
                acc.checked_mul(d as u64)
            });
        let end = bytes.and_then(|b| b.checked_add(info.offset as u64));
        if end.is_none_or(|e| e > self.plan.arena_bytes) {
            return Err(bad("does not fit in the arena"));
        }
        let scratch = (
            self.plan.scratch_offset,
            self.plan.scratch_offset + self.plan.scratch_bytes,
        );
        if let Some(end) = end {
            if (info.offset as u64) < scratch.1 && scratch.0 < end {
                return Err(bad("overlaps the kernels' scratch"));
            }
        }
        if !(info.scale.is_finite() && info.scale > 0.0) {
            return Err(bad("scale is not a positive finite number"));
        }
        if info.dtype == DType::I8 && !(-128..=127).contains(&info.zero_point)
            || info.dtype != DType::I8 && info.zero_point != 0
        {
            return Err(bad("zero point out of range"));
        }
        Ok(())
    }

    fn decode_op(&self, i: u32) -> Result<OpView<'a>, FormatError> {
        let bad = |reason| FormatError::BadOp { op: i, reason };
        let rec = self
            .ops
            .get(i as usize * OP_RECORD_LEN..(i as usize + 1) * OP_RECORD_LEN)
            .ok_or(bad("index out of range"))?;
        let mut r = Reader::new(rec, SectionKind::Graph as u32);
        let kind = OpKind::from_u8(r.u8()?).ok_or(bad("unknown op kind"))?;
        let flags = r.u8()?;
        if flags & !0b11 != 0 {
            return Err(bad("unknown flags"));
        }
        r.zeros(2, 0)
            .map_err(|_| bad("reserved bytes are not zero"))?;
        let input = r.u32()?;
        let residual_tensor = r.u32()?;
        let output = r.u32()?;
        let kernel = [r.u8()?, r.u8()?];
        let stride = [r.u8()?, r.u8()?];
        let pads = [r.u8()?, r.u8()?, r.u8()?, r.u8()?];
        let (w_off, w_len, p_off, p_len) = (
            r.u32()? as usize,
            r.u32()? as usize,
            r.u32()? as usize,
            r.u32()? as usize,
        );
        let (res_mult, res_shift) = (r.i32()?, r.i32()?);
        let (out_min, out_max) = (r.i8()?, r.i8()?);
        let aux = [r.u16()?, r.u16()?];
        let layout = WeightLayout::from_u8(r.u8()?).ok_or(bad("unknown weight layout"))?;
        let (scratch_offset, scratch_bytes) = (r.u32()?, r.u32()?);
        r.zeros(1, 0)
            .map_err(|_| bad("reserved bytes are not zero"))?;
        if scratch_bytes == 0 && scratch_offset != 0 {
            return Err(bad("scratch offset without scratch bytes"));
        }
        let scratch = (scratch_bytes > 0).then_some(OpScratch {
            offset: scratch_offset,
            bytes: scratch_bytes,
        });
        let range = |off: usize, len: usize| {
            off.checked_add(len)
                .and_then(|end| self.weights.get(off..end))
        };
        let weights = range(w_off, w_len).ok_or(bad("weights lie outside the weights section"))?;
        let params =
            range(p_off, p_len).ok_or(bad("parameters lie outside the weights section"))?;
        if p_len % CHANNEL_PARAMS_LEN != 0 {
            return Err(bad("parameter block is not a whole number of channels"));
        }
        let has_residual = flags & 1 != 0;
        if has_residual != (residual_tensor != NO_TENSOR) {
            return Err(bad("residual flag and residual tensor disagree"));
        }
        let pool = match kind {
            OpKind::ConvMaxPool if has_residual => {
                return Err(bad("a streamed stem takes no residual"))
            }
            OpKind::ConvMaxPool => Some(
                PoolWindow::decode(res_mult, res_shift, aux)
                    .ok_or(bad("a streamed stem's second aux field is not zero"))?,
            ),
            _ => None,
        };
        // SAFETY: i8 and u8 have the same size and alignment; the slice stays in bounds.
        let weights =
            unsafe { core::slice::from_raw_parts(weights.as_ptr() as *const i8, weights.len()) };
        Ok(OpView {
            kind,
            input,
            output,
            residual: has_residual.then_some(Residual {
                tensor: residual_tensor,
                multiplier: res_mult,
                shift: res_shift,
            }),
            kernel,
            stride,
            pads,
            count_include_pad: flags & 2 != 0,
            out_min,
            out_max,
            aux,
            weights,
            layout,
            params: ChannelParams { bytes: params },
            scratch,
            pool,
        })
    }

    /// Is tensor `t` the graph input or written by an op before `before`?
    fn defined_before(&self, t: u32, before: u32) -> bool {
        t == self.input || (0..before).any(|j| self.decode_op(j).is_ok_and(|op| op.output == t))
    }

    /// Op `i` against the file, one concern at a time. The order is the order the checks
    /// have always fired in: an op wrong in two ways is named by the first.
    fn check_op(&self, i: u32, op: &OpView) -> Result<(), FormatError> {
        let check = OpCheck::operands(self, i, op)?;
        check.types_allowed()?;
        check.input_apart_from_output()?;
        check.carried_allowed()?;
        match op.kind {
            OpKind::Conv | OpKind::Dense => check.conv_or_dense()?,
            OpKind::ConvMaxPool => check.conv_max_pool()?,
            OpKind::ChannelAffine => check.channel_affine()?,
            OpKind::Add => check.add()?,
            OpKind::MaxPool | OpKind::AvgPool => check.pool()?,
            OpKind::GlobalAvgPool => check.global_pool()?,
            OpKind::Subsample => check.subsample()?,
            OpKind::PadChannels => check.pad_channels()?,
            OpKind::Reshape => check.reshape()?,
        }
        check.quantisation_kept()
    }
}

/// One op under `KesFile::check_op`: its index (every error names it), its record, and
/// its input and output tensors, looked up once.
struct OpCheck<'c> {
    file: &'c KesFile<'c>,
    i: u32,
    op: &'c OpView<'c>,
    x: TensorInfo,
    y: TensorInfo,
}

impl<'c> OpCheck<'c> {
    /// The operands: both indices in range, the input the graph input or an earlier op's
    /// output, the output written by no other op, the input int8 or int16.
    fn operands(file: &'c KesFile<'c>, i: u32, op: &'c OpView<'c>) -> Result<Self, FormatError> {
        let bad = |reason| FormatError::BadOp { op: i, reason };
        let x = file
            .tensor(op.input)
            .ok_or(bad("input tensor index out of range"))?;
        let y = file
            .tensor(op.output)
            .ok_or(bad("output tensor index out of range"))?;
        if !file.defined_before(op.input, i) {
            return Err(bad("reads a tensor no earlier op writes"));
        }
        if op.output == file.input
            || (0..i).any(|j| file.decode_op(j).is_ok_and(|o| o.output == op.output))
        {
            return Err(bad("writes a tensor that is already written"));
        }
        if !x.dtype.is_activation() {
            return Err(bad("input is not int8 or int16"));
        }
        Ok(OpCheck { file, i, op, x, y })
    }

    fn bad(&self, reason: &'static str) -> FormatError {
        FormatError::BadOp { op: self.i, reason }
    }

    /// What the op kind allows of its tensors' types and its weights' layout (int16, f16,
    /// an int32 output), and a clamp that lets some value through.
    fn types_allowed(&self) -> Result<(), FormatError> {
        let op = self.op;
        // int16 activations: the ops the 16x8 reference kernels cover, unpacked weights.
        let wide = self.x.dtype == DType::I16 || self.y.dtype == DType::I16;
        if wide
            && (matches!(
                op.kind,
                OpKind::AvgPool | OpKind::Add | OpKind::ChannelAffine | OpKind::ConvMaxPool
            ) || op.layout.packing().is_some())
        {
            return Err(self.bad(
                "int16 tensors only go through conv, dense, max and global pooling, subsample, channel padding and reshape, with unpacked weights, unstreamed",
            ));
        }
        if op.layout == WeightLayout::F16 && !matches!(op.kind, OpKind::Conv | OpKind::Dense) {
            return Err(self.bad("only convolutions and dense layers take f16 weights"));
        }
        if op.out_min > op.out_max {
            return Err(self.bad("output clamp is empty"));
        }
        if self.y.dtype == DType::I32 && op.kind != OpKind::Dense {
            return Err(self.bad("only dense layers give int32 outputs"));
        }
        Ok(())
    }

    /// The runtime makes the input and output slices from the arena on the strength of
    /// this (they share no byte); a reshape's output is its input under another shape.
    fn input_apart_from_output(&self) -> Result<(), FormatError> {
        if self.op.kind != OpKind::Reshape && overlaps(self.x.range(), self.y.range()) {
            return Err(self.bad("input and output share arena bytes"));
        }
        Ok(())
    }

    /// What the op kind allows the record to carry: weights and parameters, packed weights,
    /// a residual.
    fn carried_allowed(&self) -> Result<(), FormatError> {
        let op = self.op;
        if !self.needs_weights()
            && (!op.weights.is_empty() || !op.params.is_empty() && !self.one_record())
        {
            return Err(self.bad("op carries weights it does not use"));
        }
        let conv = matches!(op.kind, OpKind::Conv | OpKind::ConvMaxPool);
        if !conv && op.layout.packing().is_some() {
            return Err(self.bad("only convolutions take packed weights"));
        }
        if op.scratch.is_some() && op.layout.packing().is_none() && op.kind != OpKind::ConvMaxPool {
            return Err(
                self.bad("only packed convolutions and streamed stems take a scratch of their own")
            );
        }
        if !matches!(op.kind, OpKind::Conv | OpKind::Add) && op.residual.is_some() {
            return Err(self.bad("only convolutions and adds take a residual"));
        }
        Ok(())
    }

    /// The ops with weights and one parameter record per output channel.
    fn needs_weights(&self) -> bool {
        matches!(
            self.op.kind,
            OpKind::Conv | OpKind::Dense | OpKind::ChannelAffine | OpKind::ConvMaxPool
        )
    }

    /// Global pooling may carry one parameter record (its requantisation to a scale of its
    /// own), an Add must (its input's requantisation).
    fn one_record(&self) -> bool {
        let requantized_pool = self.op.kind == OpKind::GlobalAvgPool && self.op.params.len() == 1;
        requantized_pool || self.op.kind == OpKind::Add
    }

    /// The output height and width the op's kernel and stride give over its padded input.
    fn window(&self) -> Result<(usize, usize), FormatError> {
        let (k, s, pads) = (self.op.kernel, self.op.stride, self.op.pads);
        if k.contains(&0) || s.contains(&0) {
            return Err(self.bad("zero kernel or stride"));
        }
        let [_, h, w, _] = shape(&self.x);
        let ph = h + pads[0] as usize + pads[2] as usize;
        let pw = w + pads[1] as usize + pads[3] as usize;
        if ph < k[0] as usize || pw < k[1] as usize {
            return Err(self.bad("window larger than the padded input"));
        }
        Ok((
            (ph - k[0] as usize) / s[0] as usize + 1,
            (pw - k[1] as usize) / s[1] as usize + 1,
        ))
    }

    /// Conv and dense: the output shape, then the weight and record sizes the shapes give,
    /// then packed weights, the weights' and records' values and a fused residual.
    fn conv_or_dense(&self) -> Result<(), FormatError> {
        let op = self.op;
        let [_, h, w, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        let (kh, kw) = if op.kind == OpKind::Conv {
            if self.window()? != (oh, ow) {
                return Err(self.bad("output size does not follow from kernel, stride and padding"));
            }
            (op.kernel[0] as usize, op.kernel[1] as usize)
        } else {
            if (h, w, oh, ow) != (1, 1, 1, 1) {
                return Err(self.bad("dense takes and gives vectors"));
            }
            (1, 1)
        };
        self.conv_weights(kh * kw * c, oc)?;
        if let Some(res) = op.residual {
            self.fused_residual(res)?;
        }
        Ok(())
    }

    /// A streamed stem: the conv's window, then the pool's over the conv's map, give the
    /// output; a band of at least one row, in a scratch of its own with room for the
    /// band and (packed weights) a panel; the conv's weights as a conv's.
    fn conv_max_pool(&self) -> Result<(), FormatError> {
        let op = self.op;
        let s = op.streamed(&self.x, &self.y).ok_or(
            self.bad("the stem's conv or pool window is empty or larger than its padded map"),
        )?;
        let [_, oh, ow, oc] = shape(&self.y);
        if (s.pool.out_h, s.pool.out_w) != (oh, ow) {
            return Err(self.bad("output size does not follow from the conv and pool windows"));
        }
        if (0..2)
            .any(|i| s.pool.pads[i] >= s.pool.kernel[i] || s.pool.pads[i + 2] >= s.pool.kernel[i])
        {
            return Err(self.bad("a pooling window lies wholly in the padding"));
        }
        if s.band_rows == 0 {
            return Err(self.bad("a streamed stem makes no rows per band"));
        }
        let k = s.conv.kernel[0] * s.conv.kernel[1] * s.conv.in_c;
        let panel = op.layout.packing().map_or(0, |p| p.min_scratch_len(k));
        let scratch = op
            .scratch
            .ok_or(self.bad("a streamed stem needs a scratch of its own for its band"))?;
        let least = s
            .checked_band_bytes()
            .and_then(|band| band.checked_add(panel))
            .ok_or(self.bad("a streamed stem's band overflows"))?;
        self.own_scratch(scratch, least)?;
        self.conv_weights(k, oc)
    }

    /// A conv's or dense layer's weights and records for reduction depth `k` and `oc`
    /// outputs: their sizes, packed weights, their values.
    fn conv_weights(&self, k: usize, oc: usize) -> Result<(), FormatError> {
        let op = self.op;
        let weights_len = match op.layout.packing() {
            None if op.layout == WeightLayout::F16 => 2 * oc * k,
            None => oc * k,
            Some(packing) => packing.packed_len(k, oc),
        };
        if op.weights.len() != weights_len || op.params.len() != oc {
            return Err(self.bad("weight or parameter size does not match the shapes"));
        }
        if let Some(packing) = op.layout.packing() {
            self.packed_weights(packing, k, oc)?;
        }
        self.weight_values()
    }

    /// Packed weights (`k` reduction steps, `oc` channels): the plan reserves the scratch
    /// the kernels pack the input into, and the blocks hold what the kernels assume.
    fn packed_weights(&self, packing: Packing, k: usize, oc: usize) -> Result<(), FormatError> {
        match self.op.scratch {
            // A streamed stem's scratch holds its band too: `conv_max_pool` checked it.
            _ if self.op.kind == OpKind::ConvMaxPool => {}
            None if (self.file.plan.scratch_bytes as usize) < packing.min_scratch_len(k) => {
                return Err(self.bad("the plan's scratch is too small for this packed conv"));
            }
            None => {}
            Some(s) => self.own_scratch(s, packing.min_scratch_len(k))?,
        }
        if !packing.is_consistent(self.op.weights, k, oc) {
            return Err(self
                .bad("packed weights hold -128, padding that is not zero, or wrong channel sums"));
        }
        Ok(())
    }

    /// A conv's own scratch: in the arena, big enough, and apart from every operand (the
    /// runtime makes it a slice beside theirs).
    fn own_scratch(&self, s: OpScratch, least: usize) -> Result<(), FormatError> {
        if (s.offset as u64 + s.bytes as u64) > self.file.plan.arena_bytes {
            return Err(self.bad("its scratch lies outside the arena"));
        }
        if (s.bytes as usize) < least {
            return Err(self.bad(if self.op.kind == OpKind::ConvMaxPool {
                "its scratch is too small for what it runs"
            } else {
                "its scratch is too small for this packed conv"
            }));
        }
        let residual = self
            .op
            .residual
            .and_then(|r| self.file.tensor(r.tensor))
            .map(|r| r.range());
        let operands = [Some(self.x.range()), Some(self.y.range()), residual];
        if operands.iter().flatten().any(|&r| overlaps(r, s.range())) {
            return Err(self.bad("its scratch overlaps one of its operands"));
        }
        Ok(())
    }

    /// f16 weights are finite and come with float records; the others with fixed point.
    fn weight_values(&self) -> Result<(), FormatError> {
        let op = self.op;
        if op.layout == WeightLayout::F16 {
            let finite = op
                .weights
                .chunks_exact(2)
                .all(|h| (u16::from_le_bytes([h[0] as u8, h[1] as u8]) & 0x7C00) != 0x7C00);
            if !finite {
                return Err(self.bad("f16 weights hold an infinity or NaN"));
            }
            check_float_records(&op.params).map_err(|reason| self.bad(reason))
        } else {
            check_requantisation(&op.params).map_err(|reason| self.bad(reason))
        }
    }

    /// A conv's fused Add: an earlier activation shaped like the output, either the output's
    /// own bytes (overwritten element by element) or apart from both operands.
    fn fused_residual(&self, res: Residual) -> Result<(), FormatError> {
        let (x, y) = (&self.x, &self.y);
        let r = self.residual_tensor(res)?;
        if !self.file.defined_before(res.tensor, self.i)
            || !r.dtype.is_activation()
            || r.dims != y.dims
            || y.dtype == DType::I32
        {
            return Err(
                self.bad("residual must be an earlier int8 or int16 tensor shaped like the output")
            );
        }
        if r.range() == y.range() && r.dtype != y.dtype {
            return Err(self.bad("an in-place residual must have the output's type"));
        }
        if r.range() != y.range() && overlaps(r.range(), y.range())
            || overlaps(r.range(), x.range())
        {
            return Err(self.bad("residual partially overlaps another operand"));
        }
        if !fixed_point_in_range(res.multiplier, res.shift) {
            return Err(self.bad("residual multiplier or shift out of range"));
        }
        Ok(())
    }

    /// The residual's tensor record.
    fn residual_tensor(&self, res: Residual) -> Result<TensorInfo, FormatError> {
        self.file
            .tensor(res.tensor)
            .ok_or(self.bad("residual tensor index out of range"))
    }

    /// Per-channel multiply-add: the int8 input's shape, one weight and record per channel.
    fn channel_affine(&self) -> Result<(), FormatError> {
        let [_, h, w, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        if (oh, ow, oc) != (h, w, c) || self.y.dtype != DType::I8 {
            return Err(self.bad("channel affine keeps the int8 input's shape"));
        }
        if self.op.weights.len() != c || self.op.params.len() != c {
            return Err(self.bad("weight or parameter size does not match the channels"));
        }
        check_requantisation(&self.op.params).map_err(|reason| self.bad(reason))
    }

    /// Add: two earlier int8 tensors of the output's shape, the second apart from the
    /// output, and each operand's requantisation.
    fn add(&self) -> Result<(), FormatError> {
        let (op, x, y) = (self.op, &self.x, &self.y);
        let res = op
            .residual
            .ok_or(self.bad("an add needs its second operand"))?;
        let r = self.residual_tensor(res)?;
        if !self.file.defined_before(res.tensor, self.i)
            || r.dtype != DType::I8
            || r.dims != x.dims
            || y.dims != x.dims
            || y.dtype != DType::I8
        {
            return Err(self.bad("add takes two earlier int8 tensors of the output's shape"));
        }
        if overlaps(r.range(), y.range()) {
            return Err(self.bad("add's second operand overlaps its output"));
        }
        if op.params.len() != 1 || !fixed_point_in_range(res.multiplier, res.shift) {
            return Err(self.bad("add needs one parameter record and a valid residual scale"));
        }
        check_requantisation(&op.params).map_err(|reason| self.bad(reason))
    }

    /// Max and average pooling: the window gives the output's height and width, channels
    /// pass through.
    fn pool(&self) -> Result<(), FormatError> {
        let [_, _, _, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        if self.window()? != (oh, ow) || oc != c {
            return Err(self.bad("output shape does not follow from the window"));
        }
        Ok(())
    }

    /// Global pooling: one value per channel, and its optional requantisation record.
    fn global_pool(&self) -> Result<(), FormatError> {
        let [_, _, _, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        if (oh, ow, oc) != (1, 1, c) {
            return Err(self.bad("global pooling gives [1, 1, 1, C]"));
        }
        check_requantisation(&self.op.params).map_err(|reason| self.bad(reason))
    }

    /// Subsample: every stride-th row and column from a start inside the input.
    fn subsample(&self) -> Result<(), FormatError> {
        let [_, h, w, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        let (sh, sw) = (self.op.stride[0] as usize, self.op.stride[1] as usize);
        let (r0, c0) = (self.op.aux[0] as usize, self.op.aux[1] as usize);
        if sh == 0
            || sw == 0
            || r0 >= h
            || c0 >= w
            || oc != c
            || oh != (h - r0).div_ceil(sh)
            || ow != (w - c0).div_ceil(sw)
        {
            return Err(self.bad("subsample shape is inconsistent"));
        }
        Ok(())
    }

    /// Channel padding: the same rows and columns, the channels plus those before and after.
    fn pad_channels(&self) -> Result<(), FormatError> {
        let [_, h, w, c] = shape(&self.x);
        let [_, oh, ow, oc] = shape(&self.y);
        if (oh, ow) != (h, w) || oc != c + self.op.aux[0] as usize + self.op.aux[1] as usize {
            return Err(self.bad("channel padding shape is inconsistent"));
        }
        Ok(())
    }

    /// Reshape writes nothing: its output is its input's bytes under another shape.
    fn reshape(&self) -> Result<(), FormatError> {
        if self.x.elements() != self.y.elements() || self.x.offset != self.y.offset {
            return Err(self.bad("reshape must alias its input with the same element count"));
        }
        Ok(())
    }

    /// Ops without requantisation keep the input's quantisation and type.
    fn quantisation_kept(&self) -> Result<(), FormatError> {
        let (x, y) = (&self.x, &self.y);
        if !self.needs_weights() && !self.one_record() && (!x.same_quant(y) || x.dtype != y.dtype) {
            return Err(self.bad("output quantisation differs from the input's"));
        }
        Ok(())
    }
}

/// A tensor's `[N, H, W, C]` as sizes.
fn shape(t: &TensorInfo) -> [usize; 4] {
    t.dims.map(|d| d as usize)
}

/// Do the byte ranges `[start, end)` `a` and `b` share a byte?
fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// A multiplier and shift the kernels' fixed point takes: the multiplier non-negative, the
/// shift in `[-31, 30]`.
fn fixed_point_in_range(multiplier: i32, shift: i32) -> bool {
    multiplier >= 0 && (-31..=30).contains(&shift)
}

/// f16-weight records: a finite f32 bias, a positive finite f32 scale, a zero third field.
fn check_float_records(params: &ChannelParams) -> Result<(), &'static str> {
    for ch in 0..params.len() {
        let (b, m, z) = params.get(ch);
        let (b, m) = (f32::from_bits(b as u32), f32::from_bits(m as u32));
        if !(b.is_finite() && m.is_finite() && m > 0.0) || z != 0 {
            return Err("f16-weight channel record is not (finite bias, positive scale, 0)");
        }
    }
    Ok(())
}

/// Every channel's multiplier non-negative and shift in `[-31, 30]` (what the kernels' fixed
/// point takes).
fn check_requantisation(params: &ChannelParams) -> Result<(), &'static str> {
    for ch in 0..params.len() {
        let (_, m, s) = params.get(ch);
        if !fixed_point_in_range(m, s) {
            return Err("requantisation multiplier or shift out of range");
        }
    }
    Ok(())
}

fn parse_plan(bytes: &[u8]) -> Result<Plan, FormatError> {
    let mut r = Reader::new(bytes, SectionKind::Plan as u32);
    let plan = Plan {
        arena_bytes: r.u64()?,
        lower_bound_bytes: r.u64()?,
        scratch_offset: r.u64()?,
        scratch_bytes: r.u64()?,
    };
    r.zeros(r.remaining(), 0)?;
    let scratch_end = plan.scratch_offset.checked_add(plan.scratch_bytes);
    if scratch_end.is_none_or(|e| e > plan.arena_bytes) {
        return Err(FormatError::BadPlan {
            reason: "scratch lies outside the arena",
        });
    }
    if plan.lower_bound_bytes > plan.arena_bytes || plan.arena_bytes > u32::MAX as u64 {
        return Err(FormatError::BadPlan {
            reason: "arena smaller than its lower bound, or over 4 GiB",
        });
    }
    Ok(plan)
}

fn parse_preprocess(bytes: &[u8], base: u64) -> Result<PreprocessInfo, FormatError> {
    let kind = SectionKind::Preprocess as u32;
    if bytes.len() != PREPROCESS_LEN {
        return Err(FormatError::SectionTruncated { kind });
    }
    let mut r = Reader::new(bytes, kind);
    let size = [r.u32()?, r.u32()?];
    let resize = r.u8()?;
    let channel_order = r.u8()?;
    r.zeros(2, base + 10)?;
    let p = PreprocessInfo {
        size,
        resize,
        channel_order,
        resize_shorter: r.u32()?,
        scale: r.f32()?,
        mean: [r.f32()?, r.f32()?, r.f32()?],
        std: [r.f32()?, r.f32()?, r.f32()?],
    };
    r.zeros(r.remaining(), base + 44)?;
    let finite = p.mean.iter().chain(&p.std).all(|v| v.is_finite()) && p.scale.is_finite();
    if size.contains(&0) || resize > 1 || channel_order > 1 || !finite || p.std.contains(&0.0) {
        return Err(FormatError::BadPlan {
            reason: "preprocessing parameters are invalid",
        });
    }
    Ok(p)
}

/// Counts and validates a string list: `count: u32`, then per entry `len: u16, bytes`
/// (and for key/value lists a second `len: u32, bytes`).
fn count_strings(bytes: &[u8], kind: SectionKind, pairs: bool) -> Result<u32, FormatError> {
    let k = kind as u32;
    let mut r = Reader::new(bytes, k);
    let count = r.u32()?;
    for _ in 0..count {
        let n = r.u16()? as usize;
        core::str::from_utf8(r.take(n)?).map_err(|_| FormatError::BadString { kind: k })?;
        if pairs {
            let n = r.u32()? as usize;
            core::str::from_utf8(r.take(n)?).map_err(|_| FormatError::BadString { kind: k })?;
        }
    }
    r.zeros(r.remaining(), 0)?;
    Ok(count)
}

/// Iterates a string list already validated by `count_strings`.
fn strings(bytes: &[u8], count: u32, pairs: bool) -> Strings<'_> {
    let mut reader = Reader::new(bytes, 0);
    let _ = reader.u32();
    Strings {
        reader,
        left: count,
        pairs,
    }
}

struct Strings<'a> {
    reader: Reader<'a>,
    left: u32,
    pairs: bool,
}

impl<'a> Iterator for Strings<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = &mut self.reader;
        let n = r.u16().ok()? as usize;
        let key = core::str::from_utf8(r.take(n).ok()?).ok()?;
        let value = if self.pairs {
            let n = r.u32().ok()? as usize;
            core::str::from_utf8(r.take(n).ok()?).ok()?
        } else {
            ""
        };
        Some((key, value))
    }
}

/// Iterator over metadata `(key, value)` pairs.
pub struct Metadata<'a> {
    inner: Strings<'a>,
}

impl<'a> Iterator for Metadata<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}
