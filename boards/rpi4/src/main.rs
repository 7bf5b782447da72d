//! Board binary for the Raspberry Pi 4: Cortex-A72 (NEON without dot product), four cores,
//! a CSI camera read through `rpicam-vid`, the trigger on header pin 11 (GPIO17).

use std::process::ExitCode;

use kestrel_board::{BoardProfile, Isa};

const PROFILE: BoardProfile = BoardProfile {
    name: "rpi4",
    description: "Raspberry Pi 4 (Cortex-A72, NEON without dot product)",
    cpu: "Cortex-A72 ×4 @ 1.8 GHz",
    kernels: Isa::Neon,
    threads: 4,
    pin_threads: true,
    gpiochip: "/dev/gpiochip0",
    trigger_line: 17,
    camera: "pipe:rpicam-vid -t 0 -n --codec mjpeg --width 640 --height 480 --framerate 15 -o -",
    camera_size: [640, 480],
};

fn main() -> ExitCode {
    kestrel_board::app::main(&PROFILE)
}
