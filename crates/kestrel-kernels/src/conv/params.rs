//! The channel-parameter record, the one place its bytes are read: for each output
//! channel `(bias, multiplier, shift)` as three little-endian `i32`, 12 bytes.

/// Bytes of one channel's record.
pub const RECORD_BYTES: usize = 12;

/// Where channel `o`'s record starts.
#[inline(always)]
pub const fn offset(o: usize) -> usize {
    RECORD_BYTES * o
}

/// `(bias, multiplier, shift)` of channel `o`.
#[inline]
pub fn record(params: &[u8], o: usize) -> (i32, i32, i32) {
    let r = &params[offset(o)..][..RECORD_BYTES];
    let field = |i: usize| i32::from_le_bytes([r[4 * i], r[4 * i + 1], r[4 * i + 2], r[4 * i + 3]]);
    (field(0), field(1), field(2))
}

/// The shift of every record in `params`, in channel order.
#[inline]
pub fn shifts(params: &[u8]) -> impl Iterator<Item = i32> + '_ {
    params
        .chunks_exact(RECORD_BYTES)
        .map(|r| i32::from_le_bytes([r[8], r[9], r[10], r[11]]))
}

/// Records as [`record`] reads them, for callers holding tuples.
#[cfg(feature = "alloc")]
pub fn to_bytes(params: &[(i32, i32, i32)]) -> alloc::vec::Vec<u8> {
    params
        .iter()
        .flat_map(|&(b, m, s)| [b, m, s])
        .flat_map(i32::to_le_bytes)
        .collect()
}
