//! ONNX Runtime's instructions for one inference, as `../shared/arm/qcount.sh` counts
//! Kestrel's `bench` example: a warm-up run, then one run between the ROI markers, on the
//! calling thread only (one intra-op thread, no spinning), with ONNX Runtime's own aarch64
//! library (`libonnxruntime.so` from its PyPI wheel) loaded at run time.
//!
//! ```sh
//! cargo build --release --target aarch64-unknown-linux-gnu \
//!     --manifest-path scripts/ort-qcount/Cargo.toml
//! ../shared/arm/qcount.sh cortex-a76 scripts/ort-qcount/target/aarch64-unknown-linux-gnu/release/ort-qcount \
//!     LIBONNXRUNTIME.so MODEL.onnx
//! ```
//!
//! The input is a fixed pattern (the count does not depend on the pixel values); the
//! first logits are printed so a run can be checked against the host's.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;

/// qcount's ROI markers (a no-op on a real board's kernel).
fn roi(on: bool) {
    let code = if on { 0x51C0_DE01 } else { 0x51C0_DE00 };
    // SAFETY: prctl with an unknown option only returns EINVAL.
    unsafe {
        libc::prctl(
            code,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, lib, model] = args.as_slice() else {
        return Err("usage: ort-qcount LIBONNXRUNTIME.so MODEL.onnx".into());
    };
    let env = ort::init_from(lib)?.with_name("ort-qcount").build()?;
    let mut session = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .with_intra_threads(1)?
        .with_inter_threads(1)?
        .with_config_entry("session.intra_op.allow_spinning", "0")?
        .commit_from_file(model)?;
    let input = &session.inputs()[0];
    let name = input.name().to_string();
    let dims: Vec<i64> = input
        .dtype()
        .tensor_shape()
        .ok_or("the input is not a tensor")?
        .iter()
        .map(|&d| d.max(1))
        .collect();
    let len: usize = dims.iter().map(|&d| d as usize).product();
    let pixels: Vec<f32> = (0..len)
        .map(|i| ((i * 37) % 255) as f32 / 255.0 - 0.45)
        .collect();
    let make = || Tensor::from_array((dims.clone(), pixels.clone()));
    session.run(ort::inputs![name.as_str() => make()?])?;
    let x = make()?;
    roi(true);
    let outputs = session.run(ort::inputs![name.as_str() => x])?;
    roi(false);
    let (_, logits) = outputs[0].try_extract_tensor::<f32>()?;
    println!("logits {:?}", &logits[..logits.len().min(5)]);
    Ok(())
}
