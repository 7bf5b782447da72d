//! ONNX → Kestrel float graph.
//!
//! tract-onnx decodes the protobuf (and resolves tensor data, external files included);
//! this module walks the decoded `ModelProto` itself so that every op it accepts is one
//! the rest of Kestrel can lower, and anything else is refused by name and op type.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb::{self, attribute_proto::AttributeType, NodeProto};
use tract_onnx::prelude::{DatumType, Framework};

/// The decoded ONNX tensor type (tests edit models through it).
pub use tract_onnx::pb::TensorProto;

use crate::graph::{
    BatchNorm, Conv, Dense, Graph, Node, Op, Pad, Pool, Slice, StatedQuant, ValueId, ValueInfo,
};

/// Everything that can go wrong turning an ONNX file into a [`Graph`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a readable ONNX model: {reason}")]
    Decode { path: String, reason: String },
    #[error("node '{node}': op type '{op_type}' is not supported by Kestrel")]
    UnsupportedOp { node: String, op_type: String },
    #[error("node '{node}' ({op_type}): {reason}")]
    Unsupported {
        node: String,
        op_type: String,
        reason: String,
    },
    #[error("node '{node}' ({op_type}): input '{input}' is neither a graph input, an initializer nor an earlier node's output")]
    UnknownInput {
        node: String,
        op_type: String,
        input: String,
    },
    #[error("node '{node}' ({op_type}): input '{input}' must be a constant (initializer)")]
    NotConstant {
        node: String,
        op_type: String,
        input: String,
    },
    #[error("node '{node}' ({op_type}): {reason}")]
    Shape {
        node: String,
        op_type: String,
        reason: String,
    },
    #[error("node '{node}' ({op_type}): tensor '{tensor}': {reason}")]
    Quant {
        node: String,
        op_type: String,
        tensor: String,
        reason: String,
    },
    #[error("initializer '{tensor}': its external data file {file} {reason}")]
    ExternalData {
        tensor: String,
        file: String,
        reason: String,
    },
    #[error("model graph: {0}")]
    Graph(String),
}

type Result<T> = std::result::Result<T, ImportError>;

/// A decoded constant: f32 data or i64 data, with its shape and stored type.
#[derive(Clone, Debug)]
struct Constant {
    shape: Vec<usize>,
    f32s: Vec<f32>,
    i64s: Vec<i64>,
    datum: DatumType,
}

/// The integer type a `QuantizeLinear` produces (its zero point's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QType {
    U8,
    I8,
    /// int32 (biases), or any other integer type: dequantised as stated.
    Wide,
}

/// A `QuantizeLinear`/`DequantizeLinear` node's parameters, checked.
struct Qdq {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    qtype: QType,
}

/// Reads and decodes an ONNX file (no import yet).
pub fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Io {
        path: shown.clone(),
        source,
    })?;
    if meta.len() == 0 {
        return Err(ImportError::Decode {
            path: shown,
            reason: "the file is empty".into(),
        });
    }
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| ImportError::Decode {
            path: shown.clone(),
            reason: format!("{e:#}"),
        })?;
    if proto.graph.is_none() {
        return Err(ImportError::Decode {
            path: shown,
            reason: "it holds no graph".into(),
        });
    }
    Ok(proto)
}

/// Imports an ONNX file into a float [`Graph`] with static shapes (batch 1).
pub fn import_path(path: &Path) -> Result<Graph> {
    let proto = read_proto(path)?;
    let dir = path.parent().and_then(|d| d.to_str()).map(str::to_owned);
    import_proto(&proto, dir.as_deref())
}

/// Imports a decoded `ModelProto`; `dir` is where external tensor data would live.
pub fn import_proto(model: &pb::ModelProto, dir: Option<&str>) -> Result<Graph> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::Graph("the model holds no graph".into()))?;
    let mut imp = Importer {
        dir,
        constants: HashMap::new(),
        value_ids: HashMap::new(),
        readers: HashMap::new(),
        quantized: HashMap::new(),
        graph: Graph {
            values: Vec::new(),
            nodes: Vec::new(),
            input: 0,
            output: 0,
            metadata: model
                .metadata_props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect::<BTreeMap<_, _>>(),
        },
    };
    for name in g.node.iter().flat_map(|n| &n.input) {
        *imp.readers.entry(name.clone()).or_insert(0) += 1;
    }
    for init in &g.initializer {
        let c = imp.load_constant(init, "initializer")?;
        imp.constants.insert(init.name.clone(), c);
    }
    let inputs: Vec<&pb::ValueInfoProto> = g
        .input
        .iter()
        .filter(|i| !imp.constants.contains_key(&i.name))
        .collect();
    if inputs.len() != 1 {
        return Err(ImportError::Graph(format!(
            "expected exactly one non-constant input, found {}",
            inputs.len()
        )));
    }
    let input_shape = static_input_shape(inputs[0])?;
    imp.graph.input = imp.new_value(&inputs[0].name, input_shape);
    for node in &g.node {
        imp.node(node)?;
    }
    if g.output.len() != 1 {
        return Err(ImportError::Graph(format!(
            "expected exactly one output, found {}",
            g.output.len()
        )));
    }
    let out_name = &g.output[0].name;
    imp.graph.output = *imp.value_ids.get(out_name).ok_or_else(|| {
        ImportError::Graph(format!("output '{out_name}' is not produced by any node"))
    })?;
    let mut graph = imp.graph;
    graph.compact();
    Ok(graph)
}

/// The declared input shape, with a symbolic batch dimension taken as 1.
fn static_input_shape(input: &pb::ValueInfoProto) -> Result<Vec<usize>> {
    use pb::tensor_shape_proto::dimension::Value;
    let bad = |why: &str| ImportError::Graph(format!("input '{}': {why}", input.name));
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        _ => return Err(bad("not a tensor")),
    };
    if tensor.elem_type != pb::tensor_proto::DataType::Float as i32 {
        return Err(bad("element type is not float32"));
    }
    let dims = &tensor.shape.as_ref().ok_or_else(|| bad("no shape"))?.dim;
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, d) in dims.iter().enumerate() {
        match &d.value {
            Some(Value::DimValue(v)) if *v > 0 => shape.push(*v as usize),
            _ if axis == 0 => shape.push(1),
            _ => return Err(bad(&format!("dimension {axis} is not a fixed size"))),
        }
    }
    if shape.len() != 4 || shape[0] != 1 {
        return Err(bad(&format!(
            "expected an image batch [1, C, H, W], found {shape:?}"
        )));
    }
    Ok(shape)
}

struct Importer<'a> {
    dir: Option<&'a str>,
    constants: HashMap<String, Constant>,
    value_ids: HashMap<String, ValueId>,
    /// How many ONNX nodes read each name (to know when an output has a single reader).
    readers: HashMap<String, usize>,
    /// `QuantizeLinear` outputs: the float value quantised and how, until its `DequantizeLinear`.
    quantized: HashMap<String, (ValueId, StatedQuant)>,
    graph: Graph,
}

/// Per-node view used while translating one ONNX node.
struct Ctx<'n> {
    node: &'n NodeProto,
    name: String,
}

impl Ctx<'_> {
    fn unsupported(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            node: self.name.clone(),
            op_type: self.node.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn quant_err(&self, index: usize, reason: impl Into<String>) -> ImportError {
        ImportError::Quant {
            node: self.name.clone(),
            op_type: self.node.op_type.clone(),
            tensor: self.node.input.get(index).cloned().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn shape_err(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Shape {
            node: self.name.clone(),
            op_type: self.node.op_type.clone(),
            reason: reason.into(),
        }
    }

    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .filter(|a| a.r#type == AttributeType::String as i32 || !a.s.is_empty())
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// A 2-element spatial attribute (kernel, strides, dilations) with a default.
    fn pair(&self, name: &str, default: usize) -> Result<[usize; 2]> {
        match self.ints(name) {
            None => Ok([default, default]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => {
                Ok([v[0] as usize, v[1] as usize])
            }
            Some(v) => Err(self.unsupported(format!(
                "attribute '{name}' = {v:?}: only 2-D positive values are supported"
            ))),
        }
    }
}

impl Importer<'_> {
    fn new_value(&mut self, name: &str, shape: Vec<usize>) -> ValueId {
        let id = self.graph.values.len();
        self.graph.values.push(ValueInfo {
            name: name.to_string(),
            shape,
            quant: None,
        });
        self.value_ids.insert(name.to_string(), id);
        id
    }

    fn load_constant(&self, t: &pb::TensorProto, what: &str) -> Result<Constant> {
        self.check_external_data(t)?;
        let tensor =
            tract_onnx::tensor::load_tensor(&MmapDataResolver, t, self.dir).map_err(|e| {
                ImportError::Graph(format!("{what} '{}' cannot be decoded: {e:#}", t.name))
            })?;
        let shape = tensor.shape().to_vec();
        let datum = tensor.datum_type();
        let (f32s, i64s) = match datum {
            DatumType::F32 | DatumType::F64 | DatumType::F16 => {
                let t = tensor
                    .cast_to::<f32>()
                    .map_err(|e| ImportError::Graph(e.to_string()))?;
                let v = t
                    .to_plain_array_view::<f32>()
                    .map_err(|e| ImportError::Graph(e.to_string()))?;
                (v.iter().copied().collect(), Vec::new())
            }
            DatumType::I64
            | DatumType::I32
            | DatumType::I8
            | DatumType::U8
            | DatumType::I16
            | DatumType::U16 => {
                let t = tensor
                    .cast_to::<i64>()
                    .map_err(|e| ImportError::Graph(e.to_string()))?;
                let v = t
                    .to_plain_array_view::<i64>()
                    .map_err(|e| ImportError::Graph(e.to_string()))?;
                (Vec::new(), v.iter().copied().collect())
            }
            other => {
                return Err(ImportError::Graph(format!(
                    "{what} '{}' has unsupported type {other:?}",
                    t.name
                )))
            }
        };
        Ok(Constant {
            shape,
            f32s,
            i64s,
            datum,
        })
    }

    /// An initializer kept in a file beside the model (PyTorch's dynamo exporter writes
    /// `MODEL.onnx.data`): the file must exist and hold the bytes the model points at.
    fn check_external_data(&self, t: &pb::TensorProto) -> Result<()> {
        if t.data_location != Some(pb::tensor_proto::DataLocation::External as i32) {
            return Ok(());
        }
        let entry = |key: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
        };
        let location = entry("location").unwrap_or_default();
        let file = Path::new(self.dir.unwrap_or(".")).join(&location);
        let err = |reason: String| ImportError::ExternalData {
            tensor: t.name.clone(),
            file: file.display().to_string(),
            reason,
        };
        let len = std::fs::metadata(&file)
            .map_err(|e| err(format!("cannot be read: {e}")))?
            .len();
        let number = |key: &str| -> Result<Option<u64>> {
            entry(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| err(format!("has a bad {key} '{v}'")))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        if let Some(length) = number("length")? {
            if offset.saturating_add(length) > len {
                return Err(err(format!(
                    "is {len} bytes, but the tensor lies at {offset}..{} (truncated?)",
                    offset + length
                )));
            }
        }
        Ok(())
    }

    fn constant(&self, ctx: &Ctx, index: usize) -> Result<Option<&Constant>> {
        match ctx.node.input.get(index) {
            None => Ok(None),
            Some(name) if name.is_empty() => Ok(None),
            Some(name) => match self.constants.get(name) {
                Some(c) => Ok(Some(c)),
                None => Err(ImportError::NotConstant {
                    node: ctx.name.clone(),
                    op_type: ctx.node.op_type.clone(),
                    input: name.clone(),
                }),
            },
        }
    }

    fn required_constant(&self, ctx: &Ctx, index: usize) -> Result<&Constant> {
        self.constant(ctx, index)?
            .ok_or_else(|| ctx.shape_err(format!("input #{index} is missing")))
    }

    /// The activation (non-constant) input at `index`.
    fn activation(&self, ctx: &Ctx, index: usize) -> Result<ValueId> {
        let name = ctx
            .node
            .input
            .get(index)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ctx.shape_err(format!("input #{index} is missing")))?;
        self.value_ids
            .get(name)
            .copied()
            .ok_or_else(|| ImportError::UnknownInput {
                node: ctx.name.clone(),
                op_type: ctx.node.op_type.clone(),
                input: name.clone(),
            })
    }

    fn shape(&self, v: ValueId) -> &[usize] {
        &self.graph.values[v].shape
    }

    fn push(&mut self, ctx: &Ctx, op: Op, inputs: Vec<ValueId>, shape: Vec<usize>) -> Result<()> {
        let out_name = ctx
            .node
            .output
            .first()
            .ok_or_else(|| ctx.shape_err("the node has no output"))?;
        let output = self.new_value(out_name, shape);
        self.graph.nodes.push(Node {
            name: ctx.name.clone(),
            op,
            inputs,
            output,
        });
        Ok(())
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        let name = if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let ctx = Ctx { node, name };
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(ImportError::UnsupportedOp {
                node: ctx.name,
                op_type: format!("{}:{}", node.domain, node.op_type),
            });
        }
        match node.op_type.as_str() {
            "Conv" => self.conv(&ctx),
            "BatchNormalization" => self.batch_norm(&ctx),
            "Relu" => {
                let x = self.activation(&ctx, 0)?;
                let shape = self.shape(x).to_vec();
                self.push(&ctx, Op::Relu, vec![x], shape)
            }
            "Add" => self.add(&ctx),
            "MaxPool" | "AveragePool" => self.pool(&ctx),
            "GlobalAveragePool" => {
                let x = self.activation(&ctx, 0)?;
                let s = self.shape(x).to_vec();
                if s.len() != 4 {
                    return Err(ctx.shape_err(format!("expected a 4-D input, found {s:?}")));
                }
                self.push(&ctx, Op::GlobalAvgPool, vec![x], vec![s[0], s[1], 1, 1])
            }
            "Flatten" => {
                let x = self.activation(&ctx, 0)?;
                let s = self.shape(x).to_vec();
                let mut axis = ctx.int("axis", 1);
                if axis < 0 {
                    axis += s.len() as i64;
                }
                if axis < 0 || axis as usize > s.len() {
                    return Err(ctx.shape_err(format!("axis out of range for shape {s:?}")));
                }
                let (a, b) = s.split_at(axis as usize);
                let shape = vec![a.iter().product(), b.iter().product()];
                self.push(&ctx, Op::Reshape, vec![x], shape)
            }
            "Reshape" => self.reshape(&ctx),
            "Gemm" => self.gemm(&ctx),
            "MatMul" => self.matmul(&ctx),
            "Identity" => self.identity(&ctx),
            "ReduceMean" => self.reduce_mean(&ctx),
            "Squeeze" => self.squeeze(&ctx),
            "Gather" => self.gather(&ctx),
            "QuantizeLinear" => self.quantize_linear(&ctx),
            "DequantizeLinear" => self.dequantize_linear(&ctx),
            "Constant" => self.constant_node(&ctx),
            "Slice" => self.slice(&ctx),
            "Pad" => self.pad(&ctx),
            other => Err(ImportError::UnsupportedOp {
                node: ctx.name.clone(),
                op_type: other.to_string(),
            }),
        }
    }

    /// The name the node's (first) output goes by.
    fn output_name(ctx: &Ctx) -> String {
        ctx.node.output.first().cloned().unwrap_or_default()
    }

    /// `Identity`: another name for a value, or for a constant (the TorchScript exporter
    /// shares equal initializers through Identity nodes).
    fn identity(&mut self, ctx: &Ctx) -> Result<()> {
        let out = Self::output_name(ctx);
        if let Some(c) = ctx.node.input.first().and_then(|n| self.constants.get(n)) {
            let c = c.clone();
            self.constants.insert(out, c);
            return Ok(());
        }
        let x = self.activation(ctx, 0)?;
        self.value_ids.insert(out, x);
        Ok(())
    }

    /// Axes from the `axes` attribute (older opsets) or the second input (newer ones).
    fn axes(&self, ctx: &Ctx, rank: usize) -> Result<Option<Vec<usize>>> {
        let raw = match ctx.ints("axes") {
            Some(a) => Some(a),
            None => self.constant(ctx, 1)?.map(|c| c.i64s.clone()),
        };
        let Some(raw) = raw else { return Ok(None) };
        let mut axes = Vec::with_capacity(raw.len());
        for a in raw {
            let axis = if a < 0 { a + rank as i64 } else { a };
            if axis < 0 || axis as usize >= rank {
                return Err(ctx.shape_err(format!("axis {a} out of range for rank {rank}")));
            }
            axes.push(axis as usize);
        }
        axes.sort_unstable();
        axes.dedup();
        Ok(Some(axes))
    }

    /// `ReduceMean` over height and width is global average pooling (how PyTorch's
    /// dynamo exporter writes `AdaptiveAvgPool2d(1)`).
    fn reduce_mean(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        let axes = self.axes(ctx, s.len())?;
        if s.len() != 4 || axes.as_deref() != Some(&[2, 3]) {
            return Err(ctx.unsupported(format!(
                "only a mean over height and width of a 4-D input (axes {axes:?} of {s:?})"
            )));
        }
        let shape = if ctx.int("keepdims", 1) != 0 {
            vec![s[0], s[1], 1, 1]
        } else {
            vec![s[0], s[1]]
        };
        self.push(ctx, Op::GlobalAvgPool, vec![x], shape)
    }

    /// `Squeeze` of unit axes: only the recorded shape changes. Without axes every unit
    /// axis but the batch goes (the batch is 1 here, but stays an axis).
    fn squeeze(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        let axes = self
            .axes(ctx, s.len())?
            .unwrap_or_else(|| (1..s.len()).filter(|&a| s[a] == 1).collect());
        if axes.contains(&0) || axes.iter().any(|&a| s[a] != 1) {
            return Err(ctx.unsupported(format!(
                "squeezing axes {axes:?} of {s:?}: only unit axes after the batch"
            )));
        }
        let shape = (0..s.len())
            .filter(|a| !axes.contains(a))
            .map(|a| s[a])
            .collect();
        self.push(ctx, Op::Reshape, vec![x], shape)
    }

    /// `Gather` of every element of an axis in order moves no data: PyTorch's dynamo
    /// exporter writes `flatten` of a pooled map that way (`as_strided`) on small inputs.
    fn gather(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        let indices = self.required_constant(ctx, 1)?;
        let mut axis = ctx.int("axis", 0);
        if axis < 0 {
            axis += s.len() as i64;
        }
        let Some(&dim) = s.get(axis as usize).filter(|_| axis >= 0) else {
            return Err(ctx.shape_err(format!("axis {axis} out of range for {s:?}")));
        };
        let in_order = indices.i64s.len() == dim
            && indices.i64s.iter().enumerate().all(|(i, &v)| v == i as i64);
        if !in_order {
            return Err(
                ctx.unsupported("only a Gather of every element of the axis, in order (a reshape)")
            );
        }
        let a = axis as usize;
        let shape: Vec<usize> = s[..a]
            .iter()
            .chain(&indices.shape)
            .chain(&s[a + 1..])
            .copied()
            .collect();
        self.push(ctx, Op::Reshape, vec![x], shape)
    }

    /// Scale(s) and zero point(s) of a `QuantizeLinear`/`DequantizeLinear`, checked: every
    /// scale positive and finite, zero points of the scales' count.
    fn qdq_params(&self, ctx: &Ctx) -> Result<Qdq> {
        let scale = self.required_constant(ctx, 1)?;
        if scale.f32s.is_empty() {
            return Err(ctx.quant_err(1, "the scale is not a float tensor"));
        }
        if let Some(bad) = scale.f32s.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ctx.quant_err(
                1,
                format!("scale {bad}: a scale must be positive and finite"),
            ));
        }
        let n = scale.f32s.len();
        let (zero_points, qtype) = match self.constant(ctx, 2)? {
            // ONNX: without a zero point the quantised type is uint8 and the zero point 0.
            None => (vec![0; n], QType::U8),
            Some(z) => {
                let qtype = match z.datum {
                    DatumType::U8 => QType::U8,
                    DatumType::I8 => QType::I8,
                    _ if !z.i64s.is_empty() => QType::Wide,
                    other => {
                        return Err(ctx.quant_err(
                            2,
                            format!("zero point of type {other:?} is not an integer"),
                        ))
                    }
                };
                if z.i64s.len() != n {
                    return Err(
                        ctx.quant_err(2, format!("{} zero points for {n} scales", z.i64s.len()))
                    );
                }
                (z.i64s.clone(), qtype)
            }
        };
        Ok(Qdq {
            scales: scale.f32s.clone(),
            zero_points,
            qtype,
        })
    }

    /// The single scale and zero point an activation is quantised with.
    fn activation_quant(&self, ctx: &Ctx) -> Result<StatedQuant> {
        let q = self.qdq_params(ctx)?;
        if q.scales.len() != 1 {
            return Err(ctx.unsupported(format!(
                "{} scales: activations are quantised per tensor",
                q.scales.len()
            )));
        }
        let zero_point = q.zero_points[0];
        let unsigned = match q.qtype {
            QType::U8 => true,
            QType::I8 => false,
            QType::Wide => {
                return Err(ctx.quant_err(
                    2,
                    format!(
                        "zero point {zero_point} of a wider integer type: activations are int8 or uint8"
                    ),
                ))
            }
        };
        Ok(StatedQuant {
            scale: q.scales[0],
            zero_point: zero_point as i32,
            unsigned,
        })
    }

    /// `QuantizeLinear` of an activation: remembered until the `DequantizeLinear` that
    /// reads it, which gives the float value back with its stated quantisation.
    fn quantize_linear(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let q = self.activation_quant(ctx)?;
        self.quantized.insert(Self::output_name(ctx), (x, q));
        Ok(())
    }

    /// `DequantizeLinear` of a constant (weights, biases) gives the float constant; of a
    /// `QuantizeLinear`'s output, the quantised float value with its scale and zero point.
    fn dequantize_linear(&mut self, ctx: &Ctx) -> Result<()> {
        let input = ctx.node.input.first().cloned().unwrap_or_default();
        let out = Self::output_name(ctx);
        if let Some(c) = self.constants.get(&input) {
            if c.i64s.is_empty() {
                return Err(ctx.quant_err(0, "dequantising a tensor that is not integer"));
            }
            let c = c.clone();
            let q = self.qdq_params(ctx)?;
            let f32s = self.dequantize(ctx, &c, &q)?;
            self.constants.insert(
                out,
                Constant {
                    shape: c.shape,
                    f32s,
                    i64s: Vec::new(),
                    datum: DatumType::F32,
                },
            );
            return Ok(());
        }
        let Some(&(x, stated)) = self.quantized.get(&input) else {
            return Err(ctx.unsupported(
                "only the output of a QuantizeLinear or an integer initializer can be dequantised",
            ));
        };
        let q = self.activation_quant(ctx)?;
        if q != stated {
            return Err(ctx.quant_err(
                1,
                format!("dequantised with {q:?}, quantised with {stated:?}"),
            ));
        }
        match self.graph.values[x].quant {
            Some(previous) if previous != q => {
                return Err(ctx.unsupported(format!(
                    "value '{}' is quantised twice, with {previous:?} and {q:?}",
                    self.graph.values[x].name
                )))
            }
            _ => self.graph.values[x].quant = Some(q),
        }
        self.value_ids.insert(out, x);
        Ok(())
    }

    /// `(q − zero point) · scale`, per tensor or along the node's `axis`.
    fn dequantize(&self, ctx: &Ctx, c: &Constant, q: &Qdq) -> Result<Vec<f32>> {
        let n = q.scales.len();
        if n == 1 {
            let (s, z) = (q.scales[0], q.zero_points[0]);
            return Ok(c.i64s.iter().map(|&v| (v - z) as f32 * s).collect());
        }
        let rank = c.shape.len();
        let mut axis = ctx.int("axis", 1);
        if axis < 0 {
            axis += rank as i64;
        }
        // A 1-D tensor (a bias) has one axis: ONNX Runtime writes no `axis` for it.
        if rank == 1 {
            axis = 0;
        }
        if axis < 0 || axis as usize >= rank || c.shape[axis as usize] != n {
            return Err(ctx.quant_err(
                1,
                format!("{n} scales do not fit axis {axis} of shape {:?}", c.shape),
            ));
        }
        let inner: usize = c.shape[axis as usize + 1..].iter().product();
        Ok(c.i64s
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / inner) % n;
                (v - q.zero_points[ch]) as f32 * q.scales[ch]
            })
            .collect())
    }

    fn constant_node(&mut self, ctx: &Ctx) -> Result<()> {
        let attr = ctx
            .attr("value")
            .and_then(|a| a.t.as_ref())
            .ok_or_else(|| ctx.unsupported("only the 'value' tensor form is supported"))?;
        let c = self.load_constant(attr, "Constant")?;
        let out = ctx.node.output.first().cloned().unwrap_or_default();
        self.constants.insert(out, c);
        Ok(())
    }

    /// Explicit `[top, left, bottom, right]` pads for a 2-D window, from `pads` or `auto_pad`.
    fn spatial_pads(
        &self,
        ctx: &Ctx,
        in_hw: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<[usize; 4]> {
        let auto = ctx.string("auto_pad").unwrap_or_default();
        match auto.as_str() {
            "" | "NOTSET" => match ctx.ints("pads") {
                None => Ok([0; 4]),
                Some(p) if p.len() == 4 && p.iter().all(|&x| x >= 0) => {
                    Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
                }
                Some(p) => {
                    Err(ctx.unsupported(format!("pads {p:?}: expected 4 non-negative values")))
                }
            },
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = [0; 4];
                for a in 0..2 {
                    let out = in_hw[a].div_ceil(stride[a]);
                    let span = (kernel[a] - 1) * dilation[a] + 1;
                    let total = ((out - 1) * stride[a] + span).saturating_sub(in_hw[a]);
                    let small = total / 2;
                    let (before, after) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    pads[a] = before;
                    pads[a + 2] = after;
                }
                Ok(pads)
            }
            other => Err(ctx.unsupported(format!("auto_pad '{other}'"))),
        }
    }

    fn conv(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let w = self.required_constant(ctx, 1)?.clone();
        let b = self.constant(ctx, 2)?.cloned();
        let group = ctx.int("group", 1);
        if group != 1 {
            return Err(ctx.unsupported(format!("group = {group}: only group 1 is supported")));
        }
        let s = self.shape(x).to_vec();
        if s.len() != 4 || w.shape.len() != 4 || w.f32s.is_empty() {
            return Err(ctx.shape_err(format!(
                "expected 4-D input and float 4-D weight, found {s:?} and {:?}",
                w.shape
            )));
        }
        let ws = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
        if ws[1] != s[1] {
            return Err(ctx.shape_err(format!(
                "weight expects {} input channels, input has {}",
                ws[1], s[1]
            )));
        }
        if let Some(k) = ctx.ints("kernel_shape") {
            if k != [ws[2] as i64, ws[3] as i64] {
                return Err(
                    ctx.shape_err(format!("kernel_shape {k:?} disagrees with weight {ws:?}"))
                );
            }
        }
        let kernel = [ws[2], ws[3]];
        let stride = ctx.pair("strides", 1)?;
        let dilation = ctx.pair("dilations", 1)?;
        let pads = self.spatial_pads(ctx, [s[2], s[3]], kernel, stride, dilation)?;
        let out_hw = window_output(ctx, [s[2], s[3]], kernel, stride, dilation, pads, false)?;
        let bias = match b {
            None => None,
            Some(b) if b.f32s.len() == ws[0] => Some(b.f32s),
            Some(b) => {
                return Err(ctx.shape_err(format!(
                    "bias has shape {:?}, expected [{}]",
                    b.shape, ws[0]
                )))
            }
        };
        let op = Op::Conv(Conv {
            weight: w.f32s,
            weight_shape: ws,
            bias,
            stride,
            dilation,
            pads,
            fused_add: false,
            relu: false,
        });
        self.push(ctx, op, vec![x], vec![1, ws[0], out_hw[0], out_hw[1]])
    }

    fn batch_norm(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        if ctx.int("training_mode", 0) != 0 {
            return Err(ctx.unsupported("training_mode = 1"));
        }
        let c = self.shape(x).get(1).copied().unwrap_or(0);
        let mut params = Vec::new();
        for (i, what) in ["scale", "B", "mean", "var"].iter().enumerate() {
            let t = self.required_constant(ctx, i + 1)?;
            if t.f32s.len() != c {
                return Err(ctx.shape_err(format!(
                    "'{what}' has {} values for {c} channels",
                    t.f32s.len()
                )));
            }
            params.push(t.f32s.clone());
        }
        let var = params.pop().unwrap_or_default();
        let mean = params.pop().unwrap_or_default();
        let bias = params.pop().unwrap_or_default();
        let scale = params.pop().unwrap_or_default();
        let op = Op::BatchNorm(BatchNorm {
            scale,
            bias,
            mean,
            var,
            epsilon: ctx.float("epsilon", 1e-5),
        });
        let shape = self.shape(x).to_vec();
        self.push(ctx, op, vec![x], shape)
    }

    fn add(&mut self, ctx: &Ctx) -> Result<()> {
        let names = &ctx.node.input;
        if names.len() != 2 {
            return Err(ctx.shape_err(format!("expected 2 inputs, found {}", names.len())));
        }
        let constant_side = names.iter().position(|n| self.constants.contains_key(n));
        if let Some(ci) = constant_side {
            // `MatMul` + `Add(bias)` is how some exporters spell a Gemm: fold it into the Dense.
            let x = self.activation(ctx, 1 - ci)?;
            let bias = self.constants[&names[ci]].f32s.clone();
            let producer = self.graph.nodes.iter().rposition(|n| n.output == x);
            let only_reader = self.readers.get(&names[1 - ci]) == Some(&1);
            if let (Some(p), true) = (producer, only_reader) {
                if let Op::Dense(d) = &mut self.graph.nodes[p].op {
                    if bias.len() == d.out_features {
                        let b = d.bias.get_or_insert_with(|| vec![0.0; bias.len()]);
                        b.iter_mut().zip(&bias).for_each(|(b, v)| *b += v);
                        let out = ctx.node.output.first().cloned().unwrap_or_default();
                        self.value_ids.insert(out, x);
                        return Ok(());
                    }
                }
            }
            return Err(ctx.unsupported(
                "Add with a constant operand is only supported as the bias of a MatMul/Gemm",
            ));
        }
        let a = self.activation(ctx, 0)?;
        let b = self.activation(ctx, 1)?;
        if self.shape(a) != self.shape(b) {
            return Err(ctx.shape_err(format!(
                "operands have shapes {:?} and {:?}; broadcasting is not supported",
                self.shape(a),
                self.shape(b)
            )));
        }
        let shape = self.shape(a).to_vec();
        self.push(ctx, Op::Add { relu: false }, vec![a, b], shape)
    }

    fn pool(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        if s.len() != 4 {
            return Err(ctx.shape_err(format!("expected a 4-D input, found {s:?}")));
        }
        let kernel = match ctx.ints("kernel_shape") {
            Some(k) if k.len() == 2 && k.iter().all(|&v| v > 0) => [k[0] as usize, k[1] as usize],
            other => {
                return Err(ctx.unsupported(format!(
                    "kernel_shape {other:?}: expected 2 positive values"
                )))
            }
        };
        let stride = ctx.pair("strides", 1)?;
        let dilation = ctx.pair("dilations", 1)?;
        if dilation != [1, 1] {
            return Err(ctx.unsupported("dilated pooling"));
        }
        if ctx.int("storage_order", 0) != 0 {
            return Err(ctx.unsupported("storage_order = 1"));
        }
        let ceil = ctx.int("ceil_mode", 0) != 0;
        let mut pads = self.spatial_pads(ctx, [s[2], s[3]], kernel, stride, dilation)?;
        let out_hw = window_output(ctx, [s[2], s[3]], kernel, stride, dilation, pads, ceil)?;
        let count_include_pad = ctx.int("count_include_pad", 0) != 0;
        // Ceil mode adds a last window that overhangs the input: the same as more padding
        // after it, where padding takes no part (max, or an average of real cells only).
        for a in 0..2 {
            let needed = (out_hw[a] - 1) * stride[a] + kernel[a];
            let have = s[2 + a] + pads[a] + pads[a + 2];
            if needed > have {
                let is_max = ctx.node.op_type == "MaxPool";
                if !is_max && count_include_pad {
                    return Err(ctx.unsupported(
                        "ceil_mode with count_include_pad = 1 (the overhang's divisor is ambiguous)",
                    ));
                }
                pads[a + 2] += needed - have;
            }
        }
        let pool = Pool {
            kernel,
            stride,
            pads,
            count_include_pad,
        };
        let op = if ctx.node.op_type == "MaxPool" {
            if ctx.node.output.len() > 1 && !ctx.node.output[1].is_empty() {
                return Err(ctx.unsupported("the Indices output"));
            }
            Op::MaxPool(pool)
        } else {
            Op::AvgPool(pool)
        };
        self.push(ctx, op, vec![x], vec![s[0], s[1], out_hw[0], out_hw[1]])
    }

    fn reshape(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let target = self.required_constant(ctx, 1)?.i64s.clone();
        let s = self.shape(x).to_vec();
        let total: usize = s.iter().product();
        let allow_zero = ctx.int("allowzero", 0) != 0;
        let mut shape = Vec::with_capacity(target.len());
        let mut infer = None;
        for (i, &d) in target.iter().enumerate() {
            match d {
                0 if !allow_zero => shape.push(*s.get(i).ok_or_else(|| {
                    ctx.shape_err(format!("0 at axis {i} has no input axis to copy"))
                })?),
                -1 if infer.is_none() => {
                    infer = Some(i);
                    shape.push(1);
                }
                d if d >= 0 => shape.push(d as usize),
                d => return Err(ctx.shape_err(format!("invalid target dimension {d}"))),
            }
        }
        if let Some(i) = infer {
            let known: usize = shape.iter().product();
            if known == 0 || !total.is_multiple_of(known) {
                return Err(ctx.shape_err(format!("cannot reshape {s:?} into {target:?}")));
            }
            shape[i] = total / known;
        }
        if shape.iter().product::<usize>() != total {
            return Err(ctx.shape_err(format!("cannot reshape {s:?} into {target:?}")));
        }
        self.push(ctx, Op::Reshape, vec![x], shape)
    }

    fn dense_input(&self, ctx: &Ctx) -> Result<(ValueId, usize)> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x);
        if s.len() != 2 || s[0] != 1 {
            return Err(ctx.shape_err(format!("expected a [1, K] input, found {s:?}")));
        }
        Ok((x, s[1]))
    }

    fn gemm(&mut self, ctx: &Ctx) -> Result<()> {
        let (x, k) = self.dense_input(ctx)?;
        if ctx.int("transA", 0) != 0 {
            return Err(ctx.unsupported("transA = 1"));
        }
        let alpha = ctx.float("alpha", 1.0);
        let beta = ctx.float("beta", 1.0);
        let b = self.required_constant(ctx, 1)?;
        if b.shape.len() != 2 || b.f32s.is_empty() {
            return Err(ctx.shape_err(format!("B must be a float matrix, found {:?}", b.shape)));
        }
        let trans_b = ctx.int("transB", 0) != 0;
        let (n, bk) = if trans_b {
            (b.shape[0], b.shape[1])
        } else {
            (b.shape[1], b.shape[0])
        };
        if bk != k {
            return Err(ctx.shape_err(format!("B {:?} does not take {k} inputs", b.shape)));
        }
        let mut weight = if trans_b {
            b.f32s.clone()
        } else {
            transpose(&b.f32s, k, n)
        };
        weight.iter_mut().for_each(|w| *w *= alpha);
        let bias = match self.constant(ctx, 2)? {
            None => None,
            Some(c) if c.f32s.len() == n => Some(c.f32s.iter().map(|v| v * beta).collect()),
            Some(c) if c.f32s.len() == 1 => Some(vec![c.f32s[0] * beta; n]),
            Some(c) => {
                return Err(ctx.shape_err(format!("C has shape {:?}; expected [{n}]", c.shape)))
            }
        };
        let op = Op::Dense(Dense {
            weight,
            out_features: n,
            in_features: k,
            bias,
            relu: false,
        });
        self.push(ctx, op, vec![x], vec![1, n])
    }

    fn matmul(&mut self, ctx: &Ctx) -> Result<()> {
        let (x, k) = self.dense_input(ctx)?;
        let b = self.required_constant(ctx, 1)?;
        if b.shape.len() != 2 || b.shape[0] != k || b.f32s.is_empty() {
            return Err(ctx.shape_err(format!("B {:?} is not a float [{k}, N] matrix", b.shape)));
        }
        let n = b.shape[1];
        let op = Op::Dense(Dense {
            weight: transpose(&b.f32s, k, n),
            out_features: n,
            in_features: k,
            bias: None,
            relu: false,
        });
        self.push(ctx, op, vec![x], vec![1, n])
    }

    /// Reads `(starts, ends, axes, steps)` from inputs (opset ≥ 10) or attributes (older).
    fn slice_params(&self, ctx: &Ctx) -> Result<[Vec<i64>; 4]> {
        if ctx.node.input.len() >= 3 {
            let get = |i| -> Result<Option<Vec<i64>>> {
                Ok(self.constant(ctx, i)?.map(|c| c.i64s.clone()))
            };
            let starts = get(1)?.unwrap_or_default();
            let ends = get(2)?.unwrap_or_default();
            let axes = get(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = get(4)?.unwrap_or_else(|| vec![1; starts.len()]);
            Ok([starts, ends, axes, steps])
        } else {
            let starts = ctx.ints("starts").unwrap_or_default();
            let ends = ctx.ints("ends").unwrap_or_default();
            let axes = ctx
                .ints("axes")
                .unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = vec![1; starts.len()];
            Ok([starts, ends, axes, steps])
        }
    }

    fn slice(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        let [starts, ends, axes, steps] = self.slice_params(ctx)?;
        if starts.len() != ends.len() || starts.len() != axes.len() || starts.len() != steps.len() {
            return Err(ctx.shape_err("starts, ends, axes and steps differ in length"));
        }
        let mut start = vec![0; s.len()];
        let mut step = vec![1; s.len()];
        let mut shape = s.clone();
        for i in 0..starts.len() {
            let axis = if axes[i] < 0 {
                axes[i] + s.len() as i64
            } else {
                axes[i]
            };
            if axis < 0 || axis as usize >= s.len() {
                return Err(ctx.shape_err(format!("axis {} out of range", axes[i])));
            }
            let a = axis as usize;
            if steps[i] <= 0 {
                return Err(ctx.unsupported(format!(
                    "step {} on axis {a}: only positive steps",
                    steps[i]
                )));
            }
            let dim = s[a] as i64;
            let clamp = |v: i64| if v < 0 { (v + dim).max(0) } else { v.min(dim) };
            let (b, e) = (clamp(starts[i]), clamp(ends[i]));
            let count = if e > b {
                (e - b + steps[i] - 1) / steps[i]
            } else {
                0
            };
            start[a] = b as usize;
            step[a] = steps[i] as usize;
            shape[a] = count as usize;
        }
        if shape.contains(&0) {
            return Err(ctx.shape_err(format!("slice of {s:?} is empty")));
        }
        self.push(ctx, Op::Slice(Slice { start, step }), vec![x], shape)
    }

    fn pad(&mut self, ctx: &Ctx) -> Result<()> {
        let x = self.activation(ctx, 0)?;
        let s = self.shape(x).to_vec();
        let mode = ctx.string("mode").unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(ctx.unsupported(format!("mode '{mode}': only constant padding")));
        }
        let (raw, value, axes) = if ctx.node.input.len() >= 2 {
            let raw = self.required_constant(ctx, 1)?.i64s.clone();
            let value = self
                .constant(ctx, 2)?
                .map(|c| c.f32s.first().copied().unwrap_or(0.0))
                .unwrap_or(0.0);
            let axes = self.constant(ctx, 3)?.map(|c| c.i64s.clone());
            (raw, value, axes)
        } else {
            (
                ctx.ints("pads").unwrap_or_default(),
                ctx.float("value", 0.0),
                None,
            )
        };
        let axes: Vec<usize> = axes
            .unwrap_or_else(|| (0..s.len() as i64).collect())
            .into_iter()
            .map(|a| {
                if a < 0 {
                    (a + s.len() as i64) as usize
                } else {
                    a as usize
                }
            })
            .collect();
        if raw.len() != 2 * axes.len() || axes.iter().any(|&a| a >= s.len()) {
            return Err(ctx.shape_err(format!("pads {raw:?} do not fit shape {s:?}")));
        }
        if raw.iter().any(|&p| p < 0) {
            return Err(ctx.unsupported("negative pads (cropping)"));
        }
        let mut pads = vec![(0, 0); s.len()];
        let mut shape = s.clone();
        for (i, &a) in axes.iter().enumerate() {
            pads[a] = (raw[i] as usize, raw[i + axes.len()] as usize);
            shape[a] += pads[a].0 + pads[a].1;
        }
        self.push(ctx, Op::Pad(Pad { pads, value }), vec![x], shape)
    }
}

/// Output size of a 2-D window op, refusing windows that do not fit.
fn window_output(
    ctx: &Ctx,
    in_hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    pads: [usize; 4],
    ceil: bool,
) -> Result<[usize; 2]> {
    let mut out = [0; 2];
    for a in 0..2 {
        let padded = in_hw[a] + pads[a] + pads[a + 2];
        let span = (kernel[a] - 1) * dilation[a] + 1;
        if padded < span {
            return Err(ctx.shape_err(format!(
                "window {span} is larger than the padded input {padded}"
            )));
        }
        let room = padded - span;
        out[a] = if ceil {
            room.div_ceil(stride[a])
        } else {
            room / stride[a]
        } + 1;
        // ONNX: with ceil_mode the last window must start inside the input or its left padding.
        if ceil && (out[a] - 1) * stride[a] >= in_hw[a] + pads[a] {
            out[a] -= 1;
        }
    }
    Ok(out)
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
