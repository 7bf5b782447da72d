//! Cross-layer equalisation (Nagel et al., "Data-Free Quantization", 2019) where it is exact:
//! a conv whose ReLU output feeds only the next conv. `ReLU(x / s) = ReLU(x) / s` for
//! `s > 0`, so dividing the first conv's output channel `c` (weights and bias) by `s_c` and
//! multiplying the second conv's input channel `c` by it leaves the float model unchanged,
//! while the weight ranges of the pair meet in the middle: `s_c = √(r1_c / r2_c)`, with
//! `r1_c` the largest |weight| of the first conv's channel `c` and `r2_c` that of the second
//! conv's input channel `c`.

use crate::graph::{Conv, Graph, Op};

/// Equalises every exact pair in `graph`; returns how many.
pub fn equalize(graph: &mut Graph) -> usize {
    let consumers = |graph: &Graph, v: usize| {
        graph
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.contains(&v))
            .map(|(i, _)| i)
            .collect::<Vec<_>>()
    };
    let mut pairs = 0;
    for a in 0..graph.nodes.len() {
        let Op::Conv(first) = &graph.nodes[a].op else {
            continue;
        };
        let out = graph.nodes[a].output;
        // A ReLU output that no residual sum reads: only then is the scaling invisible.
        if !first.relu || first.fused_add || out == graph.output {
            continue;
        }
        let readers = consumers(graph, out);
        let [b] = readers[..] else {
            continue;
        };
        let second_reads_only_it =
            graph.nodes[b].inputs[0] == out && graph.nodes[b].inputs[1..].iter().all(|&v| v != out);
        let Op::Conv(second) = &graph.nodes[b].op else {
            continue;
        };
        if !second_reads_only_it || second.weight_shape[1] != first.weight_shape[0] {
            continue;
        }
        let scales = pair_scales(first, second);
        if let Op::Conv(first) = &mut graph.nodes[a].op {
            scale_outputs(first, &scales);
        }
        if let Op::Conv(second) = &mut graph.nodes[b].op {
            scale_inputs(second, &scales);
        }
        pairs += 1;
    }
    pairs
}

fn pair_scales(first: &Conv, second: &Conv) -> Vec<f64> {
    let [oc, ..] = first.weight_shape;
    let per_out = first.weight.len() / oc;
    let [oc2, ic2, kh, kw] = second.weight_shape;
    (0..oc)
        .map(|c| {
            let r1 = first.weight[c * per_out..(c + 1) * per_out]
                .iter()
                .fold(0f64, |m, &w| m.max(w.abs() as f64));
            let r2 = (0..oc2)
                .flat_map(|o| {
                    let start = (o * ic2 + c) * kh * kw;
                    second.weight[start..start + kh * kw].iter()
                })
                .fold(0f64, |m, &w| m.max(w.abs() as f64));
            if r1 > 0.0 && r2 > 0.0 {
                (r1 / r2).sqrt()
            } else {
                1.0
            }
        })
        .collect()
}

fn scale_outputs(conv: &mut Conv, scales: &[f64]) {
    let per_out = conv.weight.len() / scales.len();
    for (c, &s) in scales.iter().enumerate() {
        for w in &mut conv.weight[c * per_out..(c + 1) * per_out] {
            *w = (*w as f64 / s) as f32;
        }
        if let Some(b) = conv.bias.as_mut() {
            b[c] = (b[c] as f64 / s) as f32;
        }
    }
}

fn scale_inputs(conv: &mut Conv, scales: &[f64]) {
    let [oc, ic, kh, kw] = conv.weight_shape;
    for o in 0..oc {
        for (c, &s) in scales.iter().enumerate().take(ic) {
            let start = (o * ic + c) * kh * kw;
            for w in &mut conv.weight[start..start + kh * kw] {
                *w = (*w as f64 * s) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{self, Arch, SynthOptions};

    /// A synthetic ResNet-18 (BatchNorm folded): equalised, its float logits stay the same
    /// to float rounding, while the weight ranges of each pair meet.
    #[test]
    fn equalisation_leaves_the_float_output_unchanged() {
        let mut opts = SynthOptions::new(Arch::ResNet18);
        opts.input_size = 32;
        opts.classes = 10;
        let model = synth::build(&opts).unwrap();
        let dir = std::env::temp_dir().join(format!("kestrel-cle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r18.onnx");
        synth::write(&model, &path).unwrap();
        let mut graph = crate::onnx_import::import_path(&path).unwrap();
        crate::passes::fold_and_fuse(&mut graph);
        let before = graph.clone();
        let pairs = equalize(&mut graph);
        // One conv → ReLU → conv pair per BasicBlock.
        assert_eq!(pairs, 8);
        let x: Vec<f32> = (0..3 * 32 * 32)
            .map(|i| ((i * 7919 % 255) as f32 / 255.0 - 0.5) * 4.0)
            .collect();
        let (a, b) = (
            crate::reference::run(&before, &x).unwrap(),
            crate::reference::run(&graph, &x).unwrap(),
        );
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-4 * scale.max(1.0), "{a:?} vs {b:?}");
        }
        // Something moved: the first pair's weights differ.
        let changed = before
            .nodes
            .iter()
            .zip(&graph.nodes)
            .filter(|(p, q)| match (&p.op, &q.op) {
                (Op::Conv(p), Op::Conv(q)) => p.weight != q.weight,
                _ => false,
            })
            .count();
        assert_eq!(changed, 2 * pairs);
    }
}
