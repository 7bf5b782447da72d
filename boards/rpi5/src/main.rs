//! Board binary for the Raspberry Pi 5: Cortex-A76 (the `sdot` kernel path), four cores,
//! a CSI camera read through `rpicam-vid`, the trigger on header pin 11 (GPIO17).
//!
//! On Pi 5 kernels before 6.6.45 the header's GPIO chip is `/dev/gpiochip4`; pass
//! `--trigger gpio:gpiochip4:17` there.

use std::process::ExitCode;

use kestrel_board::{BoardProfile, Isa};

const PROFILE: BoardProfile = BoardProfile {
    name: "rpi5",
    description: "Raspberry Pi 5 (Cortex-A76, sdot path)",
    cpu: "Cortex-A76 ×4 @ 2.4 GHz",
    kernels: Isa::NeonDot,
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
