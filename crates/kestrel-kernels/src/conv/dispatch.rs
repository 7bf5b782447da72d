//! Which micro-kernel runs a packed conv: one table of every (layout, ISA) pair, the tile
//! that runs it and the CPU feature it needs. A pair with no tile of its own runs its
//! layout's portable tile, said in the table (and by [`Packing::has_tile`], which the
//! runtime uses to warn and the board binaries to refuse). The table is the same on every
//! build, so a host can say what a board will run; only the kernels themselves are
//! compiled for their architecture.

use crate::conv::contract::{Conv, Packing};
use crate::conv::drive;
use crate::conv::input::InputFormat;
use crate::conv::kernel::{MicroKernel, WholeKernel, Winograd};
use crate::conv::winograd;
use crate::isa::Isa;

/// A micro-kernel, named by instruction, tile (pixels × channels) and bytes per lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    Scalar4x4c16,
    Smlad2x4c16,
    Smlal4x4c16,
    Sdot4x4c16,
    Avx2_4x4c16,
    Vnni4x4c16,
    Scalar4x16c4,
    Sdot4x16c4,
    Avx2_4x8c4,
    AvxVnni6x16c4,
    Vnni8x32c4,
    Scalar4x4p16,
    Smlad2x4p16,
}

/// One row of the table: on `packing`, CPU path `isa` runs `tile`.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub packing: Packing,
    pub isa: Isa,
    pub tile: Tile,
}

const fn row(packing: Packing, isa: Isa, tile: Tile) -> Row {
    Row { packing, isa, tile }
}

/// Every (layout, ISA) pair. `Lanes16` on the Cortex-A72 and on a Cortex-M have no tile
/// of their own (their kernels read 4-channel blocks), nor `Pairs4` (int16 weights, for
/// the Cortex-M's `SMLAD`) anywhere else: they fall back to the portable one. AVX-VNNI
/// runs AVX2's tile on `Blocks4`.
pub const TABLE: [Row; 21] = [
    row(Packing::Blocks4, Isa::Scalar, Tile::Scalar4x4c16),
    row(Packing::Blocks4, Isa::ArmDsp, Tile::Smlad2x4c16),
    row(Packing::Blocks4, Isa::Neon, Tile::Smlal4x4c16),
    row(Packing::Blocks4, Isa::NeonDot, Tile::Sdot4x4c16),
    row(Packing::Blocks4, Isa::Avx2, Tile::Avx2_4x4c16),
    row(Packing::Blocks4, Isa::AvxVnni, Tile::Avx2_4x4c16),
    row(Packing::Blocks4, Isa::Avx512Vnni, Tile::Vnni4x4c16),
    row(Packing::Lanes16, Isa::Scalar, Tile::Scalar4x16c4),
    row(Packing::Lanes16, Isa::ArmDsp, Tile::Scalar4x16c4),
    row(Packing::Lanes16, Isa::Neon, Tile::Scalar4x16c4),
    row(Packing::Lanes16, Isa::NeonDot, Tile::Sdot4x16c4),
    row(Packing::Lanes16, Isa::Avx2, Tile::Avx2_4x8c4),
    row(Packing::Lanes16, Isa::AvxVnni, Tile::AvxVnni6x16c4),
    row(Packing::Lanes16, Isa::Avx512Vnni, Tile::Vnni8x32c4),
    row(Packing::Pairs4, Isa::Scalar, Tile::Scalar4x4p16),
    row(Packing::Pairs4, Isa::ArmDsp, Tile::Smlad2x4p16),
    row(Packing::Pairs4, Isa::Neon, Tile::Scalar4x4p16),
    row(Packing::Pairs4, Isa::NeonDot, Tile::Scalar4x4p16),
    row(Packing::Pairs4, Isa::Avx2, Tile::Scalar4x4p16),
    row(Packing::Pairs4, Isa::AvxVnni, Tile::Scalar4x4p16),
    row(Packing::Pairs4, Isa::Avx512Vnni, Tile::Scalar4x4p16),
];

impl Tile {
    /// The name the kernel's file and function carry.
    pub const fn name(self) -> &'static str {
        match self {
            Tile::Scalar4x4c16 => "scalar_4x4c16",
            Tile::Smlad2x4c16 => "smlad_2x4c16",
            Tile::Smlal4x4c16 => "smlal_4x4c16",
            Tile::Sdot4x4c16 => "sdot_4x4c16",
            Tile::Avx2_4x4c16 => "avx2_4x4c16",
            Tile::Vnni4x4c16 => "vnni_4x4c16",
            Tile::Scalar4x16c4 => "scalar_4x16c4",
            Tile::Sdot4x16c4 => "sdot_4x16c4",
            Tile::Avx2_4x8c4 => "avx2_4x8c4",
            Tile::AvxVnni6x16c4 => "avxvnni_6x16c4",
            Tile::Vnni8x32c4 => "vnni_8x32c4",
            Tile::Scalar4x4p16 => "scalar_4x4p16",
            Tile::Smlad2x4p16 => "smlad_2x4p16",
        }
    }

    /// The path that computes the 3×3 stride-1 convs of this tile's files instead
    /// ([`Path::runs`](crate::conv::winograd::Path::runs)), if one does.
    pub const fn winograd(self) -> Option<winograd::Path> {
        match self {
            // Measured on Zen 3 (`cargo bench --bench conv`, `kestrel bench --layers`):
            // 14×14 maps (49 tiles) 1.7× faster than direct alone and 1.4× inside
            // ResNet-18; 7×7 maps (16 tiles) 1.1× alone but 0.65× inside the model,
            // where each conv's 2.4 MB of weights come in cold.
            Tile::Avx2_4x8c4 => Some(winograd::Path {
                name: "avx2_winograd_4x8",
                min_tiles: 32,
                pass: crate::conv::layout::lanes16::CHANNELS,
            }),
            // Counted on the Cortex-A72 (qcount): a tile saves about 220 of the direct
            // tile's instructions per 4 channels and 16 inputs, the weights' transform
            // costs about 440 per block once a run, so one group of tiles is worth it;
            // the direct tile streams every weight once per 4 pixels, this path once a
            // run.
            Tile::Smlal4x4c16 => Some(winograd::Path {
                name: "smlal_winograd_4x4",
                min_tiles: winograd::GROUP,
                pass: 2 * crate::conv::layout::blocks4::CHANNELS,
            }),
            _ => None,
        }
    }

    /// The Winograd kernel `run` as the driver runs it, on this tile's
    /// [`Tile::winograd`] path.
    #[allow(dead_code)] // a build of another architecture has no such kernel
    fn winograd_kernel(self, run: WholeKernel) -> Option<Winograd> {
        self.winograd().map(|path| Winograd { run, path })
    }

    /// The CPU path the tile needs: its CPU check (the session runs only paths
    /// [`crate::isa::CpuFeatures::supports`]).
    pub const fn isa(self) -> Isa {
        match self {
            Tile::Scalar4x4c16 | Tile::Scalar4x16c4 | Tile::Scalar4x4p16 => Isa::Scalar,
            Tile::Smlad2x4c16 | Tile::Smlad2x4p16 => Isa::ArmDsp,
            Tile::Smlal4x4c16 => Isa::Neon,
            Tile::Sdot4x4c16 | Tile::Sdot4x16c4 => Isa::NeonDot,
            Tile::Avx2_4x4c16 | Tile::Avx2_4x8c4 => Isa::Avx2,
            Tile::AvxVnni6x16c4 => Isa::AvxVnni,
            Tile::Vnni4x4c16 | Tile::Vnni8x32c4 => Isa::Avx512Vnni,
        }
    }

    /// The portable tile of `packing`: what runs where a pair has no tile of its own.
    pub const fn portable(packing: Packing) -> Tile {
        match packing {
            Packing::Blocks4 => Tile::Scalar4x4c16,
            Packing::Lanes16 => Tile::Scalar4x16c4,
            Packing::Pairs4 => Tile::Scalar4x4p16,
        }
    }

    /// The kernel as the driver runs it. A tile of another architecture than this
    /// build's is never asked for (its ISA fails the CPU check); the portable tile of
    /// its layout stands in.
    fn kernel(self, packing: Packing) -> MicroKernel {
        use crate::arch::portable;
        let plain = |group| InputFormat {
            group,
            flip: false,
            wide_chunks: false,
            int16: false,
        };
        match self {
            #[cfg(all(target_arch = "arm", feature = "dsp"))]
            Tile::Smlad2x4c16 => MicroKernel {
                input: plain(crate::arch::arm::smlad_2x4c16::MR),
                panel: crate::arch::arm::smlad_2x4c16::smlad_2x4c16,
                direct: None,
                winograd: None,
            },
            #[cfg(all(target_arch = "arm", feature = "dsp"))]
            Tile::Smlad2x4p16 => MicroKernel {
                input: plain(crate::arch::arm::smlad_2x4c16::MR),
                panel: crate::arch::arm::smlad_2x4c16::smlad_2x4p16,
                direct: None,
                winograd: None,
            },
            #[cfg(target_arch = "aarch64")]
            Tile::Smlal4x4c16 => MicroKernel {
                input: plain(4),
                panel: crate::arch::aarch64::neon_4x4c16::smlal_4x4c16,
                direct: None,
                winograd: self
                    .winograd_kernel(crate::arch::aarch64::neon_winograd_4x4::smlal_winograd_4x4),
            },
            #[cfg(target_arch = "aarch64")]
            Tile::Sdot4x4c16 => MicroKernel {
                input: plain(4),
                panel: crate::arch::aarch64::neon_4x4c16::sdot_4x4c16,
                direct: None,
                winograd: None,
            },
            #[cfg(target_arch = "aarch64")]
            Tile::Sdot4x16c4 => MicroKernel {
                input: plain(4),
                panel: crate::arch::aarch64::sdot_4x16c4::sdot_4x16c4,
                direct: Some(crate::arch::aarch64::sdot_4x16c4::sdot_4x16c4_direct),
                winograd: None,
            },
            #[cfg(target_arch = "x86_64")]
            Tile::Avx2_4x4c16 => MicroKernel {
                input: plain(4),
                panel: crate::arch::x86_64::avx2_4x4c16::avx2_4x4c16,
                direct: None,
                winograd: None,
            },
            #[cfg(target_arch = "x86_64")]
            Tile::Vnni4x4c16 => MicroKernel {
                input: InputFormat {
                    group: 4,
                    flip: true,
                    wide_chunks: false,
                    int16: false,
                },
                panel: crate::arch::x86_64::vnni_4x4c16::vnni_4x4c16,
                direct: None,
                winograd: None,
            },
            #[cfg(target_arch = "x86_64")]
            Tile::Avx2_4x8c4 => MicroKernel {
                input: InputFormat {
                    group: crate::arch::x86_64::avx2_4x8c4::MR,
                    flip: false,
                    wide_chunks: false,
                    int16: true,
                },
                panel: crate::arch::x86_64::avx2_4x8c4::avx2_4x8c4,
                direct: None,
                winograd: self
                    .winograd_kernel(crate::arch::x86_64::avx2_winograd_4x8::avx2_winograd_4x8),
            },
            #[cfg(target_arch = "x86_64")]
            Tile::AvxVnni6x16c4 => MicroKernel {
                input: InputFormat {
                    group: crate::arch::x86_64::avxvnni_6x16c4::MR,
                    flip: true,
                    wide_chunks: false,
                    int16: false,
                },
                panel: crate::arch::x86_64::avxvnni_6x16c4::kernel(),
                direct: None,
                winograd: None,
            },
            #[cfg(target_arch = "x86_64")]
            Tile::Vnni8x32c4 => MicroKernel {
                input: InputFormat {
                    group: crate::arch::x86_64::vnni_8x32c4::MR,
                    flip: true,
                    wide_chunks: true,
                    int16: false,
                },
                panel: crate::arch::x86_64::vnni_8x32c4::vnni_8x32c4,
                direct: None,
                winograd: None,
            },
            Tile::Scalar4x4c16 => MicroKernel {
                input: plain(portable::MR),
                panel: portable::scalar_4x4c16,
                direct: None,
                winograd: None,
            },
            Tile::Scalar4x16c4 => MicroKernel {
                input: plain(portable::MR),
                panel: portable::scalar_4x16c4,
                direct: None,
                winograd: None,
            },
            Tile::Scalar4x4p16 => MicroKernel {
                input: plain(portable::MR),
                panel: portable::scalar_4x4p16,
                direct: None,
                winograd: None,
            },
            #[allow(unreachable_patterns)] // another architecture's tiles
            _ => Tile::portable(packing).kernel(packing),
        }
    }
}

impl Packing {
    /// The tile the table gives this layout on `isa`.
    pub fn tile(self, isa: Isa) -> Tile {
        TABLE
            .iter()
            .find(|r| r.packing == self && r.isa == isa)
            .map_or(Tile::portable(self), |r| r.tile)
    }

    /// Whether `isa` runs a micro-kernel of its own (or of an ISA it includes) on this
    /// layout. Without one, `conv2d`
    /// runs the portable tile: the same results, several times slower (a `--target rpi5`
    /// file on a Cortex-A72).
    pub fn has_tile(self, isa: Isa) -> bool {
        isa != Isa::Scalar && self.tile(isa) != Tile::portable(self)
    }

    /// The conv on weights packed this way, on the tile the table gives `isa`: same
    /// results as [`crate::scalar::conv2d`] on the pixels of `output`. `scratch` holds at
    /// least [`Packing::min_scratch_len`] bytes (up to [`Packing::scratch_len`] are used).
    /// The caller checked that the CPU runs `isa` (the runtime's session does, once).
    pub fn conv2d(self, isa: Isa, c: &Conv<'_>, output: &mut [i8], scratch: &mut [i8]) {
        let kernel = self.tile(isa).kernel(self);
        // SAFETY: the CPU runs `isa` (the caller's check) and so the tile's ISA (the table
        // gives each ISA a tile of its own ISA or the portable one); the parser checked
        // the shapes and that the weights are packed this way.
        unsafe { drive::conv2d(&kernel, c, output, scratch) }
    }

    /// The Winograd path this build runs for the tile the table gives `isa`, if any: what
    /// [`Packing::conv2d`] and [`Packing::winograd_channels`] hand convs to.
    pub fn winograd_path(self, isa: Isa) -> Option<winograd::Path> {
        self.tile(isa)
            .kernel(self)
            .winograd
            .map(|kernel| kernel.path)
    }

    /// Output channels `channels` (whole [`winograd::Path::pass`]es, the last one may end
    /// at `OC`) of every pixel of the
    /// run by the Winograd path of the tile the table gives `isa`, where it has one that
    /// [`Path::runs`](winograd::Path::runs) the conv's run in `scratch`: a thread's share when threads split
    /// a small map by channels. Returns whether it ran (without, nothing was written).
    ///
    /// # Safety
    /// The CPU runs `isa`; the shapes are consistent; `output` is valid for writes of the
    /// run's `pixels × OC` elements, and while this runs no other thread reads or writes
    /// those elements' channels `channels`, nor the residual's if it lies in the output.
    pub unsafe fn winograd_channels(
        self,
        isa: Isa,
        c: &Conv<'_>,
        output: *mut i8,
        pixels: usize,
        channels: core::ops::Range<usize>,
        scratch: &mut [i8],
    ) -> bool {
        let Some(kernel) = self.tile(isa).kernel(self).winograd else {
            return false;
        };
        let whole = kernel.path.whole_passes(&channels, c.window.out_c);
        let runs = kernel.path.runs(c.window, c.first, pixels, scratch.len());
        if !(whole && runs) {
            return false;
        }
        // SAFETY: the caller's, and the path runs the conv (checked above).
        unsafe { (kernel.run)(c, output, pixels, channels, scratch) };
        true
    }

    /// [`Packing::conv2d`] with every conv on the tile, none by Winograd: what the
    /// benchmarks compare the Winograd path with. Same results.
    pub fn conv2d_direct(self, isa: Isa, c: &Conv<'_>, output: &mut [i8], scratch: &mut [i8]) {
        let kernel = MicroKernel {
            winograd: None,
            ..self.tile(isa).kernel(self)
        };
        // SAFETY: as in `conv2d`.
        unsafe { drive::conv2d(&kernel, c, output, scratch) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_pair_once_with_a_tile_of_its_layout_and_isa() {
        for packing in Packing::ALL {
            for isa in Isa::ALL {
                let rows: std::vec::Vec<&Row> = TABLE
                    .iter()
                    .filter(|r| r.packing == packing && r.isa == isa)
                    .collect();
                assert_eq!(rows.len(), 1, "{packing:?}/{isa}");
                let tile = rows[0].tile;
                // A tile of this ISA or of one every such CPU runs (AVX2's on AVX-VNNI),
                // or the portable one: never one needing more.
                assert!(isa.includes(tile.isa()), "{packing:?}/{isa}");
                // Each tile reads one layout.
                let layout_of = |t: Tile| {
                    TABLE
                        .iter()
                        .filter(|r| r.tile == t)
                        .all(|r| r.packing == packing)
                };
                assert!(layout_of(tile), "{} is listed on two layouts", tile.name());
            }
        }
        assert!(!Packing::Lanes16.has_tile(Isa::Neon));
        assert!(Packing::Blocks4.has_tile(Isa::ArmDsp));
        assert!(!Packing::Lanes16.has_tile(Isa::ArmDsp));
        assert!(Packing::Lanes16.has_tile(Isa::NeonDot));
        assert!(Packing::Blocks4.has_tile(Isa::Neon));
        assert!(!Packing::Blocks4.has_tile(Isa::Scalar));
        assert!(Packing::Pairs4.has_tile(Isa::ArmDsp));
        assert!(!Packing::Pairs4.has_tile(Isa::NeonDot));
        assert!(Packing::Blocks4.has_tile(Isa::AvxVnni));
        assert_eq!(Packing::Lanes16.tile(Isa::AvxVnni), Tile::AvxVnni6x16c4);
    }
}
