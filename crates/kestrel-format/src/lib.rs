//! The `.kes` model file.
//!
//! One file holds everything a board needs to classify: the op list, each tensor's shape,
//! quantisation and arena offset, the weights already packed for the kernels, the memory
//! plan, the preprocessing and the labels. Layout:
//!
//! ```text
//! 0      header (64 bytes): magic, version, section count, file length, CRCs
//! 64     section table: 32 bytes per section (kind, CRC32, offset, length)
//! ...    sections, each starting on a 64-byte boundary; every gap byte is zero
//! ```
//!
//! Every byte is covered by a CRC or a check, so a flipped bit anywhere is an error.
//! [`KesFile::parse`] reads a `&[u8]` without copying and checks every offset, length,
//! index and shape before it hands out typed views; the runtime trusts nothing else.
#![no_std]

#[cfg(any(feature = "std", test))]
extern crate std;

mod container;
#[cfg(feature = "std")]
pub mod liveness;
mod model;
mod reader;
#[cfg(feature = "std")]
pub mod writer;

pub use container::{SectionKind, ALIGN, HEADER_LEN, MAGIC, SECTION_ENTRY_LEN, VERSION};
pub use model::{
    ChannelParams, DType, KesFile, Metadata, OpKind, OpScratch, OpView, Plan, PoolWindow,
    PreprocessInfo, Residual, TensorInfo, WeightLayout, CHANNEL_PARAMS_LEN, OP_RECORD_LEN,
    TENSOR_RECORD_LEN,
};

use core::fmt;

/// Why a `.kes` file was refused. Every variant names what is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FormatError {
    /// Fewer bytes than a header, or than the header says the file has.
    Truncated {
        needed: u64,
        available: u64,
    },
    BadMagic,
    UnsupportedVersion {
        found: u16,
        supported: u16,
    },
    HeaderChecksum,
    SectionTableChecksum,
    /// The file length in the header differs from the bytes given.
    LengthMismatch {
        header: u64,
        actual: u64,
    },
    /// A section lies outside the file, overlaps another, or is misaligned.
    SectionBounds {
        kind: u32,
    },
    SectionChecksum {
        kind: u32,
    },
    UnknownSection {
        kind: u32,
    },
    DuplicateSection {
        kind: u32,
    },
    MissingSection {
        kind: u32,
    },
    /// A byte that must be zero (padding, reserved field) is not.
    NonZeroPadding {
        offset: u64,
    },
    /// A record inside a section is cut short.
    SectionTruncated {
        kind: u32,
    },
    /// A tensor record is inconsistent (index given).
    BadTensor {
        tensor: u32,
        reason: &'static str,
    },
    /// An op record is inconsistent (index given).
    BadOp {
        op: u32,
        reason: &'static str,
    },
    BadPlan {
        reason: &'static str,
    },
    BadString {
        kind: u32,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FormatError::*;
        match *self {
            Truncated { needed, available } => write!(
                f,
                "file is truncated: needs {needed} bytes, has {available}"
            ),
            BadMagic => write!(f, "not a .kes file (bad magic)"),
            UnsupportedVersion { found, supported } => write!(
                f,
                "format version {found} is not supported (this build reads version {supported})"
            ),
            HeaderChecksum => write!(f, "header checksum mismatch"),
            SectionTableChecksum => write!(f, "section table checksum mismatch"),
            LengthMismatch { header, actual } => {
                write!(f, "header says {header} bytes, file has {actual}")
            }
            SectionBounds { kind } => write!(
                f,
                "section {} lies outside the file, overlaps another or is misaligned",
                section_name(kind)
            ),
            SectionChecksum { kind } => {
                write!(f, "section {} checksum mismatch", section_name(kind))
            }
            UnknownSection { kind } => write!(f, "unknown section kind {kind}"),
            DuplicateSection { kind } => write!(f, "section {} appears twice", section_name(kind)),
            MissingSection { kind } => write!(f, "section {} is missing", section_name(kind)),
            NonZeroPadding { offset } => write!(f, "padding byte at offset {offset} is not zero"),
            SectionTruncated { kind } => write!(f, "section {} is cut short", section_name(kind)),
            BadTensor { tensor, reason } => write!(f, "tensor {tensor}: {reason}"),
            BadOp { op, reason } => write!(f, "op {op}: {reason}"),
            BadPlan { reason } => write!(f, "memory plan: {reason}"),
            BadString { kind } => write!(
                f,
                "section {} holds a string that is not UTF-8",
                section_name(kind)
            ),
        }
    }
}

fn section_name(kind: u32) -> &'static str {
    SectionKind::from_u32(kind).map_or("(unknown)", SectionKind::name)
}

#[cfg(feature = "std")]
impl std::error::Error for FormatError {}
