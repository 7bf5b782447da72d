//! Board binary for the Jetson Orin: Cortex-A78AE (the `sdot` kernel path), a CSI camera
//! read through a GStreamer `nvarguscamerasrc` pipeline as raw I420 frames.
//!
//! The default trigger line (144 on `/dev/gpiochip0`) is meant as header pin 7 of the
//! Orin Nano developer kit; line numbers differ between JetPack releases and carrier
//! boards, so check it with `gpioinfo` and set `trigger` in the config.

use std::process::ExitCode;

use kestrel_board::{BoardProfile, Isa};

const PROFILE: BoardProfile = BoardProfile {
    name: "jetson-orin",
    description: "NVIDIA Jetson Orin (Cortex-A78AE, sdot path)",
    cpu: "Cortex-A78AE ×6 @ 1.5 GHz (Orin Nano)",
    kernels: Isa::NeonDot,
    threads: 6,
    pin_threads: true,
    gpiochip: "/dev/gpiochip0",
    trigger_line: 144,
    camera: "pipe:yuv420:1280x720:gst-launch-1.0 -q nvarguscamerasrc ! 'video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1' ! nvvidconv ! 'video/x-raw,format=I420' ! fdsink fd=1",
    camera_size: [640, 480],
};

fn main() -> ExitCode {
    kestrel_board::app::main(&PROFILE)
}
