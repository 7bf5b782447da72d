//! The shapes of a 2-D window op (conv or pooling) on NHWC tensors with batch 1.

/// Input and output sizes, kernel, stride and padding of a window op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub out_c: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// `[top, left, bottom, right]`.
    pub pads: [usize; 4],
}

impl Window {
    /// Bytes of one row of the input with its left and right padding written out.
    pub fn padded_row(&self) -> usize {
        (self.pads[1] + self.in_w + self.pads[3]) * self.in_c
    }
}
