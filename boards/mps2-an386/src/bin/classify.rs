//! ResNet-8 on a Cortex-M4F: the model in flash, its arena a static in SRAM sized from
//! the file, the first dev image of each class classified in turn. Each result goes out
//! through defmt as `<image> <label> ticks <n>` (`scripts/mcu-run` decodes and prints it).
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use kestrel_mps2_an386::{cycles, exit, stack};
use kestrel_runtime::{Error, Model, Session};

/// A test image, decoded to RGB at build time.
struct TestImage {
    name: &'static str,
    width: usize,
    height: usize,
    offset: usize,
}

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

/// The `.kes` parser reads sections in place: the file starts on its alignment.
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/model.kes")));
static IMAGE_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/images.bin"));

#[entry]
fn main() -> ! {
    // `#[entry]` hands these out once as `&'static mut`: no other code can reach them.
    static mut ARENA: Aligned<[u8; ARENA_BYTES]> = Aligned([0; ARENA_BYTES]);
    static mut PREPROCESS: [f32; PREPROCESS_SCRATCH] = [0.0; PREPROCESS_SCRATCH];

    stack::paint();
    let core = cortex_m::Peripherals::take().expect("the core peripherals, taken once");
    cycles::start(core.SYST);
    let (insns, ticks) = cycles::calibrate();
    defmt::println!("calibration {=u32} instructions ticks {=u64}", insns, ticks);
    match classify(&mut ARENA.0, PREPROCESS) {
        Ok(()) => exit(true),
        Err(e) => {
            defmt::error!("classification failed: {}", e);
            exit(false)
        }
    }
}

fn classify(arena: &mut [u8], preprocess: &mut [f32]) -> Result<(), Error> {
    let model = Model::parse(&MODEL.0)?;
    let mut session = Session::new(&model, arena)?;
    defmt::println!(
        "model {=usize} bytes arena {=usize} bytes kernels {=str}",
        MODEL.0.len(),
        model.arena_bytes(),
        session.kernels().name()
    );
    let mut logits = [0f32; CLASSES];
    layer_costs(&mut session, &model, &IMAGES[0], preprocess)?;
    for image in &IMAGES {
        let rgb = &IMAGE_BYTES[image.offset..][..image.width * image.height * 3];
        session.set_input_rgb(rgb, image.width, image.height, preprocess)?;
        let t0 = cycles::now();
        session.run();
        let ticks = cycles::now() - t0;
        session.logits(&mut logits)?;
        let best = (0..CLASSES).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        defmt::println!(
            "{=str} {=str} ticks {=u64}",
            image.name,
            model.label(best).unwrap_or("?"),
            ticks
        );
    }
    defmt::println!(
        "done {=usize} images, stack {=usize} bytes at most",
        IMAGES.len(),
        stack::used()
    );
    Ok(())
}

/// Each op's ticks on the first image: where an inference's cost goes.
fn layer_costs(
    session: &mut Session<'_, '_>,
    model: &Model<'_>,
    image: &TestImage,
    preprocess: &mut [f32],
) -> Result<(), Error> {
    let rgb = &IMAGE_BYTES[image.offset..][..image.width * image.height * 3];
    session.set_input_rgb(rgb, image.width, image.height, preprocess)?;
    for i in 0..model.file().op_count() {
        let t0 = cycles::now();
        session.run_op(i);
        let ticks = cycles::now() - t0;
        let op = model.file().op(i).map_or("?", |op| op.kind.name());
        defmt::println!("layer {=u32} {=str} cost {=u64}", i, op, ticks);
    }
    Ok(())
}
