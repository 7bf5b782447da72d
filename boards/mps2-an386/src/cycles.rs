//! Cost of a piece of work from the SysTick counter. On a Cortex-M4 it counts core
//! cycles; under `qemu-system-arm -icount shift=0` the virtual clock advances one
//! nanosecond per instruction and SysTick ticks at the board's 25 MHz, so a tick is a
//! fixed number of instructions, which [`calibrate`] measures on a loop of known length
//! (`scripts/mcu-run` turns ticks into instructions with it).

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::{SCB, SYST};

/// The 24-bit counter's full range.
const RELOAD: u32 = 0x00FF_FFFF;

/// Times the counter wrapped (its exception counts them).
static WRAPS: AtomicU32 = AtomicU32::new(0);

/// Starts SysTick on the core clock, free-running.
pub fn start(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_counter();
    // The counter loads RELOAD on its first tick, which counts as a wrap: count wraps
    // only from then on (reading the control register clears its wrap flag).
    while SYST::get_current() == 0 {}
    let _ = syst.has_wrapped();
    syst.enable_interrupt();
}

/// Ticks since [`start`].
pub fn now() -> u64 {
    cortex_m::interrupt::free(|_| {
        let mut wraps = WRAPS.load(Ordering::Relaxed) as u64;
        let mut current = SYST::get_current();
        if SCB::is_pendst_pending() {
            // The counter wrapped and its exception waits for this section to end: the
            // count read may be from before or after the wrap, so read it again after.
            current = SYST::get_current();
            wraps += 1;
        }
        wraps * (RELOAD as u64 + 1) + (RELOAD - current) as u64
    })
}

/// Instructions a calibration loop runs, and the ticks they took.
pub fn calibrate() -> (u32, u64) {
    const ITERATIONS: u32 = 1 << 20;
    let t0 = now();
    // SAFETY: a register-only countdown loop, two instructions per iteration.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) ITERATIONS => _,
            options(nomem, nostack),
        );
    }
    (2 * ITERATIONS, now() - t0)
}

#[cortex_m_rt::exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}
