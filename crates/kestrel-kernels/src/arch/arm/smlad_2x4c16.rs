//! `smlad_2x4c16`: the Cortex-M4/M7 conv tile on [`Packing::Blocks4`] — 2 pixels × 4
//! channels, 16 reduction bytes per step, two channels at a time so the four sums, both
//! pixels' input and one channel's weights fit the registers the core has.
//!
//! The tile's input is sign-extended to int16 pairs once ([`extend`]) for every block of
//! channels, so per 4 bytes of 2 pixels × 2 channels it loads the input as two `LDRD`s
//! and extends only the weights: 4 loads, 4 `SXTB16`, 8 `SMLAD` for 16 MACs
//! ([`steps_extended`]). Convs deeper than [`EXTENDED_K_MAX`] (whose extended input would
//! not fit a microcontroller's stack) extend both operands in registers ([`step`]: 4
//! loads, 8 `SXTB16`, 8 `SMLAD`).
//!
//! On [`Packing::Pairs4`] (`--target cortex-m4`: the weights stored as the int16 pairs
//! `SXTB16` would make of them) the same panel runs [`smlad_2x4p16`]: both operands are
//! then `LDRD`s, 4 loads and 8 `SMLAD` for 16 MACs ([`steps_pairs`]), a quarter fewer
//! instructions for twice the weight bytes.
//!
//! [`Packing::Blocks4`]: crate::conv::contract::Packing
//! [`Packing::Pairs4`]: crate::conv::contract::Packing

use super::dsp::{load4, smlad, sxtb16, sxtb16_ror8};
use super::epilogue::Channels;
use crate::conv::contract::{Conv, Packing, KC};
use crate::conv::kernel::Panel;
use crate::conv::layout::{blocks4, pairs4, Shape};

/// Pixels per tile.
pub const MR: usize = 2;

/// The sums of 2 pixels × 4 channels over `steps` 16-byte steps: `a` is the tile's
/// packed input (per step, each pixel's 16 bytes), `b` the block's weights (per step,
/// each channel's 16 bytes).
pub fn tile(a: &[i8], b: &[i8], steps: usize) -> [[i32; blocks4::CHANNELS]; MR] {
    assert!(a.len() >= steps * MR * KC && b.len() >= steps * blocks4::STEP_BYTES);
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for pair in 0..blocks4::CHANNELS / 2 {
        let mut sums = [0i32; 4];
        // SAFETY: the assert above bounds every load: step s reads a[s·32 ..][..32] and
        // b[s·64 + pair·32 ..][..32].
        unsafe {
            let pa = a.as_ptr();
            let pb = b.as_ptr().add(pair * 2 * KC);
            for s in 0..steps {
                step(
                    pa.add(s * MR * KC),
                    pb.add(s * blocks4::STEP_BYTES),
                    &mut sums,
                );
            }
        }
        let [s00, s01, s10, s11] = sums;
        acc[0][2 * pair] = s00;
        acc[0][2 * pair + 1] = s01;
        acc[1][2 * pair] = s10;
        acc[1][2 * pair + 1] = s11;
    }
    acc
}

/// One 16-byte step of 2 pixels (`pa`: pixel 0's 16 bytes, then pixel 1's) × 2 channels
/// (`pb`: channel 0's 16 bytes, then channel 1's) into `[p0c0, p0c1, p1c0, p1c1]`: per
/// word of 4 bytes, 4 loads, 8 `SXTB16`, 8 `SMLAD`. Written as one block so the compiler
/// cannot spread it over more registers than the core has (it spills otherwise).
///
/// # Safety
/// `pa .. pa + 32` and `pb .. pb + 32` are readable.
#[inline(always)]
unsafe fn step(pa: *const i8, pb: *const i8, sums: &mut [i32; 4]) {
    let [mut s00, mut s01, mut s10, mut s11] = *sums;
    macro_rules! word {
        ($j:literal) => {
            concat!(
                "ldr {x0}, [{pa}, #",
                $j,
                "]\n",
                "ldr {x1}, [{pa}, #16 + ",
                $j,
                "]\n",
                "sxtb16 {e0}, {x0}\n",
                "sxtb16 {x0}, {x0}, ror #8\n",
                "sxtb16 {e1}, {x1}\n",
                "sxtb16 {x1}, {x1}, ror #8\n",
                "ldr {w}, [{pb}, #",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s00}, {e0}, {t}, {s00}\n",
                "smlad {s10}, {e1}, {t}, {s10}\n",
                "smlad {s00}, {x0}, {w}, {s00}\n",
                "smlad {s10}, {x1}, {w}, {s10}\n",
                "ldr {w}, [{pb}, #16 + ",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s01}, {e0}, {t}, {s01}\n",
                "smlad {s11}, {e1}, {t}, {s11}\n",
                "smlad {s01}, {x0}, {w}, {s01}\n",
                "smlad {s11}, {x1}, {w}, {s11}\n",
            )
        };
    }
    core::arch::asm!(
        word!("0"),
        word!("4"),
        word!("8"),
        word!("12"),
        pa = in(reg) pa,
        pb = in(reg) pb,
        s00 = inout(reg) s00,
        s01 = inout(reg) s01,
        s10 = inout(reg) s10,
        s11 = inout(reg) s11,
        x0 = out(reg) _,
        x1 = out(reg) _,
        e0 = out(reg) _,
        e1 = out(reg) _,
        w = out(reg) _,
        t = out(reg) _,
        options(pure, readonly, nostack),
    );
    *sums = [s00, s01, s10, s11];
}

/// The deepest (padded) reduction whose two pixels of extended input the tile keeps on
/// the stack: 2,304 bytes (3×3 convs of 64 channels).
pub const EXTENDED_K_MAX: usize = 576;

/// Blocks of channels whose epilogue constants are worked out together, once per panel.
const GROUP_BLOCKS: usize = 8;

/// The tile's two pixels of packed input (`a`: per step, pixel 0's 16 bytes then pixel
/// 1's), each 4 bytes as its even pair (`SXTB16`) then its odd pair (`SXTB16 ROR #8`): per
/// step 16 words, pixel 0's 8 then pixel 1's. The order the weights' extension pairs with.
fn extend(a: &[i8], steps: usize, out: &mut [u32]) {
    let words = steps * MR * KC / 4;
    assert!(a.len() >= 4 * words && out.len() >= 2 * words);
    let chunks = words / 4;
    if chunks == 0 {
        return;
    }
    if a.as_ptr().align_offset(4) != 0 {
        // Not reached from the driver (panels start at aligned scratch offsets, tiles
        // whole 16-byte steps apart); `LDM` would fault on it.
        return extend_unaligned(a, words, out);
    }
    // A pixel's 16-byte chunk at a time: one `LDM`, eight extensions, one `STM` (the
    // registers in the order the words are stored).
    // SAFETY: `chunks` chunks of 16 bytes are read from `a` (word-aligned) and 32 written
    // to `out` (asserted above); the clobbered registers are declared.
    unsafe {
        core::arch::asm!(
            "2:",
            "ldm {src}!, {{r1, r3, r5, r10}}",
            "sxtb16 r0, r1",
            "sxtb16 r1, r1, ror #8",
            "sxtb16 r2, r3",
            "sxtb16 r3, r3, ror #8",
            "sxtb16 r4, r5",
            "sxtb16 r5, r5, ror #8",
            "sxtb16 r8, r10",
            "sxtb16 r10, r10, ror #8",
            "stm {dst}!, {{r0, r1, r2, r3, r4, r5, r8, r10}}",
            "subs {n}, #1",
            "bne 2b",
            src = inout(reg) a.as_ptr() => _,
            dst = inout(reg) out.as_mut_ptr() => _,
            n = inout(reg) chunks => _,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r10") _,
            options(nostack),
        );
    }
}

/// [`extend`] word by word, for input that is not word-aligned.
fn extend_unaligned(a: &[i8], words: usize, out: &mut [u32]) {
    for w in 0..words {
        // SAFETY: 4·w + 4 ≤ 4·words ≤ a.len() (asserted by the caller).
        let v = unsafe { load4(a.as_ptr().add(4 * w)) };
        out[2 * w] = sxtb16(v);
        out[2 * w + 1] = sxtb16_ror8(v);
    }
}

/// As [`tile`] on input [`extend`]ed: `ext` holds `steps` steps of 16 words.
pub fn tile_extended(ext: &[u32], b: &[i8], steps: usize) -> Sums {
    assert!(ext.len() >= steps * 16 && b.len() >= steps * blocks4::STEP_BYTES);
    // SAFETY: the assert above bounds every load: step s reads ext[s·16 ..][..16] and
    // b[s·64 + pair·32 ..][..32].
    unsafe {
        by_channel_pairs(
            ext,
            b,
            steps,
            [blocks4::STEP_BYTES, 2 * KC],
            |pa, pb, sums| steps_extended::<2>(pa, pb, sums),
            |pa, pb, sums| steps_extended::<1>(pa, pb, sums),
        )
    }
}

/// The tile's sums two channels at a time (each pair's four sums in registers) on the
/// extended input `ext`: `two` runs two steps from `(pa, pb)`, `one` the last of an odd
/// count. `bytes`: how far apart the weights of two steps and of two pairs lie. Two steps
/// per block: the loop's own instructions (the compiler keeps its pointers on the stack,
/// the blocks hold every free register) once per two.
///
/// # Safety
/// `ext` holds `steps` steps of 16 words and `b` the weights `two` and `one` read there.
#[inline(always)]
unsafe fn by_channel_pairs(
    ext: &[u32],
    b: &[i8],
    steps: usize,
    [step_bytes, pair_bytes]: [usize; 2],
    two: impl Fn(*const u32, *const i8, &mut [i32; 4]),
    one: impl Fn(*const u32, *const i8, &mut [i32; 4]),
) -> Sums {
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for pair in 0..blocks4::CHANNELS / 2 {
        let mut sums = [0i32; 4];
        let pa = ext.as_ptr();
        let pb = b.as_ptr().add(pair * pair_bytes);
        for s in (0..steps - steps % 2).step_by(2) {
            two(pa.add(s * 16), pb.add(s * step_bytes), &mut sums);
        }
        if steps % 2 == 1 {
            let s = steps - 1;
            one(pa.add(s * 16), pb.add(s * step_bytes), &mut sums);
        }
        let [s00, s01, s10, s11] = sums;
        acc[0][2 * pair] = s00;
        acc[0][2 * pair + 1] = s01;
        acc[1][2 * pair] = s10;
        acc[1][2 * pair + 1] = s11;
    }
    acc
}

/// `N` (1 or 2) 16-byte steps on extended input (`pa`: per step pixel 0's 8 words, then
/// pixel 1's) × 2 channels (`pb`: per step channel 0's 16 bytes, then channel 1's; steps 64
/// bytes apart): per 4 bytes two `LDRD`s of input, one load and two extensions per
/// channel, 8 `SMLAD`.
///
/// # Safety
/// `pa .. pa + 16·N` words (word-aligned: `LDRD` faults otherwise) and
/// `pb .. pb + 64·(N − 1) + 32` bytes are readable.
#[inline(always)]
unsafe fn steps_extended<const N: usize>(pa: *const u32, pb: *const i8, sums: &mut [i32; 4]) {
    let [mut s00, mut s01, mut s10, mut s11] = *sums;
    macro_rules! word {
        ($j:literal, $x:literal) => {
            concat!(
                "ldrd {e0}, {o0}, [{pa}, #",
                $x,
                "]\n",
                "ldrd {e1}, {o1}, [{pa}, #32 + ",
                $x,
                "]\n",
                "ldr {w}, [{pb}, #",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s00}, {e0}, {t}, {s00}\n",
                "smlad {s10}, {e1}, {t}, {s10}\n",
                "smlad {s00}, {o0}, {w}, {s00}\n",
                "smlad {s10}, {o1}, {w}, {s10}\n",
                "ldr {w}, [{pb}, #16 + ",
                $j,
                "]\n",
                "sxtb16 {t}, {w}\n",
                "sxtb16 {w}, {w}, ror #8\n",
                "smlad {s01}, {e0}, {t}, {s01}\n",
                "smlad {s11}, {e1}, {t}, {s11}\n",
                "smlad {s01}, {o0}, {w}, {s01}\n",
                "smlad {s11}, {o1}, {w}, {s11}\n",
            )
        };
    }
    macro_rules! run {
        ($($j:literal $x:literal),*) => {
            core::arch::asm!(
                $(word!($j, $x),)*
                pa = in(reg) pa,
                pb = in(reg) pb,
                s00 = inout(reg) s00,
                s01 = inout(reg) s01,
                s10 = inout(reg) s10,
                s11 = inout(reg) s11,
                e0 = out(reg) _,
                o0 = out(reg) _,
                e1 = out(reg) _,
                o1 = out(reg) _,
                w = out(reg) _,
                t = out(reg) _,
                options(pure, readonly, nostack),
            )
        };
    }
    if N == 1 {
        run!("0" "0", "4" "8", "8" "16", "12" "24");
    } else {
        run!("0" "0", "4" "8", "8" "16", "12" "24", "64" "64", "68" "72", "72" "80", "76" "88");
    }
    *sums = [s00, s01, s10, s11];
}

/// As [`tile_extended`] on [`Packing::Pairs4`] weights `b` (per step, each channel's 16
/// int16 weights, paired as [`extend`] pairs the input).
///
/// [`Packing::Pairs4`]: crate::conv::contract::Packing
pub fn tile_pairs(ext: &[u32], b: &[i8], steps: usize) -> Sums {
    assert!(ext.len() >= steps * 16 && b.len() >= steps * pairs4::STEP_BYTES);
    // LDRD faults on a weight address that is not word-aligned: the file aligns each
    // conv's weights and every block and step is a multiple of 4 bytes.
    assert!(b.as_ptr().align_offset(4) == 0);
    // SAFETY: the asserts above bound every load and its alignment: step s reads
    // ext[s·16 ..][..16] and b[s·128 + pair·64 ..][..64].
    unsafe {
        by_channel_pairs(
            ext,
            b,
            steps,
            [pairs4::STEP_BYTES, 2 * KC * pairs4::WEIGHT_BYTES],
            |pa, pb, sums| steps_pairs::<2>(pa, pb, sums),
            |pa, pb, sums| steps_pairs::<1>(pa, pb, sums),
        )
    }
}

/// [`tile_pairs`] on weights at any address: each weight word read unaligned, one
/// `SMLAD` per pixel.
fn tile_pairs_unaligned(ext: &[u32], b: &[i8], steps: usize) -> Sums {
    assert!(ext.len() >= steps * 16 && b.len() >= steps * pairs4::STEP_BYTES);
    let mut acc = [[0i32; blocks4::CHANNELS]; MR];
    for s in 0..steps {
        for n in 0..blocks4::CHANNELS {
            for w in 0..KC / 2 {
                // Word w of the channel: its pairs in the order they are stored.
                let at = s * pairs4::STEP_BYTES + (n * KC + 2 * w) * pairs4::WEIGHT_BYTES;
                // SAFETY: `at + 4` ≤ the step's end ≤ b.len() (asserted).
                let weights = unsafe { load4(b.as_ptr().add(at)) };
                for (m, row) in acc.iter_mut().enumerate() {
                    row[n] = smlad(ext[s * 16 + m * 8 + w], weights, row[n]);
                }
            }
        }
    }
    acc
}

/// `N` (1 or 2) steps on extended input (`pa`, as [`steps_extended`]) × 2 channels of
/// int16 pairs (`pb`: per step channel 0's 32 bytes, then channel 1's; steps 128 bytes
/// apart): per 4 reduction steps an `LDRD` of each pixel's and each channel's pairs and
/// 8 `SMLAD`.
///
/// # Safety
/// `pa .. pa + 16·N` words and `pb .. pb + 128·(N − 1) + 64` bytes are readable, both
/// word-aligned.
#[inline(always)]
unsafe fn steps_pairs<const N: usize>(pa: *const u32, pb: *const i8, sums: &mut [i32; 4]) {
    let [mut s00, mut s01, mut s10, mut s11] = *sums;
    macro_rules! word {
        ($x:literal, $w:literal) => {
            concat!(
                "ldrd {e0}, {o0}, [{pa}, #",
                $x,
                "]\n",
                "ldrd {e1}, {o1}, [{pa}, #32 + ",
                $x,
                "]\n",
                "ldrd {t}, {w}, [{pb}, #",
                $w,
                "]\n",
                "smlad {s00}, {e0}, {t}, {s00}\n",
                "smlad {s10}, {e1}, {t}, {s10}\n",
                "smlad {s00}, {o0}, {w}, {s00}\n",
                "smlad {s10}, {o1}, {w}, {s10}\n",
                "ldrd {t}, {w}, [{pb}, #32 + ",
                $w,
                "]\n",
                "smlad {s01}, {e0}, {t}, {s01}\n",
                "smlad {s11}, {e1}, {t}, {s11}\n",
                "smlad {s01}, {o0}, {w}, {s01}\n",
                "smlad {s11}, {o1}, {w}, {s11}\n",
            )
        };
    }
    macro_rules! run {
        ($($x:literal $w:literal),*) => {
            core::arch::asm!(
                $(word!($x, $w),)*
                pa = in(reg) pa,
                pb = in(reg) pb,
                s00 = inout(reg) s00,
                s01 = inout(reg) s01,
                s10 = inout(reg) s10,
                s11 = inout(reg) s11,
                e0 = out(reg) _,
                o0 = out(reg) _,
                e1 = out(reg) _,
                o1 = out(reg) _,
                w = out(reg) _,
                t = out(reg) _,
                options(pure, readonly, nostack),
            )
        };
    }
    if N == 1 {
        run!("0" "0", "8" "8", "16" "16", "24" "24");
    } else {
        run!("0" "0", "8" "8", "16" "16", "24" "24", "64" "128", "72" "136", "80" "144", "88" "152");
    }
    *sums = [s00, s01, s10, s11];
}

/// The panel: for up to [`GROUP_BLOCKS`] blocks of channels at a time (their epilogue
/// constants worked out once), each tile's input extended once, then every block's sums
/// on it, stored by the Armv7E-M [`super::epilogue`].
///
/// # Safety
/// The core has the DSP extension (the `dsp` feature promises it).
pub unsafe fn smlad_2x4c16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    if p.slots.k_pad > EXTENDED_K_MAX {
        return smlad_2x4c16_deep(c, p, output);
    }
    grouped(Packing::Blocks4, c, p, output, tile_extended);
}

/// [`smlad_2x4c16`] on [`Packing::Pairs4`]'s int16 weights: [`tile_pairs`] on the
/// extended input; convs deeper than [`EXTENDED_K_MAX`] a stretch of that depth at a time.
///
/// # Safety
/// As [`smlad_2x4c16`].
pub unsafe fn smlad_2x4p16(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    // `LDRD` faults on weights that are not word-aligned: model bytes a caller did not
    // align run the same sums word by word.
    if c.weights.as_ptr().align_offset(4) == 0 {
        pairs_panel(c, p, output, tile_pairs);
    } else {
        pairs_panel(c, p, output, tile_pairs_unaligned);
    }
}

/// [`smlad_2x4p16`] on `tile`.
#[inline(always)]
fn pairs_panel(
    c: &Conv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    tile: impl Fn(&[u32], &[i8], usize) -> Sums,
) {
    if p.slots.k_pad > EXTENDED_K_MAX {
        return smlad_2x4p16_deep(c, p, output, tile);
    }
    grouped(Packing::Pairs4, c, p, output, tile);
}

type Sums = [[i32; blocks4::CHANNELS]; MR];

/// The panel loops of both layouts (4-channel blocks) on `tile(extended input, block
/// weights, steps)`; `K` at most [`EXTENDED_K_MAX`].
#[inline(always)]
fn grouped(
    packing: Packing,
    c: &Conv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    tile: impl Fn(&[u32], &[i8], usize) -> Sums,
) {
    let oc = c.window.out_c;
    let shape = Shape::of(packing, c.k(), oc);
    let steps = p.steps();
    let blocks = oc.div_ceil(blocks4::CHANNELS);
    let mut ext = [0u32; EXTENDED_K_MAX];
    for g0 in (0..blocks).step_by(GROUP_BLOCKS) {
        let group = (blocks - g0).min(GROUP_BLOCKS);
        let stores: [Channels<'_, { blocks4::CHANNELS }>; GROUP_BLOCKS] =
            core::array::from_fn(|i| {
                let o0 = (g0 + i) * blocks4::CHANNELS;
                Channels::of(c, o0, oc.saturating_sub(o0))
            });
        for m0 in (0..p.count).step_by(MR) {
            extend(p.tile(m0, MR), steps, &mut ext);
            for (i, store) in stores[..group].iter().enumerate() {
                let block = g0 + i;
                let b = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
                let acc = tile(&ext, b, steps);
                store.store(&acc, MR.min(p.count - m0), p.p0 + m0, output);
            }
        }
    }
}

/// [`smlad_2x4p16`] for convs deeper than [`EXTENDED_K_MAX`]: block by block (its
/// epilogue constants once per panel), each tile's input extended and summed
/// [`EXTENDED_K_MAX`] deep at a time.
fn smlad_2x4p16_deep(
    c: &Conv<'_>,
    p: &Panel<'_>,
    output: &mut [i8],
    tile: impl Fn(&[u32], &[i8], usize) -> Sums,
) {
    const STRETCH: usize = EXTENDED_K_MAX / KC;
    let oc = c.window.out_c;
    let shape = Shape::of(Packing::Pairs4, c.k(), oc);
    let steps = p.steps();
    let mut ext = [0u32; EXTENDED_K_MAX];
    for block in 0..oc.div_ceil(blocks4::CHANNELS) {
        let b = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
        let o0 = block * blocks4::CHANNELS;
        let store = Channels::<{ blocks4::CHANNELS }>::of(c, o0, oc - o0);
        for m0 in (0..p.count).step_by(MR) {
            let a = p.tile(m0, MR);
            let mut acc: Sums = [[0; blocks4::CHANNELS]; MR];
            for s0 in (0..steps).step_by(STRETCH) {
                let n = (steps - s0).min(STRETCH);
                extend(&a[s0 * MR * KC..], n, &mut ext);
                let part = tile(&ext, &b[s0 * pairs4::STEP_BYTES..], n);
                for (row, part) in acc.iter_mut().zip(part) {
                    for (v, x) in row.iter_mut().zip(part) {
                        *v = v.wrapping_add(x);
                    }
                }
            }
            store.store(&acc, MR.min(p.count - m0), p.p0 + m0, output);
        }
    }
}

/// The panel for convs deeper than [`EXTENDED_K_MAX`]: block by block (its epilogue
/// constants once per panel), [`tile`] extending both operands in registers.
///
/// # Safety
/// As [`smlad_2x4c16`].
unsafe fn smlad_2x4c16_deep(c: &Conv<'_>, p: &Panel<'_>, output: &mut [i8]) {
    let oc = c.window.out_c;
    let shape = Shape::of(Packing::Blocks4, c.k(), oc);
    let steps = p.steps();
    for block in 0..oc.div_ceil(blocks4::CHANNELS) {
        let b = &c.weights[shape.block_at(block)..shape.block_at(block + 1)];
        let o0 = block * blocks4::CHANNELS;
        let store = Channels::<{ blocks4::CHANNELS }>::of(c, o0, oc - o0);
        for m0 in (0..p.count).step_by(MR) {
            let acc = tile(p.tile(m0, MR), b, steps);
            store.store(&acc, MR.min(p.count - m0), p.p0 + m0, output);
        }
    }
}
