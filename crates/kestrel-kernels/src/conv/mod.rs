//! Convolution. The shared contract ([`contract`], [`params`]), the packed weight layouts
//! ([`layout`]), packed input ([`input`]), the element-by-element epilogue ([`epilogue`])
//! and the scratch budget ([`budget`]) import nothing from the micro-kernels
//! ([`crate::arch`]) or the driver; the kernels import only those (and [`kernel`], what
//! they are given, and [`tiles`], the loops of the kernels whose tiles hand sums back);
//! [`drive`] runs a kernel panel by panel and [`dispatch`] picks it. `docs/kernels.md`
//! walks through it.

pub mod budget;
pub mod contract;
pub mod dispatch;
pub mod drive;
pub mod epilogue;
pub mod input;
pub mod kernel;
pub mod layout;
pub mod params;
pub mod tiles;
pub mod unpacked;
pub mod winograd;

#[cfg(all(test, feature = "std"))]
mod tests;

pub use contract::{Conv, Packing, Shifts, KC};
pub use dispatch::Tile;
