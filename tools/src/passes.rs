//! Graph rewrites that turn an imported ResNet into the shape the int8 runtime executes:
//! BatchNorm folded into the preceding Conv/Dense, ReLU fused into its producer, and the
//! block's residual Add (with its ReLU) fused into the block's last conv, so that a
//! BasicBlock is two conv calls.

use serde::Serialize;

use crate::graph::{Graph, Op};

/// What [`fold_and_fuse`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// BatchNormalization nodes folded into a Conv or Dense.
    pub bn_folded: usize,
    /// BatchNormalization nodes left in the graph (no foldable producer).
    pub bn_left: usize,
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
    while let Some(bn) = find_foldable_bn(graph) {
        if let Some(channels) = fold_bn(graph, bn) {
            report.biases_created += 1;
            report.bias_params_created += channels;
        }
        report.bn_folded += 1;
    }
    while let Some(relu) = find_fusable_relu(graph) {
        fuse_into_producer(graph, relu, |op| match op {
            Op::Conv(c) => c.relu = true,
            Op::Dense(d) => d.relu = true,
            Op::Add { relu } => *relu = true,
            _ => unreachable!("find_fusable_relu only selects Conv, Dense and Add producers"),
        });
        report.relu_fused += 1;
    }
    while let Some((add, conv)) = find_fusable_add(graph) {
        fuse_add(graph, add, conv);
        report.add_fused += 1;
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

/// An Add whose operand is a plain Conv read only by it: `(add node, conv node)`.
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
                (plain_conv && consumers[v].len() == 1 && v != graph.output).then_some(p)
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
