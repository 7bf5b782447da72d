//! Graph rewrites that turn an imported ResNet into the shape the int8 runtime executes:
//! spatial zero padding folded into the conv that reads it, BatchNorm folded into the
//! preceding Conv/Dense (or, where none can absorb it, a per-channel affine op), a 1×1 conv
//! on a 1×1 map turned into a dense layer, ReLU fused into its producer, and the block's
//! residual Add (with its ReLU) fused into the block's last conv, so that a BasicBlock is
//! two conv calls.

use serde::Serialize;

use crate::graph::{ChannelAffine, Dense, Graph, Op};

/// What [`fold_and_fuse`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// BatchNormalization nodes folded into a Conv or Dense.
    pub bn_folded: usize,
    /// BatchNormalization nodes left in the graph (no foldable producer).
    pub bn_left: usize,
    /// BatchNormalization nodes no conv could absorb, run as a per-channel affine op.
    pub bn_affine: usize,
    /// Zero `Pad` nodes folded into the padding of the conv reading them.
    pub pads_folded: usize,
    /// 1×1 convs on 1×1 maps (a classifier written as a conv) turned into dense layers.
    pub convs_to_dense: usize,
    /// Biases created by folding a BatchNorm into a Conv/Dense that had none.
    pub biases_created: usize,
    /// Parameters in those created biases (one per output channel).
    pub bias_params_created: usize,
    /// ReLU nodes fused into their producer.
    pub relu_fused: usize,
    /// Residual Add nodes fused into the block's last conv.
    pub add_fused: usize,
}

/// Runs all passes in order and returns what they did.
pub fn fold_and_fuse(graph: &mut Graph) -> PassReport {
    let mut report = PassReport::default();
    while let Some(pad) = find_foldable_pad(graph) {
        fold_pad(graph, pad);
        report.pads_folded += 1;
    }
    while let Some(bn) = find_foldable_bn(graph) {
        if let Some(channels) = fold_bn(graph, bn) {
            report.biases_created += 1;
            report.bias_params_created += channels;
        }
        report.bn_folded += 1;
    }
    report.bn_affine = batch_norms_to_affine(graph);
    report.convs_to_dense = convs_on_vectors_to_dense(graph);
    while let Some(relu) = find_fusable_relu(graph) {
        fuse_into_producer(graph, relu, |op| match op {
            Op::Conv(c) => c.relu = true,
            Op::Dense(d) => d.relu = true,
            Op::Add { relu } => *relu = true,
            Op::ChannelAffine(a) => a.relu = true,
            _ => {
                unreachable!("find_fusable_relu only selects Conv, Dense, Add and affine producers")
            }
        });
        report.relu_fused += 1;
    }
    while let Some((add, conv)) = find_fusable_add(graph) {
        fuse_add(graph, add, conv);
        report.add_fused += 1;
    }
    // A dense layer's output is a vector: a reshape of it changes no data.
    while let Some(reshape) = find_reshape_of_dense(graph) {
        fuse_into_producer(graph, reshape, |_| {});
    }
    report.bn_left = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::BatchNorm(_)))
        .count();
    graph.compact();
    report
}

/// The producer of node `i`'s first input, when that node's output is read by `i` alone.
fn sole_producer(graph: &Graph, i: usize) -> Option<usize> {
    let x = *graph.nodes[i].inputs.first()?;
    let producer = graph.producers()[x]?;
    let readers = &graph.consumers()[x];
    (readers.len() == 1 && x != graph.output).then_some(producer)
}

/// A `Pad` of zeros on height and width only, read by one conv alone.
fn find_foldable_pad(graph: &Graph) -> Option<usize> {
    let consumers = graph.consumers();
    (0..graph.nodes.len()).find(|&i| {
        let n = &graph.nodes[i];
        let Op::Pad(p) = &n.op else { return false };
        let spatial_zeros =
            p.value == 0.0 && p.pads.len() == 4 && p.pads[0] == (0, 0) && p.pads[1] == (0, 0);
        let readers = &consumers[n.output];
        spatial_zeros
            && n.output != graph.output
            && readers.len() == 1
            && matches!(&graph.nodes[readers[0]].op, Op::Conv(_))
            && graph.nodes[readers[0]].inputs[0] == n.output
    })
}

/// The conv reads the Pad's input with the Pad's rows and columns added to its own padding
/// (the conv pads with zeros too: exact).
fn fold_pad(graph: &mut Graph, pad: usize) {
    let node = graph.nodes.remove(pad);
    let Op::Pad(p) = &node.op else {
        unreachable!("find_foldable_pad selects Pad nodes")
    };
    let x = node.inputs[0];
    let conv = graph
        .nodes
        .iter_mut()
        .find(|n| n.inputs.first() == Some(&node.output))
        .expect("checked by find_foldable_pad");
    if let Op::Conv(c) = &mut conv.op {
        c.pads[0] += p.pads[2].0;
        c.pads[1] += p.pads[3].0;
        c.pads[2] += p.pads[2].1;
        c.pads[3] += p.pads[3].1;
    }
    conv.inputs[0] = x;
}

/// Every BatchNorm left after folding becomes a per-channel affine op; returns how many.
fn batch_norms_to_affine(graph: &mut Graph) -> usize {
    let mut count = 0;
    for node in &mut graph.nodes {
        if let Op::BatchNorm(bn) = &node.op {
            let (scale, offset) = bn
                .affine()
                .into_iter()
                .map(|(m, o)| (m as f32, o as f32))
                .unzip();
            node.op = Op::ChannelAffine(ChannelAffine {
                scale,
                offset,
                relu: false,
            });
            count += 1;
        }
    }
    count
}

/// A 1×1 conv with no padding on a 1×1 map computes a dense layer (timm's ResNet v2 head):
/// int8 runs it as one, with int32 logits when it is the last layer.
///
/// Only a classifier: the conv's output is the graph's, or only a reshape reads it (a 1×1
/// conv inside a block on a 1×1 map stays a conv, where the residual Add can fuse into it).
fn convs_on_vectors_to_dense(graph: &mut Graph) -> usize {
    let mut count = 0;
    let consumers = graph.consumers();
    for i in 0..graph.nodes.len() {
        let out = graph.nodes[i].output;
        let readers = &consumers[out];
        let classifier = out == graph.output
            || (readers.len() == 1 && matches!(graph.nodes[readers[0]].op, Op::Reshape));
        if !classifier {
            continue;
        }
        let in_shape = &graph.values[graph.nodes[i].inputs[0]].shape;
        let on_vector = in_shape.len() == 4 && in_shape[2] == 1 && in_shape[3] == 1;
        let node = &mut graph.nodes[i];
        let Op::Conv(c) = &node.op else { continue };
        if !on_vector || c.kernel() != [1, 1] || c.pads != [0; 4] || c.fused_add || c.relu {
            continue;
        }
        node.op = Op::Dense(Dense {
            weight: c.weight.clone(),
            out_features: c.out_channels(),
            in_features: c.in_channels(),
            bias: c.bias.clone(),
            relu: false,
        });
        count += 1;
    }
    count
}

fn find_reshape_of_dense(graph: &Graph) -> Option<usize> {
    (0..graph.nodes.len()).find(|&i| {
        matches!(graph.nodes[i].op, Op::Reshape)
            && sole_producer(graph, i).is_some_and(|p| matches!(graph.nodes[p].op, Op::Dense(_)))
    })
}

fn find_foldable_bn(graph: &Graph) -> Option<usize> {
    (0..graph.nodes.len()).find(|&i| {
        matches!(graph.nodes[i].op, Op::BatchNorm(_))
            && sole_producer(graph, i).is_some_and(|p| match &graph.nodes[p].op {
                Op::Conv(c) => !c.relu && !c.fused_add,
                Op::Dense(d) => !d.relu,
                _ => false,
            })
    })
}

/// Folds BatchNorm node `bn` into its producer; returns the size of the bias it had to
/// create, if the producer had none.
fn fold_bn(graph: &mut Graph, bn: usize) -> Option<usize> {
    let producer = sole_producer(graph, bn).expect("checked by find_foldable_bn");
    let Op::BatchNorm(norm) = graph.nodes[bn].op.clone() else {
        unreachable!("find_foldable_bn selects BatchNorm nodes")
    };
    let affine = norm.affine();
    let (weight, bias) = match &mut graph.nodes[producer].op {
        Op::Conv(c) => (&mut c.weight, &mut c.bias),
        Op::Dense(d) => (&mut d.weight, &mut d.bias),
        _ => unreachable!("find_foldable_bn selects Conv and Dense producers"),
    };
    let created = bias.is_none();
    let per_channel = weight.len() / affine.len();
    for (c, &(m, _)) in affine.iter().enumerate() {
        for w in &mut weight[c * per_channel..(c + 1) * per_channel] {
            *w = (*w as f64 * m) as f32;
        }
    }
    let bias = bias.get_or_insert_with(|| vec![0.0; affine.len()]);
    for (b, &(m, offset)) in bias.iter_mut().zip(&affine) {
        *b = (*b as f64 * m + offset) as f32;
    }
    bypass(graph, bn, producer);
    created.then_some(affine.len())
}

fn find_fusable_relu(graph: &Graph) -> Option<usize> {
    (0..graph.nodes.len()).find(|&i| {
        matches!(graph.nodes[i].op, Op::Relu)
            && sole_producer(graph, i).is_some_and(|p| match &graph.nodes[p].op {
                Op::Conv(c) => !c.relu,
                Op::Dense(d) => !d.relu,
                Op::Add { relu } => !relu,
                Op::ChannelAffine(a) => !a.relu,
                _ => false,
            })
    })
}

fn fuse_into_producer(graph: &mut Graph, node: usize, apply: impl FnOnce(&mut Op)) {
    let producer = sole_producer(graph, node).expect("checked by the finder");
    apply(&mut graph.nodes[producer].op);
    bypass(graph, node, producer);
}

/// Removes node `node` (a unary op reading `producer`'s output): `producer` writes its output.
fn bypass(graph: &mut Graph, node: usize, producer: usize) {
    let removed = graph.nodes.remove(node);
    let producer = if producer > node {
        producer - 1
    } else {
        producer
    };
    graph.nodes[producer].output = removed.output;
}

/// An Add whose operand is a plain Conv read only by it, at no scale of its own:
/// `(add node, conv node)`.
///
/// When both operands qualify (a projection shortcut), the conv that runs later is chosen:
/// the main path's last conv in the exporters' usual order.
fn find_fusable_add(graph: &Graph) -> Option<(usize, usize)> {
    let producers = graph.producers();
    let consumers = graph.consumers();
    graph.nodes.iter().enumerate().find_map(|(i, n)| {
        if !matches!(n.op, Op::Add { .. }) {
            return None;
        }
        n.inputs
            .iter()
            .filter_map(|&v| {
                let p = producers[v]?;
                let plain_conv =
                    matches!(&graph.nodes[p].op, Op::Conv(c) if !c.relu && !c.fused_add);
                // A model that states the conv's own output scale (QDQ) rounds there before
                // the Add: the Add stays apart so int8 rounds where the model does.
                let rounded_apart = graph.values[v].quant.is_some();
                (plain_conv && !rounded_apart && consumers[v].len() == 1 && v != graph.output)
                    .then_some(p)
            })
            .max()
            .map(|conv| (i, conv))
    })
}

fn fuse_add(graph: &mut Graph, add: usize, conv: usize) {
    // The conv takes the Add's place in the order: the shortcut operand may be computed
    // after the conv (exporters often emit the option-A Slice/Pad just before the Add).
    let mut fused = graph.nodes.remove(conv);
    let add = add - 1; // `conv` produces an operand of `add`, so it came before it
    let conv_out = fused.output;
    let add_node = std::mem::replace(&mut graph.nodes[add], fused.clone());
    let Op::Add { relu } = add_node.op else {
        unreachable!("find_fusable_add selects Add nodes")
    };
    let residual = *add_node
        .inputs
        .iter()
        .find(|&&v| v != conv_out)
        .unwrap_or(&conv_out);
    if let Op::Conv(c) = &mut fused.op {
        c.fused_add = true;
        c.relu = relu;
    }
    fused.inputs.push(residual);
    fused.output = add_node.output;
    graph.nodes[add] = fused;
}
