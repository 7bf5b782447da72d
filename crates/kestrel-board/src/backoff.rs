//! Growing delays between attempts to reach what failed: the camera, a broker, an HTTP
//! endpoint. One policy: the first delay, doubled after every failure, up to a most.

use std::time::Duration;

/// The delays' policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Re-opening the camera: frames are what the board is for, so it retries soon.
    pub const CAMERA: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    /// Reconnecting a result sink: the spool keeps the results meanwhile.
    pub const SINK: Backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    /// The delays, from the first.
    pub fn delays(self) -> Delays {
        Delays {
            policy: self,
            next: self.first,
        }
    }
}

/// The delays of one run of failures.
#[derive(Clone, Debug)]
pub struct Delays {
    policy: Backoff,
    next: Duration,
}

impl Delays {
    /// The delay before the next attempt; the one after is twice as long, up to the most.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.policy.max);
        d
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.policy.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_most_and_start_over_after_a_reset() {
        let ms = Duration::from_millis;
        let mut d = Backoff {
            first: ms(10),
            max: ms(35),
        }
        .delays();
        assert_eq!(
            [
                d.next_delay(),
                d.next_delay(),
                d.next_delay(),
                d.next_delay()
            ],
            [ms(10), ms(20), ms(35), ms(35)]
        );
        d.reset();
        assert_eq!(d.next_delay(), ms(10));
    }
}
