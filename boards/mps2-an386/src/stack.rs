//! The stack's high-water mark: [`paint`] fills the free stack with a pattern at start-up,
//! [`used`] finds the deepest byte overwritten since (what the SRAM report adds to the
//! arena and statics).

use core::ptr::addr_of;

const PATTERN: u32 = 0x5AFE_C0DE;

extern "C" {
    /// The top of the stack (cortex-m-rt's linker script).
    static _stack_start: u32;
    /// The end of `.bss` and `.uninit`: the stack grows down towards it.
    static __sheap: u32;
}

fn free_words() -> (*mut u32, *mut u32) {
    // Only the symbols' addresses are taken (the linker script defines both).
    (
        addr_of!(__sheap) as *mut u32,
        addr_of!(_stack_start) as *mut u32,
    )
}

/// Fills the stack below the caller's frame (less a margin for this function's own) with
/// the pattern.
pub fn paint() {
    let (bottom, _) = free_words();
    let sp = cortex_m::register::msp::read() as usize - 256;
    let mut p = bottom;
    while (p as usize) < sp {
        // SAFETY: between the end of the statics and below the live stack: free memory.
        unsafe { p.write_volatile(PATTERN) };
        p = p.wrapping_add(1);
    }
}

/// Bytes of stack used at the deepest point since [`paint`].
pub fn used() -> usize {
    let (bottom, top) = free_words();
    let mut p = bottom;
    // SAFETY: reads words of the painted region, all inside RAM.
    while p < top && unsafe { p.read_volatile() } == PATTERN {
        p = p.wrapping_add(1);
    }
    top as usize - p as usize
}
