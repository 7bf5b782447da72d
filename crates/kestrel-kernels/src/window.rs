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
    /// The window of an op with this kernel, stride and padding from an `[N, H, W, C]`
    /// input to an `[N, H, W, C]` output (a file's op and tensor records).
    pub fn of_op(
        input: [u32; 4],
        output: [u32; 4],
        kernel: [u8; 2],
        stride: [u8; 2],
        pads: [u8; 4],
    ) -> Window {
        let [_, in_h, in_w, in_c] = input.map(|d| d as usize);
        let [_, out_h, out_w, out_c] = output.map(|d| d as usize);
        Window {
            in_h,
            in_w,
            in_c,
            out_h,
            out_w,
            out_c,
            kernel: kernel.map(usize::from),
            stride: stride.map(usize::from),
            pads: pads.map(usize::from),
        }
    }

    /// Bytes of one row of the input with its left and right padding written out.
    pub fn padded_row(&self) -> usize {
        (self.pads[1] + self.in_w + self.pads[3]) * self.in_c
    }
}
