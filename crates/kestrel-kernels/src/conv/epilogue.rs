//! The conv epilogue element by element (bias, requantisation, residual, clamp): the
//! definition the vector epilogues in `arch` match, and the store of every tile that
//! hands its sums back.

use crate::conv::contract::Conv;
use crate::conv::params;
use crate::quant::{finish, residual_term, OutQuant, Residual};

/// Where a tile's results go.
pub struct TileStore<'a, 'r> {
    pub rows: usize,
    /// First pixel (in the output slice) and first channel of the tile; `oc` channels per
    /// output pixel.
    pub p0: usize,
    pub o0: usize,
    pub oc: usize,
    /// `(bias, multiplier, shift)` records.
    pub params: &'a [u8],
    pub out: OutQuant,
    pub residual: &'a Residual<'r>,
}

impl<'a, 'r> TileStore<'a, 'r> {
    /// The tile of `rows` pixels from `p0` (in the output slice) and channels from `o0`
    /// of conv `c`.
    pub fn of(c: &'a Conv<'r>, rows: usize, p0: usize, o0: usize) -> Self {
        TileStore {
            rows,
            p0,
            o0,
            oc: c.window.out_c,
            params: c.params,
            out: c.out,
            residual: &c.residual,
        }
    }
}

impl TileStore<'_, '_> {
    /// The epilogue on the first `channels` lanes of every row: bias (minus
    /// `offset(channel)`), requantisation, residual, clamp.
    pub fn lanes(
        &self,
        channels: usize,
        acc: impl Fn(usize, usize) -> i32,
        offset: impl Fn(usize) -> i32,
        output: &mut [i8],
    ) {
        for n in 0..channels {
            let o = self.o0 + n;
            let (bias, mult, shift) = params::record(self.params, o);
            let bias = bias.wrapping_sub(offset(o));
            for m in 0..self.rows {
                let idx = (self.p0 + m) * self.oc + o;
                let res = residual_term(self.residual, idx, output);
                output[idx] = finish(bias.wrapping_add(acc(m, n)), mult, shift, res, self.out);
            }
        }
    }
}
