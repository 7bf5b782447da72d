//! Board binary for the Raspberry Pi 4 (Cortex-A72, no dot product: the NEON SMLAL path, 4 threads).
//!
//! It will grab a camera frame when a GPIO line fires, classify it with a `.kes` model
//! and emit the result, through `kestrel-board`. The service loop is not written yet, so
//! this binary says so and exits with a failure instead of pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("kestrel-rpi4: the board service is not implemented yet (see the boards issue)");
    std::process::ExitCode::from(2)
}
