//! Header, section table and section bounds: the part of the format that knows nothing
//! about models.

use crate::reader::Reader;
use crate::FormatError;

pub const MAGIC: [u8; 8] = *b"KESTREL\0";
pub const VERSION: u16 = 1;
/// Sections start on this boundary so weights can be mapped and read by SIMD loads.
pub const ALIGN: usize = 64;
pub const HEADER_LEN: usize = 64;
pub const SECTION_ENTRY_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum SectionKind {
    Graph = 1,
    Tensors = 2,
    Weights = 3,
    Plan = 4,
    Preprocess = 5,
    Labels = 6,
    Metadata = 7,
}

impl SectionKind {
    pub const ALL: [SectionKind; 7] = [
        SectionKind::Graph,
        SectionKind::Tensors,
        SectionKind::Weights,
        SectionKind::Plan,
        SectionKind::Preprocess,
        SectionKind::Labels,
        SectionKind::Metadata,
    ];

    pub fn from_u32(v: u32) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Graph => "graph",
            SectionKind::Tensors => "tensors",
            SectionKind::Weights => "weights",
            SectionKind::Plan => "plan",
            SectionKind::Preprocess => "preprocess",
            SectionKind::Labels => "labels",
            SectionKind::Metadata => "metadata",
        }
    }
}

/// The checked sections of a file, indexed by kind.
pub(crate) struct Sections<'a> {
    pub(crate) by_kind: [Option<&'a [u8]>; SectionKind::ALL.len()],
    pub(crate) offsets: [u64; SectionKind::ALL.len()],
}

impl<'a> Sections<'a> {
    pub(crate) fn get(&self, kind: SectionKind) -> Result<(&'a [u8], u64), FormatError> {
        let i = kind as usize - 1;
        self.by_kind[i]
            .map(|s| (s, self.offsets[i]))
            .ok_or(FormatError::MissingSection { kind: kind as u32 })
    }
}

pub(crate) fn header_crc(header: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..28]);
    h.update(&header[32..HEADER_LEN]);
    h.finalize()
}

/// Checks header, table, section bounds/CRCs and zero padding; returns the sections.
pub(crate) fn parse_container(bytes: &[u8]) -> Result<Sections<'_>, FormatError> {
    let available = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            needed: HEADER_LEN as u64,
            available,
        });
    }
    let header = &bytes[..HEADER_LEN];
    if header[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let mut r = Reader::new(&header[8..], 0);
    let version = r.u16()?;
    let header_len = r.u16()?;
    let count = r.u32()? as usize;
    let file_len = r.u64()?;
    let table_crc = r.u32()?;
    let stored_header_crc = r.u32()?;
    if stored_header_crc != header_crc(header) {
        return Err(FormatError::HeaderChecksum);
    }
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    r.zeros(32, 32)?;
    if header_len as usize != HEADER_LEN {
        return Err(FormatError::NonZeroPadding { offset: 10 });
    }
    if file_len != available {
        return Err(if file_len > available {
            FormatError::Truncated {
                needed: file_len,
                available,
            }
        } else {
            FormatError::LengthMismatch {
                header: file_len,
                actual: available,
            }
        });
    }
    if count == 0 || count > SectionKind::ALL.len() {
        return Err(FormatError::SectionBounds { kind: 0 });
    }
    let table_end = HEADER_LEN + count * SECTION_ENTRY_LEN;
    if table_end > bytes.len() {
        return Err(FormatError::Truncated {
            needed: table_end as u64,
            available,
        });
    }
    let table = &bytes[HEADER_LEN..table_end];
    if crc32fast::hash(table) != table_crc {
        return Err(FormatError::SectionTableChecksum);
    }
    let mut sections = Sections {
        by_kind: [None; SectionKind::ALL.len()],
        offsets: [0; SectionKind::ALL.len()],
    };
    let mut cursor = table_end as u64; // end of what has been checked so far
    let mut r = Reader::new(table, 0);
    for _ in 0..count {
        let kind_raw = r.u32()?;
        let crc = r.u32()?;
        let offset = r.u64()?;
        let len = r.u64()?;
        r.zeros(8, 0)?;
        let kind = SectionKind::from_u32(kind_raw)
            .ok_or(FormatError::UnknownSection { kind: kind_raw })?;
        let slot = kind as usize - 1;
        if sections.by_kind[slot].is_some() {
            return Err(FormatError::DuplicateSection { kind: kind_raw });
        }
        // Sections come in file order, aligned, after everything before them.
        let end = offset
            .checked_add(len)
            .ok_or(FormatError::SectionBounds { kind: kind_raw })?;
        if offset < cursor || offset % ALIGN as u64 != 0 || end > available {
            return Err(FormatError::SectionBounds { kind: kind_raw });
        }
        check_zero(bytes, cursor, offset)?;
        let data = &bytes[offset as usize..end as usize];
        if crc32fast::hash(data) != crc {
            return Err(FormatError::SectionChecksum { kind: kind_raw });
        }
        sections.by_kind[slot] = Some(data);
        sections.offsets[slot] = offset;
        cursor = end;
    }
    check_zero(bytes, cursor, available)?;
    Ok(sections)
}

fn check_zero(bytes: &[u8], from: u64, to: u64) -> Result<(), FormatError> {
    match bytes[from as usize..to as usize]
        .iter()
        .position(|&b| b != 0)
    {
        None => Ok(()),
        Some(i) => Err(FormatError::NonZeroPadding {
            offset: from + i as u64,
        }),
    }
}
