//! `kestrel inspect`: what a `.kes` file holds.

use serde::Serialize;

use kestrel_format::{liveness, DType, FormatError, KesFile, OpKind};

#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    pub index: u32,
    pub dtype: &'static str,
    /// NHWC.
    pub shape: [u32; 4],
    pub scale: f32,
    pub zero_point: i32,
    pub offset: u32,
    pub bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub op: &'static str,
    pub input: TensorReport,
    pub output: TensorReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residual: Option<TensorReport>,
    pub kernel: [u8; 2],
    pub stride: [u8; 2],
    pub relu: bool,
    pub macs: u64,
    pub weights_bytes: usize,
    /// Conv weights: `portable` or `packed` (the SIMD micro-kernels' layout).
    pub layout: &'static str,
    /// A packed conv's own scratch: `(arena offset, bytes)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch: Option<(u32, u32)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub file_bytes: usize,
    pub arena_bytes: u64,
    /// The most bytes live at any step, the convs' scratch included: no plan of these
    /// tensors and panels uses less.
    pub arena_lower_bound_bytes: u64,
    /// The same without the scratch: what the activations alone need.
    pub activations_lower_bound_bytes: u64,
    /// Arena bytes the packed convs share as scratch (older files), else 0.
    pub scratch_bytes: u64,
    /// The largest scratch any one conv was lent in space dead while it runs.
    pub largest_op_scratch_bytes: u64,
    pub weights_bytes: usize,
    pub macs: u64,
    pub input_shape: [u32; 4],
    pub classes: u32,
    pub labels: Vec<String>,
    pub metadata: Vec<(String, String)>,
    pub ops: Vec<OpReport>,
    /// The kernels this machine runs the file on, and what it costs when the file is
    /// packed for another CPU family (its convs then run the portable tile).
    pub kernels_here: String,
    /// The micro-kernel the packed convs run on them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_tile_here: Option<String>,
    /// What runs its 3×3 stride-1 convs by Winograd here, and how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winograd_here: Option<String>,
    /// What its convs on f16 weights run on here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f16_tile_here: Option<String>,
    /// What its int8-weight convs on int16 tensors run on here (16x8).
    pub int16_tile_here: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_mismatch: Option<String>,
}

pub fn inspect(bytes: &[u8]) -> Result<InspectReport, FormatError> {
    let f = KesFile::parse(bytes)?;
    let model = kestrel_runtime::Model::parse(bytes).ok();
    let here = kestrel_runtime::CpuFeatures::available().best();
    let tensor = |i: u32| {
        let t = f.tensor(i).expect("validated by parse");
        TensorReport {
            index: i,
            dtype: match t.dtype {
                DType::I8 => "i8",
                DType::I32 => "i32",
                DType::I16 => "i16",
            },
            shape: t.dims,
            scale: t.scale,
            zero_point: t.zero_point,
            offset: t.offset,
            bytes: t.bytes(),
        }
    };
    let mut ops = Vec::new();
    for i in 0..f.op_count() {
        let op = f.op(i).expect("validated by parse");
        let out = tensor(op.output);
        let input = tensor(op.input);
        let macs = match op.kind {
            OpKind::Conv => {
                out.shape.iter().map(|&d| d as u64).product::<u64>()
                    * op.kernel[0] as u64
                    * op.kernel[1] as u64
                    * input.shape[3] as u64
            }
            // The conv's: its map, not the pooled output.
            OpKind::ConvMaxPool => {
                let x = f.tensor(op.input).expect("validated by parse");
                let y = f.tensor(op.output).expect("validated by parse");
                op.streamed(&x, &y).map_or(0, |s| {
                    let c = s.conv;
                    (c.out_h * c.out_w * c.out_c * c.kernel[0] * c.kernel[1] * c.in_c) as u64
                })
            }
            OpKind::Dense => op.weights.len() as u64,
            _ => 0,
        };
        ops.push(OpReport {
            op: op.kind.name(),
            relu: op.out_min as i32 == out.zero_point && out.zero_point > -128,
            residual: op.residual.map(|r| tensor(r.tensor)),
            input,
            output: out,
            kernel: op.kernel,
            stride: op.stride,
            macs,
            weights_bytes: op.weights.len() + op.params.len() * kestrel_format::CHANNEL_PARAMS_LEN,
            layout: op.layout.name(),
            scratch: op.scratch.map(|s| (s.offset, s.bytes)),
        });
    }
    let out = f.tensor(f.output).expect("validated by parse");
    Ok(InspectReport {
        file_bytes: bytes.len(),
        arena_bytes: f.plan.arena_bytes,
        scratch_bytes: f.plan.scratch_bytes,
        largest_op_scratch_bytes: ops
            .iter()
            .filter_map(|o| o.scratch)
            .map(|s| s.1 as u64)
            .max()
            .unwrap_or(0),
        arena_lower_bound_bytes: f.plan.lower_bound_bytes,
        activations_lower_bound_bytes: activations_lower_bound(&f),
        weights_bytes: f.weights_bytes(),
        macs: ops.iter().map(|o| o.macs).sum(),
        input_shape: f.tensor(f.input).expect("validated by parse").dims,
        classes: out.dims[3],
        labels: (0..f.label_count())
            .filter_map(|i| f.label(i).map(str::to_owned))
            .collect(),
        metadata: f
            .metadata()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        ops,
        kernels_here: here.name().to_string(),
        conv_tile_here: model
            .as_ref()
            .and_then(|m| m.conv_tile(here))
            .map(|t| t.name().to_string()),
        winograd_here: model
            .as_ref()
            .and_then(|m| m.winograd_convs(here))
            .map(|(name, n)| format!("{name} on {n} convs")),
        f16_tile_here: model
            .as_ref()
            .and_then(|m| m.f16_tile(here))
            .map(str::to_string),
        int16_tile_here: model
            .as_ref()
            .and_then(|m| m.int16_tile(here))
            .map(str::to_string),
        kernel_mismatch: model
            .as_ref()
            .and_then(|m| m.kernel_mismatch(here))
            .map(|m| m.to_string()),
    })
}

/// The most tensor bytes live at any step (tensors sharing storage counted once).
fn activations_lower_bound(f: &KesFile) -> u64 {
    let ranges: Vec<(u64, u64)> = (0..f.tensor_count())
        .map(|t| {
            let t = f.tensor(t).expect("validated by parse");
            (t.offset as u64, t.offset as u64 + t.bytes() as u64)
        })
        .collect();
    let ops: Vec<liveness::Operands> = (0..f.op_count())
        .map(|i| {
            let op = f.op(i).expect("validated by parse");
            (op.input, op.residual.map(|r| r.tensor), op.output)
        })
        .collect();
    let life = liveness::lifetimes(ranges.len(), f.input, f.output, &ops);
    liveness::peak(&ranges, &life, |_| 0)
}

pub fn print(r: &InspectReport) {
    println!(
        "file         {} bytes (weights {} bytes)",
        r.file_bytes, r.weights_bytes
    );
    match &r.kernel_mismatch {
        Some(m) => println!(
            "kernels      warning: on this machine ({}) {m}",
            r.kernels_here
        ),
        None => println!("kernels      {} on this machine", r.kernels_here),
    }
    if let Some(tile) = &r.conv_tile_here {
        println!("conv tile    {tile}");
    }
    if let Some(w) = &r.winograd_here {
        println!("winograd     {w} (3×3, stride 1)");
    }
    if let Some(tile) = &r.f16_tile_here {
        println!("f16 tile     {tile}");
    }
    if let Some(tile) = &r.int16_tile_here {
        println!("16x8 tile    {tile}");
    }
    let ratio = |bound: u64| r.arena_bytes as f64 / bound.max(1) as f64;
    println!(
        "arena        {} bytes (lower bound: activations {}, ratio {:.3}; with the convs' scratch {}, ratio {:.3})",
        r.arena_bytes,
        r.activations_lower_bound_bytes,
        ratio(r.activations_lower_bound_bytes),
        r.arena_lower_bound_bytes,
        ratio(r.arena_lower_bound_bytes)
    );
    if r.scratch_bytes > 0 {
        println!(
            "scratch      {} bytes of the arena shared by the packed convs (packed input panels)",
            r.scratch_bytes
        );
    }
    if r.largest_op_scratch_bytes > 0 {
        println!(
            "scratch      up to {} bytes per packed conv or streamed stem, each in arena space dead while it runs",
            r.largest_op_scratch_bytes
        );
    }
    println!("compute      {:.2} M MACs", r.macs as f64 / 1e6);
    let input_type = r.ops.first().map_or("i8", |o| o.input.dtype);
    println!(
        "input        {:?} NHWC {input_type}, {} classes",
        r.input_shape, r.classes
    );
    for (k, v) in &r.metadata {
        println!("{k:<12} {v}");
    }
    println!(
        "{:<4} {:<16} {:<12} {:<20} {:<20} {:>12} {:>5} {:>10}",
        "#", "op", "type", "in (scale, zp)", "out (scale, zp)", "shape", "relu", "MACs"
    );
    for (i, o) in r.ops.iter().enumerate() {
        // The output's type, and the weights' where they are f16 (a layer kept wider).
        let precision = if o.layout == "f16" {
            format!("{}/f16", o.output.dtype)
        } else {
            o.output.dtype.to_string()
        };
        println!(
            "{:<4} {:<16} {:<12} {:<20} {:<20} {:>12} {:>5} {:>10}{}",
            i,
            o.op,
            precision,
            format!("{:.4}, {}", o.input.scale, o.input.zero_point),
            format!("{:.4}, {}", o.output.scale, o.output.zero_point),
            format!(
                "{}x{}x{}",
                o.output.shape[1], o.output.shape[2], o.output.shape[3]
            ),
            if o.relu { "yes" } else { "" },
            o.macs,
            o.residual
                .as_ref()
                .map_or(String::new(), |r| format!("  + residual t{}", r.index))
        );
    }
}
