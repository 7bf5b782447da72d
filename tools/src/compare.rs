//! `kestrel compare`: where accuracy goes. Runs the float model and the `.kes` side by side
//! and measures, per layer, the signal-to-quantisation-noise ratio of the int8 activations
//! against the float ones, and how often the two agree on the top class.

use std::path::Path;

use serde::Serialize;

use crate::check::argmax;
use crate::compile;
use crate::dataset;
use crate::preprocess::Preprocess;
use crate::reference;

#[derive(Clone, Debug, Serialize)]
pub struct LayerSqnr {
    pub index: usize,
    pub op: String,
    /// The float node this op computes.
    pub name: String,
    /// NCHW, as in the ONNX model.
    pub shape: Vec<usize>,
    /// The output's element type: `i8`, or `i16` for a layer kept wider.
    pub precision: &'static str,
    pub sqnr_db: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    pub model: String,
    pub kes: String,
    pub images: usize,
    /// Fraction of images where float and int8 pick the same class.
    pub top1_agreement: f64,
    /// The images where they do not.
    pub flipped: Vec<crate::eval::Flip>,
    pub layers: Vec<LayerSqnr>,
}

/// Σ signal², Σ noise² per layer, and agreement count.
struct Sums {
    signal: Vec<f64>,
    noise: Vec<f64>,
    agree: usize,
    flipped: Vec<crate::eval::Flip>,
}

pub fn compare(
    onnx: &Path,
    kes: &Path,
    data: &Path,
    limit: usize,
) -> anyhow::Result<CompareReport> {
    let bytes =
        std::fs::read(kes).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", kes.display()))?;
    let model = kestrel_runtime::Model::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", kes.display()))?;
    let pre = Preprocess::from_info(&model.file().preprocess);
    let mut prepared = compile::prepare(onnx, None)?;
    // An equalised file's inner layers carry per-channel rescaled values (its output does
    // not): compare them with the float graph equalised the same way.
    let equalized = model
        .file()
        .metadata()
        .any(|(k, v)| k == "equalized_pairs" && v != "0");
    if equalized {
        crate::equalize::equalize(&mut prepared.graph);
    }
    let graph = &prepared.graph;
    let ops = graph.nodes.len();
    let op_of_node = op_of_node(model.file(), ops).ok_or_else(|| {
        anyhow::anyhow!(
            "{} has {} ops that do not compute the folded ONNX graph's {ops} nodes: not compiled from this model",
            kes.display(),
            model.file().op_count(),
        )
    })?;
    let images = dataset::spread(&dataset::list(data)?, limit);
    let parts = crate::parallel::map_chunks(&images, |part| {
        let mut sums = Sums {
            signal: vec![0.0; ops],
            noise: vec![0.0; ops],
            agree: 0,
            flipped: Vec::new(),
        };
        let mut arena = vec![0u8; model.arena_bytes()];
        for img in part {
            let x = pre.load(&img.path)?;
            let mut float_out: Vec<Vec<f32>> = vec![Vec::new(); ops];
            reference::run_observed(graph, &x, |i, _, data| float_out[i] = data.to_vec())?;
            let mut session = kestrel_runtime::Session::new(&model, &mut arena)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            session
                .set_input_nchw_f32(&x)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for (i, float) in float_out.iter().enumerate() {
                // A streamed stem's conv map is never stored: its pool's output is.
                let Some(j) = op_of_node[i] else { continue };
                session.run_op(j);
                let op = model.file().op(j).expect("validated");
                let (info, raw) = session.tensor(op.output).expect("validated");
                let q = dequantize_nchw(&info, raw);
                for (f, d) in float.iter().zip(&q) {
                    sums.signal[i] += (*f as f64).powi(2);
                    sums.noise[i] += (*f as f64 - *d as f64).powi(2);
                }
                if i + 1 == ops {
                    let (f, k) = (argmax(float), argmax(&q));
                    sums.agree += (f == k) as usize;
                    if f != k {
                        sums.flipped.push(crate::eval::Flip {
                            image: img.path.display().to_string(),
                            float_class: f,
                            quantized_class: k,
                        });
                    }
                }
            }
        }
        Ok(sums)
    })?;
    let mut total = Sums {
        signal: vec![0.0; ops],
        noise: vec![0.0; ops],
        agree: 0,
        flipped: Vec::new(),
    };
    for p in parts {
        total.agree += p.agree;
        total.flipped.extend(p.flipped);
        for (t, s) in total.signal.iter_mut().zip(&p.signal) {
            *t += s;
        }
        for (t, n) in total.noise.iter_mut().zip(&p.noise) {
            *t += n;
        }
    }
    let op = |i: usize| op_of_node[i].and_then(|j| model.file().op(j));
    let layers = graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| op(*i).is_some_and(|op| op.kind != kestrel_format::OpKind::Reshape))
        .map(|(i, n)| LayerSqnr {
            index: i,
            op: op(i).map(|o| o.kind.name().to_string()).unwrap_or_default(),
            name: n.name.clone(),
            shape: graph.values[n.output].shape.clone(),
            precision: op(i)
                .and_then(|o| model.file().tensor(o.output))
                .map_or("", |t| match t.dtype {
                    kestrel_format::DType::I8 => "i8",
                    kestrel_format::DType::I16 => "i16",
                    kestrel_format::DType::I32 => "i32",
                }),
            sqnr_db: 10.0 * (total.signal[i] / total.noise[i].max(1e-30)).log10(),
        })
        .collect();
    Ok(CompareReport {
        model: onnx.display().to_string(),
        kes: kes.display().to_string(),
        images: images.len(),
        top1_agreement: total.agree as f64 / images.len().max(1) as f64,
        flipped: total.flipped,
        layers,
    })
}

/// The op that computes each of the float graph's `nodes` nodes: one op per node, but a
/// streamed stem computes two (its conv's node gets `None`, its pool's the op); `None`
/// if the ops do not add up to the nodes.
fn op_of_node(file: &kestrel_format::KesFile, nodes: usize) -> Option<Vec<Option<u32>>> {
    let mut map = Vec::with_capacity(nodes);
    for j in 0..file.op_count() {
        if file.op(j)?.kind == kestrel_format::OpKind::ConvMaxPool {
            map.push(None);
        }
        map.push(Some(j));
    }
    (map.len() == nodes).then_some(map)
}

/// A tensor's real values in NCHW order (the float graph's layout).
pub fn dequantize_nchw(info: &kestrel_format::TensorInfo, raw: &[u8]) -> Vec<f32> {
    let [_, h, w, c] = info.dims.map(|d| d as usize);
    let value = |i: usize| match info.dtype {
        kestrel_format::DType::I8 => (raw[i] as i8 as i32 - info.zero_point) as f32 * info.scale,
        kestrel_format::DType::I16 => {
            i16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]) as f32 * info.scale
        }
        kestrel_format::DType::I32 => {
            i32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]) as f32
                * info.scale
        }
    };
    let mut out = vec![0.0; h * w * c];
    for p in 0..h * w {
        for ch in 0..c {
            out[ch * h * w + p] = value(p * c + ch);
        }
    }
    out
}

/// Draws per-layer SQNR as an SVG line chart.
pub fn write_svg(report: &CompareReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let max_db = report.layers.iter().map(|l| l.sqnr_db).fold(10.0, f64::max) * 1.1;
    let n = report.layers.len().max(2);
    let title = format!(
        "Per-layer SQNR, int8 vs float ({} images, top-1 agreement {:.1}%)",
        report.images,
        100.0 * report.top1_agreement
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(48)
        .build_cartesian_2d(0..n - 1, 0.0..max_db)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("layer (execution order)")
        .y_desc("SQNR (dB)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            report
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| (i, l.sqnr_db)),
            &BLUE,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            report
                .layers
                .iter()
                .enumerate()
                .map(|(i, l)| Circle::new((i, l.sqnr_db), 3, BLUE.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The text `kestrel compare` prints.
pub fn print(report: &CompareReport) {
    println!(
        "{} vs {} on {} images: top-1 agreement {:.2}% ({} flipped)",
        report.kes,
        report.model,
        report.images,
        100.0 * report.top1_agreement,
        report.flipped.len()
    );
    println!(
        "{:<4} {:<16} {:<28} {:>18} {:>5} {:>9}",
        "#", "op", "float node", "shape (NCHW)", "type", "SQNR dB"
    );
    for l in &report.layers {
        println!(
            "{:<4} {:<16} {:<28} {:>18} {:>5} {:>9.2}",
            l.index,
            l.op,
            l.name,
            format!("{:?}", l.shape),
            l.precision,
            l.sqnr_db
        );
    }
    const SHOWN: usize = 10;
    for f in report.flipped.iter().take(SHOWN) {
        println!(
            "flipped: {} (float class {}, int {})",
            f.image, f.float_class, f.quantized_class
        );
    }
    if report.flipped.len() > SHOWN {
        println!(
            "flipped: … and {} more (--json lists all)",
            report.flipped.len() - SHOWN
        );
    }
}
