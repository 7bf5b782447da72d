//! Convolution kernels, one benchmark per kernel path and weight layout this CPU runs,
//! on ResNet-18's shapes (stem, a 3×3 of each stage, a strided 1×1 shortcut), and the tile
//! alone where a Winograd path runs the conv (`avx2-direct`); and the
//! convs of layers kept at f16, scalar loops against the f16 tile.
//!
//! ```text
//! cargo bench -p kestrel-kernels --features std --bench conv
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kestrel_kernels::conv::params::to_bytes as param_bytes;
use kestrel_kernels::conv::{winograd, Conv, Packing};
use kestrel_kernels::isa::{CpuFeatures, Isa};
use kestrel_kernels::quant::{OutQuant, Residual};
use kestrel_kernels::window::Window;

/// `(name, input h = w, in channels, out channels, kernel, stride, pad)`.
const SHAPES: [(&str, usize, usize, usize, usize, usize, usize); 6] = [
    ("stem7x7s2", 224, 3, 64, 7, 2, 3),
    ("3x3c64", 56, 64, 64, 3, 1, 1),
    ("3x3c128", 28, 128, 128, 3, 1, 1),
    ("3x3c256", 14, 256, 256, 3, 1, 1),
    ("3x3c512", 7, 512, 512, 3, 1, 1),
    ("1x1c256s2", 28, 128, 256, 1, 2, 0),
];

fn values(n: usize, seed: u32) -> Vec<i8> {
    let mut s = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s >> 8) as i8).max(-127)
        })
        .collect()
}

fn conv(c: &mut Criterion) {
    let cpu = CpuFeatures::available();
    for (name, hw, ic, oc, k, stride, pad) in SHAPES {
        let out_hw = (hw + 2 * pad - k) / stride + 1;
        let win = Window {
            in_h: hw,
            in_w: hw,
            in_c: ic,
            out_h: out_hw,
            out_w: out_hw,
            out_c: oc,
            kernel: [k; 2],
            stride: [stride; 2],
            pads: [pad; 4],
        };
        let depth = k * k * ic;
        let input = values(hw * hw * ic, 1);
        let weights = values(depth * oc, 2);
        let params = param_bytes(&vec![(100, 1_300_000_000, -8); oc]);
        let mut group = c.benchmark_group(format!("conv/{name}"));
        group.throughput(Throughput::Elements((out_hw * out_hw * oc * depth) as u64));
        group.sample_size(20);
        for packing in Packing::ALL {
            let packed = packing.pack_weights(&weights, depth, oc);
            let mut scratch = vec![
                0i8;
                packing
                    .scratch_len(depth)
                    .max(winograd::most_scratch_len(&win))
            ];
            let mut output = vec![0i8; out_hw * out_hw * oc];
            let conv = Conv {
                window: &win,
                input: &input,
                zero_point: -3,
                weights: &packed,
                params: &params,
                out: OutQuant {
                    zero_point: -128,
                    min: -128,
                    max: 127,
                },
                residual: Residual::None,
                first: 0,
            };
            for isa in Isa::ALL.into_iter().filter(|&i| cpu.supports(i)) {
                let id = BenchmarkId::new(format!("{packing:?}"), isa.name());
                group.bench_function(id, |b| {
                    b.iter(|| packing.conv2d(isa, &conv, &mut output, &mut scratch))
                });
                // Where a Winograd path ran the conv above, the tile alone too.
                if packing
                    .tile(isa)
                    .winograd()
                    .is_some_and(|path| path.runs(&win, 0, out_hw * out_hw, scratch.len()))
                {
                    let id =
                        BenchmarkId::new(format!("{packing:?}"), format!("{}-direct", isa.name()));
                    group.bench_function(id, |b| {
                        b.iter(|| packing.conv2d_direct(isa, &conv, &mut output, &mut scratch))
                    });
                }
            }
        }
        group.finish();
    }
}

/// `(name, input h = w, in channels, out channels)`: 3×3 stride-1 convs of the CIFAR
/// ResNets' stages, the layers `--budget` keeps at f16.
const F16_SHAPES: [(&str, usize, usize, usize); 3] = [
    ("3x3c16", 32, 16, 16),
    ("3x3c32", 16, 32, 32),
    ("3x3c64", 8, 64, 64),
];

/// Convs on f16 weights (int16 activations), on the scalar loops and on this CPU's f16 tile.
fn wide_f16(c: &mut Criterion) {
    use kestrel_kernels::wide::{self, Act, ActMut, OutRange, Weights};
    let best = CpuFeatures::available().best();
    for (name, hw, ic, oc) in F16_SHAPES {
        let win = Window {
            in_h: hw,
            in_w: hw,
            in_c: ic,
            out_h: hw,
            out_w: hw,
            out_c: oc,
            kernel: [3; 2],
            stride: [1; 2],
            pads: [1; 4],
        };
        let depth = 9 * ic;
        let input: Vec<u8> = values(hw * hw * ic, 3)
            .iter()
            .flat_map(|&v| (v as i16 * 100).to_le_bytes())
            .collect();
        let weights: Vec<u8> = values(depth * oc, 4)
            .iter()
            .flat_map(|&v| {
                half::f16::from_f32(v as f32 / 512.0)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect();
        let record = (0.5f32.to_bits() as i32, (1.0f32 / 64.0).to_bits() as i32, 0);
        let mut output = vec![0u8; 2 * hw * hw * oc];
        let mut group = c.benchmark_group(format!("wide_f16/{name}"));
        group.throughput(Throughput::Elements((hw * hw * oc * depth) as u64));
        group.sample_size(20);
        let mut paths = vec![(Isa::Scalar, "scalar loops")];
        if let Some((tile, _)) = wide::f16_tile(best) {
            paths.push((best, tile));
        }
        for (isa, path) in paths {
            group.bench_function(BenchmarkId::from_parameter(path), |b| {
                b.iter(|| {
                    wide::conv2d(
                        isa,
                        &win,
                        0..hw,
                        Act {
                            bytes: &input,
                            wide: true,
                        },
                        0,
                        Weights::F16(&weights),
                        |_| record,
                        OutRange::from_fields(true, 0, 0, i8::MAX),
                        wide::Residual::None,
                        &mut ActMut {
                            bytes: &mut output,
                            wide: true,
                        },
                    )
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, conv, wide_f16);
criterion_main!(benches);
