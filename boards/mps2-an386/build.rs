//! Puts what the firmware embeds into OUT_DIR: the model (`KESTREL_MCU_MODEL`, a `.kes`
//! compiled `--target cortex-m4`), its arena size as a constant (the static arena is
//! sized from the file), and the first image of each class of `KESTREL_MCU_IMAGES`
//! (default `../shared/data/cifar10/dev`), decoded to RGB by the same `image` crate the
//! host's `kestrel run` decodes with.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    fs::copy(manifest.join("memory.x"), out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-env-changed=KESTREL_MCU_MODEL");
    println!("cargo:rerun-if-env-changed=KESTREL_MCU_IMAGES");

    // The kernel check needs no model; the classifier fails to compile without one.
    let generated = match env::var_os("KESTREL_MCU_MODEL") {
        Some(model) => classifier_inputs(Path::new(&model), &manifest, &out),
        None => {
            fs::write(out.join("model.kes"), []).unwrap();
            fs::write(out.join("images.bin"), []).unwrap();
            "compile_error!(\"set KESTREL_MCU_MODEL to a .kes compiled with `kestrel compile --target cortex-m4` (scripts/mcu-run does)\");\n".to_string()
        }
    };
    fs::write(out.join("generated.rs"), generated).unwrap();
}

fn classifier_inputs(model_path: &Path, manifest: &Path, out: &Path) -> String {
    println!("cargo:rerun-if-changed={}", model_path.display());
    let bytes = fs::read(model_path)
        .unwrap_or_else(|e| panic!("KESTREL_MCU_MODEL={}: {e}", model_path.display()));
    let model = kestrel_runtime::Model::parse(&bytes)
        .unwrap_or_else(|e| panic!("KESTREL_MCU_MODEL={}: {e}", model_path.display()));
    fs::write(out.join("model.kes"), &bytes).unwrap();

    let images = env::var_os("KESTREL_MCU_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../../shared/data/cifar10/dev"));
    println!("cargo:rerun-if-changed={}", images.display());
    let mut classes: Vec<PathBuf> = fs::read_dir(&images)
        .unwrap_or_else(|e| panic!("test images {}: {e}", images.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    assert!(
        !classes.is_empty(),
        "no class folders in {}",
        images.display()
    );

    let info = model.file().preprocess;
    let (mut rgb, mut scratch, mut list) = (Vec::new(), 0usize, String::new());
    for class in &classes {
        let mut files: Vec<PathBuf> = fs::read_dir(class)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let Some(first) = files.first() else { continue };
        let img = image::ImageReader::open(first)
            .and_then(|r| r.with_guessed_format())
            .unwrap_or_else(|e| panic!("{}: {e}", first.display()))
            .decode()
            .unwrap_or_else(|e| panic!("{}: {e}", first.display()))
            .to_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        scratch = scratch.max(kestrel_runtime::preprocess::scratch_len(&info, w, h));
        let name = format!(
            "{}/{}",
            class.file_name().unwrap().to_string_lossy(),
            first.file_name().unwrap().to_string_lossy()
        );
        writeln!(
            list,
            "    TestImage {{ name: {name:?}, width: {w}, height: {h}, offset: {} }},",
            rgb.len()
        )
        .unwrap();
        rgb.extend_from_slice(img.as_raw());
    }
    fs::write(out.join("images.bin"), &rgb).unwrap();
    format!(
        "/// Bytes of the model's memory plan: the static arena's size.\n\
         const ARENA_BYTES: usize = {};\n\
         /// Logits the model writes.\n\
         const CLASSES: usize = {};\n\
         /// Floats of preprocessing scratch the largest test image needs.\n\
         const PREPROCESS_SCRATCH: usize = {scratch};\n\
         /// The first image of each class, decoded.\n\
         const IMAGES: [TestImage; {}] = [\n{list}];\n",
        model.arena_bytes(),
        model.classes(),
        list.lines().count()
    )
}
