//! A small but complete model built by hand: conv (+ReLU) → fused residual conv →
//! max pool → subsample → channel pad → global pool → reshape → dense (int32 logits).

use kestrel_format::writer::{KesModel, OpRecord, TensorRecord};
use kestrel_format::{DType, OpKind, Plan, PreprocessInfo, Residual};

fn t(dims: [u32; 4], scale: f32, zero_point: i32, offset: u32) -> TensorRecord {
    TensorRecord {
        dtype: DType::I8,
        dims,
        scale,
        zero_point,
        offset,
    }
}

fn weights(n: usize, seed: i32) -> Vec<i8> {
    (0..n as i32)
        .map(|i| ((i * 37 + seed * 11) % 29 - 14) as i8)
        .collect()
}

pub fn tiny_model() -> KesModel {
    let tensors = vec![
        t([1, 6, 6, 3], 0.02, 3, 0),      // 0 input
        t([1, 6, 6, 4], 0.05, -128, 128), // 1 conv1 + ReLU
        t([1, 6, 6, 4], 0.03, -128, 320), // 2 conv2 (1x1) + ReLU
        t([1, 6, 6, 4], 0.04, -20, 128),  // 3 conv3 + residual 1, in place
        t([1, 3, 3, 4], 0.04, -20, 0),    // 4 max pool 3x3 s2
        t([1, 2, 2, 4], 0.04, -20, 64),   // 5 subsample
        t([1, 2, 2, 8], 0.04, -20, 320),  // 6 pad channels
        t([1, 1, 1, 8], 0.04, -20, 0),    // 7 global pool
        t([1, 1, 1, 8], 0.04, -20, 0),    // 8 reshape (alias)
        TensorRecord {
            dtype: DType::I32,
            dims: [1, 1, 1, 3],
            scale: 0.001,
            zero_point: 0,
            offset: 64,
        }, // 9 logits
    ];
    let conv = |input, output, k: u8, pad: u8, seed, relu: bool, in_c: usize| {
        let mut op = OpRecord::plain(OpKind::Conv, input, output);
        op.kernel = [k, k];
        op.stride = [1, 1];
        op.pads = [pad; 4];
        // Both ReLU convs have output zero point -128: the ReLU clamp is the int8 minimum.
        let _ = relu;
        op.weights = weights(4 * k as usize * k as usize * in_c, seed);
        op.params = (0..4).map(|c| (c * 100 - 150, 1_500_000_000, -6)).collect();
        op
    };
    let conv1 = conv(0, 1, 3, 1, 1, true, 3);
    let conv2 = conv(1, 2, 1, 0, 2, true, 4);
    let mut conv3 = conv(2, 3, 3, 1, 3, false, 4);
    conv3.residual = Some(Residual {
        tensor: 1,
        multiplier: 1_700_000_000,
        shift: 0,
    });
    conv3.out_min = -20;
    let mut pool = OpRecord::plain(OpKind::MaxPool, 3, 4);
    pool.kernel = [3, 3];
    pool.stride = [2, 2];
    pool.pads = [1, 1, 0, 0];
    let mut sub = OpRecord::plain(OpKind::Subsample, 4, 5);
    sub.stride = [2, 2];
    let mut pad = OpRecord::plain(OpKind::PadChannels, 5, 6);
    pad.aux = [2, 2];
    let gap = OpRecord::plain(OpKind::GlobalAvgPool, 6, 7);
    let reshape = OpRecord::plain(OpKind::Reshape, 7, 8);
    let mut dense = OpRecord::plain(OpKind::Dense, 8, 9);
    dense.weights = weights(3 * 8, 4);
    dense.params = (0..3).map(|c| (c * 5 - 4, 1_800_000_000, 0)).collect();
    KesModel {
        tensors,
        ops: vec![conv1, conv2, conv3, pool, sub, pad, gap, reshape, dense],
        input: 0,
        output: 9,
        plan: Plan {
            arena_bytes: 464,
            lower_bound_bytes: 300,
            scratch_offset: 0,
            scratch_bytes: 0,
        },
        preprocess: PreprocessInfo {
            size: [6, 6],
            resize: 1,
            channel_order: 0,
            resize_shorter: 0,
            scale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.25; 3],
        },
        labels: vec!["cat".into(), "dog".into(), "owl".into()],
        metadata: vec![("source_model".into(), "hand-built".into())],
    }
}

#[allow(dead_code)] // used by some of the test files that include this module
/// [`tiny_model`] with its input and conv2's output kept at int16 ("16x8"): the input,
/// conv1, conv2 and conv3 run the wide reference kernels, the rest int8.
pub fn tiny_mixed_model() -> KesModel {
    let mut m = tiny_model();
    let wide = |t: &mut TensorRecord, offset: u32| {
        t.dtype = DType::I16;
        t.scale /= 256.0;
        t.zero_point = 0;
        t.offset = offset;
    };
    // The int16 input (216 bytes) and conv2's output (288 bytes) move past the int8 plan.
    wide(&mut m.tensors[0], 512);
    wide(&mut m.tensors[2], 768);
    m.plan.arena_bytes = 1056;
    // conv1 and conv3 read int16 steps 256× finer and zero point 0 where the int8 file
    // had z: the same sums need bias 256·(b + z·Σw) and a shift 8 lower.
    let finer_input = |op: &mut OpRecord, z: i32| {
        let oc = op.params.len();
        op.params = (0..oc)
            .map(|c| {
                let (b, mu, sh) = op.params[c];
                let wsum: i32 = op
                    .weights
                    .iter()
                    .skip(c)
                    .step_by(oc)
                    .map(|&w| w as i32)
                    .sum();
                (256 * (b + z * wsum), mu, sh - 8)
            })
            .collect();
    };
    finer_input(&mut m.ops[0], 3);
    finer_input(&mut m.ops[2], -128);
    // conv2 writes int16 at zero point 0 (the int8 file's was -128): the same real values.
    m.ops[1].params = m.ops[1]
        .params
        .iter()
        .map(|&(b, mu, sh)| (b, mu, sh + 8))
        .collect();
    m.ops[1].out_min = 0; // ReLU at the int16 zero point
    m
}

#[allow(dead_code)] // used by some of the test files that include this module
/// [`tiny_mixed_model`] with conv3's weights as f16 (the same integers, exact in f16) and
/// its records the same requantisation in f32: `(b + z·Σw, m·2^(shift−31), 0)`.
pub fn tiny_f16_model() -> KesModel {
    let mut m = tiny_mixed_model();
    let z = m.tensors[2].zero_point;
    let op = &mut m.ops[2];
    let oc = op.params.len();
    op.params = (0..oc)
        .map(|c| {
            let (b, mu, sh) = op.params[c];
            let wsum: i32 = op
                .weights
                .iter()
                .skip(c)
                .step_by(oc)
                .map(|&w| w as i32)
                .sum();
            let bias = (b + z * wsum) as f32;
            let scale = (mu as f64 * 2f64.powi(sh - 31)) as f32;
            (bias.to_bits() as i32, scale.to_bits() as i32, 0)
        })
        .collect();
    op.weights = op
        .weights
        .iter()
        .flat_map(|&w| f16_bits(w as f32).to_le_bytes())
        .map(|b| b as i8)
        .collect();
    op.layout = kestrel_format::WeightLayout::F16;
    m
}

/// IEEE half bits of a small integer (|v| < 2048, exact), without a dependency.
fn f16_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let sign = if v < 0.0 { 0x8000 } else { 0 };
    let a = v.abs() as u32;
    let e = 31 - a.leading_zeros(); // a = 1.f × 2^e
    let mantissa = (a << (10 - e)) & 0x3FF;
    sign | ((e + 15) << 10) as u16 | mantissa as u16
}

#[allow(dead_code)] // used by some of the test files that include this module
/// Recomputes every checksum after a deliberate edit, so the edit reaches the validators.
pub fn fix_checksums(bytes: &mut [u8]) {
    let count = (u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize).min(7);
    for i in 0..count {
        let e = 64 + 32 * i;
        let off = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(bytes[e + 16..e + 24].try_into().unwrap()) as usize;
        if off.checked_add(len).is_some_and(|end| end <= bytes.len()) {
            let crc = crc32(&bytes[off..off + len]);
            bytes[e + 4..e + 8].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let table_crc = crc32(&bytes[64..64 + 32 * count]);
    bytes[24..28].copy_from_slice(&table_crc.to_le_bytes());
    let mut header = bytes[..64].to_vec();
    header[28..32].fill(0);
    let mut h = crc32_of(&header[..28]);
    h = crc32_update(h, &header[32..64]);
    bytes[28..32].copy_from_slice(&(!h).to_le_bytes());
}

// A small CRC-32 (IEEE) so the tests need no extra dependency.
#[allow(dead_code)]
fn crc32_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}
#[allow(dead_code)]
fn crc32_of(data: &[u8]) -> u32 {
    crc32_update(0xFFFF_FFFF, data)
}
#[allow(dead_code)]
fn crc32(data: &[u8]) -> u32 {
    !crc32_of(data)
}

#[allow(dead_code)] // used by some of the test files that include this module
/// A stem and a head: conv 3×3 (+ReLU) on a 9×9 image → max pool 3×3 s2 p1 → global pool
/// → reshape → dense. `streamed`: the conv and pool as one [`OpKind::ConvMaxPool`] in bands
/// of two pooled rows, the conv's map gone (its scratch not yet lent: `pack_convs_within`
/// lends it, any layout).
pub fn tiny_stem_model(streamed: bool) -> KesModel {
    let mut tensors = vec![
        t([1, 9, 9, 3], 0.02, 3, 0),      // 0 input
        t([1, 9, 9, 4], 0.05, -128, 256), // 1 conv + ReLU
        t([1, 5, 5, 4], 0.05, -128, 640), // 2 max pool
        t([1, 1, 1, 4], 0.05, -128, 768), // 3 global pool
        t([1, 1, 1, 4], 0.05, -128, 768), // 4 reshape (alias)
        TensorRecord {
            dtype: DType::I32,
            dims: [1, 1, 1, 3],
            scale: 0.001,
            zero_point: 0,
            offset: 832,
        }, // 5 logits
    ];
    let mut conv = OpRecord::plain(OpKind::Conv, 0, 1);
    conv.kernel = [3, 3];
    conv.stride = [1, 1];
    conv.pads = [1; 4];
    conv.weights = weights(4 * 9 * 3, 5);
    conv.params = (0..4).map(|c| (c * 90 - 120, 1_600_000_000, -5)).collect();
    conv.out_min = -128;
    let mut pool = OpRecord::plain(OpKind::MaxPool, 1, 2);
    pool.kernel = [3, 3];
    pool.stride = [2, 2];
    pool.pads = [1; 4];
    let mut dense = OpRecord::plain(OpKind::Dense, 4, 5);
    dense.weights = weights(3 * 4, 6);
    dense.params = (0..3).map(|c| (c * 7 - 5, 1_700_000_000, 0)).collect();
    let head = [
        OpRecord::plain(OpKind::GlobalAvgPool, 2, 3),
        OpRecord::plain(OpKind::Reshape, 3, 4),
        dense,
    ];
    let mut ops = if streamed {
        conv.kind = OpKind::ConvMaxPool;
        conv.output = 2;
        conv.pool = Some(kestrel_format::PoolWindow {
            kernel: pool.kernel,
            stride: pool.stride,
            pads: pool.pads,
            band_rows: 2,
        });
        vec![conv]
    } else {
        vec![conv, pool]
    };
    ops.extend(head);
    if streamed {
        tensors.remove(1);
        for op in &mut ops {
            for t in [&mut op.input, &mut op.output] {
                if *t > 1 {
                    *t -= 1;
                }
            }
        }
    }
    KesModel {
        tensors,
        ops,
        input: 0,
        output: if streamed { 4 } else { 5 },
        plan: Plan {
            arena_bytes: 896,
            lower_bound_bytes: 600,
            scratch_offset: 0,
            scratch_bytes: 0,
        },
        preprocess: PreprocessInfo {
            size: [9, 9],
            ..tiny_model().preprocess
        },
        labels: vec!["cat".into(), "dog".into(), "owl".into()],
        metadata: vec![("source_model".into(), "hand-built".into())],
    }
}

#[cfg(feature = "std")] // the thread pool
#[allow(dead_code)] // used by some of the test files that include this module
/// The logits of `bytes` on `isa` and `threads` threads, for an input every test fills
/// the same way.
pub fn logits(bytes: &[u8], isa: kestrel_runtime::Isa, threads: usize) -> Vec<f32> {
    let model = kestrel_runtime::Model::parse(bytes).unwrap();
    let pool =
        kestrel_runtime::pool::ThreadPool::new(threads, model.scratch_bytes(), false).unwrap();
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut session = kestrel_runtime::Session::with_kernels(&model, &mut arena, isa).unwrap();
    session.set_parallel(&pool);
    session
        .input_mut()
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = ((i * 89) % 251) as i8);
    session.run();
    let mut out = vec![0.0; model.classes()];
    session.logits(&mut out).unwrap();
    out
}
