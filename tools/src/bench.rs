//! `kestrel bench`: latency of a `.kes` on this machine, whole model and per layer.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use kestrel_runtime::pool::ThreadPool;
use kestrel_runtime::{Isa, Model, Session};

use crate::compile;
use crate::inspect;
use crate::preprocess::{synthetic_rgb, Preprocess};
use crate::tract_ref::TractModel;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub iters: usize,
    pub warmup: usize,
    /// `None`: the fastest this CPU runs.
    pub kernels: Option<Isa>,
    pub threads: usize,
    pub layers: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerTime {
    pub index: usize,
    pub op: &'static str,
    pub shape: [u32; 4],
    pub macs: u64,
    pub ms_median: f64,
    pub gmacs_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub kernels: String,
    /// The micro-kernel the packed convs ran (`sdot_4x16c4`, …), if the file has any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conv_tile: Option<String>,
    /// What ran the 3×3 stride-1 convs by Winograd, and how many of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winograd: Option<String>,
    /// What the convs on f16 weights ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f16_tile: Option<String>,
    /// What the int8-weight convs on int16 tensors (16x8) ran on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int16_tile: Option<String>,
    pub threads: usize,
    pub iters: usize,
    pub latency_ms_median: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_min: f64,
    pub macs: u64,
    pub gmacs_per_s: f64,
    pub arena_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<LayerTime>>,
    /// Set when the file's convs have no micro-kernel on these kernels (portable tile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_mismatch: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// The worker pool for `--threads N` (none for one thread), checked for a sane count.
pub fn thread_pool(threads: usize, model: &Model) -> anyhow::Result<Option<ThreadPool>> {
    anyhow::ensure!(
        (1..=256).contains(&threads),
        "--threads {threads}: give 1 to 256"
    );
    if threads == 1 {
        return Ok(None);
    }
    Ok(Some(
        ThreadPool::new(threads, model.scratch_bytes(), false)
            .context("starting the worker threads")?,
    ))
}

pub fn bench(name: &str, bytes: &[u8], opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(opts.iters > 0, "--iters must be at least 1");
    let model = Model::parse(bytes).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let report = inspect::inspect(bytes).context("inspect")?;
    let pre = Preprocess::from_info(&model.file().preprocess);
    let [h, w] = pre.size;
    let input = pre.apply(&synthetic_rgb(w, h, 7), w, h);
    let pool = thread_pool(opts.threads, &model)?;
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = match opts.kernels {
        Some(isa) => Session::with_kernels(&model, &mut arena, isa),
        None => Session::new(&model, &mut arena),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(pool) = &pool {
        session.set_parallel(pool);
    }
    let kernels = session.kernels();
    session
        .set_input_nchw_f32(&input)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // The memory plan reuses the input's bytes after it dies: write it before each run
    // (outside the timed part).
    let input = session.input_mut().to_vec();
    for _ in 0..opts.warmup {
        session.input_mut().copy_from_slice(&input);
        session.run();
    }
    let ops = model.file().op_count() as usize;
    let mut whole = Vec::with_capacity(opts.iters);
    let mut per_op = vec![Vec::with_capacity(opts.iters); ops];
    for _ in 0..opts.iters {
        session.input_mut().copy_from_slice(&input);
        if opts.layers {
            let start = Instant::now();
            for (i, times) in per_op.iter_mut().enumerate() {
                let t = Instant::now();
                session.run_op(i as u32);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            whole.push(start.elapsed().as_secs_f64() * 1e3);
        } else {
            let t = Instant::now();
            session.run();
            whole.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    whole.sort_by(f64::total_cmp);
    let median = percentile(&whole, 0.5);
    let layers = opts.layers.then(|| {
        per_op
            .iter_mut()
            .zip(&report.ops)
            .enumerate()
            .map(|(index, (times, op))| {
                times.sort_by(f64::total_cmp);
                let ms = percentile(times, 0.5);
                LayerTime {
                    index,
                    op: op.op,
                    shape: op.output.shape,
                    macs: op.macs,
                    ms_median: ms,
                    gmacs_per_s: if ms > 0.0 {
                        op.macs as f64 / ms / 1e6
                    } else {
                        0.0
                    },
                }
            })
            .collect()
    });
    Ok(BenchReport {
        model: name.to_string(),
        kernels: kernels.name().to_string(),
        conv_tile: model.conv_tile(kernels).map(|t| t.name().to_string()),
        winograd: model
            .winograd_convs(kernels)
            .map(|(name, n)| format!("{name} on {n} convs")),
        f16_tile: model.f16_tile(kernels).map(str::to_string),
        int16_tile: model.int16_tile(kernels).map(str::to_string),
        threads: opts.threads,
        iters: opts.iters,
        latency_ms_median: median,
        latency_ms_p90: percentile(&whole, 0.9),
        latency_ms_min: whole[0],
        macs: report.macs,
        gmacs_per_s: report.macs as f64 / median / 1e6,
        arena_bytes: report.arena_bytes,
        layers,
        kernel_mismatch: model.kernel_mismatch(kernels).map(|m| m.to_string()),
    })
}

/// The float peer in the same process: tract running the original ONNX file (one thread;
/// tract has no worker pool of its own). Same report, `kernels` = `tract-f32`.
pub fn bench_onnx(path: &std::path::Path, opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        opts.threads == 1,
        "--threads {}: tract runs on one thread",
        opts.threads
    );
    anyhow::ensure!(opts.iters > 0, "--iters must be at least 1");
    let prepared = compile::prepare(path, None)?;
    let [h, w] = prepared.preprocess.size;
    let input = prepared.preprocess.apply(&synthetic_rgb(w, h, 7), w, h);
    let model = TractModel::load(path, &[1, 3, h, w])?;
    for _ in 0..opts.warmup {
        model.run(&input)?;
    }
    let mut times = Vec::with_capacity(opts.iters);
    for _ in 0..opts.iters {
        let t = Instant::now();
        model.run(&input)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = percentile(&times, 0.5);
    let macs = prepared.graph.macs();
    Ok(BenchReport {
        model: path.display().to_string(),
        kernels: "tract-f32".into(),
        conv_tile: None,
        winograd: None,
        f16_tile: None,
        int16_tile: None,
        threads: 1,
        iters: opts.iters,
        latency_ms_median: median,
        latency_ms_p90: percentile(&times, 0.9),
        latency_ms_min: times[0],
        macs,
        gmacs_per_s: macs as f64 / median / 1e6,
        arena_bytes: 0,
        layers: None,
        kernel_mismatch: None,
    })
}

pub fn print(r: &BenchReport) {
    println!(
        "{}: {} kernels, {} thread(s), {} iterations",
        r.model, r.kernels, r.threads, r.iters
    );
    if let Some(tile) = &r.conv_tile {
        println!("conv tile    {tile}");
    }
    if let Some(w) = &r.winograd {
        println!("winograd     {w} (3×3, stride 1)");
    }
    if let Some(tile) = &r.f16_tile {
        println!("f16 tile     {tile}");
    }
    if let Some(tile) = &r.int16_tile {
        println!("16x8 tile    {tile}");
    }
    if let Some(m) = &r.kernel_mismatch {
        println!("warning      {m}");
    }
    println!(
        "latency      median {:.3} ms, p90 {:.3} ms, min {:.3} ms",
        r.latency_ms_median, r.latency_ms_p90, r.latency_ms_min
    );
    println!(
        "compute      {:.2} M MACs, {:.2} GMAC/s",
        r.macs as f64 / 1e6,
        r.gmacs_per_s
    );
    if let Some(layers) = &r.layers {
        println!(
            "{:<4} {:<16} {:>14} {:>12} {:>10} {:>8}",
            "#", "op", "shape", "MACs", "ms", "GMAC/s"
        );
        for l in layers {
            println!(
                "{:<4} {:<16} {:>14} {:>12} {:>10.4} {:>8.2}",
                l.index,
                l.op,
                format!("{}x{}x{}", l.shape[1], l.shape[2], l.shape[3]),
                l.macs,
                l.ms_median,
                l.gmacs_per_s
            );
        }
    }
}
