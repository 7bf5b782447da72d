//! Writing `.kes` files (host side, needs `std`).

use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::container::{
    header_crc, SectionKind, ALIGN, HEADER_LEN, MAGIC, SECTION_ENTRY_LEN, VERSION,
};

use crate::liveness;
use crate::model::{
    DType, OpKind, OpScratch, Plan, PoolWindow, PreprocessInfo, Residual, WeightLayout,
    OP_RECORD_LEN, PREPROCESS_LEN,
};
use kestrel_kernels::conv::winograd;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorRecord {
    pub dtype: DType,
    pub dims: [u32; 4],
    pub scale: f32,
    pub zero_point: i32,
    pub offset: u32,
}

#[derive(Clone, Debug)]
pub struct OpRecord {
    pub kind: OpKind,
    pub input: u32,
    pub output: u32,
    pub residual: Option<Residual>,
    pub kernel: [u8; 2],
    pub stride: [u8; 2],
    pub pads: [u8; 4],
    pub count_include_pad: bool,
    pub out_min: i8,
    pub out_max: i8,
    pub aux: [u16; 2],
    pub weights: Vec<i8>,
    pub layout: WeightLayout,
    /// Per output channel: `(bias, multiplier, shift)`.
    pub params: Vec<(i32, i32, i32)>,
    /// A packed conv's own scratch (see [`crate::OpScratch`]); `None`: the plan's.
    pub scratch: Option<OpScratch>,
    /// A streamed stem's max pooling ([`OpKind::ConvMaxPool`]); it takes the place of
    /// the residual and `aux` in the record.
    pub pool: Option<PoolWindow>,
}

impl OpRecord {
    /// An op with no weights, no window and a full int8 output range.
    pub fn plain(kind: OpKind, input: u32, output: u32) -> Self {
        OpRecord {
            kind,
            input,
            output,
            residual: None,
            kernel: [0; 2],
            stride: [0; 2],
            pads: [0; 4],
            count_include_pad: false,
            out_min: i8::MIN,
            out_max: i8::MAX,
            aux: [0; 2],
            weights: Vec::new(),
            layout: WeightLayout::Portable,
            params: Vec::new(),
            scratch: None,
            pool: None,
        }
    }

    /// The window the op computes from `input` into `output` (`[N, H, W, C]` each).
    fn window(
        &self,
        input: &TensorRecord,
        output: &TensorRecord,
    ) -> kestrel_kernels::window::Window {
        kestrel_kernels::window::Window::of_op(
            input.dims,
            output.dims,
            self.kernel,
            self.stride,
            self.pads,
        )
    }

    /// A streamed stem's windows over its `input` tensor ([`PoolWindow::streamed`]).
    fn streamed(&self, input: &TensorRecord) -> Option<kestrel_kernels::stream::StreamedPool> {
        self.pool?.streamed(
            input.dims,
            self.params.len(),
            (self.kernel, self.stride, self.pads),
        )
    }
}

#[derive(Clone, Debug)]
pub struct KesModel {
    pub tensors: Vec<TensorRecord>,
    pub ops: Vec<OpRecord>,
    pub input: u32,
    pub output: u32,
    pub plan: Plan,
    pub preprocess: PreprocessInfo,
    pub labels: Vec<String>,
    pub metadata: Vec<(String, String)>,
}

fn pad_to(buf: &mut Vec<u8>, align: usize) {
    while !buf.len().is_multiple_of(align) {
        buf.push(0);
    }
}

/// How much scratch [`KesModel::pack_convs_within`] lends each packed conv.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScratchPlan {
    /// At most this many bytes where the convs run in that little (`None`: what the
    /// paths use, up to an L2-sized panel).
    pub limit: Option<usize>,
    /// The target's kernels compute 3×3 stride-1 convs by this Winograd path (x86-64's
    /// AVX2 path, the Cortex-A72's): lend the convs it runs what it uses, so each
    /// transforms its weights once.
    pub winograd: Option<winograd::Path>,
}

impl KesModel {
    /// Repacks every conv's weights in `layout` for the packed-GEMM micro-kernels
    /// (`kestrel_kernels::conv::Packing`) and lends each its scratch (see
    /// [`KesModel::pack_convs_within`]).
    pub fn pack_convs(&mut self, layout: WeightLayout) {
        self.pack_convs_within(layout, ScratchPlan::default());
    }

    /// [`KesModel::pack_convs`] with each conv's scratch sized by `plan`: at most its
    /// limit where the convs can run in that little (a microcontroller's SRAM: smaller
    /// panels, the same results), or what the Winograd path uses on 3×3 stride-1 convs
    /// where the target's kernels have one. Each packed conv's scratch (the packed input panels it needs while it
    /// runs) is planned like a tensor live only at its step: placed in arena bytes that no
    /// tensor live then holds, the arena grown only where no such space is big enough. A
    /// streamed stem's band is part of its scratch, packed or not.
    pub fn pack_convs_within(&mut self, layout: WeightLayout, plan: ScratchPlan) {
        let packing = layout.packing();
        let scratch_limit = plan.limit;
        // (op, bytes wanted, least bytes it runs in)
        let mut scratch = Vec::new();
        for (i, op) in self.ops.iter_mut().enumerate() {
            let input = &self.tensors[op.input as usize];
            // Layers kept at int16 run the 16x8 reference kernels, on unpacked weights.
            let wide = input.dtype == DType::I16
                || self.tensors[op.output as usize].dtype == DType::I16
                || op
                    .residual
                    .is_some_and(|r| self.tensors[r.tensor as usize].dtype == DType::I16);
            let band = op.streamed(input).map_or(0, |s| s.band_bytes());
            let conv = matches!(op.kind, OpKind::Conv | OpKind::ConvMaxPool);
            let k = op.kernel[0] as usize * op.kernel[1] as usize * input.dims[3] as usize;
            match packing {
                Some(packing) if conv && op.layout == WeightLayout::Portable && !wide => {
                    op.weights = packing.pack_weights(&op.weights, k, op.params.len());
                    op.layout = layout;
                    let out = &self.tensors[op.output as usize].dims;
                    let pixels = out[1] as usize * out[2] as usize;
                    let mut need = band + packing.scratch_len_within(k, pixels, scratch_limit);
                    if let (Some(path), OpKind::Conv) = (plan.winograd, op.kind) {
                        let window = op.window(input, &self.tensors[op.output as usize]);
                        let lent = path.scratch_len(&window);
                        need = need.max(lent);
                    }
                    scratch.push((i, need as u64, (band + packing.min_scratch_len(k)) as u64));
                }
                _ if op.kind == OpKind::ConvMaxPool => {
                    // Unpacked, or packed by an earlier call: the band, and any panel.
                    // A panel holds at most a band's conv pixels.
                    let pixels = op
                        .streamed(input)
                        .map_or(usize::MAX, |s| s.band_bytes() / s.conv.out_c.max(1));
                    let (need, least) = op.layout.packing().map_or((0, 0), |p| {
                        let most = p.scratch_len_within(k, pixels, scratch_limit);
                        (most, p.min_scratch_len(k))
                    });
                    scratch.push((i, (band + need) as u64, (band + least) as u64))
                }
                _ => {}
            }
        }
        if !scratch.is_empty() {
            self.lend_scratch(&scratch);
        }
    }

    /// Gives each op of `wants` (op index, bytes it wants, least bytes it runs in) a
    /// scratch of its own: the best-fitting free space at its step that holds what it
    /// wants, else the largest that holds the least, else new space on top of the arena.
    fn lend_scratch(&mut self, wants: &[(usize, u64, u64)]) {
        let ranges = self.tensor_ranges();
        let life = self.lifetimes();
        let align = |n: u64| n.div_ceil(ALIGN as u64) * ALIGN as u64;
        // The tensors' arena: without a shared scratch an older packing put on top.
        let tensors_end = ranges.iter().map(|r| align(r.1)).max().unwrap_or(0);
        let planned = match self.plan.scratch_bytes {
            0 => self.plan.arena_bytes,
            _ => self.plan.scratch_offset,
        };
        let mut arena = planned.max(tensors_end);
        let mut lent = vec![0u64; self.ops.len()];
        for &(i, need, least) in wants {
            let busy = liveness::occupied(&ranges, &life, i);
            let (mut gaps, mut cursor) = (Vec::new(), 0u64);
            for &(start, end) in &busy {
                if start > cursor {
                    gaps.push((cursor, start - cursor));
                }
                cursor = cursor.max(align(end));
            }
            if arena > cursor {
                gaps.push((cursor, arena - cursor));
            }
            let fits = gaps.iter().filter(|g| g.1 >= need).min_by_key(|g| g.1);
            let largest = gaps.iter().filter(|g| g.1 >= least).max_by_key(|g| g.1);
            let (offset, bytes) = match (fits, largest) {
                (Some(&(offset, _)), _) => (offset, need),
                (None, Some(&(offset, len))) => (offset, len),
                (None, None) => {
                    arena = cursor + need;
                    (cursor, need)
                }
            };
            self.ops[i].scratch = Some(OpScratch {
                offset: offset as u32,
                bytes: bytes as u32,
            });
            lent[i] = bytes;
        }
        let with_scratch = liveness::peak(&ranges, &life, |s| lent.get(s).copied().unwrap_or(0));
        self.plan = Plan {
            arena_bytes: arena,
            lower_bound_bytes: with_scratch,
            scratch_offset: 0,
            scratch_bytes: 0,
        };
    }

    /// Each tensor's arena bytes `[offset, end)`.
    pub fn tensor_ranges(&self) -> Vec<(u64, u64)> {
        self.tensors
            .iter()
            .map(|t| {
                let bytes =
                    t.dims.iter().map(|&d| d as u64).product::<u64>() * t.dtype.size() as u64;
                (t.offset as u64, t.offset as u64 + bytes)
            })
            .collect()
    }

    /// Each tensor's live steps ([`liveness::lifetimes`]).
    pub fn lifetimes(&self) -> Vec<(usize, usize)> {
        let ops: Vec<liveness::Operands> = self
            .ops
            .iter()
            .map(|op| (op.input, op.residual.map(|r| r.tensor), op.output))
            .collect();
        liveness::lifetimes(self.tensors.len(), self.input, self.output, &ops)
    }

    /// Serialises the model. The result parses with [`crate::KesFile::parse`] as long as the
    /// model itself is consistent (the parser checks that; the writer does not duplicate it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut weights = Vec::new();
        let mut ops = Vec::with_capacity(self.ops.len() * OP_RECORD_LEN);
        for op in &self.ops {
            pad_to(&mut weights, ALIGN);
            let w_off = weights.len();
            weights.extend(op.weights.iter().map(|&w| w as u8));
            pad_to(&mut weights, ALIGN);
            let p_off = weights.len();
            for &(b, m, s) in &op.params {
                for v in [b, m, s] {
                    weights.extend_from_slice(&v.to_le_bytes());
                }
            }
            let p_len = weights.len() - p_off;
            let flags = op.residual.is_some() as u8 | (op.count_include_pad as u8) << 1;
            ops.extend_from_slice(&[op.kind as u8, flags, 0, 0]);
            ops.extend_from_slice(&op.input.to_le_bytes());
            ops.extend_from_slice(&op.residual.map_or(u32::MAX, |r| r.tensor).to_le_bytes());
            ops.extend_from_slice(&op.output.to_le_bytes());
            ops.extend_from_slice(&op.kernel);
            ops.extend_from_slice(&op.stride);
            ops.extend_from_slice(&op.pads);
            for v in [w_off, op.weights.len(), p_off, p_len] {
                ops.extend_from_slice(&(v as u32).to_le_bytes());
            }
            let (m, s, aux) = match (op.residual, op.pool) {
                (Some(r), _) => (r.multiplier, r.shift, op.aux),
                (None, Some(pool)) => pool.encode(),
                (None, None) => (0, 0, op.aux),
            };
            ops.extend_from_slice(&m.to_le_bytes());
            ops.extend_from_slice(&s.to_le_bytes());
            ops.extend_from_slice(&[op.out_min as u8, op.out_max as u8]);
            ops.extend_from_slice(&aux[0].to_le_bytes());
            ops.extend_from_slice(&aux[1].to_le_bytes());
            ops.push(op.layout as u8);
            let s = op.scratch.unwrap_or(OpScratch {
                offset: 0,
                bytes: 0,
            });
            ops.extend_from_slice(&s.offset.to_le_bytes());
            ops.extend_from_slice(&s.bytes.to_le_bytes());
            ops.push(0);
        }

        let mut graph = Vec::new();
        for v in [self.input, self.output, self.ops.len() as u32, 0] {
            graph.extend_from_slice(&v.to_le_bytes());
        }
        graph.extend_from_slice(&ops);

        let mut tensors = Vec::new();
        tensors.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        tensors.extend_from_slice(&[0; 4]);
        for t in &self.tensors {
            tensors.extend_from_slice(&[t.dtype as u8, 0, 0, 0]);
            for d in t.dims {
                tensors.extend_from_slice(&d.to_le_bytes());
            }
            tensors.extend_from_slice(&t.scale.to_le_bytes());
            tensors.extend_from_slice(&t.zero_point.to_le_bytes());
            tensors.extend_from_slice(&t.offset.to_le_bytes());
        }

        let mut plan = Vec::new();
        plan.extend_from_slice(&self.plan.arena_bytes.to_le_bytes());
        plan.extend_from_slice(&self.plan.lower_bound_bytes.to_le_bytes());
        plan.extend_from_slice(&self.plan.scratch_offset.to_le_bytes());
        plan.extend_from_slice(&self.plan.scratch_bytes.to_le_bytes());

        let p = &self.preprocess;
        let mut pre = Vec::with_capacity(PREPROCESS_LEN);
        pre.extend_from_slice(&p.size[0].to_le_bytes());
        pre.extend_from_slice(&p.size[1].to_le_bytes());
        pre.extend_from_slice(&[p.resize, p.channel_order, 0, 0]);
        pre.extend_from_slice(&p.resize_shorter.to_le_bytes());
        for v in [p.scale].iter().chain(&p.mean).chain(&p.std) {
            pre.extend_from_slice(&v.to_le_bytes());
        }
        pre.resize(PREPROCESS_LEN, 0);

        let mut labels = Vec::new();
        labels.extend_from_slice(&(self.labels.len() as u32).to_le_bytes());
        for l in &self.labels {
            labels.extend_from_slice(&(l.len() as u16).to_le_bytes());
            labels.extend_from_slice(l.as_bytes());
        }
        let mut meta = Vec::new();
        meta.extend_from_slice(&(self.metadata.len() as u32).to_le_bytes());
        for (k, v) in &self.metadata {
            meta.extend_from_slice(&(k.len() as u16).to_le_bytes());
            meta.extend_from_slice(k.as_bytes());
            meta.extend_from_slice(&(v.len() as u32).to_le_bytes());
            meta.extend_from_slice(v.as_bytes());
        }

        let sections = [
            (SectionKind::Graph, graph),
            (SectionKind::Tensors, tensors),
            (SectionKind::Weights, weights),
            (SectionKind::Plan, plan),
            (SectionKind::Preprocess, pre),
            (SectionKind::Labels, labels),
            (SectionKind::Metadata, meta),
        ];
        assemble(&sections)
    }
}

/// Lays out header, table and aligned sections, and fills in every checksum.
fn assemble(sections: &[(SectionKind, Vec<u8>)]) -> Vec<u8> {
    let table_end = HEADER_LEN + sections.len() * SECTION_ENTRY_LEN;
    let mut body = vec![0u8; table_end];
    let mut table = Vec::with_capacity(sections.len() * SECTION_ENTRY_LEN);
    for (kind, data) in sections {
        pad_to(&mut body, ALIGN);
        let offset = body.len() as u64;
        body.extend_from_slice(data);
        table.extend_from_slice(&(*kind as u32).to_le_bytes());
        table.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        table.extend_from_slice(&offset.to_le_bytes());
        table.extend_from_slice(&(data.len() as u64).to_le_bytes());
        table.extend_from_slice(&[0; 8]);
    }
    pad_to(&mut body, ALIGN);
    body[HEADER_LEN..table_end].copy_from_slice(&table);
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..10].copy_from_slice(&VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    header[12..16].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
    let crc = header_crc(&header);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    body[..HEADER_LEN].copy_from_slice(&header);
    body
}
