//! Linux GPIO lines (character device, `/dev/gpiochipN`) as embedded-hal pins.

use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;

use crate::trigger::TriggerError;

const CONSUMER: &str = "kestrel";

fn request(chip: &str, line: u32, flags: LineRequestFlags) -> Result<CdevPin, TriggerError> {
    let err = |e: &dyn std::fmt::Display| TriggerError::Gpio {
        chip: chip.to_string(),
        line,
        reason: e.to_string(),
    };
    let mut c = Chip::new(chip).map_err(|e| err(&e))?;
    let handle = c
        .get_line(line)
        .and_then(|l| l.request(flags, 0, CONSUMER))
        .map_err(|e| err(&e))?;
    CdevPin::new(handle).map_err(|e| err(&e))
}

/// An input line (a button, a PIR sensor's output, a light barrier).
pub fn input_pin(chip: &str, line: u32) -> Result<CdevPin, TriggerError> {
    request(chip, line, LineRequestFlags::INPUT)
}

/// An output line, driven low at first.
pub fn output_pin(chip: &str, line: u32) -> Result<CdevPin, TriggerError> {
    request(chip, line, LineRequestFlags::OUTPUT)
}
