//! What both firmware images share: the defmt logger over semihosting, the exit that
//! ends a qemu run with the firmware's status, the panic and fault handlers, the SysTick
//! counter the cost of an inference is read from, and the stack's high-water mark.
#![no_std]

pub mod cycles;
pub mod stack;

use defmt_semihosting as _;

/// Ends the run: qemu exits with 0 (`ok`) or 1; a real board stops at a breakpoint.
pub fn exit(ok: bool) -> ! {
    use cortex_m_semihosting::debug;
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Logs where it panicked (not the message: formatting it would pull `core::fmt` into
/// the firmware) and ends the run as a failure.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => defmt::error!("panic at {=str}:{=u32}", at.file(), at.line()),
        None => defmt::error!("panic"),
    }
    exit(false)
}

#[cortex_m_rt::exception]
unsafe fn HardFault(frame: &cortex_m_rt::ExceptionFrame) -> ! {
    defmt::error!("hard fault at pc {=u32:#x}", frame.pc());
    exit(false)
}
