//! Kestrel's board-side runtime: executes a `.kes` model in a caller-provided arena.
//!
//! ```text
//! let model = Model::parse(&bytes)?;               // checks the whole file, copies nothing
//! let mut arena = [0u8; N];                        // N ≥ model.arena_bytes()
//! let mut session = Session::new(&model, &mut arena)?;
//! session.set_input_nchw_f32(&preprocessed);       // or write session.input_mut()
//! session.run();
//! session.logits(&mut logits)?;
//! ```
//!
//! The interpreter owns no memory and allocates nothing: every tensor lives at the arena
//! offset the host's memory plan assigned. Ops run on `kestrel-kernels`, on the kernel
//! family chosen when the session starts. It is `no_std`; the `std` feature adds
//! `std::error::Error` and [`pool::ThreadPool`], which [`Session::set_parallel`] takes to
//! split convolutions over threads (same results for any thread count).
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

use core::fmt;

use kestrel_format::{DType, FormatError, KesFile, OpKind, OpView, TensorInfo, WeightLayout};
use kestrel_kernels::conv::{self, Conv, Packing};
use kestrel_kernels::quant::{OutQuant, Residual};
use kestrel_kernels::window::Window;
use kestrel_kernels::{dense, pooling, scalar};

pub use kestrel_format;
pub use kestrel_kernels::isa::{CpuFeatures, Isa};

/// A log line through `defmt` with the `defmt` feature (a firmware's log), nothing without.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "defmt")]
        defmt::$level!($($arg)*);
    };
}

#[cfg(feature = "std")]
pub mod pool;
pub mod preprocess;

/// Runs numbered tasks, perhaps on several threads at once. Each call of `job(task,
/// scratch)` gets a scratch buffer of at least the model's
/// [`Model::scratch_bytes`] that no other running task holds.
pub trait Parallel: Sync {
    fn threads(&self) -> usize;
    fn run(&self, tasks: usize, job: &(dyn Fn(usize, &mut [i8]) + Sync));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The file is not a valid `.kes` model.
    Format(FormatError),
    /// The arena given to [`Session::new`] is smaller than the model's plan.
    ArenaTooSmall { needed: usize, given: usize },
    /// A buffer passed in or out has the wrong length.
    BufferSize { expected: usize, given: usize },
    /// Kernels were asked for that this CPU cannot run.
    UnsupportedKernels { requested: Isa, best: Isa },
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format(e) => write!(f, "invalid .kes file: {e}"),
            Error::ArenaTooSmall { needed, given } => {
                write!(
                    f,
                    "arena too small: the model needs {needed} bytes, {given} were given"
                )
            }
            Error::BufferSize { expected, given } => {
                write!(
                    f,
                    "buffer holds {given} values, the model expects {expected}"
                )
            }
            Error::UnsupportedKernels { requested, best } => write!(
                f,
                "this CPU cannot run the {requested} kernels (the best it has: {best})"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// A file whose conv weights are packed for kernels other than the ones asked about: its
/// convolutions still run, on the portable tile (same results, several times slower).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelMismatch<'a> {
    /// The packed layout (`blocks4`, `lanes16`).
    pub layout: WeightLayout,
    /// The `--target` the file was compiled for, from its metadata.
    pub target: Option<&'a str>,
    pub kernels: Isa,
}

impl fmt::Display for KernelMismatch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the model's weights are packed {}", self.layout.name())?;
        if let Some(target) = self.target {
            write!(f, " (compiled --target {target})")?;
        }
        write!(
            f,
            ", which the {} kernels have no tile for: its convolutions run the portable tile \
             (same results, several times slower)",
            self.kernels
        )
    }
}

/// A parsed model; cheap to copy, borrows the file bytes.
#[derive(Clone, Copy, Debug)]
pub struct Model<'a> {
    file: KesFile<'a>,
}

impl<'a> Model<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let file = KesFile::parse(bytes).inspect_err(|_e| {
            log!(error, "kestrel: not a valid .kes file: {}", _e);
        })?;
        let model = Model { file };
        log!(
            info,
            "kestrel: model parsed: {=u32} ops, arena {=u64} bytes (scratch up to {=usize})",
            model.file.op_count(),
            model.file.plan.arena_bytes,
            model.scratch_bytes()
        );
        Ok(model)
    }

    pub fn file(&self) -> &KesFile<'a> {
        &self.file
    }

    /// Whether `kernels` lack a micro-kernel for this file's packed conv weights (a file
    /// compiled for another CPU family). Portable (`--target generic`) and wide layers are
    /// not packed, so never mismatch.
    pub fn kernel_mismatch(&self, kernels: Isa) -> Option<KernelMismatch<'a>> {
        let layout = (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .map(|op| op.layout)
            .find(|l| l.packing().is_some_and(|p| !p.has_tile(kernels)))?;
        let target = self
            .file
            .metadata()
            .find(|(k, _)| *k == "target")
            .map(|(_, v)| v);
        Some(KernelMismatch {
            layout,
            target,
            kernels,
        })
    }

    /// The micro-kernel the file's packed convs run on `kernels` (`None` for a file
    /// without packed convs): what a benchmark says ran.
    pub fn conv_tile(&self, kernels: Isa) -> Option<conv::Tile> {
        (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .find_map(|op| op.layout.packing())
            .map(|p| p.tile(kernels))
    }

    /// What runs the file's 3×3 stride-1 convs by Winograd on `kernels`, and how many of
    /// its convs it runs on one thread (`None` where it runs none; on several threads a
    /// small map is split by output channels and runs the same, a larger one at pairs of
    /// rows where every share is worth it, else in pixel shares on the tile).
    pub fn winograd_convs(&self, kernels: Isa) -> Option<(&'static str, usize)> {
        let path = self.conv_tile(kernels)?.winograd()?;
        let scratch = self.file.plan.scratch_bytes as usize;
        let count = (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .filter(|op| op.kind == OpKind::Conv && op.layout.packing().is_some())
            .filter(|op| !self.runs_wide(op))
            .filter(|op| {
                let (x, y) = (self.tensor(op.input), self.tensor(op.output));
                let bytes = op.scratch.map_or(scratch, |s| s.bytes as usize);
                let w = window(op, &x, &y);
                path.runs(&w, 0, w.out_h * w.out_w, bytes)
            })
            .count();
        (count > 0).then_some((path.name, count))
    }

    /// What the file's convs on f16 weights (layers kept wider) run on `kernels`: an f16
    /// tile, or the wide kernels' scalar loops; `None` for a file without them.
    pub fn f16_tile(&self, kernels: Isa) -> Option<&'static str> {
        let has_f16 = (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .any(|op| op.kind == OpKind::Conv && op.layout == WeightLayout::F16);
        has_f16.then(|| kestrel_kernels::wide::f16_tile(kernels).map_or("scalar loops", |t| t.0))
    }

    /// What the file's convs on int8 weights with an int16 tensor (next to a layer kept
    /// wider: "16x8") run on `kernels`: a 16x8 tile, or the wide kernels' scalar loops;
    /// `None` for a file without them.
    pub fn int16_tile(&self, kernels: Isa) -> Option<&'static str> {
        let has_16x8 = (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .any(|op| {
                op.kind == OpKind::Conv && op.layout != WeightLayout::F16 && self.runs_wide(&op)
            });
        has_16x8.then(|| kestrel_kernels::wide::int_tile(kernels).map_or("scalar loops", |t| t.0))
    }

    /// Whether `op` runs on the wide kernels: an int16 operand or f16 weights.
    fn runs_wide(&self, op: &OpView) -> bool {
        let wide = |t: u32| self.tensor(t).dtype == DType::I16;
        wide(op.input)
            || wide(op.output)
            || op.residual.is_some_and(|r| wide(r.tensor))
            || op.layout == WeightLayout::F16
    }

    pub fn arena_bytes(&self) -> usize {
        self.file.plan.arena_bytes as usize
    }

    /// Scratch bytes one thread needs for the packed convolutions and streamed stems: the
    /// most any op was lent (inside the arena, for the session's own thread) or the plan's
    /// shared scratch. A [`Parallel`] gives each of its threads as much.
    pub fn scratch_bytes(&self) -> usize {
        let lent = (0..self.file.op_count())
            .filter_map(|i| self.file.op(i))
            .filter_map(|op| op.scratch)
            .map(|s| s.bytes as usize)
            .max()
            .unwrap_or(0);
        lent.max(self.file.plan.scratch_bytes as usize)
    }

    pub fn input(&self) -> TensorInfo {
        self.tensor(self.file.input)
    }

    pub fn output(&self) -> TensorInfo {
        self.tensor(self.file.output)
    }

    /// Number of logits.
    pub fn classes(&self) -> usize {
        self.output().dims[3] as usize
    }

    pub fn label(&self, class: usize) -> Option<&'a str> {
        self.file.label(class as u32)
    }

    fn tensor(&self, t: u32) -> TensorInfo {
        // Indices of validated ops and the graph's input/output are in range (parse checked).
        self.file.tensor(t).unwrap_or(TensorInfo {
            dtype: DType::I8,
            dims: [1, 1, 1, 1],
            scale: 1.0,
            zero_point: 0,
            offset: 0,
        })
    }
}

/// A model bound to an arena, ready to run.
pub struct Session<'m, 'a> {
    model: &'m Model<'m>,
    arena: &'a mut [u8],
    kernels: Isa,
    parallel: Option<&'a dyn Parallel>,
}

impl<'m, 'a> Session<'m, 'a> {
    /// Binds the model to the arena with the fastest kernels this CPU runs.
    pub fn new(model: &'m Model<'m>, arena: &'a mut [u8]) -> Result<Self, Error> {
        Self::with_kernels(model, arena, CpuFeatures::available().best())
    }

    /// As [`Session::new`] with a chosen kernel family (tests and benchmarks compare them).
    pub fn with_kernels(
        model: &'m Model<'m>,
        arena: &'a mut [u8],
        kernels: Isa,
    ) -> Result<Self, Error> {
        let cpu = CpuFeatures::available();
        if !cpu.supports(kernels) {
            let e = Error::UnsupportedKernels {
                requested: kernels,
                best: cpu.best(),
            };
            log!(error, "kestrel: {}", e);
            return Err(e);
        }
        let needed = model.arena_bytes();
        if arena.len() < needed {
            let e = Error::ArenaTooSmall {
                needed,
                given: arena.len(),
            };
            log!(error, "kestrel: {}", e);
            return Err(e);
        }
        log!(
            info,
            "kestrel: session on the {} kernels, arena {=usize} of {=usize} bytes used",
            kernels,
            needed,
            arena.len()
        );
        Ok(Session {
            model,
            arena,
            kernels,
            parallel: None,
        })
    }

    /// Splits each convolution's output pixels over `parallel`'s threads from now on.
    pub fn set_parallel(&mut self, parallel: &'a dyn Parallel) {
        self.parallel = Some(parallel);
    }

    /// Threads the session runs on.
    pub fn threads(&self) -> usize {
        self.parallel.map_or(1, |p| p.threads())
    }

    /// The kernel family this session runs.
    pub fn kernels(&self) -> Isa {
        self.kernels
    }

    /// The int8 NHWC input tensor, to be filled with the quantised image.
    /// The input tensor's bytes: int8 values, or little-endian int16 pairs when the model
    /// keeps its input wide.
    pub fn input_mut(&mut self) -> &mut [i8] {
        let t = self.model.input();
        as_i8_mut(&mut self.arena[t.offset as usize..][..t.bytes()])
    }

    /// Quantises a preprocessed NCHW f32 image into the input tensor.
    pub fn set_input_nchw_f32(&mut self, x: &[f32]) -> Result<(), Error> {
        let t = self.model.input();
        let [_, h, w, c] = t.dims.map(|d| d as usize);
        if x.len() != h * w * c {
            return Err(Error::BufferSize {
                expected: h * w * c,
                given: x.len(),
            });
        }
        let (inv, wide) = (1.0 / t.scale, t.dtype == DType::I16);
        let input = &mut self.arena[t.offset as usize..][..t.bytes()];
        for ch in 0..c {
            for p in 0..h * w {
                store_quantized(
                    input,
                    wide,
                    p * c + ch,
                    x[ch * h * w + p] * inv,
                    t.zero_point,
                );
            }
        }
        Ok(())
    }

    /// Preprocesses a decoded RGB image (`height × width × 3` bytes) as the model
    /// prescribes and quantises it into the input tensor; `scratch` holds at least
    /// [`preprocess::scratch_len`] floats. Same values as host preprocessing followed by
    /// [`Session::set_input_nchw_f32`].
    pub fn set_input_rgb(
        &mut self,
        rgb: &[u8],
        width: usize,
        height: usize,
        scratch: &mut [f32],
    ) -> Result<(), Error> {
        let t = self.model.input();
        let c = t.dims[3] as usize;
        if c != 3 {
            return Err(Error::BufferSize {
                expected: c,
                given: 3,
            });
        }
        let info = self.model.file.preprocess;
        let (inv, zp, wide) = (1.0 / t.scale, t.zero_point, t.dtype == DType::I16);
        let input = &mut self.arena[t.offset as usize..][..t.bytes()];
        preprocess::preprocess_rgb(&info, rgb, width, height, scratch, |ch, p, v| {
            store_quantized(input, wide, p * c + ch, v * inv, zp);
        })
    }

    /// Runs every op in order. Cannot fail: the file was checked when parsed.
    pub fn run(&mut self) {
        for i in 0..self.model.file.op_count() {
            self.run_op(i);
        }
    }

    /// Runs op `index` alone (ops must run in order); for tools that inspect every
    /// intermediate tensor before the memory plan reuses its bytes.
    pub fn run_op(&mut self, index: u32) {
        if let Some(op) = self.model.file.op(index) {
            self.execute(&op);
        }
    }

    /// Tensor `index`'s description and raw bytes in the arena.
    pub fn tensor(&self, index: u32) -> Option<(TensorInfo, &[u8])> {
        let t = self.model.file.tensor(index)?;
        Some((t, &self.arena[t.offset as usize..][..t.bytes()]))
    }

    /// Dequantised logits.
    pub fn logits(&self, out: &mut [f32]) -> Result<(), Error> {
        let t = self.model.output();
        if out.len() != t.elements() {
            return Err(Error::BufferSize {
                expected: t.elements(),
                given: out.len(),
            });
        }
        let bytes = &self.arena[t.offset as usize..][..t.bytes()];
        match t.dtype {
            DType::I32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 * t.scale;
                }
            }
            DType::I8 => {
                for (o, &b) in out.iter_mut().zip(bytes) {
                    *o = (b as i8 as i32 - t.zero_point) as f32 * t.scale;
                }
            }
            DType::I16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = i16::from_le_bytes([b[0], b[1]]) as f32 * t.scale;
                }
            }
        }
        Ok(())
    }

    /// Runs one op: the int16/f16 ones on the wide reference kernels, the int8 ones here,
    /// each kind on its kernel.
    fn execute(&mut self, op: &OpView) {
        let m = self.model;
        let x = m.tensor(op.input);
        let y = m.tensor(op.output);
        if op.kind == OpKind::Reshape {
            return; // output aliases input
        }
        if m.runs_wide(op) {
            self.execute_wide(op);
            return;
        }
        // Every slice of this op derives from this one pointer.
        let base = self.arena.as_mut_ptr();
        // SAFETY: parse checked that both ranges lie inside the arena (arena_bytes ≤ its
        // length, checked in `new`) and that input and output ranges are disjoint.
        let (input, output) = unsafe { (tensor_data(base, x), tensor_data_mut(base, y)) };
        let win = window(op, &x, &y);
        let (c, oc) = (win.in_c, win.out_c);
        let out_q = OutQuant {
            zero_point: y.zero_point,
            min: op.out_min,
            max: op.out_max,
        };
        let params = |ch: usize| op.params.get(ch);
        match op.kind {
            OpKind::Conv => self.conv(base, op, &win, input, out_q, as_i8_mut(output)),
            OpKind::ConvMaxPool => self.conv_max_pool(base, op, input, out_q, as_i8_mut(output)),
            OpKind::Dense => match y.dtype {
                DType::I8 => dense::dense(input, op.weights, params, out_q, as_i8_mut(output)),
                DType::I32 => dense::dense_i32(input, op.weights, params, oc, |n, v| {
                    output[4 * n..4 * n + 4].copy_from_slice(&v.to_le_bytes());
                }),
                DType::I16 => {} // `execute_wide`'s
            },
            OpKind::MaxPool => self.max_pool(&win, input, as_i8_mut(output)),
            OpKind::AvgPool => scalar::avg_pool(
                &win,
                input,
                x.zero_point,
                op.count_include_pad,
                as_i8_mut(output),
            ),
            OpKind::GlobalAvgPool if op.params.len() == 1 => scalar::global_avg_pool_requantized(
                input,
                c,
                op.params.get(0),
                out_q,
                as_i8_mut(output),
            ),
            OpKind::GlobalAvgPool => {
                scalar::global_avg_pool(input, c, x.zero_point, as_i8_mut(output))
            }
            OpKind::Subsample => scalar::subsample(
                &win,
                [op.aux[0] as usize, op.aux[1] as usize],
                input,
                as_i8_mut(output),
            ),
            OpKind::PadChannels => scalar::pad_channels(
                input,
                c,
                op.aux[0] as usize,
                op.aux[1] as usize,
                x.zero_point,
                as_i8_mut(output),
            ),
            OpKind::Add => add(
                self.model,
                base,
                op,
                input,
                x.zero_point,
                out_q,
                as_i8_mut(output),
            ),
            OpKind::ChannelAffine => {
                scalar::channel_affine(input, op.weights, params, out_q, as_i8_mut(output))
            }
            OpKind::Reshape => {}
        }
    }

    /// A conv with its fused residual, on the packed kernels (split over the pool's
    /// threads when there is one) or, for unpacked weights, the reference.
    fn conv(
        &self,
        base: *mut u8,
        op: &OpView,
        win: &Window,
        input: &[i8],
        out_q: OutQuant,
        output: &mut [i8],
    ) {
        let m = self.model;
        let y = m.tensor(op.output);
        let residual = match op.residual {
            None => Residual::None,
            Some(r) => {
                let rt = m.tensor(r.tensor);
                if rt.offset == y.offset {
                    Residual::InPlace {
                        zero_point: rt.zero_point,
                        multiplier: r.multiplier,
                        shift: r.shift,
                    }
                } else {
                    Residual::Separate {
                        // SAFETY: in range, and disjoint from the output (checked at parse).
                        data: unsafe { tensor_data(base, rt) },
                        zero_point: rt.zero_point,
                        multiplier: r.multiplier,
                        shift: r.shift,
                    }
                }
            }
        };
        let conv = Conv {
            window: win,
            input,
            zero_point: m.tensor(op.input).zero_point as i8,
            weights: op.weights,
            params: op.params.as_bytes(),
            out: out_q,
            residual,
            first: 0,
        };
        // SAFETY: `op` is a conv of the parsed file, and no slice of its scratch is live.
        let scratch = unsafe { self.op_scratch(base, op) };
        self.run_conv(op.layout.packing(), &conv, output, scratch);
    }

    /// A streamed stem: the conv a band of rows at a time into the front of a scratch, each
    /// band max pooled into the output. On several threads each streams its own run of
    /// pooled rows (fixed by the shape and the thread count) in its own scratch.
    fn conv_max_pool(
        &self,
        base: *mut u8,
        op: &OpView,
        input: &[i8],
        out_q: OutQuant,
        output: &mut [i8],
    ) {
        let m = self.model;
        let Some(stem) = op.streamed(&m.tensor(op.input), &m.tensor(op.output)) else {
            return; // parse checked both windows
        };
        let conv = Conv {
            window: &stem.conv,
            input,
            zero_point: m.tensor(op.input).zero_point as i8,
            weights: op.weights,
            params: op.params.as_bytes(),
            out: out_q,
            residual: Residual::None,
            first: 0,
        };
        let (packing, isa) = (op.layout.packing(), self.kernels);
        // Pooled rows `rows` into `out` through `scratch`: the band at its front (parse
        // checked that an op's scratch, and so every thread's, holds it and, packed, a
        // panel after it).
        let stream = |rows: core::ops::Range<usize>, scratch: &mut [i8], out: &mut [i8]| {
            let (band, panel) = scratch.split_at_mut(stem.band_bytes());
            stem.run(
                rows,
                band,
                out,
                |rows, part| {
                    let rows_conv = Conv {
                        first: rows.start * stem.conv.out_w,
                        ..conv
                    };
                    match packing {
                        Some(packing) => packing.conv2d(isa, &rows_conv, part, panel),
                        None => conv::unpacked::conv2d(&rows_conv, part),
                    }
                },
                pooling::max_pool,
            );
        };
        let out_h = stem.pool.out_h;
        match self.parallel {
            Some(parallel) if parallel.threads() > 1 => {
                let row = stem.pool.out_w * stem.pool.out_c;
                let tasks = parallel.threads().min(out_h);
                let start = |t: usize| out_h * t / tasks;
                let shared = SharedOutput(output.as_mut_ptr(), output.len());
                parallel.run(tasks, &|t, scratch| {
                    let rows = start(t)..start(t + 1);
                    // SAFETY: task t owns pooled rows start(t) .. start(t + 1), disjoint
                    // from every other task's and inside the output (`start(tasks) = out_h`).
                    let part = unsafe { shared.part(rows.start * row, rows.len() * row) };
                    stream(rows, scratch, part);
                });
            }
            _ => {
                // SAFETY: `op` is a streamed stem of the parsed file, and no slice of its
                // scratch is live.
                let scratch = unsafe { self.op_scratch(base, op) };
                stream(0..out_h, scratch, output);
            }
        }
    }

    /// The scratch `op` (a conv or streamed stem) was lent, else the plan's shared one.
    ///
    /// # Safety
    /// `op` is an op of the parsed file (so the range lies in the arena) and no other live
    /// slice overlaps its scratch: parse checked that it shares no byte with the op's
    /// operands (the plan's shared scratch none with any tensor); what else lies there is
    /// dead at this step.
    #[allow(clippy::mut_from_ref)]
    unsafe fn op_scratch(&self, base: *mut u8, op: &OpView) -> &mut [i8] {
        let plan = self.model.file.plan;
        let (offset, bytes) = op.scratch.map_or(
            (plan.scratch_offset as usize, plan.scratch_bytes as usize),
            |s| (s.offset as usize, s.bytes as usize),
        );
        core::slice::from_raw_parts_mut(base.add(offset) as *mut i8, bytes)
    }

    /// Conv `conv` (a run of its output pixels) into `output`: packed, split over the
    /// pool's threads when there is one, else in `scratch`; unpacked on the reference.
    fn run_conv(
        &self,
        packing: Option<Packing>,
        conv: &Conv<'_>,
        output: &mut [i8],
        scratch: &mut [i8],
    ) {
        let Some(packing) = packing else {
            return conv::unpacked::conv2d(conv, output);
        };
        match self.parallel {
            Some(parallel) if parallel.threads() > 1 => {
                // Every thread's scratch holds at least this op's (the `Parallel` contract).
                let lent = scratch.len();
                conv_parallel(self.kernels, packing, conv, output, lent, parallel)
            }
            _ => packing.conv2d(self.kernels, conv, output, scratch),
        }
    }

    /// Max pooling, its output rows split over the pool's threads when there is one.
    fn max_pool(&self, win: &Window, input: &[i8], output: &mut [i8]) {
        match self.parallel {
            Some(parallel) if parallel.threads() > 1 => {
                max_pool_parallel(win, input, output, parallel)
            }
            _ => pooling::max_pool(win, input, output),
        }
    }
}

impl Session<'_, '_> {
    /// An op with an int16 tensor or f16 weights: the wide reference kernels, the same on
    /// every CPU.
    fn execute_wide(&mut self, op: &OpView) {
        use kestrel_kernels::wide::{self, Act, ActMut, OutRange, Weights};
        let m = self.model;
        let x = m.tensor(op.input);
        let y = m.tensor(op.output);
        let base = self.arena.as_mut_ptr();
        // SAFETY: parse checked that every tensor lies inside the arena (arena_bytes ≤ its
        // length, checked in `new`), that input and output are disjoint, and that a separate
        // residual overlaps neither.
        let view = |t: TensorInfo| Act {
            bytes: unsafe { core::slice::from_raw_parts(base.add(t.offset as usize), t.bytes()) },
            wide: t.dtype == DType::I16,
        };
        let input = view(x);
        let mut output = ActMut {
            bytes: unsafe {
                core::slice::from_raw_parts_mut(base.add(y.offset as usize), y.bytes())
            },
            wide: y.dtype == DType::I16,
        };
        let win = window(op, &x, &y);
        let (c, oc) = (win.in_c, win.out_c);
        let out = OutRange::from_fields(output.wide, y.zero_point, op.out_min, op.out_max);
        let params = |ch: usize| op.params.get(ch);
        let weights = if op.layout == WeightLayout::F16 {
            Weights::F16(as_u8(op.weights))
        } else {
            Weights::Int8(op.weights)
        };
        match op.kind {
            OpKind::Conv => {
                let residual = match op.residual {
                    None => wide::Residual::None,
                    Some(r) => {
                        let rt = m.tensor(r.tensor);
                        if rt.offset == y.offset {
                            wide::Residual::InPlace {
                                zero_point: rt.zero_point,
                                multiplier: r.multiplier,
                                shift: r.shift,
                            }
                        } else {
                            wide::Residual::Separate {
                                data: view(rt),
                                zero_point: rt.zero_point,
                                multiplier: r.multiplier,
                                shift: r.shift,
                            }
                        }
                    }
                };
                let kernels = self.kernels;
                let conv_rows = |rows: core::ops::Range<usize>, part: &mut [u8]| {
                    let row = win.out_w * oc;
                    let residual = residual.part(rows.start * row, rows.len() * row);
                    let mut part = ActMut {
                        bytes: part,
                        wide: output.wide,
                    };
                    wide::conv2d(
                        kernels,
                        &win,
                        rows,
                        input,
                        x.zero_point,
                        weights,
                        params,
                        out,
                        residual,
                        &mut part,
                    );
                };
                match self.parallel {
                    Some(parallel) if parallel.threads() > 1 && win.out_h > 1 => {
                        wide_rows_parallel(&win, output.wide, output.bytes, parallel, &conv_rows)
                    }
                    _ => conv_rows(0..win.out_h, output.bytes),
                }
            }
            OpKind::Dense if y.dtype == DType::I32 => {
                wide::dense_i32(input, x.zero_point, weights, params, oc, |n, v| {
                    output.bytes[4 * n..4 * n + 4].copy_from_slice(&v.to_le_bytes());
                })
            }
            OpKind::Dense => wide::dense(input, x.zero_point, weights, params, out, &mut output),
            OpKind::GlobalAvgPool => wide::global_avg_pool(
                input,
                c,
                x.zero_point,
                (op.params.len() == 1).then(|| op.params.get(0)),
                out,
                &mut output,
            ),
            OpKind::MaxPool => wide::max_pool(&win, input, &mut output),
            OpKind::Subsample => wide::subsample(
                &win,
                [op.aux[0] as usize, op.aux[1] as usize],
                input,
                &mut output,
            ),
            OpKind::PadChannels => wide::pad_channels(
                input,
                c,
                op.aux[0] as usize,
                op.aux[1] as usize,
                x.zero_point,
                &mut output,
            ),
            // Parse refuses int16 tensors on the others; a reshape aliases its input.
            OpKind::AvgPool
            | OpKind::Add
            | OpKind::ChannelAffine
            | OpKind::ConvMaxPool
            | OpKind::Reshape => {}
        }
    }
}

/// The window an op computes, from its input and output shapes.
fn window(op: &OpView, x: &TensorInfo, y: &TensorInfo) -> Window {
    Window::of_op(x.dims, y.dims, op.kernel, op.stride, op.pads)
}

/// An elementwise add of `input` and the op's second operand, each onto the output
/// scale, rounded once.
fn add(
    model: &Model<'_>,
    base: *mut u8,
    op: &OpView,
    input: &[i8],
    zero_point: i32,
    out_q: OutQuant,
    output: &mut [i8],
) {
    let Some(r) = op.residual else {
        return; // parse refuses an add without its second operand
    };
    let rt = model.tensor(r.tensor);
    let (_, multiplier, shift) = op.params.get(0);
    let first = scalar::AddOperand {
        data: input,
        zero_point,
        multiplier,
        shift,
    };
    let second = scalar::AddOperand {
        // SAFETY: in range and apart from the output (checked at parse).
        data: unsafe { tensor_data(base, rt) },
        zero_point: rt.zero_point,
        multiplier: r.multiplier,
        shift: r.shift,
    };
    scalar::add(first, second, out_q, output)
}

/// Tensor `t`'s bytes in the arena at `base`, as int8.
///
/// # Safety
/// `t` lies inside the arena (the parser checked every tensor), and no live mutable
/// slice overlaps it.
unsafe fn tensor_data<'s>(base: *mut u8, t: TensorInfo) -> &'s [i8] {
    core::slice::from_raw_parts(base.add(t.offset as usize) as *const i8, t.bytes())
}

/// Tensor `t`'s bytes in the arena at `base`, for writing.
///
/// # Safety
/// As [`tensor_data`], and no other live slice overlaps it.
unsafe fn tensor_data_mut<'s>(base: *mut u8, t: TensorInfo) -> &'s mut [u8] {
    core::slice::from_raw_parts_mut(base.add(t.offset as usize), t.bytes())
}

/// The output pointer of a conv shared by its tasks, each of which takes its own
/// disjoint run of pixels or its own channels.
struct SharedOutput(*mut i8, usize);

// SAFETY: tasks only ever form disjoint slices of it, or write disjoint channels through
// it (see `conv_parallel`).
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// The whole output, for tasks that each own some channels of every pixel.
    fn whole(&self) -> *mut i8 {
        self.0
    }

    /// # Safety
    /// `start + len` is inside the output and no other live slice overlaps this one.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, start: usize, len: usize) -> &mut [i8] {
        debug_assert!(start + len <= self.1);
        core::slice::from_raw_parts_mut(self.0.add(start), len)
    }
}

/// How threads share a packed conv: fixed by its shape and the thread count, so each
/// thread's share is the same every run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvSplit {
    /// Whole passes of the Winograd path's output channels, each over the whole map.
    Channels(conv::winograd::Path),
    /// This many runs of pixels starting at pairs of output rows (Winograd's tiles).
    RowPairs(usize),
    /// This many runs of equal pixel counts.
    Pixels(usize),
}

/// Tiles of the Winograd path in each of `shares` shares of a map's row pairs.
fn tiles_per_share(win: &Window, shares: usize) -> usize {
    win.out_h.div_ceil(2) / shares * win.out_w.div_ceil(2)
}

/// The split of a packed conv's `pixels` (a whole map, or the run an earlier split gave)
/// over `threads` when this CPU's tile hands 3×3 convs to a Winograd path that runs in the
/// op's `lent` scratch:
/// - a map so small that row pairs would give each thread less than a chunk of tiles, with
///   a pass of channels for every thread, is split by channels: each thread transforms
///   only its own channels' weights (the big part there, which every row share would
///   repeat) and the whole map's input (the small part);
/// - a map where every share of row pairs holds the path's fewest tiles starts each share
///   at a pair of rows, so no two threads compute the same tiles;
/// - anything else, equal pixel counts, which balance best on the direct tiles.
fn conv_split(
    isa: Isa,
    packing: Packing,
    conv: &Conv<'_>,
    pixels: usize,
    lent: usize,
    threads: usize,
) -> ConvSplit {
    let win = conv.window;
    // At least a few tiles of pixels a task.
    let tasks = threads.min(pixels.div_ceil(8)).max(1);
    let whole = conv.first == 0 && pixels == win.out_h * win.out_w;
    let Some(path) = packing.winograd_path(isa).filter(|_| whole) else {
        return ConvSplit::Pixels(tasks);
    };
    let small = tiles_per_share(win, threads) < conv::winograd::MAX_TILES;
    let passes = win.out_c.div_ceil(path.pass);
    if small && passes >= threads && path.runs(win, 0, pixels, lent) {
        ConvSplit::Channels(path)
    } else if conv::winograd::applies(win, path.min_tiles)
        && tiles_per_share(win, tasks) >= path.min_tiles
    {
        ConvSplit::RowPairs(tasks)
    } else {
        ConvSplit::Pixels(tasks)
    }
}

/// Runs a packed conv over `parallel` in the shares [`conv_split`] fixes.
fn conv_parallel(
    isa: Isa,
    packing: Packing,
    conv: &Conv<'_>,
    output: &mut [i8],
    lent: usize,
    parallel: &dyn Parallel,
) {
    let oc = conv.window.out_c;
    let pixels = output.len() / oc;
    let shared = SharedOutput(output.as_mut_ptr(), output.len());
    let (tasks, row_pairs) = match conv_split(isa, packing, conv, pixels, lent, parallel.threads())
    {
        ConvSplit::Channels(path) => {
            let tasks = parallel.threads();
            parallel.run(tasks, &|t, scratch| {
                let channels = path.share(oc, t, tasks);
                // SAFETY: task t alone writes (and, in place, reads) output channels
                // `channels`, disjoint from every other task's; the output holds the run.
                let ran = unsafe {
                    packing.winograd_channels(isa, conv, shared.whole(), pixels, channels, scratch)
                };
                // Every thread's scratch holds the op's, in which the path runs (checked).
                assert!(ran, "a thread's scratch is smaller than the op's");
            });
            return;
        }
        ConvSplit::RowPairs(tasks) => (tasks, true),
        ConvSplit::Pixels(tasks) => (tasks, false),
    };
    let start = |t: usize| match row_pairs {
        true => conv::winograd::split_at(conv.window, t, tasks),
        false => pixels * t / tasks,
    };
    parallel.run(tasks, &|t, scratch| {
        let (first, end) = (start(t), start(t + 1));
        let len = (end - first) * oc;
        // SAFETY: task t owns pixels first .. end, disjoint from every other task's and
        // inside the output (`end ≤ pixels`).
        let part = unsafe { shared.part(first * oc, len) };
        let task = Conv {
            residual: conv.residual.part(first * oc, len),
            first: conv.first + first,
            ..*conv
        };
        packing.conv2d(isa, &task, part, scratch);
    });
}

/// Splits a wide conv's output rows in equal runs, one task per thread (fixed by the
/// shape and the thread count, so each thread's share is the same every run).
fn wide_rows_parallel(
    win: &Window,
    wide: bool,
    output: &mut [u8],
    parallel: &dyn Parallel,
    conv_rows: &(dyn Fn(core::ops::Range<usize>, &mut [u8]) + Sync),
) {
    let row = (win.out_w * win.out_c) << wide as usize;
    let tasks = parallel.threads().min(win.out_h);
    let start = |t: usize| win.out_h * t / tasks;
    let shared = SharedOutput(output.as_mut_ptr() as *mut i8, output.len());
    parallel.run(tasks, &|t, _| {
        let rows = start(t)..start(t + 1);
        // SAFETY: task t owns output rows start(t) .. start(t + 1), disjoint from every
        // other task's and inside the output (`start(tasks) = out_h`).
        let part = unsafe { shared.part(rows.start * row, rows.len() * row) };
        // SAFETY: i8 and u8 have the same size and alignment.
        let part = unsafe { &mut *(part as *mut [i8] as *mut [u8]) };
        conv_rows(rows, part);
    });
}

/// Splits a max pooling's output rows in runs, one task per thread.
fn max_pool_parallel(win: &Window, input: &[i8], output: &mut [i8], parallel: &dyn Parallel) {
    let row = win.out_w * win.out_c;
    let run = win.out_h.div_ceil(parallel.threads());
    let tasks = win.out_h.div_ceil(run);
    let shared = SharedOutput(output.as_mut_ptr(), output.len());
    parallel.run(tasks, &|t, _| {
        let rows = t * run..(t * run + run).min(win.out_h);
        // SAFETY: task t owns output rows t·run .. (t+1)·run, disjoint from every other
        // task's and inside the output (`t · run < out_h`).
        let part = unsafe { shared.part(rows.start * row, rows.len() * row) };
        pooling::max_pool_rows(win, input, rows, part);
    });
}

/// Stores `q` (a value in steps of the tensor's scale) as element `i` of an int8 or
/// little-endian int16 tensor, rounded half away from zero (without libm) and clamped.
#[inline]
fn store_quantized(bytes: &mut [u8], wide: bool, i: usize, q: f32, zero_point: i32) {
    let r = if q >= 0.0 {
        (q + 0.5) as i32
    } else {
        (q - 0.5) as i32
    };
    let v = r.saturating_add(zero_point);
    if wide {
        let v = v.clamp(i16::MIN as i32, i16::MAX as i32) as i16;
        bytes[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
    } else {
        bytes[i] = v.clamp(-128, 127) as i8 as u8;
    }
}

fn as_u8(bytes: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { core::slice::from_raw_parts(bytes.as_ptr() as *const u8, bytes.len()) }
}

fn as_i8_mut(bytes: &mut [u8]) -> &mut [i8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut i8, bytes.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(hw: usize, c: usize) -> Window {
        Window {
            in_h: hw,
            in_w: hw,
            in_c: c,
            out_h: hw,
            out_w: hw,
            out_c: c,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
        }
    }

    /// Each Winograd path this build has: channels on small maps, row pairs on large ones,
    /// equal pixels where the path does not run or the conv is a share of a map already.
    #[test]
    fn the_split_follows_the_map() {
        let mut tried = 0;
        for (packing, isa) in [(Packing::Lanes16, Isa::Avx2), (Packing::Blocks4, Isa::Neon)] {
            let Some(path) = packing.winograd_path(isa) else {
                std::println!("skipped: this build has no {isa} Winograd path");
                continue;
            };
            tried += 1;
            let split = |hw: usize, c: usize, first: usize, threads: usize| {
                let win = window(hw, c);
                let conv = Conv {
                    window: &win,
                    input: &[],
                    zero_point: 0,
                    weights: &[],
                    params: &[],
                    out: OutQuant {
                        zero_point: 0,
                        min: -128,
                        max: 127,
                    },
                    residual: Residual::None,
                    first,
                };
                let pixels = hw * hw - first;
                conv_split(isa, packing, &conv, pixels, path.scratch_len(&win), threads)
            };
            // 14×14: 49 tiles, fewer than a chunk in any share.
            assert_eq!(split(14, 256, 0, 2), ConvSplit::Channels(path), "{isa}");
            // 56×56: 392 tiles a share of 2 row pairs-wise.
            assert_eq!(split(56, 64, 0, 2), ConvSplit::RowPairs(2), "{isa}");
            assert_eq!(
                split(56, 64, 56, 2),
                ConvSplit::Pixels(2),
                "a share already"
            );
            // One output channel pass cannot feed four threads.
            let one_pass = split(14, path.pass, 0, 4);
            assert!(!matches!(one_pass, ConvSplit::Channels(_)), "{isa}");
            // One pixel: one task.
            assert_eq!(split(1, 16, 0, 4), ConvSplit::Pixels(1));
        }
        if tried == 0 {
            std::println!("skipped: no Winograd path on this architecture");
        }
    }
}
