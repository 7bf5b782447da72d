//! Every conv path against the reference ([`crate::check`]) on every ISA this CPU runs
//! (qemu runs the AArch64 ones), and the unpacked conv.

use crate::check::{self, values};
use crate::conv::contract::{Conv, Packing};
use crate::conv::params::to_bytes as param_bytes;
use crate::isa::Isa;
use crate::quant::{OutQuant, Residual};
use crate::scalar;
use crate::window::Window;
use std::vec;
use std::vec::Vec;

fn check_all_paths(layout: Packing, isas: &[Isa]) {
    if let Err(failure) = check::all_paths(layout, isas) {
        panic!("{failure}");
    }
}

#[test]
fn scalar_micro_kernel_matches_the_reference_conv() {
    check_all_paths(Packing::Blocks4, &[Isa::Scalar]);
    check_all_paths(Packing::Lanes16, &[Isa::Scalar]);
    check_all_paths(Packing::Pairs4, &[Isa::Scalar]);
}

/// The paths this CPU runs; each one it does not is named as skipped.
fn supported() -> Vec<Isa> {
    let cpu = crate::isa::CpuFeatures::available();
    for isa in Isa::ALL.into_iter().filter(|&i| !cpu.supports(i)) {
        std::println!("skipped: this CPU does not run {isa}");
    }
    Isa::ALL.into_iter().filter(|&i| cpu.supports(i)).collect()
}

#[test]
fn every_supported_path_on_4_channel_blocks_matches_the_reference_conv() {
    let isas = supported();
    std::println!("checking {isas:?}");
    check_all_paths(Packing::Blocks4, &isas);
}

#[test]
fn every_supported_path_on_16_channel_lanes_matches_the_reference_conv() {
    let isas = supported();
    std::println!("checking {isas:?}");
    check_all_paths(Packing::Lanes16, &isas);
}

#[test]
fn every_supported_path_on_int16_pair_blocks_matches_the_reference_conv() {
    let isas = supported();
    std::println!("checking {isas:?}");
    check_all_paths(Packing::Pairs4, &isas);
}

#[test]
fn the_unpacked_conv_is_the_reference() {
    let win = Window {
        in_h: 6,
        in_w: 5,
        in_c: 7,
        out_h: 3,
        out_w: 3,
        out_c: 9,
        kernel: [3, 3],
        stride: [2, 2],
        pads: [1, 1, 1, 0],
    };
    let input = values(6 * 5 * 7, 1);
    let weights = values(9 * 7 * 9, 2);
    let raw = param_bytes(
        &(0..9)
            .map(|o| (o * 100 - 300, 1_300_000_000, -8))
            .collect::<Vec<_>>(),
    );
    let out = OutQuant {
        zero_point: 4,
        min: -128,
        max: 127,
    };
    let conv = Conv {
        window: &win,
        input: &input,
        zero_point: -2,
        weights: &weights,
        params: &raw,
        out,
        residual: Residual::None,
        first: 0,
    };
    let (mut got, mut want) = (vec![0i8; 81], vec![0i8; 81]);
    crate::conv::unpacked::conv2d(&conv, &mut got);
    scalar::conv2d(&conv, &mut want);
    assert_eq!(got, want);
    assert!(want.iter().any(|&v| v > -128 && v < 127));
}

#[test]
fn in_place_residual_matches_too() {
    if let Err(failure) = check::in_place_residual(&supported()) {
        panic!("{failure}");
    }
}

/// Winograd's sums at their extremes: inputs, padding and weights at ±128 where four
/// times the conv's sum is near the int32 bound the path relies on, on the path itself
/// (a scratch that holds a chunk) against the reference.
#[test]
fn winograd_is_exact_at_the_extremes_of_its_sums() {
    use crate::conv::dispatch::TABLE;
    use crate::conv::winograd;
    let cpu = crate::isa::CpuFeatures::available();
    // Every path with a Winograd kernel of its own, on its layout.
    let paths: Vec<(Packing, Isa, winograd::Path)> = TABLE
        .iter()
        .filter(|r| r.tile.isa() == r.isa)
        .filter_map(|r| Some((r.packing, r.isa, r.tile.winograd()?)))
        .collect();
    assert!(!paths.is_empty());
    for &(_, isa, _) in &paths {
        if !cpu.supports(isa) {
            std::println!("skipped: this CPU does not run {isa} (its Winograd path)");
        }
    }
    let paths: Vec<_> = paths.into_iter().filter(|p| cpu.supports(p.1)).collect();
    for (in_c, h, w) in [(winograd::MAX_IN_C, 12, 11), (256, 13, 9)] {
        let win = Window {
            in_h: h,
            in_w: w,
            in_c,
            out_h: h,
            out_w: w,
            out_c: 8,
            kernel: [3, 3],
            stride: [1, 1],
            pads: [1; 4],
        };
        let k = 9 * in_c;
        // Mostly one sign, so the sums reach their bound; a few flips so they differ.
        let signs = values(h * w * in_c + k * 8, 7);
        let input: Vec<i8> = signs[..h * w * in_c]
            .iter()
            .map(|&r| if r % 13 == 0 { 127 } else { -128 })
            .collect();
        // `Blocks4` weights stop at −127 (the A72's direct tile pairs its products).
        let weights_down_to = |least: i8| -> Vec<i8> {
            signs[h * w * in_c..]
                .iter()
                .map(|&r| if r % 11 == 0 { 127 } else { least })
                .collect()
        };
        let raw = param_bytes(
            &(0..8)
                .map(|o| (o * 1000, 1_200_000_000, -20 - o % 4))
                .collect::<Vec<_>>(),
        );
        let out = OutQuant {
            zero_point: 0,
            min: -128,
            max: 127,
        };
        fn conv<'a>(
            window: &'a Window,
            input: &'a [i8],
            weights: &'a [i8],
            params: &'a [u8],
            out: OutQuant,
        ) -> Conv<'a> {
            Conv {
                window,
                input,
                zero_point: -128,
                weights,
                params,
                out,
                residual: Residual::None,
                first: 0,
            }
        }
        for &(packing, isa, path) in &paths {
            let weights = weights_down_to(match packing {
                Packing::Blocks4 => -127,
                _ => -128,
            });
            let mut want = vec![0i8; h * w * 8];
            scalar::conv2d(&conv(&win, &input, &weights, &raw, out), &mut want);
            assert!(want.iter().any(|&v| v > -128 && v < 127), "all clamped");
            let packed = packing.pack_weights(&weights, k, 8);
            // One group of tiles next to a pass's weights: the least the path runs in.
            let least = winograd::weights_bytes(in_c, path.pass) + 4 * winograd::tile_bytes(in_c);
            let mut scratch = vec![0i8; least];
            assert!(path.runs(&win, 0, h * w, scratch.len()));
            let mut got = vec![0i8; h * w * 8];
            let c = conv(&win, &input, &packed, &raw, out);
            packing.conv2d(isa, &c, &mut got, &mut scratch);
            assert_eq!(got, want, "{isa} on {packing:?}, IC {in_c}, {h}×{w}");
        }
    }
}
