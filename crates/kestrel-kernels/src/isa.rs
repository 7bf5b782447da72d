//! Which kernel family a CPU can run, detected once and then passed around as a value.

use core::fmt;

/// A kernel family, from the portable reference to the widest SIMD path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Isa {
    /// Portable Rust; the oracle for every other path.
    Scalar,
    /// Armv7E-M with the DSP extension (Cortex-M4/M7: `SXTB16`/`SMLAD`, two 16-bit
    /// multiply-adds per instruction).
    ArmDsp,
    /// AArch64 Advanced SIMD without the dot product (Cortex-A72: SMULL/SMLAL/SADALP).
    Neon,
    /// AArch64 with the `sdot` dot product (Cortex-A76/A78).
    NeonDot,
    /// x86-64 AVX2 (with F16C, which every AVX2 CPU has).
    Avx2,
    /// x86-64 AVX2 with 256-bit VNNI (`vpdpbusd` on `ymm`): AVX-VNNI (Alder Lake and later
    /// Intel cores, the Atom-class N100), or AVX-512 VNNI's `ymm` form.
    AvxVnni,
    /// x86-64 AVX-512 with VNNI (`vpdpbusd`).
    Avx512Vnni,
}

impl Isa {
    pub const ALL: [Isa; 7] = [
        Isa::Scalar,
        Isa::ArmDsp,
        Isa::Neon,
        Isa::NeonDot,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512Vnni,
    ];

    /// The name used on the command line (`--kernels`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::ArmDsp => "arm-dsp",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dot",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether every CPU that runs this path runs `other` too (AVX-VNNI's CPUs run AVX2).
    pub fn includes(self, other: Isa) -> bool {
        CpuFeatures::least(self).supports(other)
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The CPU features Kestrel's kernels care about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// The Armv7E-M DSP extension: no OS reports it, so a build says it has it (the
    /// `dsp` feature, for a Cortex-M4/M7 firmware).
    pub dsp: bool,
    pub neon: bool,
    pub dotprod: bool,
    pub avx2: bool,
    /// AVX-VNNI: `vpdpbusd` on `ymm` in its VEX form.
    pub avx_vnni: bool,
    /// AVX-512 F, BW, VL and VNNI.
    pub avx512_vnni: bool,
}

impl CpuFeatures {
    /// What the running CPU offers, as the OS reports it.
    #[cfg(feature = "std")]
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "aarch64")]
        {
            CpuFeatures {
                neon: std::arch::is_aarch64_feature_detected!("neon"),
                dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
                ..CpuFeatures::default()
            }
        }
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                // Every AVX2 CPU has F16C (the f16 tile's conversions); a VM may hide it.
                avx2: std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("f16c"),
                avx_vnni: std::arch::is_x86_feature_detected!("avxvnni"),
                avx512_vnni: std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni"),
                ..CpuFeatures::default()
            }
        }
        #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
        {
            CpuFeatures::default()
        }
    }

    /// What the running CPU offers: detected through the OS with `std`, else what the
    /// build's target features promise (a `no_std` build for a known core).
    pub fn available() -> CpuFeatures {
        #[cfg(feature = "std")]
        {
            CpuFeatures::detect()
        }
        #[cfg(not(feature = "std"))]
        {
            CpuFeatures {
                dsp: cfg!(all(target_arch = "arm", feature = "dsp")),
                neon: cfg!(all(target_arch = "aarch64", target_feature = "neon")),
                dotprod: cfg!(all(target_arch = "aarch64", target_feature = "dotprod")),
                avx2: cfg!(all(
                    target_arch = "x86_64",
                    target_feature = "avx2",
                    target_feature = "f16c"
                )),
                avx_vnni: cfg!(all(target_arch = "x86_64", target_feature = "avxvnni")),
                avx512_vnni: cfg!(all(
                    target_arch = "x86_64",
                    target_feature = "avx512f",
                    target_feature = "avx512bw",
                    target_feature = "avx512vl",
                    target_feature = "avx512vnni"
                )),
            }
        }
    }

    /// The fewest features a CPU running `isa` has.
    pub fn least(isa: Isa) -> CpuFeatures {
        let none = CpuFeatures::default();
        match isa {
            Isa::Scalar => none,
            Isa::ArmDsp => CpuFeatures { dsp: true, ..none },
            Isa::Neon => CpuFeatures { neon: true, ..none },
            Isa::NeonDot => CpuFeatures {
                neon: true,
                dotprod: true,
                ..none
            },
            Isa::Avx2 => CpuFeatures { avx2: true, ..none },
            Isa::AvxVnni => CpuFeatures {
                avx2: true,
                avx_vnni: true,
                ..none
            },
            Isa::Avx512Vnni => CpuFeatures {
                avx2: true,
                avx512_vnni: true,
                ..none
            },
        }
    }

    /// Whether kernels of `isa` can run on this CPU.
    pub fn supports(&self, isa: Isa) -> bool {
        match isa {
            Isa::Scalar => true,
            Isa::ArmDsp => self.dsp,
            Isa::Neon => self.neon,
            Isa::NeonDot => self.neon && self.dotprod,
            Isa::Avx2 => self.avx2,
            // Either encoding of the 256-bit `vpdpbusd` (the kernel picks the one there is).
            Isa::AvxVnni => self.avx2 && (self.avx_vnni || self.avx512_vnni),
            Isa::Avx512Vnni => self.avx2 && self.avx512_vnni,
        }
    }

    /// The fastest family this CPU supports.
    pub fn best(&self) -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|&isa| self.supports(isa))
            .unwrap_or(Isa::Scalar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_prefers_the_widest_supported_path() {
        let a72 = CpuFeatures {
            neon: true,
            ..Default::default()
        };
        let a76 = CpuFeatures {
            neon: true,
            dotprod: true,
            ..Default::default()
        };
        let vnni = CpuFeatures {
            avx2: true,
            avx512_vnni: true,
            ..Default::default()
        };
        assert_eq!(a72.best(), Isa::Neon);
        assert!(!a72.supports(Isa::NeonDot));
        assert_eq!(a76.best(), Isa::NeonDot);
        assert_eq!(vnni.best(), Isa::Avx512Vnni);
        assert!(vnni.supports(Isa::AvxVnni));
        let n100 = CpuFeatures {
            avx2: true,
            avx_vnni: true,
            ..Default::default()
        };
        assert_eq!(n100.best(), Isa::AvxVnni);
        assert!(!n100.supports(Isa::Avx512Vnni));
        assert!(Isa::AvxVnni.includes(Isa::Avx2) && Isa::NeonDot.includes(Isa::Neon));
        assert!(!Isa::AvxVnni.includes(Isa::Avx512Vnni) && !Isa::Avx2.includes(Isa::AvxVnni));
        for isa in Isa::ALL {
            assert!(CpuFeatures::least(isa).supports(isa) && isa.includes(Isa::Scalar));
        }
        assert_eq!(CpuFeatures::default().best(), Isa::Scalar);
        let m4 = CpuFeatures {
            dsp: true,
            ..Default::default()
        };
        assert_eq!(m4.best(), Isa::ArmDsp);
        assert!(!a76.supports(Isa::ArmDsp));
        for isa in Isa::ALL {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
        }
    }

    /// Under qemu the test script names the emulated CPU in `KESTREL_EXPECT_CPU`; detection
    /// must see exactly that CPU's features (this is what later picks NEON vs `sdot`).
    #[cfg(all(feature = "std", target_arch = "aarch64"))]
    #[test]
    fn detection_matches_the_emulated_cpu() {
        let found = CpuFeatures::detect();
        assert!(found.neon, "every AArch64 Linux CPU has NEON");
        match std::env::var("KESTREL_EXPECT_CPU").as_deref() {
            Ok("cortex-a72") => assert!(!found.dotprod, "cortex-a72 has no dot product: {found:?}"),
            Ok("cortex-a76") => assert!(found.dotprod, "cortex-a76 has the dot product: {found:?}"),
            Ok(other) => panic!("KESTREL_EXPECT_CPU={other} is not a CPU this test knows"),
            Err(_) => std::println!("KESTREL_EXPECT_CPU unset: detected {found:?}"),
        }
    }
}
