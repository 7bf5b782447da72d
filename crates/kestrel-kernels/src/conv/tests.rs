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

fn supported() -> Vec<Isa> {
    let cpu = crate::isa::CpuFeatures::available();
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
