//! Bounds-checked little-endian reads from a byte slice.

use crate::FormatError;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Section kind, for the error when a read runs past the end.
    kind: u32,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], kind: u32) -> Self {
        Reader {
            bytes,
            pos: 0,
            kind,
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(FormatError::SectionTruncated { kind: self.kind })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn i8(&mut self) -> Result<i8, FormatError> {
        Ok(self.take(1)?[0] as i8)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(crate) fn i32(&mut self) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(crate) fn f32(&mut self) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// Reads `n` bytes that must all be zero (reserved fields).
    pub(crate) fn zeros(&mut self, n: usize, base: u64) -> Result<(), FormatError> {
        let at = self.pos;
        let s = self.take(n)?;
        match s.iter().position(|&b| b != 0) {
            None => Ok(()),
            Some(i) => Err(FormatError::NonZeroPadding {
                offset: base + (at + i) as u64,
            }),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
}
