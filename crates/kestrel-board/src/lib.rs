//! What every Kestrel board binary shares.
//!
//! This crate will own camera sources (V4L2, a child process's frames, replay folders),
//! triggers (embedded-hal GPIO input pins, intervals, stdin), preprocessing of frames into
//! the model's input, result sinks (JSON lines, an output pin) and the service loop that
//! survives camera faults. Boards in `boards/` are thin binaries over it.
