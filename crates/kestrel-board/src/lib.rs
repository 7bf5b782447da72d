//! What every Kestrel board binary shares: camera sources (V4L2, a child process's frames,
//! replay folders), triggers (embedded-hal GPIO input pins, intervals, stdin), frame
//! conversion and preprocessing into preallocated buffers, result sinks (JSON lines, an
//! output pin) and the service loop that survives camera faults. Boards in `boards/` are
//! thin binaries over [`app::main`] with their [`config::BoardProfile`].

pub mod app;
pub mod backoff;
pub mod classifier;
pub mod config;
pub mod delivery;
pub mod frame;
pub mod frame_counter;
pub mod gpio;
pub mod health;
pub mod model_update;
pub mod service;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod trigger;
#[cfg(feature = "v4l2")]
pub mod v4l2;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_model.rs"));
}

/// The model embedded at build time (`KESTREL_EMBED_MODEL`), if any.
pub fn embedded_model() -> Option<&'static [u8]> {
    embedded::EMBEDDED_MODEL
}

pub use config::BoardProfile;
pub use kestrel_runtime::Isa;
