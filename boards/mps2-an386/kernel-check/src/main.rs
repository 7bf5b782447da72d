//! The kernels' reference checks on the Cortex-M4 itself: every conv case of
//! `kestrel_kernels::check` on the DSP tile against the scalar reference (both layouts,
//! odd shapes, the parser's limits, runs split as threads split them), the in-place
//! residual, and the dense dot product. Exits 0 only if every check passed.
#![no_std]
#![no_main]

extern crate alloc;

use cortex_m_rt::entry;
use embedded_alloc::LlffHeap as Heap;
use kestrel_kernels::check;
use kestrel_kernels::conv::Packing;
use kestrel_kernels::isa::{CpuFeatures, Isa};
use kestrel_mps2_an386::{cycles, exit};

#[global_allocator]
static HEAP: Heap = Heap::empty();

/// The largest case (6 × 400 pixels, 16 channels) holds four 38,400-byte maps at once.
const HEAP_BYTES: usize = 512 * 1024;

#[entry]
fn main() -> ! {
    static mut MEMORY: [u8; HEAP_BYTES] = [0; HEAP_BYTES];
    // SAFETY: called once, before anything allocates, on memory nothing else uses.
    unsafe { HEAP.init(MEMORY.as_mut_ptr() as usize, HEAP_BYTES) };
    let core = cortex_m::Peripherals::take().expect("the core peripherals, taken once");
    cycles::start(core.SYST);

    let cpu = CpuFeatures::available();
    if !cpu.supports(Isa::ArmDsp) {
        defmt::error!("this build lacks the dsp feature: nothing to check");
        exit(false);
    }
    let isas = [Isa::Scalar, Isa::ArmDsp];
    let mut ok = true;
    for packing in Packing::ALL {
        let t0 = cycles::now();
        match check::all_paths(packing, &isas) {
            Ok(cases) => defmt::println!(
                "conv {=str}: {=usize} cases equal to the reference on scalar and arm-dsp (ticks {=u64})",
                packing.tile(Isa::ArmDsp).name(),
                cases,
                cycles::now() - t0
            ),
            Err(f) => {
                defmt::println!("FAILED: {}", defmt::Display2Format(&f));
                ok = false;
            }
        }
    }
    for (name, result) in [
        ("in-place residual", check::in_place_residual(&isas)),
        ("dense dot product", check::dense_dot()),
    ] {
        match result {
            Ok(()) => defmt::println!("{=str}: equal to the reference", name),
            Err(f) => {
                defmt::println!("FAILED: {}", defmt::Display2Format(&f));
                ok = false;
            }
        }
    }
    defmt::println!("kernel check {=str}", if ok { "passed" } else { "failed" });
    exit(ok)
}
