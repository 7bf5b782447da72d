//! The micro-kernels, one file per tile named by instruction and shape (`sdot_4x16c4`:
//! `sdot`, 4 pixels × 16 channels, 4 bytes per lane), grouped by architecture, with the
//! portable ones every build has. They import the conv contract, layouts, packed-input
//! views and epilogues, and nothing else; [`crate::conv::dispatch`] chooses among them.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(all(target_arch = "arm", feature = "dsp"))]
pub mod arm;
pub mod portable;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
