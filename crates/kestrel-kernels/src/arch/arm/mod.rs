//! Armv7E-M (Cortex-M4/M7) micro-kernels on the DSP extension: [`dsp`] holds the two
//! instructions they are built from, [`smlad_2x4c16`] the conv tile, [`epilogue`] its
//! requantisation.

pub mod dsp;
pub mod epilogue;
pub mod smlad_2x4c16;
