//! Float reference executor: runs a [`Graph`] (folded or not) on one NCHW f32 input.
//!
//! Straightforward on purpose, but not slow: convolutions are im2col + SGEMM
//! (matrixmultiply), since calibration runs this over hundreds of images.
//! It is the float truth that int8 results are compared against.

use crate::graph::{Conv, Dense, Graph, Node, Op, Pad, Pool, Slice};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("input has {got} values, the model expects {expected} ({shape:?})")]
    InputSize {
        got: usize,
        expected: usize,
        shape: Vec<usize>,
    },
}

/// Runs the graph and returns the output tensor's values.
pub fn run(graph: &Graph, input: &[f32]) -> Result<Vec<f32>, RunError> {
    let mut output = Vec::new();
    run_observed(graph, input, |_, value, data| {
        if value == graph.output {
            output = data.to_vec();
        }
    })?;
    Ok(output)
}

/// Runs the graph, calling `observe(node_index, value_id, data)` after each node with the
/// value it produced (calibration and per-layer comparisons hook in here).
pub fn run_observed(
    graph: &Graph,
    input: &[f32],
    mut observe: impl FnMut(usize, usize, &[f32]),
) -> Result<(), RunError> {
    let expected = graph.values[graph.input].len();
    if input.len() != expected {
        return Err(RunError::InputSize {
            got: input.len(),
            expected,
            shape: graph.values[graph.input].shape.clone(),
        });
    }
    let last_use = graph.last_use();
    let mut values: Vec<Option<Vec<f32>>> = vec![None; graph.values.len()];
    values[graph.input] = Some(stated_rounding(graph, graph.input, input.to_vec()));
    for (i, node) in graph.nodes.iter().enumerate() {
        let out = stated_rounding(graph, node.output, execute(graph, node, &values));
        observe(i, node.output, &out);
        values[node.output] = Some(out);
        // Free what no later node reads, so large models run in little memory.
        for &v in &node.inputs {
            if last_use[v] == Some(i) && v != graph.output {
                values[v] = None;
            }
        }
    }
    Ok(())
}

/// A value whose quantisation the model states (QDQ) is rounded to it, as the model's own
/// `QuantizeLinear`/`DequantizeLinear` pair does: the float graph of a QDQ model is that model.
fn stated_rounding(graph: &Graph, value: usize, mut data: Vec<f32>) -> Vec<f32> {
    if let Some(q) = graph.values[value].quant {
        data.iter_mut().for_each(|v| *v = q.fake_quant(*v));
    }
    data
}

/// Executes one node on the values computed so far (indexed by value id).
pub fn execute(graph: &Graph, node: &Node, values: &[Option<Vec<f32>>]) -> Vec<f32> {
    let arg = |k: usize| -> &[f32] {
        values[node.inputs[k]]
            .as_deref()
            .expect("the graph is in execution order")
    };
    let in_shape = &graph.values[node.inputs[0]].shape;
    let out_shape = &graph.values[node.output].shape;
    match &node.op {
        Op::Conv(c) => {
            let residual = c.fused_add.then(|| arg(1));
            conv2d(c, arg(0), in_shape, out_shape, residual)
        }
        Op::BatchNorm(bn) => {
            let plane = in_shape[2..].iter().product::<usize>();
            let affine = bn.affine();
            let mut out = arg(0).to_vec();
            for (c, chunk) in out.chunks_mut(plane).enumerate() {
                let (m, o) = affine[c % affine.len()];
                chunk
                    .iter_mut()
                    .for_each(|v| *v = (*v as f64 * m + o) as f32);
            }
            out
        }
        Op::ChannelAffine(a) => {
            let plane = in_shape[2..].iter().product::<usize>();
            let mut out = arg(0).to_vec();
            for (c, chunk) in out.chunks_mut(plane).enumerate() {
                let (m, o) = (a.scale[c], a.offset[c]);
                for v in chunk {
                    let y = *v * m + o;
                    *v = if a.relu { y.max(0.0) } else { y };
                }
            }
            out
        }
        Op::Relu => arg(0).iter().map(|v| v.max(0.0)).collect(),
        Op::Add { relu } => {
            let sum = arg(0).iter().zip(arg(1)).map(|(a, b)| a + b);
            if *relu {
                sum.map(|v| v.max(0.0)).collect()
            } else {
                sum.collect()
            }
        }
        Op::MaxPool(p) => pool2d(p, arg(0), in_shape, out_shape, true),
        Op::AvgPool(p) => pool2d(p, arg(0), in_shape, out_shape, false),
        Op::GlobalAvgPool => {
            let plane = in_shape[2] * in_shape[3];
            arg(0)
                .chunks(plane)
                .map(|ch| (ch.iter().map(|&v| v as f64).sum::<f64>() / plane as f64) as f32)
                .collect()
        }
        Op::Reshape => arg(0).to_vec(),
        Op::Dense(d) => dense(d, arg(0)),
        Op::Slice(s) => slice(s, arg(0), in_shape, out_shape),
        Op::Pad(p) => pad(p, arg(0), in_shape, out_shape),
    }
}

/// im2col + GEMM: `out[oc, p] = Σ_k W[oc, k] · col[k, p]` with `k` over `(ic, kh, kw)`.
fn conv2d(
    c: &Conv,
    x: &[f32],
    in_shape: &[usize],
    out_shape: &[usize],
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let (ic, ih, iw) = (in_shape[1], in_shape[2], in_shape[3]);
    let (oc, oh, ow) = (out_shape[1], out_shape[2], out_shape[3]);
    let [kh, kw] = c.kernel();
    let k = ic * kh * kw;
    let pixels = oh * ow;
    let pointwise = kh == 1 && kw == 1 && c.stride == [1, 1] && c.pads == [0; 4];
    let col_storage;
    let col: &[f32] = if pointwise {
        x
    } else {
        let mut col = vec![0.0f32; k * pixels];
        for ci in 0..ic {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut col[((ci * kh + ky) * kw + kx) * pixels..][..pixels];
                    for oy in 0..oh {
                        let iy =
                            (oy * c.stride[0] + ky * c.dilation[0]) as isize - c.pads[0] as isize;
                        if iy < 0 || iy >= ih as isize {
                            continue;
                        }
                        let src = &x[(ci * ih + iy as usize) * iw..][..iw];
                        for ox in 0..ow {
                            let ix = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                - c.pads[1] as isize;
                            if ix >= 0 && ix < iw as isize {
                                row[oy * ow + ox] = src[ix as usize];
                            }
                        }
                    }
                }
            }
        }
        col_storage = col;
        &col_storage
    };
    let mut out = vec![0.0f32; oc * pixels];
    // Row-major: A = W [oc × k], B = col [k × pixels], C = out [oc × pixels].
    unsafe {
        matrixmultiply::sgemm(
            oc,
            k,
            pixels,
            1.0,
            c.weight.as_ptr(),
            k as isize,
            1,
            col.as_ptr(),
            pixels as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            pixels as isize,
            1,
        );
    }
    for (o, plane) in out.chunks_mut(pixels).enumerate() {
        let b = c.bias.as_ref().map_or(0.0, |b| b[o]);
        let res = residual.map(|r| &r[o * pixels..(o + 1) * pixels]);
        for (p, v) in plane.iter_mut().enumerate() {
            let mut acc = *v + b;
            if let Some(r) = res {
                acc += r[p];
            }
            *v = if c.relu { acc.max(0.0) } else { acc };
        }
    }
    out
}

fn pool2d(p: &Pool, x: &[f32], in_shape: &[usize], out_shape: &[usize], max: bool) -> Vec<f32> {
    let (ch, ih, iw) = (in_shape[1], in_shape[2], in_shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let mut out = Vec::with_capacity(ch * oh * ow);
    for c in 0..ch {
        let plane = &x[c * ih * iw..][..ih * iw];
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * p.stride[0]) as isize - p.pads[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.pads[1] as isize;
                let mut best = f32::NEG_INFINITY;
                let mut sum = 0.0f64;
                let mut count = 0usize;
                let mut window = 0usize;
                for ky in 0..p.kernel[0] as isize {
                    for kx in 0..p.kernel[1] as isize {
                        let (y, xx) = (y0 + ky, x0 + kx);
                        // Cells in the padded area (not past it) count for count_include_pad.
                        if y < ih as isize + p.pads[2] as isize
                            && xx < iw as isize + p.pads[3] as isize
                        {
                            window += 1;
                        }
                        if y < 0 || xx < 0 || y >= ih as isize || xx >= iw as isize {
                            continue;
                        }
                        let v = plane[y as usize * iw + xx as usize];
                        best = best.max(v);
                        sum += v as f64;
                        count += 1;
                    }
                }
                out.push(if max {
                    best
                } else {
                    let div = if p.count_include_pad { window } else { count };
                    (sum / div.max(1) as f64) as f32
                });
            }
        }
    }
    out
}

fn dense(d: &Dense, x: &[f32]) -> Vec<f32> {
    (0..d.out_features)
        .map(|o| {
            let w = &d.weight[o * d.in_features..][..d.in_features];
            let acc = w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
                + d.bias.as_ref().map_or(0.0, |b| b[o]);
            if d.relu {
                acc.max(0.0)
            } else {
                acc
            }
        })
        .collect()
}

/// Row-major strides of a shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Calls `f(output_index, input_index)` for every output element, where the input index
/// is `Σ (start[a] + i[a]·step[a]) · in_stride[a]` — shared by Slice (and Pad's inverse).
fn for_each_index(out_shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let total: usize = out_shape.iter().product();
    let mut idx = vec![0usize; out_shape.len()];
    for o in 0..total {
        f(o, &idx);
        for a in (0..idx.len()).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

fn slice(s: &Slice, x: &[f32], in_shape: &[usize], out_shape: &[usize]) -> Vec<f32> {
    let st = strides(in_shape);
    let mut out = vec![0.0; out_shape.iter().product()];
    for_each_index(out_shape, |o, idx| {
        let i: usize = (0..idx.len())
            .map(|a| (s.start[a] + idx[a] * s.step[a]) * st[a])
            .sum();
        out[o] = x[i];
    });
    out
}

fn pad(p: &Pad, x: &[f32], in_shape: &[usize], out_shape: &[usize]) -> Vec<f32> {
    let st = strides(in_shape);
    let mut out = vec![0.0; out_shape.iter().product()];
    for_each_index(out_shape, |o, idx| {
        let mut i = 0;
        for a in 0..idx.len() {
            let (before, _) = p.pads[a];
            if idx[a] < before || idx[a] - before >= in_shape[a] {
                out[o] = p.value;
                return;
            }
            i += (idx[a] - before) * st[a];
        }
        out[o] = x[i];
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(weight_shape: [usize; 4], stride: usize, pads: [usize; 4]) -> Conv {
        let n: usize = weight_shape.iter().product();
        Conv {
            weight: (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect(),
            weight_shape,
            bias: Some((0..weight_shape[0]).map(|i| i as f32 * 0.5).collect()),
            stride: [stride; 2],
            dilation: [1, 1],
            pads,
            fused_add: false,
            relu: false,
        }
    }

    /// Direct-loop convolution, the definition im2col+GEMM must agree with.
    fn naive(c: &Conv, x: &[f32], ins: &[usize], outs: &[usize]) -> Vec<f32> {
        let [oc, ic, kh, kw] = c.weight_shape;
        let mut out = vec![0.0; oc * outs[2] * outs[3]];
        for o in 0..oc {
            for oy in 0..outs[2] {
                for ox in 0..outs[3] {
                    let mut acc = c.bias.as_ref().unwrap()[o];
                    for i in 0..ic {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let y = (oy * c.stride[0] + ky) as isize - c.pads[0] as isize;
                                let xx = (ox * c.stride[1] + kx) as isize - c.pads[1] as isize;
                                if y >= 0
                                    && xx >= 0
                                    && (y as usize) < ins[2]
                                    && (xx as usize) < ins[3]
                                {
                                    acc += c.weight[((o * ic + i) * kh + ky) * kw + kx]
                                        * x[(i * ins[2] + y as usize) * ins[3] + xx as usize];
                                }
                            }
                        }
                    }
                    out[(o * outs[2] + oy) * outs[3] + ox] = acc;
                }
            }
        }
        out
    }

    #[test]
    fn conv_matches_direct_definition_on_odd_shapes() {
        // (weight shape, stride, pads [t, l, b, r], input h, w): 1×1, 3×3 s2 asymmetric pads, 7×7 s2.
        let cases = [
            ([5, 3, 1, 1], 1, [0, 0, 0, 0], 4, 5),
            ([4, 3, 3, 3], 2, [0, 0, 1, 1], 7, 6),
            ([6, 5, 7, 7], 2, [3, 3, 3, 3], 11, 9),
            ([3, 2, 3, 3], 1, [1, 1, 1, 1], 5, 5),
        ];
        for (ws, stride, pads, h, w) in cases {
            let c = conv(ws, stride, pads);
            let ins = [1, ws[1], h, w];
            let oh = (h + pads[0] + pads[2] - ws[2]) / stride + 1;
            let ow = (w + pads[1] + pads[3] - ws[3]) / stride + 1;
            let outs = [1, ws[0], oh, ow];
            let x: Vec<f32> = (0..ins.iter().product::<usize>())
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0)
                .collect();
            let got = conv2d(&c, &x, &ins, &outs, None);
            let want = naive(&c, &x, &ins, &outs);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{ws:?}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn avg_pool_divisor_follows_count_include_pad() {
        let x = vec![1.0; 9];
        let mut p = Pool {
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1, 1, 1, 1],
            count_include_pad: false,
        };
        let excl = pool2d(&p, &x, &[1, 1, 3, 3], &[1, 1, 3, 3], false);
        assert!(excl.iter().all(|&v| (v - 1.0).abs() < 1e-6));
        p.count_include_pad = true;
        let incl = pool2d(&p, &x, &[1, 1, 3, 3], &[1, 1, 3, 3], false);
        assert!((incl[0] - 4.0 / 9.0).abs() < 1e-6, "corner {}", incl[0]);
        assert!((incl[4] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn slice_then_pad_is_the_option_a_shortcut() {
        // [1, 2, 4, 4] → x[:, :, ::2, ::2] → pad 1 zero channel each side → [1, 4, 2, 2].
        let x: Vec<f32> = (0..32).map(|v| v as f32).collect();
        let s = Slice {
            start: vec![0; 4],
            step: vec![1, 1, 2, 2],
        };
        let sub = slice(&s, &x, &[1, 2, 4, 4], &[1, 2, 2, 2]);
        assert_eq!(sub, vec![0.0, 2.0, 8.0, 10.0, 16.0, 18.0, 24.0, 26.0]);
        let p = Pad {
            pads: vec![(0, 0), (1, 1), (0, 0), (0, 0)],
            value: 0.0,
        };
        let padded = pad(&p, &sub, &[1, 2, 2, 2], &[1, 4, 2, 2]);
        assert_eq!(&padded[..4], &[0.0; 4]);
        assert_eq!(&padded[4..12], &sub[..]);
        assert_eq!(&padded[12..], &[0.0; 4]);
    }
}
