//! Files already on boards keep running as they did: a committed `.kes` of each conv weight
//! layout (`tests/fixtures/kes`, compiled once from the narrow torchvision fixture by the
//! e2e test of the same name) parses, and every kernel path this CPU has — on the host and
//! under qemu as a Cortex-A72 and A76 — gives exactly the committed logits. A change to the
//! reader, a layout or the kernels' arithmetic that alters them fails here; when it is
//! meant, bump `kestrel_format::VERSION` if bytes changed and re-write the logits:
//! `KESTREL_BLESS=1 cargo test -p kestrel-runtime --features std --test golden_files`.

use std::path::PathBuf;

use kestrel_runtime::{CpuFeatures, Isa, Model, Session};

const FILES: [&str; 4] = ["generic", "rpi4", "rpi5", "cortex-m4"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kes")
}

/// Three fixed RGB frames (smooth gradients and a few edges), not calibration images.
fn frames(width: usize, height: usize) -> Vec<Vec<u8>> {
    (0..3)
        .map(|seed| {
            (0..width * height * 3)
                .map(|i| {
                    let (p, c) = (i / 3, i % 3);
                    let (x, y) = (p % width, p / width);
                    let edge = if (x / 8 + y / 8 + seed) % 3 == 0 {
                        60
                    } else {
                        0
                    };
                    ((x * (c + 1) * 3 + y * (3 - c) * 2 + seed * 50 + edge) % 256) as u8
                })
                .collect()
        })
        .collect()
}

fn logits(bytes: &[u8], isa: Isa) -> Vec<Vec<f32>> {
    let model = Model::parse(bytes).unwrap();
    let [_, h, w, _] = model.input().dims.map(|d| d as usize);
    let mut arena = vec![0u8; model.arena_bytes()];
    let mut scratch =
        vec![0f32; kestrel_runtime::preprocess::scratch_len(&model.file().preprocess, w, h)];
    let mut out = vec![0f32; model.classes()];
    frames(w, h)
        .iter()
        .map(|rgb| {
            let mut s = Session::with_kernels(&model, &mut arena, isa).unwrap();
            s.set_input_rgb(rgb, w, h, &mut scratch).unwrap();
            s.run();
            s.logits(&mut out).unwrap();
            out.clone()
        })
        .collect()
}

/// One line per frame, each logit as its f32 bits in hex (exact, no float parsing).
fn to_text(logits: &[Vec<f32>]) -> String {
    logits
        .iter()
        .map(|row| {
            let words: Vec<String> = row.iter().map(|v| format!("{:08x}", v.to_bits())).collect();
            words.join(" ") + "\n"
        })
        .collect()
}

#[test]
fn committed_files_of_every_layout_give_their_committed_logits() {
    let bless = std::env::var_os("KESTREL_BLESS").is_some();
    let cpu = CpuFeatures::available();
    for isa in Isa::ALL {
        if !cpu.supports(isa) {
            println!("skipped: this CPU has no {isa} kernels");
        }
    }
    for name in FILES {
        let bytes = std::fs::read(dir().join(format!("{name}.kes"))).unwrap();
        let path = dir().join(format!("{name}.logits"));
        if bless {
            std::fs::write(&path, to_text(&logits(&bytes, Isa::Scalar))).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap();
        for isa in Isa::ALL.into_iter().filter(|&i| cpu.supports(i)) {
            assert_eq!(to_text(&logits(&bytes, isa)), want, "{name}.kes on {isa}");
        }
    }
}
