//! Synthetic ResNets written as ONNX, BatchNorm unfused, with deterministic weights.
//!
//! No ImageNet weights can be downloaded here, so this is how ResNet-18/34/50/101/152 at
//! 224×224 (and the CIFAR ResNets) are exercised: the topology is exactly torchvision's
//! (or the CIFAR paper's option-A network), the weights are seeded Kaiming-normal, and,
//! given real images, each BatchNorm's statistics are measured on them in execution order
//! so that activations keep the scale a trained network has. The classifier is then
//! centred on the images' mean feature so that predictions vary from image to image.
//! The weights classify nothing: they are synthetic, and every report says so.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
};

use crate::graph::Op;
use crate::onnx_import;
use crate::preprocess::Preprocess;
use crate::reference;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    ResNet20,
    ResNet32,
    ResNet44,
    ResNet56,
}

impl Arch {
    pub const ALL: [Arch; 9] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
        Arch::ResNet20,
        Arch::ResNet32,
        Arch::ResNet44,
        Arch::ResNet56,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::ResNet152 => "resnet152",
            Arch::ResNet20 => "resnet20",
            Arch::ResNet32 => "resnet32",
            Arch::ResNet44 => "resnet44",
            Arch::ResNet56 => "resnet56",
        }
    }

    /// CIFAR ResNets (6n+2 layers, option-A shortcuts, 32×32 inputs).
    pub fn is_cifar(self) -> bool {
        matches!(
            self,
            Arch::ResNet20 | Arch::ResNet32 | Arch::ResNet44 | Arch::ResNet56
        )
    }

    pub fn default_input_size(self) -> usize {
        if self.is_cifar() {
            32
        } else {
            224
        }
    }

    pub fn default_classes(self) -> usize {
        if self.is_cifar() {
            10
        } else {
            1000
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
                format!("unknown arch '{s}' (expected one of: {})", names.join(", "))
            })
    }
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub arch: Arch,
    pub classes: usize,
    pub input_size: usize,
    pub seed: u64,
}

impl SynthOptions {
    pub fn new(arch: Arch) -> Self {
        SynthOptions {
            arch,
            classes: arch.default_classes(),
            input_size: arch.default_input_size(),
            seed: 0,
        }
    }

    /// The preprocessing the synthetic model declares: ImageNet normalisation, bilinear
    /// resize of whatever image is given to the input size.
    pub fn preprocess(&self) -> Preprocess {
        crate::check::imagenet_preprocess([self.input_size, self.input_size])
    }
}

/// An ONNX model as tract-onnx's protobuf types describe it.
pub type OnnxModel = pb::ModelProto;

/// CIFAR-10 class names, used as labels when a synthetic model has 10 classes.
pub const CIFAR10_LABELS: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Builds the ONNX model with BatchNorm statistics at their defaults (mean 0, variance 1).
pub fn build(opts: &SynthOptions) -> anyhow::Result<pb::ModelProto> {
    anyhow::ensure!(opts.classes > 0, "--classes must be at least 1");
    let min = if opts.arch.is_cifar() { 4 } else { 32 };
    anyhow::ensure!(
        opts.input_size >= min,
        "--input-size {} is too small for {} (at least {min})",
        opts.input_size,
        opts.arch
    );
    let mut b = Builder::new(opts.seed ^ arch_salt(opts.arch));
    let features = if opts.arch.is_cifar() {
        cifar_body(&mut b, opts.arch)
    } else {
        imagenet_body(&mut b, opts.arch)
    };
    let pooled = b.node("GlobalAveragePool", "avgpool", &[&features.0], vec![]);
    let flat = b.node("Flatten", "flatten", &[&pooled], vec![int_attr("axis", 1)]);
    let bound = 1.0 / (features.1 as f32).sqrt();
    let w: Vec<f32> = (0..opts.classes * features.1)
        .map(|_| b.rng.gen_range(-bound..bound))
        .collect();
    let w = b.initializer("fc.weight", &[opts.classes, features.1], w);
    let bias = b.initializer("fc.bias", &[opts.classes], vec![0.0; opts.classes]);
    let logits = b.node(
        "Gemm",
        "fc",
        &[&flat, &w, &bias],
        vec![int_attr("transB", 1)],
    );

    let mut meta = vec![
        (
            "architecture".to_string(),
            format!("{} (synthetic weights)", opts.arch),
        ),
        (
            "source".to_string(),
            format!(
                "kestrel synth --arch {} --seed {} (synthetic: deterministic weights, not trained)",
                opts.arch, opts.seed
            ),
        ),
    ];
    meta.extend(opts.preprocess().to_metadata());
    if opts.classes == CIFAR10_LABELS.len() {
        meta.push(("labels".to_string(), CIFAR10_LABELS.join(",")));
    }
    let size = opts.input_size as i64;
    Ok(pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "kestrel synth".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(pb::GraphProto {
            name: opts.arch.name().into(),
            node: b.nodes,
            initializer: b.initializers,
            input: vec![value_info("input", &[1, 3, size, size])],
            output: vec![value_info(&logits, &[1, opts.classes as i64])],
            ..Default::default()
        }),
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// What BatchNorm calibration measured, for the report.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BnCalibration {
    pub images: usize,
    pub batch_norms: usize,
    /// Largest |logit| of the calibrated model over the images.
    pub max_abs_logit: f32,
    /// How many distinct classes the calibrated model predicts over the images.
    pub distinct_predictions: usize,
}

/// Sets every BatchNorm's mean and variance from `images` (preprocessed NCHW inputs),
/// in execution order, and centres the classifier on the images' mean feature.
pub fn calibrate_bn(
    model: &mut pb::ModelProto,
    images: &[Vec<f32>],
) -> anyhow::Result<BnCalibration> {
    anyhow::ensure!(
        !images.is_empty(),
        "BatchNorm calibration needs at least one image"
    );
    let mut graph = onnx_import::import_proto(model, None)?;
    let last_use = graph.last_use();
    let mut per_image: Vec<Vec<Option<Vec<f32>>>> = images
        .iter()
        .map(|img| {
            let mut v = vec![None; graph.values.len()];
            v[graph.input] = Some(img.clone());
            v
        })
        .collect();
    let mut updates: Vec<(String, Vec<f32>)> = Vec::new();
    let mut report = BnCalibration {
        images: images.len(),
        ..Default::default()
    };
    for i in 0..graph.nodes.len() {
        let input = graph.nodes[i].inputs[0];
        let shape = graph.values[input].shape.clone();
        let name = graph.nodes[i].name.clone();
        match &mut graph.nodes[i].op {
            Op::BatchNorm(bn) => {
                let (mean, var) = channel_stats(
                    per_image.iter().map(|v| v[input].as_deref().unwrap_or(&[])),
                    &shape,
                );
                updates.push((format!("{name}.running_mean"), mean.clone()));
                updates.push((format!("{name}.running_var"), var.clone()));
                bn.mean = mean;
                bn.var = var;
                report.batch_norms += 1;
            }
            Op::Dense(d) if name == "fc" => {
                let (mean, _) = channel_stats(
                    per_image.iter().map(|v| v[input].as_deref().unwrap_or(&[])),
                    &shape,
                );
                let bias: Vec<f32> = (0..d.out_features)
                    .map(|o| {
                        -d.weight[o * d.in_features..][..d.in_features]
                            .iter()
                            .zip(&mean)
                            .map(|(w, m)| w * m)
                            .sum::<f32>()
                    })
                    .collect();
                updates.push(("fc.bias".to_string(), bias.clone()));
                d.bias = Some(bias);
            }
            _ => {}
        }
        let node = &graph.nodes[i];
        for values in &mut per_image {
            let out = reference::execute(&graph, node, values);
            values[node.output] = Some(out);
            for &v in &node.inputs {
                if last_use[v] == Some(i) && v != graph.output {
                    values[v] = None;
                }
            }
        }
    }
    let mut predictions = std::collections::BTreeSet::new();
    for values in &per_image {
        let logits = values[graph.output].as_deref().unwrap_or(&[]);
        report.max_abs_logit = logits
            .iter()
            .fold(report.max_abs_logit, |m, v| m.max(v.abs()));
        predictions.insert(crate::check::argmax(logits));
    }
    report.distinct_predictions = predictions.len();
    let g = model.graph.as_mut().expect("built with a graph");
    for (name, data) in updates {
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or_else(|| {
                anyhow::anyhow!("initializer '{name}' missing from the synthetic model")
            })?;
        t.raw_data = f32_bytes(&data);
    }
    Ok(report)
}

/// Per-channel mean and (population) variance over a batch of `[1, C, …]` tensors.
fn channel_stats<'a>(
    batch: impl Iterator<Item = &'a [f32]>,
    shape: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let c = shape[1];
    let plane: usize = shape[2..].iter().product();
    let mut sum = vec![0.0f64; c];
    let mut sq = vec![0.0f64; c];
    let mut n = 0usize;
    for t in batch {
        for (ch, chunk) in t.chunks(plane).enumerate() {
            for &v in chunk {
                sum[ch] += v as f64;
                sq[ch] += (v as f64) * (v as f64);
            }
        }
        n += plane;
    }
    let n = n.max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let var = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| ((q / n - (s / n) * (s / n)).max(0.0)) as f32)
        .collect();
    (mean, var)
}

/// Encodes and writes the model.
pub fn write(model: &pb::ModelProto, path: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let bytes = prost::Message::encode_to_vec(model);
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn arch_salt(arch: Arch) -> u64 {
    arch.name().bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Returns the last feature map's name and channel count.
fn imagenet_body(b: &mut Builder, arch: Arch) -> (String, usize) {
    let (bottleneck, blocks): (bool, [usize; 4]) = match arch {
        Arch::ResNet18 => (false, [2, 2, 2, 2]),
        Arch::ResNet34 => (false, [3, 4, 6, 3]),
        Arch::ResNet50 => (true, [3, 4, 6, 3]),
        Arch::ResNet101 => (true, [3, 4, 23, 3]),
        Arch::ResNet152 => (true, [3, 8, 36, 3]),
        _ => unreachable!("CIFAR archs take cifar_body"),
    };
    let expansion = if bottleneck { 4 } else { 1 };
    let x = b.conv("conv1", "input", 3, 64, 7, 2, 3);
    let x = b.bn("bn1", &x, 64, 1.0);
    let x = b.relu("relu", &x);
    let mut x = b.node(
        "MaxPool",
        "maxpool",
        &[&x],
        vec![
            ints_attr("kernel_shape", &[3, 3]),
            ints_attr("strides", &[2, 2]),
            ints_attr("pads", &[1, 1, 1, 1]),
        ],
    );
    let mut cin = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        for block in 0..n {
            let p = format!("layer{}.{block}", stage + 1);
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            let cout = planes * expansion;
            let shortcut = if stride != 1 || cin != cout {
                let s = b.conv(&format!("{p}.downsample.0"), &x, cin, cout, 1, stride, 0);
                b.bn(&format!("{p}.downsample.1"), &s, cout, 1.0)
            } else {
                x.clone()
            };
            let y = if bottleneck {
                // torchvision (v1.5): the stride sits on the 3×3 conv.
                let y = b.conv(&format!("{p}.conv1"), &x, cin, planes, 1, 1, 0);
                let y = b.bn(&format!("{p}.bn1"), &y, planes, 1.0);
                let y = b.relu(&format!("{p}.relu1"), &y);
                let y = b.conv(&format!("{p}.conv2"), &y, planes, planes, 3, stride, 1);
                let y = b.bn(&format!("{p}.bn2"), &y, planes, 1.0);
                let y = b.relu(&format!("{p}.relu2"), &y);
                let y = b.conv(&format!("{p}.conv3"), &y, planes, cout, 1, 1, 0);
                b.bn(&format!("{p}.bn3"), &y, cout, RESIDUAL_GAMMA)
            } else {
                let y = b.conv(&format!("{p}.conv1"), &x, cin, planes, 3, stride, 1);
                let y = b.bn(&format!("{p}.bn1"), &y, planes, 1.0);
                let y = b.relu(&format!("{p}.relu1"), &y);
                let y = b.conv(&format!("{p}.conv2"), &y, planes, planes, 3, 1, 1);
                b.bn(&format!("{p}.bn2"), &y, planes, RESIDUAL_GAMMA)
            };
            let sum = b.node("Add", &format!("{p}.add"), &[&y, &shortcut], vec![]);
            x = b.relu(&format!("{p}.relu"), &sum);
            cin = cout;
        }
    }
    (x, cin)
}

/// The CIFAR ResNet of He et al. (2015), option-A shortcuts: stride-2 subsampling and
/// zero channels, written as `Slice` + `Pad` as common exporters do.
fn cifar_body(b: &mut Builder, arch: Arch) -> (String, usize) {
    let n = match arch {
        Arch::ResNet20 => 3,
        Arch::ResNet32 => 5,
        Arch::ResNet44 => 7,
        Arch::ResNet56 => 9,
        _ => unreachable!("ImageNet archs take imagenet_body"),
    };
    let x = b.conv("conv1", "input", 3, 16, 3, 1, 1);
    let x = b.bn("bn1", &x, 16, 1.0);
    let mut x = b.relu("relu", &x);
    let mut cin = 16;
    for stage in 0..3 {
        let planes = 16 << stage;
        for block in 0..n {
            let p = format!("layer{}.{block}", stage + 1);
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            let shortcut = if stride != 1 || cin != planes {
                let starts = b.int_initializer(&format!("{p}.shortcut.slice_starts"), &[0, 0]);
                let ends =
                    b.int_initializer(&format!("{p}.shortcut.slice_ends"), &[i64::MAX, i64::MAX]);
                let axes = b.int_initializer(&format!("{p}.shortcut.slice_axes"), &[2, 3]);
                let steps = b.int_initializer(&format!("{p}.shortcut.slice_steps"), &[2, 2]);
                let sub = b.node(
                    "Slice",
                    &format!("{p}.shortcut.subsample"),
                    &[&x, &starts, &ends, &axes, &steps],
                    vec![],
                );
                let side = ((planes - cin) / 2) as i64;
                let pads = b.int_initializer(
                    &format!("{p}.shortcut.pads"),
                    &[0, side, 0, 0, 0, side, 0, 0],
                );
                let zero = b.initializer(&format!("{p}.shortcut.pad_value"), &[], vec![0.0]);
                b.node(
                    "Pad",
                    &format!("{p}.shortcut.pad"),
                    &[&sub, &pads, &zero],
                    vec![string_attr("mode", "constant")],
                )
            } else {
                x.clone()
            };
            let y = b.conv(&format!("{p}.conv1"), &x, cin, planes, 3, stride, 1);
            let y = b.bn(&format!("{p}.bn1"), &y, planes, 1.0);
            let y = b.relu(&format!("{p}.relu1"), &y);
            let y = b.conv(&format!("{p}.conv2"), &y, planes, planes, 3, 1, 1);
            let y = b.bn(&format!("{p}.bn2"), &y, planes, RESIDUAL_GAMMA);
            let sum = b.node("Add", &format!("{p}.add"), &[&y, &shortcut], vec![]);
            x = b.relu(&format!("{p}.relu2"), &sum);
            cin = planes;
        }
    }
    (x, cin)
}

/// Scale of each block's last BatchNorm: below 1 so that the residual stream of a deep
/// synthetic network grows slowly, as it does in a trained one.
const RESIDUAL_GAMMA: f32 = 0.5;

struct Builder {
    rng: ChaCha8Rng,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
}

impl Builder {
    fn new(seed: u64) -> Self {
        Builder {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: Vec::new(),
            initializers: Vec::new(),
        }
    }

    fn normal(&mut self) -> f32 {
        // Box–Muller: rand's core has no normal distribution.
        let u1: f64 = self.rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = self.rng.gen();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data: Vec<f32>) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Float as i32,
            raw_data: f32_bytes(&data),
            ..Default::default()
        });
        name.into()
    }

    fn int_initializer(&mut self, name: &str, data: &[i64]) -> String {
        self.initializers.push(pb::TensorProto {
            name: name.into(),
            dims: vec![data.len() as i64],
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name.into()
    }

    /// Adds a node whose single output is named after the node.
    fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attribute: Vec<pb::AttributeProto>,
    ) -> String {
        self.nodes.push(pb::NodeProto {
            name: name.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![name.into()],
            attribute,
            ..Default::default()
        });
        name.into()
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> String {
        // Kaiming normal, fan-out, as torchvision initialises ResNets.
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        let w: Vec<f32> = (0..cout * cin * k * k)
            .map(|_| self.normal() * std)
            .collect();
        let w = self.initializer(&format!("{name}.weight"), &[cout, cin, k, k], w);
        let (k, s, p) = (k as i64, stride as i64, pad as i64);
        self.node(
            "Conv",
            name,
            &[x, &w],
            vec![
                ints_attr("kernel_shape", &[k, k]),
                ints_attr("strides", &[s, s]),
                ints_attr("pads", &[p, p, p, p]),
            ],
        )
    }

    fn bn(&mut self, name: &str, x: &str, c: usize, gamma: f32) -> String {
        let scale = self.initializer(&format!("{name}.weight"), &[c], vec![gamma; c]);
        let bias = self.initializer(&format!("{name}.bias"), &[c], vec![0.0; c]);
        let mean = self.initializer(&format!("{name}.running_mean"), &[c], vec![0.0; c]);
        let var = self.initializer(&format!("{name}.running_var"), &[c], vec![1.0; c]);
        self.node(
            "BatchNormalization",
            name,
            &[x, &scale, &bias, &mean, &var],
            vec![float_attr("epsilon", 1e-5)],
        )
    }

    fn relu(&mut self, name: &str, x: &str) -> String {
        self.node("Relu", name, &[x], vec![])
    }
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn float_attr(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn string_attr(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}
